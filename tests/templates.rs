//! The templates of `recapc new`, end to end: each is written into an empty directory, checks
//! clean, and runs a few steps on its shipped data and seeded `tiny` model, leaving checkpoints
//! and metrics. Also: the files a template ships are never overwritten, and the code template's
//! reference solutions pass its grader (so a zero reward in a run is the model's, not the data's).

mod common;

use std::path::Path;

use serde_json::Value;

/// The shortening every run here uses: probes and checkpoints every 2 steps, so a few steps
/// reach both and the check has nothing to warn about.
const SHORT: [&str; 4] = ["--set", "probe_every=2", "--set", "save_every=2"];

/// `recapc new mine --template NAME` in a fresh directory, then `recapc check` (with and
/// without the shortening), both without a single diagnostic.
fn new_and_check(template: &str, sets: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let new = common::recapc(&["new", "mine", "--template", template], dir.path());
    assert!(new.status.success(), "{}", common::stderr(&new));
    let text = std::fs::read_to_string(dir.path().join("mine.recap")).unwrap();
    assert!(text.contains("\"runs/mine\""), "{text}");
    let mut args = vec!["check", "mine.recap"];
    for with_sets in [false, true] {
        if with_sets {
            args.extend(SHORT);
            args.extend(sets);
        }
        let check = common::recapc(&args, dir.path());
        let err = common::stderr(&check);
        assert!(check.status.success(), "{err}");
        assert!(err.contains("no problems"), "{template}: {err}");
    }
    dir
}

/// `recapc run mine.recap` shortened by `sets`; the run's metrics records. The run must end
/// clean, with no diagnostic, a final model and a checkpoint at each stage's end.
fn run(dir: &Path, sets: &[&str], extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["run", "mine.recap", "--progress", "quiet"];
    args.extend(SHORT);
    args.extend(sets);
    args.extend(extra);
    let run = common::recapc(&args, dir);
    let err = common::stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(!err.contains("warning["), "{err}");
    let out = dir.join("runs/mine");
    assert!(out.join("final/model.safetensors").is_file());
    let checkpoints = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert!(checkpoints >= 1, "no checkpoint in {}", out.display());
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The probe scores of the last record, by probe name and reward.
fn last_eval(m: &[Value]) -> &serde_json::Map<String, Value> {
    m.last().unwrap()["eval"]
        .as_object()
        .expect("the last step probes")
}

fn python() -> bool {
    let ok = Path::new("/usr/bin/python3").is_file();
    if !ok {
        println!("SKIPPED: no /usr/bin/python3");
    }
    ok
}

/// `recapc templates` lists each template with its description, and so does `recapc new --list`.
#[test]
fn templates_lists_the_jobs() {
    let o = common::recapc(&["templates"], Path::new("."));
    let out = common::stdout(&o);
    let list = common::recapc(&["new", "--list"], Path::new("."));
    assert!(list.status.success(), "{}", common::stderr(&list));
    assert_eq!(common::stdout(&list), out);
    // A name is needed unless listing.
    assert_eq!(
        common::recapc(&["new"], Path::new(".")).status.code(),
        Some(2)
    );
    for line in [
        "gsm8k        GSM8K-style maths: GRPO on word problems",
        "code-exec    Code with the exec grader",
        "gsm8k-recap  Multi-domain RECAP",
    ] {
        assert!(out.contains(line), "{out}");
    }
}

#[test]
fn gsm8k_runs_as_written() {
    let sets = ["--set", "warmup_steps=2", "--set", "rl_steps=2"];
    let dir = new_and_check("gsm8k", &sets);
    assert!(dir.path().join("data/gsm8k-train.jsonl").is_file());
    let m = run(dir.path(), &sets, &[]);
    assert_eq!(m.len(), 4);
    let rl = &m[3];
    assert_eq!(rl["stage"], "rl");
    for key in ["problems.correct", "problems.format"] {
        let r = rl["rewards"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r), "{key}: {rl}");
    }
    let probe = &last_eval(&m)["rl_probe"];
    assert!(
        probe["correct"].is_number() && probe["answer_line"].is_number(),
        "{probe}"
    );
}

#[test]
fn code_exec_runs_as_written() {
    let sets = ["--set", "warmup_steps=2", "--set", "rl_steps=2"];
    let dir = new_and_check("code-exec", &sets);
    assert!(dir.path().join("graders/code_exec.py").is_file());
    if !python() {
        return;
    }
    let m = run(dir.path(), &sets, &["--allow-exec"]);
    assert_eq!(m.len(), 4);
    for rec in &m[2..] {
        // The grader ran and answered for every completion.
        assert_eq!(rec["verifier_failures"], 0, "{rec}");
        assert!(rec["rewards"]["tasks.passes"].is_number(), "{rec}");
    }
    assert!(last_eval(&m)["tests_probe"]["passes"].is_number());
}

#[test]
fn multi_domain_recap_runs_as_written() {
    let sets = [
        "--set",
        "warmup_steps=3",
        "--set",
        "rl_steps=4",
        "--set",
        "window=2",
    ];
    let dir = new_and_check("gsm8k-recap", &sets);
    let m = run(dir.path(), &sets, &[]);
    assert_eq!(m.len(), 7);
    // RECAP weighs five keys: each RL domain's two reward terms and the replay source.
    let keys = m.last().unwrap()["keys"].as_object().unwrap();
    let mut names: Vec<&str> = keys.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "general",
            "lists.list_format",
            "lists.sorted",
            "math.correct",
            "math.format"
        ]
    );
    for (key, v) in keys {
        assert!(v["lambda"].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let eval = last_eval(&m);
    for probe in ["math_probe", "sort_probe", "general_probe"] {
        assert!(eval.contains_key(probe), "{eval:?}");
    }
}

/// Every reference solution of the code template passes its tests under the grader that
/// `recapc new` writes, and a wrong one fails them.
#[test]
fn code_exec_solutions_pass_the_shipped_grader() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let new = common::recapc(&["new", "mine", "--template", "code-exec"], dir.path());
    assert!(new.status.success(), "{}", common::stderr(&new));
    let mut input = String::new();
    let mut rows = 0;
    for file in ["data/code-train.jsonl", "data/code-test.jsonl"] {
        for line in std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .lines()
        {
            let row: Value = serde_json::from_str(line).unwrap();
            for completion in [row["solution"].as_str().unwrap(), "def f(x): return 0"] {
                let item = serde_json::json!({"id": input.lines().count(), "completion": completion, "fields": row});
                input.push_str(&format!("{item}\n"));
            }
            rows += 1;
        }
    }
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["graders/code_exec.py"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut rewards = vec![None; 2 * rows];
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        rewards[r["id"].as_u64().unwrap() as usize] = r["reward"].as_f64();
    }
    for (id, reward) in rewards.iter().enumerate() {
        let want = if id % 2 == 0 { 1.0 } else { 0.0 };
        assert_eq!(*reward, Some(want), "item {id}");
    }
}

/// Two pipelines from one template share its files; a file changed since is never overwritten,
/// and a refusal leaves the directory as it was.
#[test]
fn new_never_overwrites_template_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let new =
        |name: &str, template: &str| common::recapc(&["new", name, "--template", template], d);
    let first = new("a", "gsm8k");
    assert!(first.status.success(), "{}", common::stderr(&first));
    assert!(common::stderr(&first).contains("data/gsm8k-train.jsonl"));
    // The same files again: kept, and said so.
    let second = new("b", "gsm8k-recap");
    assert!(second.status.success(), "{}", common::stderr(&second));
    let err = common::stderr(&second);
    assert!(err.contains("with data/general.jsonl"), "{err}");
    assert!(err.contains("kept"), "{err}");
    assert!(d.join("b.recap").is_file());

    // A user's own rows are never overwritten, and nothing else is written either.
    let train = d.join("data/gsm8k-train.jsonl");
    std::fs::write(&train, "{\"question\": \"mine\", \"answer\": \"1\"}\n").unwrap();
    let refused = new("c", "gsm8k");
    assert_eq!(refused.status.code(), Some(2));
    assert!(common::stderr(&refused).contains("other contents"));
    assert!(!d.join("c.recap").exists());
    assert!(std::fs::read_to_string(&train).unwrap().contains("mine"));

    // A failure part-way (a file where the grader's folder should be) undoes the pipeline
    // and the files written before it.
    std::fs::write(d.join("graders"), "not a folder").unwrap();
    let failed = new("e", "code-exec");
    assert_eq!(failed.status.code(), Some(2));
    assert!(common::stderr(&failed).contains("graders"));
    assert!(!d.join("e.recap").exists());
    assert!(!d.join("data/code-train.jsonl").exists());

    // An existing pipeline file is refused before any template file is written.
    std::fs::write(d.join("f.recap"), "keep me").unwrap();
    std::fs::remove_file(d.join("graders")).unwrap();
    let exists = new("f", "code-exec");
    assert_eq!(exists.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(d.join("f.recap")).unwrap(),
        "keep me"
    );
    assert!(!d.join("graders").exists());
}
