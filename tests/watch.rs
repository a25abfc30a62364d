//! Watching and trying runs through the command line: the TensorBoard and CSV logs that
//! `train { log }` asks for, read back beside `metrics.jsonl`, and `recapc generate` and
//! `recapc eval` on the checkpoints of a run of the tiny model.

mod common;
#[path = "common/tfevents.rs"]
mod tfevents;

use std::path::Path;
use std::process::Command;

use common::{recapc, stderr, stdout};
use recap_runtime::engine::metrics_log::flatten;
use serde_json::Value;

/// A job of six quick steps on the tiny model with a probe every two steps (so the probe's
/// columns first appear at step 2), logging to TensorBoard and CSV.
const JOB: &str = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 64, seed = 1)
verifier correct = numeric(extract = first_number)
objective rl = grpo(sums) { rewards = [correct], group = 4, max_tokens = 3 }
objective learn = sft(sums)
eval held = probe(sums, rewards = [correct], every = 2, limit = 4, max_tokens = 4)
train {
  steps = 6
  prompts_per_step = 4
  optimizer = adamw(lr = 1e-3)
  seed = 3
  checkpoint = every(3)
  out = \"runs/job\"
  log = [tensorboard, csv]
}
";

fn run_job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.recap"), JOB).unwrap();
    let o = recapc(&["run", "job.recap", "--progress", "quiet"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    dir
}

fn records(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every number of every step of `metrics.jsonl` is a TensorBoard scalar of that step (as a
/// 32-bit float) and a cell of `metrics.csv`; every other leaf is a CSV cell too, and the probe's
/// columns, first seen at step 2, head their column in every row.
#[test]
fn tensorboard_and_csv_hold_every_metric_of_every_step() {
    let dir = run_job();
    let run = dir.path().join("runs/job");
    let recs = records(&run);
    assert_eq!(recs.len(), 6);

    let events = tfevents::read(&std::fs::read(tfevents::file(&run)).unwrap());
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let steps: Vec<i64> = events[1..].iter().map(|e| e.step).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);

    let mut csv = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[0], "step");
    // The names are the record's paths joined with `/`.
    for name in [
        "eval/held/correct",
        "keys/sums.correct/lambda",
        "rewards/sums.correct",
        "time/rollout",
        "loss",
    ] {
        assert!(header.iter().any(|h| h == name), "{name}: {header:?}");
    }
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);

    let mut numbers = 0;
    for ((rec, event), row) in recs.iter().zip(&events[1..]).zip(&rows) {
        let ls = flatten(rec);
        for (name, v) in &ls {
            let col = header.iter().position(|h| h == name).expect(name);
            let cell = &row[col];
            match v {
                Value::Null => assert_eq!(cell, "", "{name}"),
                Value::String(s) => assert_eq!(cell, s, "{name}"),
                other => assert_eq!(cell, other.to_string(), "{name}"),
            }
            if let (Some(x), true) = (v.as_f64(), name != "step") {
                let got = event.scalars.iter().find(|(t, _)| t == name);
                assert_eq!(got.map(|g| g.1), Some(x as f32), "{name} at {}", event.step);
                numbers += 1;
            }
        }
        // No scalar that the record does not hold.
        for (tag, _) in &event.scalars {
            assert!(ls.iter().any(|(n, _)| n == tag), "{tag}");
        }
    }
    assert!(numbers > 6 * 10, "{numbers} numbers");
    let probe_col = header
        .iter()
        .position(|h| h == "eval/held/correct")
        .unwrap();
    let probed: Vec<bool> = rows.iter().map(|r| !r[probe_col].is_empty()).collect();
    assert_eq!(probed, [false, true, false, true, false, true]);

    // TensorBoard's own reader, where it is installed, reads the same scalars.
    let python = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: TensorBoard's reader (python3 cannot import tensorboard)");
        return;
    }
    let script = "\
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
print(json.dumps({t: [[s.step, s.value] for s in acc.Scalars(t)] for t in acc.Tags()['scalars']}))
";
    let o = Command::new("python3")
        .args(["-c", script, &run.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let seen: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let loss: Vec<(i64, f32)> = seen["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
        .collect();
    let expected: Vec<(i64, f32)> = recs
        .iter()
        .map(|r| {
            (
                r["step"].as_i64().unwrap(),
                r["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(loss, expected);
    assert_eq!(
        seen["eval/held/correct"].as_array().unwrap().len(),
        3,
        "{seen}"
    );
    eprintln!(
        "TensorBoard's reader saw {} scalar tags",
        seen.as_object().unwrap().len()
    );
}

/// The metrics of a run without the fields that measure time.
fn untimed(run: &Path) -> Vec<Value> {
    records(run)
        .into_iter()
        .map(|mut v| {
            for k in ["seconds", "tokens_per_s", "time"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// Resumes the run of `job.recap` in `dir`; gives the exit code and stderr.
fn resume(dir: &Path) -> (Option<i32>, String) {
    let o = recapc(
        &[
            "run",
            "job.recap",
            "--progress",
            "quiet",
            "--resume",
            "runs/job",
        ],
        dir,
    );
    (o.status.code(), stderr(&o))
}

/// A finished run resumed with more steps (and a probe more) goes on from its last checkpoint,
/// showing what changed, and ends where a run of that many steps from the start ends.
#[test]
fn a_finished_run_resumed_with_more_steps_goes_on() {
    let dir = run_job();
    let longer = JOB.replace("steps = 6", "steps = 9").replace(
        "train {",
        "eval more = probe(sums, rewards = [correct], every = 3, limit = 2, max_tokens = 4)\ntrain {",
    );
    std::fs::write(dir.path().join("job.recap"), &longer).unwrap();
    let (code, err) = resume(dir.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("resuming from step 6 with a changed pipeline"),
        "{err}"
    );
    assert!(err.contains("stage `main`: train.steps 6 -> 9"), "{err}");
    assert!(err.contains("stage `main`: evals"), "{err}");
    let run = dir.path().join("runs/job");
    let steps: Vec<u64> = records(&run)
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=9).collect::<Vec<_>>());
    let events = tfevents::read(&std::fs::read(tfevents::file(&run)).unwrap());
    let event_steps: Vec<i64> = events[1..].iter().map(|e| e.step).collect();
    assert_eq!(event_steps, (1..=9).collect::<Vec<_>>());

    // The same nine steps from the start give the same metrics and weights; only the new
    // probe's results before the extension (at steps 3 and 6) are not in the extended run's.
    std::fs::write(dir.path().join("job.recap"), &longer).unwrap();
    let o = recapc(
        &[
            "run",
            "job.recap",
            "--progress",
            "quiet",
            "--out",
            "runs/whole",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let whole = dir.path().join("runs/whole");
    let unprobed = |r: &Path| -> Vec<Value> {
        untimed(r)
            .into_iter()
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("eval");
                v
            })
            .collect()
    };
    assert_eq!(unprobed(&run), unprobed(&whole));
    assert_eq!(records(&run)[8]["eval"], records(&whole)[8]["eval"]);
    assert!(
        std::fs::read(run.join("final/model.safetensors")).unwrap()
            == std::fs::read(whole.join("final/model.safetensors")).unwrap()
    );
}

/// A resume whose pipeline changes what the finished steps were trained with (a seed, the
/// data, the model) is refused with exit code 2, naming each change, and leaves the run as it
/// was.
#[test]
fn a_resume_that_would_alter_the_past_is_refused() {
    let dir = run_job();
    let run = dir.path().join("runs/job");
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let changed = JOB
        .replace("steps = 6", "steps = 9")
        .replace("seed = 3", "seed = 4")
        .replace("count = 64", "count = 65")
        .replace("hidden = 32", "hidden = 16");
    std::fs::write(dir.path().join("job.recap"), changed).unwrap();
    let (code, err) = resume(dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the pipeline changed what the run's 6 finished steps were trained with"),
        "{err}"
    );
    assert!(err.contains("stage `main`: train.seed 3 -> 4"), "{err}");
    assert!(err.contains("sources"), "{err}");
    assert!(err.contains("models"), "{err}");
    assert!(err.contains("start a new run with `--out DIR`"), "{err}");
    assert!(
        !err.contains("train.steps"),
        "an allowed change is no reason: {err}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
}

/// `recapc generate` completes a prompt with a run's final weights (named by the run, its
/// `final/`, or a checkpoint), the same text each time when greedy.
#[test]
fn generate_completes_a_prompt_with_a_checkpoint() {
    let dir = run_job();
    let gen = |ckpt: &str, extra: &[&str]| {
        let mut args = vec!["generate", ckpt, "--prompt", "1+2=", "--max-tokens", "4"];
        args.extend_from_slice(extra);
        let o = recapc(&args, dir.path());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).starts_with("finished: "), "{}", stderr(&o));
        stdout(&o)
    };
    let text = gen("runs/job/final", &[]);
    assert!(text.ends_with('\n') && text.len() > 1, "{text:?}");
    assert_eq!(
        gen("runs/job", &[]),
        text,
        "a run directory stands for its final/"
    );
    assert_eq!(gen("runs/job/final", &[]), text, "greedy decoding repeats");
    // The step-6 checkpoint holds the same weights as final/.
    assert_eq!(gen("runs/job/checkpoints/step-000006", &[]), text);
    let sampled = gen("runs/job/final", &["--temperature", "1.5", "--seed", "9"]);
    assert_eq!(
        gen("runs/job/final", &["--temperature", "1.5", "--seed", "9"]),
        sampled,
        "a seed repeats its samples"
    );
}

/// What is not a checkpoint, and a checkpoint without its tokenizer, are usage errors that say
/// so.
#[test]
fn generate_and_eval_name_what_is_wrong_with_a_checkpoint() {
    let dir = run_job();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let o = recapc(&["generate", "empty", "--prompt", "1+1="], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("empty is not a checkpoint: it has no config.json"),
        "{}",
        stderr(&o)
    );
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(dir.path().join("runs/job/final")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "tokenizer.json" {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let o = recapc(&["generate", "copy", "--prompt", "1+1="], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("copy has no tokenizer.json"),
        "{}",
        stderr(&o)
    );
    let o = recapc(&["eval", "empty", "job.recap"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not a checkpoint"), "{}", stderr(&o));
    let o = recapc(
        &["generate", "runs/job", "--prompt", "1", "--temperature=-1"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--temperature -1 is not a temperature"),
        "{}",
        stderr(&o)
    );
}

/// `recapc eval` runs the pipeline's probe on the final weights and scores it as the run's
/// last probe did on the same weights; `--out` writes the results as JSON.
#[test]
fn eval_runs_the_pipelines_probes_on_a_checkpoint() {
    let dir = run_job();
    let o = recapc(
        &["eval", "runs/job/final", "job.recap", "--out", "eval.json"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("[main] held on sums (4 rows): correct="),
        "{out}"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap())
            .unwrap();
    assert_eq!(doc["schema"], "recap-eval");
    let probe = &doc["probes"][0];
    assert_eq!(probe["probe"], "held");
    assert_eq!(probe["rows"], 4);
    let last = records(&dir.path().join("runs/job")).pop().unwrap();
    assert_eq!(probe["scores"]["correct"], last["eval"]["held"]["correct"]);
}

/// Unmounts its directory when dropped, so that a failing test leaves no mount behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A run whose disk fills up stops with "no space left on device" naming the file it was
/// writing, whichever file of the run directory that is. It needs a small tmpfs, which only a
/// privileged user can mount; elsewhere it is skipped (the writers' unit tests inject ENOSPC
/// through `/dev/full`).
#[test]
fn a_full_disk_stops_the_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    let _unmount = Unmount(small.clone());
    let job = JOB
        .replace("steps = 6", "steps = 5000")
        .replace("  checkpoint = every(3)\n", "")
        .replace("out = \"runs/job\"", "out = \"small/run\"");
    std::fs::write(dir.path().join("job.recap"), job).unwrap();
    let o = recapc(&["run", "job.recap", "--progress", "quiet"], dir.path());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no space left on device while writing ./small/run/"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
}
