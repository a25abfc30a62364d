//! The grader table: every row of `tests/data/graders.tsv` is scored by the named built-in
//! verifier and must give the row's expected score. The table records where each expected
//! score comes from (math_verify, Python's `re`, the RECAP authors' code, or a recap rule that
//! docs/graders.md explains); this test only reads it, so it needs no Python.

use recap_plan::{Expected, ExtractStep, Extractor, VerifierSpec};
use recap_runtime::train::verifiers::{Outcome, Sample, Verifier, Verify};
use serde_json::{json, Map, Value};

/// One row of the table.
struct Row {
    line: usize,
    verifier: String,
    prediction: String,
    gold: String,
    expected: f64,
    source: String,
    math_verify: Option<f64>,
}

fn decode(text: &str) -> String {
    text.replace('\u{2424}', "\n")
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/graders.tsv");
    let text = std::fs::read_to_string(path).expect("graders.tsv is readable");
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.is_empty());
    let (_, header) = lines.next().expect("a header line");
    assert_eq!(
        header,
        "verifier\tprediction\tgold\texpected\tsource\tmath_verify\tnote"
    );
    lines
        .map(|(i, line)| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 7, "line {}: {line:?}", i + 1);
            let score = |s: &str| -> f64 {
                s.parse()
                    .unwrap_or_else(|_| panic!("line {}: bad score {s:?}", i + 1))
            };
            Row {
                line: i + 1,
                verifier: cols[0].to_string(),
                prediction: decode(cols[1]),
                gold: decode(cols[2]),
                expected: score(cols[3]),
                source: cols[4].to_string(),
                math_verify: (cols[5] != "-").then(|| score(cols[5])),
            }
        })
        .collect()
}

/// Builds the verifier a row names (`math_equal tag=answer`, `numeric tol=0.5`, ...), with the
/// reference in the `answer` field; for `regex` the gold column is the pattern.
fn build(row: &Row) -> Verifier {
    let mut words = row.verifier.split(' ');
    let kind = words.next().unwrap_or_default();
    let mut steps = Vec::new();
    let mut tolerance = 1e-6;
    let mut options = "ABCDEFGH".to_string();
    for word in words {
        match word.split_once('=') {
            Some(("tag", name)) => steps.push(ExtractStep::Tag { name: name.into() }),
            Some(("tol", t)) => tolerance = t.parse().expect("a number"),
            Some(("options", o)) => options = o.to_string(),
            None if word == "trim" => steps.push(ExtractStep::Trim),
            None if word == "first_number" => steps.push(ExtractStep::FirstNumber),
            _ => panic!("line {}: unknown option {word:?}", row.line),
        }
    }
    let expected = Expected {
        field: "answer".into(),
    };
    let spec = match kind {
        "math_equal" => VerifierSpec::MathEqual {
            expected,
            extract: Extractor { steps },
        },
        "numeric" => VerifierSpec::Numeric {
            expected,
            // The stdlib's default extractor for `numeric` is `last_number`.
            extract: Extractor {
                steps: if steps.is_empty() {
                    vec![ExtractStep::LastNumber]
                } else {
                    steps
                },
            },
            tolerance,
        },
        "choice" => VerifierSpec::Choice {
            expected,
            extract: Extractor { steps },
            options: options.into(),
        },
        "regex" => VerifierSpec::Regex {
            pattern: row.gold.clone().into(),
            extract: Extractor { steps },
        },
        other => panic!("line {}: unknown verifier {other:?}", row.line),
    };
    Verifier::new(&recap_plan::Verifier {
        name: kind.into(),
        spec,
    })
    .unwrap_or_else(|e| panic!("line {}: {e}", row.line))
}

/// The row's score, or why the verifier found the row not applicable.
fn score(row: &Row) -> Result<f64, String> {
    let verifier = build(row);
    let fields: Map<String, Value> = json!({ "answer": row.gold })
        .as_object()
        .cloned()
        .expect("an object");
    let outcome = verifier.verify(&Sample {
        id: "table",
        prompt: "",
        completion: &row.prediction,
        fields: &fields,
        completion_tokens: None,
    });
    match outcome {
        Outcome::Score(s) => Ok(s),
        Outcome::NotApplicable(why) => Err(why),
    }
}

#[test]
fn grader_table() {
    let rows = rows();
    assert!(rows.len() >= 150, "only {} cases", rows.len());
    let mut wrong = Vec::new();
    let (mut compared, mut agree) = (0, 0);
    for row in &rows {
        let got = score(row);
        if let Some(mv) = row.math_verify {
            compared += 1;
            agree += usize::from(got == Ok(mv));
        }
        if got != Ok(row.expected) {
            wrong.push(format!(
                "line {} [{}; {}] {:?} vs {:?}: got {got:?}, want {}",
                row.line, row.verifier, row.source, row.prediction, row.gold, row.expected
            ));
        }
    }
    println!(
        "{} cases; {} as expected; agrees with math_verify on {agree} of {compared}",
        rows.len(),
        rows.len() - wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every source of truth the table names is one the header documents.
#[test]
fn every_row_names_a_known_source() {
    for row in rows() {
        assert!(
            ["math_verify", "re", "paper", "recap"].contains(&row.source.as_str()),
            "line {}: source {:?}",
            row.line,
            row.source
        );
        if row.source == "math_verify" {
            assert_eq!(row.math_verify, Some(row.expected), "line {}", row.line);
        }
    }
}

/// The rows where recap's score differs from math_verify's, for docs/graders.md.
#[test]
#[ignore = "prints the differences from math_verify; run with --ignored --nocapture"]
fn differences_from_math_verify() {
    for row in rows() {
        if let Some(mv) = row.math_verify {
            if score(&row) != Ok(mv) {
                println!(
                    "line {} [{}; {}] {:?} vs {:?}: recap {}, math_verify {mv}",
                    row.line, row.verifier, row.source, row.prediction, row.gold, row.expected
                );
            }
        }
    }
}
