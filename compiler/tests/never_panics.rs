//! The compiler never panics: 10,000+ inputs (valid fixtures mutated byte- and token-wise,
//! token soup, arbitrary strings) go through `parse` and `check`, the latter with a host that
//! says every file exists and with one whose answers about files, data rows and model
//! contexts are odd (`OddHost`). Every diagnostic's spans must lie inside the text on character
//! boundaries, and every plan must survive a JSON round trip. Every input the formatter accepts
//! must keep its promises (`format_invariants`).

mod format_invariants;

use proptest::prelude::*;
use recap_compiler::{check, parse, AssumeFilesExist, CheckOptions, DataRow, Host};

/// A host whose answers are as odd as the inputs: files that exist or not by the length of
/// their path, data files without rows, with rows that are not objects or that have no
/// fields, model contexts of zero. What a host says is input too, and must not make the
/// checker panic either.
struct OddHost;

impl Host for OddHost {
    fn file_exists(&self, path: &str) -> bool {
        !path.len().is_multiple_of(3)
    }

    fn jsonl_rows(&self, path: &str) -> Option<Vec<DataRow>> {
        match path.len() % 4 {
            0 => None,
            1 => Some(Vec::new()),
            _ => Some(vec![
                DataRow {
                    line: 1,
                    fields: Ok(vec!["q".into(), "a".into(), path.into()]),
                },
                DataRow {
                    line: usize::MAX,
                    fields: Err(String::new()),
                },
                DataRow {
                    line: 0,
                    fields: Ok(Vec::new()),
                },
            ]),
        }
    }

    fn model_context(&self, dir: &str) -> Option<u64> {
        dir.len().is_multiple_of(2).then_some(dir.len() as u64 % 5)
    }
}

const SEEDS: &[&str] = &[
    include_str!("fixtures/valid/gsm8k_recap.recap"),
    include_str!("fixtures/valid/staged_warmup_then_grpo.recap"),
    include_str!("fixtures/valid/shared_rollouts.recap"),
    include_str!("fixtures/errors/resolve_cycle.recap"),
    include_str!("fixtures/errors/validate_foreign_field.recap"),
];

const TOKENS: &[&str] = &[
    "model",
    "source",
    "verifier",
    "objective",
    "eval",
    "param",
    "let",
    "use",
    "stage",
    "reweight",
    "mix",
    "train",
    "fn",
    "enum",
    "=",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    "+",
    "-",
    "*",
    "/",
    "%",
    ":",
    "?",
    "..",
    "\"",
    "\"{x}\"",
    "r#\"",
    "\"#",
    "#",
    "\n",
    " ",
    "0",
    "1",
    "-1",
    "1e309",
    "99999999999999999999",
    "0.5",
    "10%",
    "true",
    "policy",
    "math",
    "grpo",
    "sft",
    "recap",
    "uniform",
    "frozen",
    "kl",
    "every",
    "steps",
    "group",
    "rewards",
    "in",
    "[2, inf)",
    "->",
    "hf(\"x\")",
    "é",
    "\u{1F600}",
    "\\",
    "\\q",
    "_",
];

fn assert_sane(src: &str) {
    let (ast, diags) = parse(src);
    assert!(
        ast.is_some() || !diags.is_empty(),
        "no AST and no diagnostic"
    );
    format_invariants::check_format(src);
    for opts in [
        CheckOptions::default(),
        CheckOptions {
            overrides: vec![("steps".into(), "7".into()), ("nope".into(), "x".into())],
            missing_files_are_errors: true,
        },
    ] {
        let hosts: [&dyn Host; 2] = [&AssumeFilesExist, &OddHost];
        for host in hosts {
            sane_check(src, &opts, host);
        }
    }
}

fn sane_check(src: &str, opts: &CheckOptions, host: &dyn Host) {
    let out = check("fuzz.recap", src, opts, host);
    for d in &out.diagnostics {
        assert!(d.code.starts_with("recap::"), "{}", d.code);
        assert!(
            !d.code.starts_with("recap::internal"),
            "internal error on input {src:?}: {d:?}"
        );
        for l in &d.labels {
            assert!(
                l.span.start() <= l.span.end() && l.span.end() <= src.len(),
                "{d:?}"
            );
            assert!(src.is_char_boundary(l.span.start()) && src.is_char_boundary(l.span.end()));
        }
    }
    assert_eq!(out.plan.is_some(), !out.has_errors());
    if let Some(plan) = out.plan {
        let back = recap_plan::Plan::from_json(&plan.to_json()).expect("round trip");
        assert_eq!(back, plan);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteByte(usize),
    InsertToken(usize, usize),
    ReplaceToken(usize, usize),
    DeleteRange(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteByte),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::InsertToken(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::ReplaceToken(a, b)),
        (any::<usize>(), 1usize..40).prop_map(|(a, b)| Mutation::DeleteRange(a, b)),
        (any::<usize>(), 1usize..80).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// The nearest char boundary at or below `i`.
fn floor(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(src: &str, muts: &[Mutation]) -> String {
    let mut s = src.to_string();
    for m in muts {
        let len = s.len().max(1);
        match *m {
            Mutation::DeleteByte(i) => {
                let a = floor(&s, i % len);
                let b = floor(&s, a + 1).max(a);
                let b = if b == a {
                    (a + 1..=s.len())
                        .find(|&j| s.is_char_boundary(j))
                        .unwrap_or(a)
                } else {
                    b
                };
                s.replace_range(a..b, "");
            }
            Mutation::InsertToken(i, t) => {
                let a = floor(&s, i % len);
                s.insert_str(a, TOKENS[t % TOKENS.len()]);
            }
            Mutation::ReplaceToken(i, t) => {
                // Replace the word at a position with a token.
                let a = floor(&s, i % len);
                let end = s[a..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|k| a + k)
                    .unwrap_or(s.len());
                s.replace_range(a..end, TOKENS[t % TOKENS.len()]);
            }
            Mutation::DeleteRange(i, n) => {
                let a = floor(&s, i % len);
                let b = floor(&s, a + n);
                s.replace_range(a..b, "");
            }
            Mutation::Duplicate(i, n) => {
                let a = floor(&s, i % len);
                let b = floor(&s, a + n);
                let piece = s[a..b].to_string();
                s.insert_str(b, &piece);
            }
            Mutation::Truncate(i) => {
                let a = floor(&s, i % len);
                s.truncate(a);
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 7000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(seed in 0usize..SEEDS.len(), muts in prop::collection::vec(mutation(), 1..6)) {
        let src = apply(SEEDS[seed], &muts);
        assert_sane(&src);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(toks in prop::collection::vec(0usize..TOKENS.len(), 0..60)) {
        let src: String = toks.iter().map(|&t| TOKENS[t]).collect::<Vec<_>>().join(" ");
        assert_sane(&src);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(src in ".{0,200}") {
        assert_sane(&src);
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    for depth in [60, 99, 100, 101, 2_000, 50_000] {
        let src = format!("let x = {}1{}", "(".repeat(depth), ")".repeat(depth));
        let _ = check(
            "deep.recap",
            &src,
            &CheckOptions::default(),
            &AssumeFilesExist,
        );
        let src = format!("let x = {}1", "-".repeat(depth));
        let _ = check(
            "deep.recap",
            &src,
            &CheckOptions::default(),
            &AssumeFilesExist,
        );
        let src = format!("let x = {}1{}", "[".repeat(depth), "]".repeat(depth));
        let _ = check(
            "deep.recap",
            &src,
            &CheckOptions::default(),
            &AssumeFilesExist,
        );
    }
}
