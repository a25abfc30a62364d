//! `recapc run --ranks N`: the local launcher starts N ranks of `recapc run` with torchrun's
//! variables; they meet over loopback and run the job through `engine::run_with`.

mod common;

use std::process::{Command, Output};

use common::{recapc, stderr, stdout};

/// A few quick steps on the tiny model. The random model earns no reward, so GRPO alone
/// would leave the weights as they were; the SFT replay gives every step a gradient.
const JOB: &str = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 16, seed = 1)
verifier correct = numeric(extract = first_number)
objective rl = grpo(sums) { rewards = [correct], group = 2, max_tokens = 3 }
objective replay = sft(sums)
train {
  steps = 2
  prompts_per_step = 4
  optimizer = adamw(lr = 1e-3)
  seed = 3
  out = \"runs/job\"
}
";

/// A fresh directory holding the job as `job.recap`.
fn job_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.recap"), JOB).unwrap();
    dir
}

/// Runs `recapc ARGS` in a fresh job directory.
fn run_job(args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = job_dir();
    let out = recapc(args, dir.path());
    (dir, out)
}

/// Runs the job on the CPU, quietly, with `extra` arguments.
fn run_cpu(extra: &[&str]) -> (tempfile::TempDir, Output) {
    let args = ["run", "job.recap", "--device", "cpu", "--progress", "quiet"];
    run_job(&[&args[..], extra].concat())
}

fn run_ranks(ranks: &str) -> (tempfile::TempDir, Output) {
    run_cpu(&["--ranks", ranks])
}

/// Two local ranks meet over loopback and train the job data-parallel; their steps equal, bit
/// for bit, those of one process that cuts each batch into the same two shards (the TCP
/// collective sums in rank order, as one process sums its shards): the same metrics and the
/// same final weights. Only rank 0 writes the run directory.
#[test]
fn two_local_ranks_train_as_one_process_of_two_shards() {
    let (ranked, out) = run_ranks("2");
    assert!(out.status.success(), "{}", stderr(&out));
    let (single, out) = run_cpu(&["--shards", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (
        ranked.path().join("runs/job"),
        single.path().join("runs/job"),
    );
    let metrics = common::metrics_without_timing(&a);
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics, common::metrics_without_timing(&b));
    let weights =
        |run: &std::path::Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "the final weights differ");
    // A different shard count samples other completions, so the comparison can fail.
    let (other, out) = run_cpu(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(weights(&other.path().join("runs/job")) != weights(&a));
}

#[test]
fn one_local_rank_is_a_plain_run() {
    let (dir, out) = run_ranks("1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("runs/job/metrics.jsonl").is_file());
    // Rank 0's messages come through with its prefix.
    assert!(
        stderr(&out).contains("[rank 0] finished 2 steps"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn rank_zeros_standard_output_comes_through_unprefixed() {
    let (_dir, out) = run_job(&["run", "job.recap", "--ranks", "1", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The dry run's cost table, as a single process prints it.
    let text = stdout(&out);
    assert!(!text.is_empty() && !text.contains("[rank"), "{text}");
}

#[test]
fn ranks_refuse_one_device_for_all() {
    let (_dir, out) = run_job(&["run", "job.recap", "--gpus", "2", "--device", "cuda:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("with --ranks, pass `--device cuda` (rank i uses cuda:i) or `--device cpu`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_broken_launcher_environment_is_a_usage_error() {
    let dir = job_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(["run", "job.recap", "--progress", "quiet"])
        .current_dir(dir.path())
        .env("RANK", "1")
        .env("WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "the launcher's environment is not usable: the torchrun variables give rank 1 in a world of 1 ranks"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_rank_whose_launcher_is_killed_stops_at_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("job.recap"),
        JOB.replace("steps = 2", "steps = 100000"),
    )
    .unwrap();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(["run", "job.recap", "--ranks", "1", "--progress", "quiet"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("runs/job/metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() > 2) {
        assert!(started.elapsed().as_secs() < 120, "the rank never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGKILL: the launcher cannot forward anything; the kernel tells the rank.
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let checkpoints = dir.path().join("runs/job/checkpoints");
    while !std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            started.elapsed().as_secs() < 120,
            "the orphaned rank wrote no checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A dry run with `--shards N` runs in one process and estimates memory per rank of N.
#[test]
fn a_dry_run_of_n_shards_estimates_per_rank_in_one_process() {
    let (dir, out) = run_cpu(&["--dry-run", "--shards", "4"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("per rank of 4"), "{all}");
    assert!(!all.contains("[rank "), "{all}");
    assert!(!dir.path().join("runs").exists());
}
