//! Rendering tests: hand-built diagnostics (so they do not depend on the checker's wording)
//! rendered in the three formats, the human form snapshotted with insta (unicode, no colour).

use recap_compiler::{Diagnostic, Label, Severity, Span};
use recapc::render::{
    human::{self, HumanOptions},
    json::{self, Report},
    short,
};

const SOURCE: &str = "\
model policy = tiny(layers = 2)
source sums = arithmetic(ops = \"+\")
objective rl = grpo(sums) {
  rewards = [corect]
  group = 1
}
";

fn span_of(needle: &str) -> Span {
    let start = SOURCE.find(needle).expect("needle in SOURCE");
    Span::new(start, start + needle.len())
}

fn unknown_name() -> Diagnostic {
    Diagnostic {
        code: "recap::resolve::unknown_name".into(),
        severity: Severity::Error,
        message: "unknown name `corect`".into(),
        labels: vec![Label {
            span: span_of("corect"),
            message: "not declared in this file".into(),
        }],
        help: Some("did you mean `correct`?".into()),
        fixes: Vec::new(),
    }
}

fn out_of_range() -> Diagnostic {
    Diagnostic {
        code: "recap::validate::out_of_range".into(),
        severity: Severity::Error,
        message: "`group` must be at least 2, found 1".into(),
        labels: vec![
            Label {
                span: span_of("1\n}"),
                message: "GRPO needs at least two completions per prompt".into(),
            },
            Label {
                span: span_of("grpo"),
                message: "objective declared here".into(),
            },
        ],
        help: Some("set `group = 8` (the TRL default)".into()),
        fixes: Vec::new(),
    }
}

fn unused() -> Diagnostic {
    Diagnostic {
        code: "recap::validate::unused".into(),
        severity: Severity::Warning,
        message: "model `policy` is never used".into(),
        labels: vec![Label {
            span: span_of("policy"),
            message: String::new(),
        }],
        help: None,
        fixes: Vec::new(),
    }
}

fn whole_file() -> Diagnostic {
    Diagnostic {
        code: "recap::validate::no_objective".into(),
        severity: Severity::Error,
        message: "the pipeline declares no objective".into(),
        labels: vec![],
        help: Some("add e.g. `objective o = sft(data)`".into()),
        fixes: Vec::new(),
    }
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| human::render("quick.recap", SOURCE, d, HumanOptions::default()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn human_rendering_unicode_without_colour() {
    let text = render_all(&[unknown_name(), out_of_range(), unused(), whole_file()]);
    assert!(!text.contains('\u{1b}'), "no ANSI escapes without colour");
    insta::assert_snapshot!(text);
}

#[test]
fn human_rendering_with_colour_uses_ansi() {
    let options = HumanOptions {
        color: true,
        ..HumanOptions::default()
    };
    let text = human::render("quick.recap", SOURCE, &unknown_name(), options);
    assert!(text.contains('\u{1b}'));
}

#[test]
fn human_rendering_survives_spans_outside_the_text() {
    let mut d = unknown_name();
    d.labels[0].span = Span::new(10_000, 20_000);
    let text = human::render("quick.recap", SOURCE, &d, HumanOptions::default());
    assert!(text.contains("unknown name `corect`"));
}

#[test]
fn short_lines() {
    let lines: Vec<String> = [unknown_name(), out_of_range(), unused(), whole_file()]
        .iter()
        .map(|d| short::render_one("quick.recap", SOURCE, d))
        .collect();
    assert_eq!(
        lines,
        vec![
            "quick.recap:4:14: error[recap::resolve::unknown_name]: unknown name `corect`",
            "quick.recap:5:11: error[recap::validate::out_of_range]: `group` must be at least 2, found 1",
            "quick.recap:1:7: warning[recap::validate::unused]: model `policy` is never used",
            "quick.recap:1:1: error[recap::validate::no_objective]: the pipeline declares no objective",
        ]
    );
}

#[test]
fn short_lines_stay_on_one_line() {
    let mut d = unknown_name();
    d.message = "first\nsecond".into();
    assert_eq!(
        short::render_one("q.recap", SOURCE, &d),
        "q.recap:4:14: error[recap::resolve::unknown_name]: first second"
    );
}

#[test]
fn json_schema_fields() {
    let mut report = Report::default();
    report.add_checked("quick.recap", SOURCE, &[out_of_range(), unused()]);
    report.add_unreadable("gone.recap", "no such file");
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["schema"], "recap-diagnostics");
    assert_eq!(v["version"], 1);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["files"][0]["file"], "quick.recap");
    assert_eq!(v["files"][0]["status"], "checked");
    assert_eq!(v["files"][0]["error"], serde_json::Value::Null);
    assert_eq!(v["files"][1]["status"], "unreadable");
    assert_eq!(v["files"][1]["error"], "no such file");
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "quick.recap");
    assert_eq!(d["code"], "recap::validate::out_of_range");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["help"], "set `group = 8` (the TRL default)");
    let primary = &d["labels"][0];
    assert_eq!(primary["primary"], true);
    let start = SOURCE.find("1\n}").unwrap();
    assert_eq!(primary["span"]["start"], start);
    assert_eq!(primary["span"]["end"], start + 3);
    assert_eq!(
        primary["start"],
        serde_json::json!({"line": 5, "column": 11})
    );
    assert_eq!(primary["end"], serde_json::json!({"line": 6, "column": 2}));
    assert_eq!(d["labels"][1]["primary"], false);
    assert_eq!(v["diagnostics"][1]["severity"], "warning");
    assert_eq!(v["diagnostics"][1]["help"], serde_json::Value::Null);
    // The document reads back into the documented types.
    let back: Report = serde_json::from_value(v).unwrap();
    assert_eq!(back, report);
}

#[test]
fn json_columns_count_characters_not_bytes() {
    let text = "# é\nsource é = x\n";
    let d = Diagnostic {
        code: "recap::resolve::unknown_name".into(),
        severity: Severity::Error,
        message: "m".into(),
        labels: vec![Label {
            span: Span::new(text.find('x').unwrap(), text.find('x').unwrap() + 1),
            message: String::new(),
        }],
        help: None,
        fixes: Vec::new(),
    };
    let j = json::to_json("u.recap", text, &d);
    assert_eq!(j.labels[0].start.line, 2);
    assert_eq!(j.labels[0].start.column, 12);
}

/// The real checker's diagnostics for the teaching file of common mistakes, rendered as a user
/// sees them: this pins both the wording and the rendering.
#[test]
fn human_rendering_of_the_common_mistakes_example() {
    let name = "examples/mistakes/common.recap";
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/mistakes/common.recap"
    ))
    .unwrap();
    let out = recap_compiler::check(
        name,
        &text,
        &recap_compiler::CheckOptions::default(),
        &recap_compiler::AssumeFilesExist,
    );
    assert!(out.has_errors());
    let rendered: Vec<String> = out
        .diagnostics
        .iter()
        .map(|d| human::render(name, &text, d, HumanOptions::default()))
        .collect();
    insta::assert_snapshot!(rendered.join("\n"));
}
