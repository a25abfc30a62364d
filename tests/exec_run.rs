//! `recapc run` with an `exec(...)` verifier, end to end on the tiny model: refused without
//! `--allow-exec` (while `check` and `plan` need no flag), trained with it, and a grader that
//! crashes costs its batches their rewards, reported in the metrics, never the run.

mod common;

use std::path::Path;

use serde_json::Value;

/// A GRPO job on generated sums whose reward is the grader `grader.py`.
const JOB: &str = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 16, seed = 1)
verifier graded = exec(command = [\"python3\", \"grader.py\"], timeout = 20, batch = 8)
objective rl = grpo(sums) { rewards = [graded], group = 4, max_tokens = 3 }
train { steps = 2, prompts_per_step = 2, seed = 3, out = \"runs/job\" }
";

/// Reward 1 for a completion holding a digit, else 0; it also checks that it was given the
/// row's expected answer among the fields.
const GRADER: &str = r#"
import json, sys
for line in sys.stdin:
    o = json.loads(line)
    assert "answer" in o["fields"]
    reward = 1.0 if any(c.isdigit() for c in o["completion"]) else 0.0
    print(json.dumps({"id": o["id"], "reward": reward}))
"#;

fn python() -> bool {
    let ok = Path::new("/usr/bin/python3").is_file();
    if !ok {
        println!("SKIPPED: no /usr/bin/python3");
    }
    ok
}

fn job(grader: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.recap"), JOB).unwrap();
    std::fs::write(dir.path().join("grader.py"), grader).unwrap();
    dir
}

/// Runs the job with `--allow-exec`, which must succeed; its two metrics records.
fn run_allowed(dir: &Path) -> Vec<Value> {
    let args = ["run", "job.recap", "--progress", "quiet", "--allow-exec"];
    let run = common::recapc(&args, dir);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let m = metrics(dir);
    assert_eq!(m.len(), 2);
    m
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("runs/job/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn exec_verifiers_need_allow_exec_to_run_but_not_to_check() {
    let dir = job(GRADER);
    let check = common::recapc(&["check", "job.recap"], dir.path());
    assert!(check.status.success(), "{}", common::stderr(&check));
    let plan = common::recapc(&["plan", "job.recap"], dir.path());
    assert!(plan.status.success(), "{}", common::stderr(&plan));
    assert!(common::stdout(&plan).contains("\"kind\": \"exec\""));
    let run = common::recapc(&["run", "job.recap", "--progress", "quiet"], dir.path());
    assert_eq!(run.status.code(), Some(2), "{}", common::stderr(&run));
    let err = common::stderr(&run);
    assert!(err.contains("verifier `graded`"), "{err}");
    assert!(err.contains("--allow-exec"), "{err}");
    // Refused before anything is written.
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn a_run_trains_on_an_exec_grader() {
    if !python() {
        return;
    }
    let dir = job(GRADER);
    let m = run_allowed(dir.path());
    for rec in &m {
        assert!(rec.get("verifier_errors").is_none(), "{rec}");
        let r = rec["rewards"]["sums.graded"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r), "{rec}");
    }
}

#[test]
fn a_crashing_grader_costs_rewards_not_the_run() {
    if !python() {
        return;
    }
    let dir = job("import sys\nsys.stderr.write('grader bug\\n')\nsys.exit(3)\n");
    let m = run_allowed(dir.path());
    for rec in &m {
        assert_eq!(rec["rewards"]["sums.graded"].as_f64(), Some(0.0), "{rec}");
        let errors = rec["verifier_errors"].as_array().unwrap();
        // One report per batch: 8 completions per step in batches of 8.
        assert_eq!(errors.len(), 1, "{rec}");
        let e = errors[0].as_str().unwrap();
        assert!(
            e.contains("exited with status 3") && e.contains("grader bug"),
            "{e}"
        );
    }
}
