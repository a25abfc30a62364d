//! Machine-applicable fixes: each diagnostic that carries one is checked by applying its edits
//! and checking the result again, which must no longer have the diagnostic's code.

use recap_compiler::{check, AssumeFilesExist, CheckOptions, Diagnostic};

fn diagnostics(source: &str) -> Vec<Diagnostic> {
    check(
        "f.recap",
        source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    )
    .diagnostics
}

/// Applies the first fix of the diagnostic with `code` and returns the fixed text, after
/// checking that the fixed text no longer has that code and that its message says `says`.
fn apply_fix(source: &str, code: &str, says: &str) -> String {
    let diags = diagnostics(source);
    let d = diags
        .iter()
        .find(|d| d.code == code)
        .unwrap_or_else(|| panic!("no {code} in {diags:#?}"));
    let fix = d
        .fixes
        .first()
        .unwrap_or_else(|| panic!("{code} has no fix: {d:#?}"));
    assert!(fix.message.contains(says), "{}", fix.message);
    let fixed = fix.apply(source).expect("the fix's edits fit the text");
    let after = diagnostics(&fixed);
    assert!(
        after.iter().all(|d| d.code != code),
        "{code} is still there after the fix:\n{fixed}\n{after:#?}"
    );
    fixed
}

const HEAD: &str = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\") {
  prompt = \"{q}\"
  answer = field(\"a\")
}
verifier correct = numeric()
";

#[test]
fn a_misspelt_name_is_replaced_with_the_guess() {
    let source = format!(
        "{HEAD}objective rl = grpo(math) {{ rewards = [corect] }}\ntrain {{ steps = 10 }}\n"
    );
    let fixed = apply_fix(
        &source,
        "recap::resolve::unknown_name",
        "replace `corect` with `correct`",
    );
    assert!(fixed.contains("rewards = [correct]"), "{fixed}");
}

#[test]
fn a_misspelt_argument_is_replaced_with_the_guess() {
    let source = format!(
        "{HEAD}objective rl = grpo(math) {{ rewards = [correct], grup = 4 }}\ntrain {{ steps = 10 }}\n"
    );
    let fixed = apply_fix(
        &source,
        "recap::typecheck::unknown_argument",
        "with `group`",
    );
    assert!(fixed.contains("group = 4"), "{fixed}");
}

#[test]
fn a_misspelt_field_is_replaced_with_the_guess() {
    let source = format!(
        "{HEAD}verifier v = exact(expected = math.answr)\nobjective rl = grpo(math) {{ rewards = [correct, v] }}\ntrain {{ steps = 10 }}\n"
    );
    let fixed = apply_fix(&source, "recap::typecheck::unknown_field", "with `answer`");
    assert!(fixed.contains("math.answer"), "{fixed}");
}

#[test]
fn a_missing_train_setting_is_added_at_the_end_of_the_file() {
    let source = format!("{HEAD}objective rl = grpo(math) {{ rewards = [correct] }}\n");
    let fixed = apply_fix(&source, "recap::validate::missing_train", "add `train");
    assert!(fixed.ends_with("}\n\ntrain { steps = 100 }\n"), "{fixed}");
    assert!(!diagnostics(&fixed)
        .iter()
        .any(|d| d.severity == recap_compiler::Severity::Error));
}

#[test]
fn a_missing_train_setting_is_added_to_its_stage() {
    let source =
        format!("{HEAD}stage one {{\n  objective rl = grpo(math) {{ rewards = [correct] }}\n}}\n");
    let fixed = apply_fix(&source, "recap::validate::missing_train", "to the stage");
    assert!(fixed.ends_with("  train { steps = 100 }\n}\n"), "{fixed}");
}

#[test]
fn a_missing_answer_is_mapped_in_the_sources_block() {
    let source = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\") {
  prompt = \"{q}\"
}
verifier correct = numeric()
objective rl = grpo(math) { rewards = [correct] }
train { steps = 10 }
";
    let fixed = apply_fix(source, "recap::validate::missing_field", "`answer`");
    assert!(
        fixed.contains("  prompt = \"{q}\"\n  answer = field(\"answer\")\n}"),
        "{fixed}"
    );
}

#[test]
fn a_source_without_a_block_gets_one_for_the_mapping() {
    let source = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\", prompt = \"{q}\")
objective tune = sft(math)
train { steps = 10 }
";
    let fixed = apply_fix(source, "recap::validate::missing_field", "`target`");
    assert!(
        fixed.contains("prompt = \"{q}\") {\n  target = field(\"output\")\n}\n"),
        "{fixed}"
    );
}

/// A fix's edits apply in source order whatever order they are listed in, and an edit outside
/// the text or across another is refused rather than applied.
#[test]
fn edits_apply_in_order_and_bad_ones_are_refused() {
    use recap_compiler::{Edit, Fix, Span};
    let edit = |s, e, r: &str| Edit {
        span: Span::new(s, e),
        replacement: r.into(),
    };
    let fix = |edits| Fix {
        message: String::new(),
        edits,
    };
    assert_eq!(
        fix(vec![edit(4, 5, "X"), edit(0, 1, "Y")]).apply("abcdef"),
        Some("YbcdXf".into())
    );
    assert_eq!(fix(vec![edit(0, 9, "")]).apply("abc"), None);
    assert_eq!(fix(vec![edit(0, 2, ""), edit(1, 3, "")]).apply("abc"), None);
    assert_eq!(fix(vec![edit(1, 1, "é")]).apply("ab"), Some("aéb".into()));
    assert_eq!(fix(vec![edit(1, 2, "")]).apply("é"), None);
}
