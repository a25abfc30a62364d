//! The wording of diagnostics for mistakes people make, one case each (the way PRQL keeps a
//! backlog of bad messages): the fixtures pin codes and spans; these pin what the message and
//! the help line say, so a message that once confused someone does not come back.

use recap_compiler::{check, AssumeFilesExist, CheckOptions, Severity};

const HEAD: &str = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\") { prompt = \"{q}\", answer = field(\"a\") }
verifier acc = numeric()
verifier fmt = regex(r\"^x\")
";

/// The first error of `HEAD` followed by `body` and a train setting: (message, help).
fn first_error(body: &str) -> (String, String) {
    let source = format!("{HEAD}{body}\ntrain {{ steps = 10 }}\n");
    let out = check(
        "m.recap",
        &source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    let d = out
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .unwrap_or_else(|| panic!("no error for {body}"));
    (d.message.clone(), d.help.clone().unwrap_or_default())
}

fn assert_says(body: &str, message: &str, help: &str) {
    let (m, h) = first_error(body);
    assert!(
        m.contains(message),
        "{body}\nmessage: {m}\nwanted: {message}"
    );
    assert!(h.contains(help), "{body}\nhelp: {h}\nwanted: {help}");
}

#[test]
fn a_version_like_number_is_named_as_such() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], temperature = 1.5.0 }",
        "`1.5.0` is not a number: it has more than one decimal point",
        "`\"1.5.0\"`",
    );
}

#[test]
fn a_missing_comma_is_suggested() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc fmt] }",
        "found `fmt`",
        "is a `,` missing?",
    );
}

#[test]
fn a_colon_for_an_equals_sign_is_named() {
    assert_says(
        "objective rl = grpo(math) { group: 8, rewards = [acc] }",
        "found `:`",
        "with `=` rather than `:`",
    );
}

#[test]
fn a_field_without_equals_sign_says_how_fields_are_written() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], group 8 }",
        "expected `=`",
        "`name = value`",
    );
}

#[test]
fn a_single_reward_is_put_in_a_list() {
    assert_says(
        "objective rl = grpo(math) { rewards = acc }",
        "expects list[Reward], found a verifier `acc`",
        "put it in a list: `[acc]`",
    );
    assert_says(
        "objective rl = grpo(math) { rewards = 0.5 * acc }",
        "found a reward combination",
        "put it in a list",
    );
}

#[test]
fn a_whole_float_keeps_its_decimal_point() {
    assert_says(
        "objective rl = grpo(math, rewards = [acc], group = 8.0)",
        "found the float 8.0",
        "write a whole number, e.g. 8",
    );
}

#[test]
fn an_argument_of_a_nested_call_says_where_it_goes() {
    let (m, h) = first_error(
        "objective rl = grpo(math) { rewards = [acc] }\ntrain { steps = 10, lr = 1e-5 }",
    );
    assert!(m.contains("`train` has no parameter `lr`"), "{m}");
    assert!(
        h.contains("`lr` is a parameter of `adamw`, which `optimizer` takes: write `optimizer = adamw(lr = ...)`"),
        "{h}"
    );
    // `kl`'s reference model may be left out (the policy's one frozen copy), so the example
    // needs nothing else.
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], coef = 0.01 }",
        "`grpo` has no parameter `coef`",
        "write `kl = kl(coef = ...)`",
    );
}

#[test]
fn a_number_where_a_call_belongs_names_the_calls() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], kl = 0.01 }",
        "expects Kl, found the float 0.01",
        "write a call that gives Kl: `kl(...)`",
    );
}

#[test]
fn a_number_with_a_suffix_is_named_as_such() {
    // In a block the letters read as the next field's name; in a call they stop the call.
    assert_says(
        "objective rl = grpo(math) { rewards = [acc], max_tokens = 1k }",
        "`1k` is not a number: numbers take no unit or suffix",
        "write the number out",
    );
    assert_says(
        "objective rl = grpo(math, rewards = [acc], max_tokens = 2k)",
        "`2k` is not a number",
        "write the number out",
    );
}

#[test]
fn single_quotes_are_named() {
    assert_says(
        "source other = jsonl('x.jsonl')",
        "found `'`",
        "strings are written in double quotes",
    );
}

#[test]
fn a_quoted_number_is_shown_without_quotes() {
    assert_says(
        "objective rl = grpo(math) { rewards = [acc, fmt] }\nmix uniform\nreweight recap(window = \"10\")",
        "expects int, found a string",
        "write it without quotes: `10`",
    );
}

#[test]
fn a_repeated_stage_is_one_error() {
    let source = format!(
        "{HEAD}stage warmup {{ objective w = grpo(math) {{ rewards = [acc] }}\ntrain {{ steps = 10 }} }}\nstage warmup {{ objective w2 = grpo(math) {{ rewards = [fmt] }} }}\n"
    );
    let out = check(
        "m.recap",
        &source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    let errors: Vec<&str> = out
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.code.as_str())
        .collect();
    assert_eq!(
        errors,
        ["recap::resolve::duplicate_name"],
        "{:#?}",
        out.diagnostics
    );
}

#[test]
fn a_param_without_a_type_is_shown_how_to_write_one() {
    assert_says(
        "param steps = 100\nobjective rl = grpo(math) { rewards = [acc] }",
        "expected `:`, found `=`",
        "a `param` names its type: `param steps: int = 100`",
    );
}

/// A host with one data file, `m.jsonl`, whose rows have the given fields.
struct Rows(Vec<Vec<&'static str>>);

impl recap_compiler::Host for Rows {
    fn file_exists(&self, _path: &str) -> bool {
        true
    }

    fn jsonl_rows(&self, path: &str) -> Option<Vec<recap_compiler::DataRow>> {
        (path == "m.jsonl").then(|| {
            self.0
                .iter()
                .enumerate()
                .map(|(i, keys)| recap_compiler::DataRow {
                    line: i + 1,
                    fields: Ok(keys.iter().map(|k| k.to_string()).collect()),
                })
                .collect()
        })
    }
}

fn data_errors(source_line: &str, rows: Rows) -> Vec<(String, String)> {
    let source = format!(
        "model policy = hf(\"m\")\n{source_line}\nverifier acc = numeric()\nobjective rl = grpo(math) {{ rewards = [acc] }}\ntrain {{ steps = 10 }}\n"
    );
    check("m.recap", &source, &CheckOptions::default(), &rows)
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.message.clone(), d.help.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn data_rows_past_the_limit_are_not_held_against_the_pipeline() {
    let rows = || Rows(vec![vec!["q", "a"], vec!["q"]]);
    let line = "source math = jsonl(\"m.jsonl\") { prompt = \"{q}\", answer = field(\"a\") }";
    let errors = data_errors(line, rows());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].0.contains("line 2 of `m.jsonl` has no field `a`"),
        "{errors:?}"
    );
    // Only some rows lack it, so the help says so rather than guessing another name.
    assert!(errors[0].1.contains("the first row has `a`"), "{errors:?}");
    let limited =
        "source math = jsonl(\"m.jsonl\", limit = 1) { prompt = \"{q}\", answer = field(\"a\") }";
    assert_eq!(data_errors(limited, rows()), []);
}

#[test]
fn a_data_row_without_fields_is_named_as_such() {
    let line = "source math = jsonl(\"m.jsonl\") { prompt = \"{q}\", answer = field(\"a\") }";
    let errors = data_errors(line, Rows(vec![vec![]]));
    assert!(
        errors
            .iter()
            .all(|(_, help)| help.ends_with("the first row has no fields")),
        "{errors:?}"
    );
}

#[test]
fn declared_kinds_get_no_call_advice() {
    // `seed` is a parameter of generators such as `arithmetic`, but a source is declared and
    // named, so the help lists grpo's own parameters instead.
    let (m, h) = first_error("objective rl = grpo(math) { rewards = [acc], seed = 1 }");
    assert!(m.contains("`grpo` has no parameter `seed`"), "{m}");
    assert!(h.starts_with("the parameters are:"), "{h}");
    // Long lists of makers say that there are more.
    assert_says(
        "objective rl = grpo(math) { rewards = [acc] }\nmix 3",
        "expects Mixer",
        "or another (docs/language.md lists them all)",
    );
}

/// The help of a bad `--set` for an `int` param says "an int", not "a int".
#[test]
fn a_bad_override_names_the_type_with_the_right_article() {
    let source = "param steps: int = 10 in [1, inf)\nparam lr: float = 0.1\n";
    for (key, help) in [("steps", "write an int"), ("lr", "write a float")] {
        let options = CheckOptions {
            overrides: vec![(key.into(), "x".into())],
            ..CheckOptions::default()
        };
        let out = check("m.recap", source, &options, &AssumeFilesExist);
        let d = out
            .diagnostics
            .iter()
            .find(|d| d.code == "recap::resolve::bad_override")
            .expect("a bad override");
        assert_eq!(d.help.as_deref(), Some(help));
    }
}

/// The first diagnostic of `source` with `code`.
fn first_with_code(source: &str, code: &str) -> recap_compiler::Diagnostic {
    check(
        "m.recap",
        source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    )
    .diagnostics
    .into_iter()
    .find(|d| d.code == code)
    .unwrap_or_else(|| panic!("no {code} in {source}"))
}

/// The help line of the first unknown name of `source`.
fn unknown_name_help(source: &str) -> Option<String> {
    first_with_code(source, "recap::resolve::unknown_name").help
}

/// The did-you-mean of a file with one source, one verifier and the objective `objective`.
fn guess(source: &str, verifier: &str, objective: &str) -> Option<String> {
    unknown_name_help(&format!(
        "model policy = hf(\"m\")
source {source} = jsonl(\"m.jsonl\") {{ prompt = \"{{q}}\", answer = field(\"a\") }}
verifier {verifier} = numeric()
objective rl = {objective}
train {{ steps = 10 }}
"
    ))
}

/// A misspelt source is guessed as the declared source, not as the stdlib enum member that is
/// as near (`sum`, an aggregation).
#[test]
fn a_misspelt_name_is_guessed_among_declarations_first() {
    assert_eq!(
        guess("sums", "acc", "grpo(sumz) { rewards = [acc] }").as_deref(),
        Some("did you mean `sums`?")
    );
}

/// The labels of the one syntax error of `source`: (text under the label, its message).
fn syntax_labels(source: &str) -> Vec<(String, String)> {
    let d = first_with_code(source, "recap::parse::syntax");
    d.labels
        .iter()
        .map(|l| {
            let text = &source[l.span.start()..l.span.end()];
            (text.to_string(), l.message.clone())
        })
        .collect()
}

/// A bracket left open at the end of the file is pointed back at, past the brackets and the
/// braces inside strings and comments that are closed.
#[test]
fn an_unclosed_bracket_at_the_end_is_pointed_back_at() {
    let labels = syntax_labels(&format!(
        "{HEAD}objective rl = grpo(math) {{ rewards = [acc] }}\ntrain {{ steps = 10\n"
    ));
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert_eq!(labels[1], ("{".into(), "this `{` is never closed".into()));
    let labels = syntax_labels(&format!(
        "{HEAD}objective rl = grpo(math, rewards = [acc], # ( }} \n max_tokens = 2\n"
    ));
    assert_eq!(labels[1], ("(".into(), "this `(` is never closed".into()));
    let source = format!("{HEAD}objective rl = grpo(math) {{ rewards = [acc, fmt");
    let labels = syntax_labels(&source);
    assert_eq!(labels[1], ("[".into(), "this `[` is never closed".into()));
    let at = source.rfind('[').expect("a bracket");
    let out = check(
        "m.recap",
        &source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    assert_eq!(out.diagnostics[0].labels[1].span.start(), at);
}

/// An unclosed `(` loses its item to the syntax error; a use of the name that item declares is
/// not reported as unknown (declarations come in any order), while a misspelt name still is.
#[test]
fn a_name_lost_to_a_syntax_error_is_not_unknown() {
    let source = "model policy = hf(\"m\")
source math = jsonl(\"m.jsonl\" { prompt = \"{q}\", answer = field(\"a\") }
verifier acc = numeric(
objective rl = grpo(math) { rewards = [acc, fmt] }
train { steps = 10 }
";
    let out = check(
        "m.recap",
        source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    let errors: Vec<(&str, &str)> = out
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.code.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [
            "recap::parse::syntax",
            "recap::parse::syntax",
            "recap::resolve::unknown_name"
        ],
        "{errors:?}"
    );
    assert_eq!(errors[2].1, "unknown name `fmt`");
    // The help of an unknown name does not ask for a declaration before the use.
    let (_, help) = first_error("objective rl = grpo(math) { rewards = [zzz] }");
    assert!(help.contains("in any order"), "{help}");
}

/// Where the callee's signature says what kind an argument is, did-you-mean guesses only names
/// of that kind: `grpo`'s first argument is a source, so `primez` is guessed as the source
/// `primes`, not as the verifier `prime` that sorts first at the same distance.
#[test]
fn a_misspelt_argument_is_guessed_among_names_of_its_kind() {
    assert_eq!(
        guess("primes", "prime", "grpo(primez) { rewards = [prime] }").as_deref(),
        Some("did you mean `primes`?")
    );
    // A block's field is the callee's parameter of its name: `rewards` takes rewards, so
    // `primez` there is guessed as the verifier `primes`, not as the source `prime`.
    assert_eq!(
        guess("prime", "primes", "grpo(prime) { rewards = [primez] }").as_deref(),
        Some("did you mean `primes`?")
    );
}
