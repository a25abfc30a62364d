//! CLI tests: run the built `recapc` binary and assert exit codes, the streams things go to and
//! the JSON schema. The documented exit codes are 0 (clean or warnings only), 1 (errors),
//! 2 (usage or IO), 3 (`run`: the job failed while running).

mod common;

use std::path::{Path, PathBuf};

use common::{recapc, stderr, stdout};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pipeline with a deliberate mistake: an unknown verifier name.
const BAD: &str = "\
model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 2, count = 100, seed = 1)
verifier correct = numeric(expected = sums.answer, extract = last_number())
objective rl = grpo(sums) { rewards = [corect] }
train { steps = 10, prompts_per_step = 4, out = \"runs/bad\" }
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["check", "plan", "graph", "run"] {
        let o = recapc(&[cmd, "nowhere/missing.recap"], dir.path());
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot read `nowhere/missing.recap`: no such file"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_directory_is_not_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let o = recapc(&["check", "."], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.recap", BAD);
    for args in [
        vec!["check"],
        vec!["check", "p.recap", "--format", "xml"],
        vec!["check", "p.recap", "--set", "steps"],
        vec!["check", "p.recap", "--set", "=3"],
        vec!["frobnicate"],
        vec!["completions", "tcsh"],
    ] {
        let o = recapc(&args, dir.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = recapc(&["check", "p.recap", "--set", "steps"], dir.path());
    assert!(stderr(&o).contains("key=value"), "{}", stderr(&o));
}

#[test]
fn check_with_errors_exits_1_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.recap", BAD);
    for format in ["human", "short", "json"] {
        let o = recapc(&["check", "bad.recap", "--format", format], dir.path());
        assert_eq!(o.status.code(), Some(1), "{format}: {}", stderr(&o));
    }
    let o = recapc(&["check", "bad.recap", "--format", "short"], dir.path());
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("bad.recap:4:") && l.contains(": error[recap::")),
        "{out}"
    );
    let o = recapc(&["check", "bad.recap"], dir.path());
    let err = stderr(&o);
    assert!(err.contains("corect"), "{err}");
    assert!(
        err.contains("╭─[bad.recap:4:"),
        "unicode snippet with file:line:col: {err}"
    );
    assert!(!err.contains('\u{1b}'), "NO_COLOR means no escapes: {err}");
    assert!(stdout(&o).is_empty(), "human output goes to stderr");
}

#[test]
fn check_json_schema() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.recap", BAD);
    let o = recapc(
        &["check", "bad.recap", "gone.recap", "--format", "json"],
        dir.path(),
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unreadable file outranks errors"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["schema"], "recap-diagnostics");
    assert_eq!(v["version"], 1);
    assert_eq!(v["files"][0]["file"], "bad.recap");
    assert_eq!(v["files"][0]["status"], "checked");
    assert_eq!(v["files"][1]["file"], "gone.recap");
    assert_eq!(v["files"][1]["status"], "unreadable");
    assert!(v["errors"].as_u64().unwrap() >= 1);
    let diagnostics = v["diagnostics"].as_array().unwrap();
    let d = diagnostics
        .iter()
        .find(|d| d["severity"] == "error")
        .expect("an error");
    assert_eq!(d["file"], "bad.recap");
    assert!(d["code"].as_str().unwrap().starts_with("recap::"));
    assert!(!d["message"].as_str().unwrap().is_empty());
    let label = &d["labels"][0];
    assert_eq!(label["primary"], true);
    let (start, end) = (
        label["span"]["start"].as_u64().unwrap() as usize,
        label["span"]["end"].as_u64().unwrap() as usize,
    );
    assert!(start <= end && end <= BAD.len());
    assert_eq!(&BAD[start..end], "corect");
    assert_eq!(label["start"]["line"], 4);
    assert_eq!(
        label["start"]["column"],
        start - BAD[..start].rfind('\n').unwrap()
    );
    // The did-you-mean fix replaces the label's text with the guess.
    let fix = &d["fixes"][0];
    assert_eq!(fix["message"], "replace `corect` with `correct`");
    assert_eq!(fix["edits"][0]["span"], label["span"]);
    assert_eq!(fix["edits"][0]["start"], label["start"]);
    assert_eq!(fix["edits"][0]["replacement"], "correct");
    // A diagnostic without a fix has no `fixes` field, as version 1 documents had none.
    assert!(diagnostics
        .iter()
        .filter(|d| d["code"] != "recap::resolve::unknown_name")
        .all(|d| d.get("fixes").is_none()));
}

#[test]
fn clean_pipelines_exit_0_and_warnings_do_not_fail() {
    let o = recapc(
        &[
            "check",
            "pipelines/quickstart.recap",
            "pipelines/gsm8k.recap",
            "pipelines/code-exec.recap",
            "pipelines/gsm8k-recap.recap",
        ],
        &repo(),
    );
    // The templates' data and grader lie beside them in the repository: no problems at all.
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checked 4 files: no problems"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn set_overrides_are_checked() {
    let o = recapc(
        &[
            "check",
            "pipelines/quickstart.recap",
            "--set",
            "rl_steps=twenty",
            "--format",
            "short",
        ],
        &repo(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = recapc(
        &[
            "check",
            "pipelines/quickstart.recap",
            "--set",
            "rl_steps=20",
        ],
        &repo(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_path_param_set_to_an_existing_file_is_not_missing() {
    // The default names a file that is not there; `--set` points at one that is, and only the
    // value in effect is checked.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "new.jsonl", "{\"q\": \"a\", \"a\": \"b\"}\n");
    write(
        dir.path(),
        "p.recap",
        "param data: path = \"old.jsonl\"
model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
source chat = jsonl(data) { prompt = \"{q}\", target = field(\"a\") }
objective learn = sft(chat)
train { steps = 1, prompts_per_step = 1, out = \"runs/p\" }
",
    );
    let o = recapc(&["check", "p.recap", "--format", "short"], dir.path());
    assert!(stdout(&o).contains("old.jsonl"), "{}", stdout(&o));
    let o = recapc(
        &[
            "check",
            "p.recap",
            "--set",
            "data=new.jsonl",
            "--format",
            "short",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stdout(&o).contains("missing_file"), "{}", stdout(&o));
}

#[test]
fn plan_prints_json_with_file_hashes() {
    let o = recapc(&["plan", "pipelines/quickstart.recap"], &repo());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan JSON");
    assert!(v["version"].as_u64().is_some());
    assert!(v["file_hashes"].is_array());
}

#[test]
fn plan_hashes_the_config_of_an_init_model() {
    use sha2::{Digest, Sha256};
    let o = recapc(&["plan", "pipelines/bench/gpu-qwen2.5-0.5b.recap"], &repo());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan JSON");
    let bytes = std::fs::read(repo().join("configs/qwen2.5-0.5b.json")).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hashes = v["file_hashes"].as_array().unwrap();
    let config = hashes
        .iter()
        .find(|h| h["path"] == "../../configs/qwen2.5-0.5b.json")
        .unwrap_or_else(|| panic!("the config is not hashed: {hashes:?}"));
    assert_eq!(config["sha256"], sha.as_str());
    assert_eq!(config["bytes"], bytes.len());
}

#[test]
fn plan_of_a_bad_file_exits_1_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.recap", BAD);
    let o = recapc(&["plan", "bad.recap"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("corect"));
}

#[test]
fn graph_formats() {
    for (format, marker) in [("dot", "digraph"), ("mermaid", "flowchart"), ("text", "")] {
        let o = recapc(
            &["graph", "pipelines/quickstart.recap", "--format", format],
            &repo(),
        );
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(marker), "{format}: {out}");
        assert!(
            out.contains("sharpen"),
            "{format} names the objectives: {out}"
        );
    }
}

#[test]
fn run_dry_run_prints_the_cost_and_failures_have_their_codes() {
    let o = recapc(
        &[
            "run",
            "pipelines/quickstart.recap",
            "--dry-run",
            "--progress",
            "quiet",
        ],
        &repo(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains("generated tokens per step"), "{out}");
    assert!(out.contains("estimated peak"), "{out}");
    // On the CPU under Linux the dry run measures the process's own memory and prints it.
    if cfg!(target_os = "linux") {
        assert!(out.contains("process (runtime, sources)"), "{out}");
    }
    // The table gives each stage's peak in the unit of the stage's summary line (MiB).
    let summaries: Vec<&str> = out
        .split("(peak ~")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .collect();
    let rows: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("estimated peak"))
        .map(|r| r.trim().to_string())
        .collect();
    assert!(!rows.is_empty(), "{out}");
    assert_eq!(summaries, rows, "{out}");
    // The quickstart's model is tiny: its two-prompt step fits and is timed.
    assert!(out.contains("measured dry step  "), "{out}");
    assert!(!out.contains("skipped"), "{out}");
    // A device this build cannot open is a run-time failure (3), named in the message.
    let o = recapc(
        &[
            "run",
            "pipelines/quickstart.recap",
            "--dry-run",
            "--device",
            "tpu:0",
        ],
        &repo(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("tpu:0"), "{}", stderr(&o));
    // A pipeline with errors never starts (1).
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.recap", BAD);
    let o = recapc(&["run", "bad.recap"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    // A saved plan that is not a plan is a usage/IO problem (2).
    write(dir.path(), "plan.json", "{\"version\": 99}");
    let o = recapc(&["run", "plan.json"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A run never takes over a directory that is not its own: a user's directory is refused with
/// exit code 2 and left as it was; `--overwrite` starts there anyway and keeps the user's files.
#[test]
fn run_refuses_a_directory_that_is_not_its_own_unless_told_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("pipelines/quickstart.recap");
    let pipeline = pipeline.display().to_string();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    write(&dir.path().join("out"), "metrics.jsonl", "my notes\n");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "run",
            pipeline.as_str(),
            "--set",
            "warmup_steps=1",
            "--set",
            "rl_steps=1",
            "--out",
            "out",
            "--progress",
            "quiet",
        ];
        a.extend_from_slice(extra);
        recapc(&a, dir.path())
    };
    let o = args(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    let notes = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    assert_eq!(notes, "my notes\n");
    write(&dir.path().join("out"), "keep.txt", "mine");
    let o = args(&["--overwrite"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    let kept = std::fs::read_to_string(dir.path().join("out/keep.txt")).unwrap();
    assert_eq!(kept, "mine");
    // The finished run is this directory's now: a new run is refused, naming the way to resume.
    let o = args(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
}

#[test]
fn templates_and_new() {
    let dir = tempfile::tempdir().unwrap();
    let o = recapc(&["templates"], dir.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("quickstart"));
    assert!(stdout(&o).contains("gsm8k-recap"));

    let o = recapc(&["new", "mine"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("mine.recap")).unwrap();
    assert!(text.contains("\"runs/mine\""));
    // The new file checks like its template.
    let o = recapc(&["check", "mine.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Never overwrite.
    std::fs::write(dir.path().join("mine.recap"), "keep me").unwrap();
    let o = recapc(&["new", "mine"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine.recap")).unwrap(),
        "keep me"
    );

    let o = recapc(
        &["new", "proj", "--dir", "--template", "gsm8k-recap"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.path().join("proj/main.recap").is_file());
    assert!(dir.path().join("proj/data/general.jsonl").is_file());
    let o = recapc(&["new", "proj", "--dir"], dir.path());
    assert_eq!(o.status.code(), Some(2));

    let o = recapc(&["new", "x", "--template", "nope"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("quickstart"));
    assert!(!dir.path().join("x.recap").exists());
}

#[test]
fn explain_codes() {
    let dir = tempfile::tempdir().unwrap();
    let o = recapc(&["explain"], dir.path());
    assert_eq!(o.status.code(), Some(0));
    let codes = recap_compiler::all_codes();
    assert!(!codes.is_empty(), "the compiler lists its codes");
    for code in &codes {
        assert!(stdout(&o).contains(code));
    }
    let o = recapc(&["explain", codes[0]], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).len() > codes[0].len() + 20, "a long text");
    // It shows its example: the wrong snippet and the right one, indented as code.
    let Some(recap_compiler::codes::Example::Pair { wrong, right }) =
        recap_compiler::explain_example(codes[0])
    else {
        panic!("{} has an example", codes[0]);
    };
    let wrong_at = stdout(&o).find(&format!("Wrong (gets {}):", codes[0]));
    let right_at = stdout(&o).find("Right:");
    assert!(wrong_at.is_some() && wrong_at < right_at, "{}", stdout(&o));
    for line in wrong.text.lines().chain(right.text.lines()) {
        assert!(stdout(&o).contains(&format!("    {line}")), "{line}");
    }

    // A typo of a real code gets a suggestion.
    let mut typo = codes[0].to_string();
    typo.insert(typo.len() - 1, 'z');
    let o = recapc(&["explain", &typo], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("did you mean `{}`?", codes[0])),
        "{}",
        stderr(&o)
    );
    // The suggestion is not buried under the list of every code.
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = recapc(&["explain", "zzzzzzzzzzzz"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`recapc explain` lists every code"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn completions_for_bash() {
    let dir = tempfile::tempdir().unwrap();
    let o = recapc(&["completions", "bash"], dir.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("recapc"));
    assert!(stdout(&o).contains("templates"));
}

#[test]
fn plan_hashes_the_data_files_relative_to_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("job/data")).unwrap();
    std::fs::write(
        dir.path().join("job/data/rows.jsonl"),
        "{\"q\":\"1\",\"t\":\"2\"}\n",
    )
    .unwrap();
    write(
        &dir.path().join("job"),
        "p.recap",
        "model policy = tiny(seed = 1)
source rows = jsonl(\"data/rows.jsonl\") { prompt = \"{q}\", target = field(\"t\") }
objective o = sft(rows)
train { steps = 5 }
",
    );
    // Started from the parent directory: paths still resolve against the pipeline's folder.
    let o = recapc(&["plan", "job/p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["file_hashes"][0]["path"], "data/rows.jsonl");
    assert_eq!(v["file_hashes"][0]["bytes"], 18);
    assert_eq!(
        v["file_hashes"][0]["sha256"],
        "9b3d20555fec774ccb479cafc1fad4b48c8d7facb919f280f70b666e45d1f91c"
    );
    let first = v["inputs_hash"].as_str().unwrap().to_string();
    assert_eq!(first.len(), 64);
    // The plan itself reads back without the CLI's extra fields getting in the way.
    let plan: recap_plan::Plan = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(plan.content_hash, v["content_hash"].as_str().unwrap());

    // Same plan, other data: the inputs hash changes, the plan's content hash does not.
    std::fs::write(
        dir.path().join("job/data/rows.jsonl"),
        "{\"q\":\"1\",\"t\":\"3\"}\n",
    )
    .unwrap();
    let o = recapc(&["plan", "job/p.recap"], dir.path());
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(w["inputs_hash"].as_str().unwrap(), first);
    assert_eq!(w["content_hash"], v["content_hash"]);
}

#[test]
fn check_holds_fields_against_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    // The fourth line has no `answer`; the third is not JSON.
    write(
        dir.path(),
        "data/qa.jsonl",
        "{\"question\": \"1+1\", \"answer\": \"2\"}\n\nnot json\n{\"question\": \"2+2\"}\n",
    );
    let pipeline = "\
model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
source qa = jsonl(\"data/qa.jsonl\") { prompt = \"{questoin}\", answer = field(\"answer\") }
verifier correct = exact()
objective rl = grpo(qa) { rewards = [correct] }
train { steps = 10 }
";
    // Started from another directory: the data path resolves against the pipeline's.
    let sub = dir.path().join("elsewhere");
    std::fs::create_dir(&sub).unwrap();
    write(dir.path(), "qa.recap", pipeline);
    let out = recapc(&["check", "--format", "short", "../qa.recap"], &sub);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("error[recap::validate::missing_data_field]: line 1 of `data/qa.jsonl` has no field `questoin`, which the prompt uses"),
        "{text}"
    );
    assert!(
        text.contains("line 4 of `data/qa.jsonl` has no field `answer`, which `answer` reads"),
        "{text}"
    );
    assert!(
        text.contains("error[recap::validate::bad_data_line]: line 3 of `data/qa.jsonl` is not a JSON object: not valid JSON: expected ident at line 1 column 2"),
        "{text}"
    );
    let human = recapc(&["check", "../qa.recap"], &sub);
    assert!(
        stderr(&human).contains("did you mean `question`?"),
        "{}",
        stderr(&human)
    );
}

/// A command that needs a plan says "has 1 error; fix it" for one error, "fix them" for more.
#[test]
fn the_error_count_line_agrees_in_number() {
    let dir = tempfile::tempdir().unwrap();
    let one = "model policy = tiny(layers = 2, hidden = 64, heads = 4)
source sums = arithmetic(count = 10)
verifier correct = numeric(expected = sums.answer)
objective rl = grpo(sums) { rewards = [corect] }
train { steps = 10 }
";
    std::fs::write(dir.path().join("one.recap"), one).unwrap();
    std::fs::write(dir.path().join("two.recap"), "let x = nope\n").unwrap();
    let o = recapc(&["plan", "one.recap"], dir.path());
    assert!(
        stderr(&o).contains("`one.recap` has 1 error; fix it and try again"),
        "{}",
        stderr(&o)
    );
    let o = recapc(&["plan", "two.recap"], dir.path());
    assert!(
        stderr(&o).contains("has 3 errors; fix them and try again"),
        "{}",
        stderr(&o)
    );
}
