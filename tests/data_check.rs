//! The pre-run data check through the `recapc` binary: `check`, `plan` and `run` read the head
//! of every source as the run reads it, and render its prompts with the policy's chat
//! template, so that each data-shape problem is a diagnostic with a `recap::data::*` code, at
//! the source's span, before any model is loaded.

mod common;

use std::path::{Path, PathBuf};

use common::{recapc, stderr, stdout};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pipeline over one source: `source` is its declaration's value (and block), `model` the
/// policy's.
fn pipeline(model: &str, source: &str) -> String {
    format!(
        "model policy = {model}\n\
         source data = {source}\n\
         verifier correct = numeric(extract = last_number())\n\
         objective rl = grpo(data) {{ rewards = [correct] }}\n\
         train {{ steps = 2, prompts_per_step = 2, out = \"runs/x\" }}\n"
    )
}

const TINY: &str = "tiny(layers = 2, hidden = 64, heads = 4, seed = 7)";

const CHAT: &str = "jsonl(\"d.jsonl\", shuffle = false) { answer = field(\"answer\") }";

/// A temporary directory holding `p.recap` and the given files.
fn setup(recap: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.recap"), recap).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// `recapc check p.recap --format json`: its exit code and diagnostics.
fn check(dir: &Path) -> (Option<i32>, Vec<Value>) {
    let o = recapc(&["check", "p.recap", "--format", "json"], dir);
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    (
        o.status.code(),
        v["diagnostics"].as_array().unwrap().clone(),
    )
}

/// The one diagnostic of `code` among `diagnostics`.
fn find<'a>(diagnostics: &'a [Value], code: &str) -> &'a Value {
    let found: Vec<&Value> = diagnostics.iter().filter(|d| d["code"] == code).collect();
    assert_eq!(found.len(), 1, "one {code} among {diagnostics:#?}");
    found[0]
}

/// The text of a diagnostic's primary label in `recap`.
fn primary<'a>(d: &Value, recap: &'a str) -> &'a str {
    let span = &d["labels"][0]["span"];
    let (start, end) = (
        span["start"].as_u64().unwrap() as usize,
        span["end"].as_u64().unwrap() as usize,
    );
    &recap[start..end]
}

fn chat_row(messages: &str) -> String {
    format!("{{\"messages\": {messages}, \"answer\": \"2\"}}\n")
}

/// Rows that hold a prompt but no `messages`, on a source without a `prompt` template: the
/// run read them as chat and stopped at the first; `check` passed them.
#[test]
fn rows_without_messages_or_a_template_are_caught() {
    let recap = pipeline(TINY, CHAT);
    let dir = setup(
        &recap,
        &[("d.jsonl", "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n")],
    );
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(1));
    let d = find(&diagnostics, "recap::data::missing_field");
    assert_eq!(d["severity"], "error");
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("no field `messages`"),
        "{d}"
    );
    assert!(d["message"].as_str().unwrap().contains("d.jsonl:1"), "{d}");
    assert!(d["help"].as_str().unwrap().contains("prompt = "), "{d}");
    assert_eq!(primary(d, &recap), "\"d.jsonl\"");
}

/// Each way a `messages` list can be malformed is `recap::data::bad_messages`, naming the row.
#[test]
fn malformed_messages_are_caught() {
    let cases = [
        ("\"hi\"", "is a string"),
        ("[{\"role\": \"user\"}]", "has no `content`"),
        ("[{\"content\": \"x\"}]", "has no `role`"),
        (
            "[{\"role\": \"human\", \"content\": \"hi\"}, {\"role\": \"user\", \"content\": \"x\"}]",
            "the role `human`",
        ),
        ("[{\"from\": \"human\", \"value\": \"x\"}]", "ShareGPT"),
        ("[]", "no user turn"),
        (
            "[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"system\", \"content\": \"s\"}]",
            "ends with a `system` turn",
        ),
    ];
    let recap = pipeline(TINY, CHAT);
    for (messages, words) in cases {
        let good = chat_row("[{\"role\": \"user\", \"content\": \"1+1=\"}]");
        let data = format!("{good}{}", chat_row(messages));
        let dir = setup(&recap, &[("d.jsonl", &data)]);
        let (code, diagnostics) = check(dir.path());
        assert_eq!(code, Some(1), "{messages}");
        let d = find(&diagnostics, "recap::data::bad_messages");
        let message = d["message"].as_str().unwrap();
        assert!(message.contains(words), "{messages}: {message}");
        assert!(message.contains("d.jsonl:2"), "{message}");
    }
}

/// An empty data file: the run stopped at "no rows"; `check` passed it.
#[test]
fn an_empty_source_is_caught() {
    let recap = pipeline(TINY, CHAT);
    let dir = setup(&recap, &[("d.jsonl", "\n")]);
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(1));
    find(&diagnostics, "recap::data::empty");
}

fn parquet_fixture(dir: &Path) {
    let from = repo().join("runtime/tests/data/parquet");
    for name in ["arith.parquet", "chat.parquet"] {
        std::fs::copy(from.join(name), dir.join(name)).unwrap();
    }
}

/// A Parquet source's prompt placeholders and mapped fields (the verifier's `answer`) are held
/// against its columns, which the checker of `jsonl` sources never read.
#[test]
fn parquet_columns_a_source_reads_are_checked() {
    let cases = [
        (
            "parquet(\"arith.parquet\", prompt = \"{problem}\") { answer = field(\"answer\") }",
            "needs field `problem`",
        ),
        (
            "parquet(\"arith.parquet\", prompt = \"{question}\") { answer = field(\"solution\") }",
            "no field `solution`",
        ),
    ];
    for (source, words) in cases {
        let recap = pipeline(TINY, source);
        let dir = setup(&recap, &[]);
        parquet_fixture(dir.path());
        let (code, diagnostics) = check(dir.path());
        assert_eq!(code, Some(1), "{source}");
        let d = find(&diagnostics, "recap::data::missing_field");
        assert!(d["message"].as_str().unwrap().contains(words), "{d}");
        assert!(d["message"].as_str().unwrap().contains("row 1"), "{d}");
        assert_eq!(primary(d, &recap), "\"arith.parquet\"");
    }
    // The columns it names are there: nothing to say.
    let recap = pipeline(
        TINY,
        "parquet(\"arith.parquet\", prompt = \"{question}\") { answer = field(\"answer\") }",
    );
    let dir = setup(&recap, &[]);
    parquet_fixture(dir.path());
    assert_eq!(check(dir.path()), (Some(0), Vec::new()));
}

/// A tokenizer directory holding only a `tokenizer_config.json` with this chat template: all
/// the check reads.
fn with_template(template: &str) -> (String, String) {
    let config = serde_json::json!({ "chat_template": template }).to_string();
    (
        "tiny(layers = 2, hidden = 64, heads = 4, seed = 7, tokenizer = \"tok\")".to_string(),
        config,
    )
}

/// Chat rows on a model without a chat template: a lone user turn goes in raw (a warning); a
/// system prompt cannot be written at all (an error the run met at its first step).
#[test]
fn chat_rows_need_a_chat_template() {
    let data = chat_row("[{\"role\": \"user\", \"content\": \"1+1=\"}]");
    let recap = pipeline(TINY, CHAT);
    let dir = setup(&recap, &[("d.jsonl", &data)]);
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(0));
    let d = find(&diagnostics, "recap::data::no_chat_template");
    assert_eq!(d["severity"], "warning");
    let with_system = "jsonl(\"d.jsonl\", system = \"Be brief.\") { answer = field(\"answer\") }";
    let recap = pipeline(TINY, with_system);
    let dir = setup(&recap, &[("d.jsonl", &data)]);
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(1));
    let d = find(&diagnostics, "recap::data::no_chat_template");
    assert_eq!(d["severity"], "error");
    assert!(
        d["message"].as_str().unwrap().contains("a system prompt"),
        "{d}"
    );
    // The second label points at the policy.
    assert_eq!(d["labels"][1]["message"], "the policy");
}

/// A template that does not compile, or that refuses what the source gives it (here a system
/// turn), is an error at check time, rendered on the first rows with the `system` option.
#[test]
fn templates_that_fail_are_caught() {
    let data = chat_row("[{\"role\": \"user\", \"content\": \"1+1=\"}]");
    let (model, broken) = with_template("{% for m in messages %}{{ m.content }}");
    let recap = pipeline(&model, CHAT);
    let dir = setup(
        &recap,
        &[("d.jsonl", &data), ("tok/tokenizer_config.json", &broken)],
    );
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(1));
    let d = find(&diagnostics, "recap::data::bad_chat_template");
    assert!(
        d["message"].as_str().unwrap().contains("does not compile"),
        "{d}"
    );
    assert!(primary(d, &recap).starts_with("tiny("), "{d}");

    let (model, strict) = with_template(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}\
         {% endif %}{{ messages[-1].content }}",
    );
    let files = [
        ("d.jsonl", data.as_str()),
        ("tok/tokenizer_config.json", &strict),
    ];
    let dir = setup(&pipeline(&model, CHAT), &files);
    assert_eq!(check(dir.path()), (Some(0), Vec::new()));
    let recap = pipeline(
        &model,
        "jsonl(\"d.jsonl\", system = \"S\") { answer = field(\"answer\") }",
    );
    let dir = setup(&recap, &files);
    let (code, diagnostics) = check(dir.path());
    assert_eq!(code, Some(1));
    let d = find(&diagnostics, "recap::data::bad_chat_template");
    let message = d["message"].as_str().unwrap();
    assert!(message.contains("System role not supported"), "{message}");
    assert!(message.contains("row `data:1`"), "{message}");
    assert_eq!(primary(d, &recap), "\"d.jsonl\"");
}

/// A real template (Qwen2.5's) renders chat rows from Parquet and JSON Lines: nothing to say.
#[test]
fn a_real_template_renders_chat_rows() {
    let qwen = std::fs::read_to_string(
        repo().join("runtime/tests/data/chat/qwen2.5/tokenizer_config.json"),
    )
    .unwrap();
    let model = "tiny(layers = 2, hidden = 64, heads = 4, seed = 7, tokenizer = \"tok\")";
    let data = chat_row(
        "[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"1+1=\"}]",
    );
    let dir = setup(
        &pipeline(model, CHAT),
        &[("d.jsonl", &data), ("tok/tokenizer_config.json", &qwen)],
    );
    assert_eq!(check(dir.path()), (Some(0), Vec::new()));
    let recap = pipeline(
        model,
        "parquet(\"chat.parquet\") { answer = field(\"answer\") }",
    );
    let dir = setup(&recap, &[("tok/tokenizer_config.json", &qwen)]);
    parquet_fixture(dir.path());
    assert_eq!(check(dir.path()), (Some(0), Vec::new()));
}

/// `plan` and `run` refuse the same data before anything is loaded or written; `run` of a
/// saved plan checks the data as well.
#[test]
fn plan_and_run_report_the_problem_before_loading() {
    let recap = pipeline(
        TINY,
        "jsonl(\"d.jsonl\", system = \"Be brief.\") { answer = field(\"answer\") }",
    );
    let good = chat_row("[{\"role\": \"user\", \"content\": \"1+1=\"}]");
    let bad = chat_row("[{\"role\": \"human\", \"content\": \"1+1=\"}]");
    let dir = setup(&recap, &[("d.jsonl", &bad)]);
    for args in [&["plan", "p.recap"][..], &["run", "p.recap"]] {
        let o = recapc(args, dir.path());
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("recap::data::bad_messages"),
            "{}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty());
    }
    assert!(!dir.path().join("runs").exists(), "run made its directory");
    // A plan made while the data was good, run after it went bad. The run stops at the data,
    // not at the model (this one's chat rows need a template it lacks).
    let recap = pipeline(TINY, CHAT);
    let dir = setup(&recap, &[("d.jsonl", &good)]);
    let o = recapc(&["plan", "p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::write(dir.path().join("plan.json"), &o.stdout).unwrap();
    std::fs::write(dir.path().join("d.jsonl"), &bad).unwrap();
    let o = recapc(&["run", "plan.json"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("recap::data::bad_messages"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("runs").exists(), "run made its directory");
}

/// Each Parquet shard a source reads from a directory is in the plan's `file_hashes`, so that
/// `run plan.json` refuses a shard changed since, as it refuses a changed JSON Lines file. The
/// plan hashed no shard before, and the run went on.
#[test]
fn a_parquet_shard_changed_since_the_plan_is_refused() {
    let recap = pipeline(
        TINY,
        "parquet(\"hub\", split = \"train\", prompt = \"{question}\") { answer = field(\"answer\") }",
    );
    let dir = setup(&recap, &[]);
    let from = repo().join("runtime/tests/data/parquet/hub/data");
    std::fs::create_dir_all(dir.path().join("hub/data")).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("hub/data").join(entry.file_name()),
        )
        .unwrap();
    }
    let o = recapc(&["plan", "p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let hashed: Vec<&str> = plan["file_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    let shard = "hub/data/train-00001-of-00002.parquet";
    assert_eq!(hashed, ["hub/data/train-00000-of-00002.parquet", shard]);
    std::fs::write(dir.path().join("plan.json"), &o.stdout).unwrap();
    // Another valid shard in its place, so that only the hashes can tell.
    std::fs::copy(
        from.join("test-00000-of-00001.parquet"),
        dir.path().join(shard),
    )
    .unwrap();
    let o = recapc(
        &["run", "plan.json", "--progress", "quiet", "--out", "out"],
        dir.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("`{shard}` (its contents) changed since the plan")),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

/// Each data code has a row in docs/diagnostics.md whose summary opens `recapc explain CODE`
/// word for word, as the compiler's codes do.
#[test]
fn every_data_code_is_documented_and_explained() {
    use recap_runtime::engine::data::DataProblem;
    let text = std::fs::read_to_string(repo().join("docs/diagnostics.md")).unwrap();
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for problem in DataProblem::ALL {
        let code = problem.code();
        let row = format!("| `{code}` | ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/diagnostics.md has no row for {code}"));
        let summary = squash(line.strip_prefix(&row).unwrap().strip_suffix(" |").unwrap());
        assert!(summary.ends_with('.'), "{code}: {summary}");
        let o = recapc(&["explain", code], &repo());
        assert_eq!(o.status.code(), Some(0), "{code}: {}", stderr(&o));
        let explained = squash(&stdout(&o));
        assert!(
            explained.starts_with(&squash(&format!("{code} {summary}"))),
            "{code}: the summary {summary:?} is not how `recapc explain` opens: {explained:?}"
        );
    }
}
