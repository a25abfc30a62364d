//! `recapc run --ranks N`: the local launcher starts N ranks of `recapc run` with torchrun's
//! variables; they meet over loopback and run the job through `engine::run_with`.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{recapc, stderr, stdout, wait_for_steps};

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

/// A fresh directory holding the job as `job.recap`, run for `steps` steps.
fn job_of_steps(steps: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let job = JOB.replace("steps = 2", &format!("steps = {steps}"));
    std::fs::write(dir.path().join("job.recap"), job).unwrap();
    dir
}

/// Starts `recapc run job.recap --ranks 2` on the CPU in `dir` with `extra` arguments and
/// `env`, its standard error piped. The collectives' timeout is far longer than any bound these
/// tests allow, so a job that ends in time was ended by the launcher or by the ranks' own
/// errors, never by a rank giving up on its peer.
fn spawn_ranks(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(["run", "job.recap", "--device", "cpu", "--progress", "quiet"])
        .args(["--ranks", "2"])
        .args(extra)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RECAP_COLLECTIVE_TIMEOUT", "600")
        .env("RECAP_RENDEZVOUS_TIMEOUT", "600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the recapc binary starts")
}

/// The process id of rank `rank` of `launcher`: its child whose environment holds that RANK
/// (a child between fork and exec still has the launcher's environment, without RANK).
fn rank_pid(launcher: &Child, rank: usize) -> u32 {
    let want = format!("RANK={rank}");
    let start = Instant::now();
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let parent = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|p| p.trim().parse::<u32>().ok());
            if parent != Some(launcher.id()) {
                continue;
            }
            let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                return pid;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no rank {rank}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether process `pid` still exists (as more than a zombie waiting for its parent).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn send(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; `pid` is a process this test started (a rank or
    // its launcher), still running, since its parent has not yet reaped it.
    let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for the launcher to end, at most `limit`; gives its status, its standard error and
/// how long it took.
fn wait_at_most(mut launcher: Child, limit: Duration) -> (ExitStatus, String, Duration) {
    let start = Instant::now();
    while launcher.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = launcher.kill();
            let out = launcher.wait_with_output().unwrap();
            panic!(
                "the launcher did not end within {limit:?}: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    let out = launcher.wait_with_output().unwrap();
    (out.status, stderr(&out), took)
}

/// Kills the processes it holds when dropped, so that a failing test leaves no rank behind.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                // SAFETY: as in `send`; the rank is this test's grandchild.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// A long job on two ranks, once it has written three steps: its directory, its launcher and
/// the ranks' ids.
fn mid_run() -> (tempfile::TempDir, Child, [u32; 2]) {
    let dir = job_of_steps(100_000);
    let mut launcher = spawn_ranks(dir.path(), &[]);
    wait_for_steps(&mut launcher, &dir.path().join("runs/job"), 3);
    let ranks = [rank_pid(&launcher, 0), rank_pid(&launcher, 1)];
    (dir, launcher, ranks)
}

/// Rank 1 killed outright in the middle of the job while rank 0 waits for it in a collective:
/// rank 0 ends (its collective loses its peer), the launcher exits promptly with code 3 (a run
/// that failed: a rank killed by a signal has no code of its own) and names rank 1.
#[test]
fn a_rank_killed_mid_run_ends_the_job_naming_it() {
    let (_dir, launcher, [rank0, rank1]) = mid_run();
    let _reap = Reap(vec![rank0, rank1]);
    send(rank1, libc::SIGKILL);
    let (status, err, took) = wait_at_most(launcher, Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("rank 1 failed (killed by signal 9)"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert!(!alive(rank0), "rank 0 outlived its launcher");
}

/// A rank that cannot end on its own when another fails (here stopped by SIGSTOP, as a rank
/// would hang waiting for a peer that died before the rendezvous, or in a collective that does
/// not notice a lost peer) is killed once the grace of three seconds is over.
#[test]
fn a_rank_that_does_not_end_after_a_failure_is_killed_after_the_grace() {
    let (_dir, launcher, [rank0, rank1]) = mid_run();
    let _reap = Reap(vec![rank0, rank1]);
    send(rank0, libc::SIGSTOP);
    send(rank1, libc::SIGKILL);
    let (status, err, took) = wait_at_most(launcher, Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("rank 1 failed (killed by signal 9)"), "{err}");
    assert!(
        err.contains("rank 0 did not end within 3 s: killed"),
        "{err}"
    );
    assert!(took >= Duration::from_millis(2900), "no grace: {took:?}");
    assert!(!alive(rank0), "rank 0 outlived its launcher");
}

/// SIGINT and SIGTERM sent to the launcher reach both ranks, which stop after the same step at
/// one checkpoint (exit code 4, each rank saying how to resume); resumed with two ranks, the run
/// ends with the metrics and weights of an uninterrupted one.
#[test]
fn sigint_and_sigterm_stop_every_rank_at_one_checkpoint_that_resumes_to_the_same_end() {
    let dir = job_of_steps(500);
    let weights = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    let (status, err, _) = wait_at_most(
        spawn_ranks(dir.path(), &["--out", "full"]),
        Duration::from_secs(120),
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let full = dir.path().join("full");
    for (signal, out) in [(libc::SIGINT, "int"), (libc::SIGTERM, "term")] {
        let run = dir.path().join(out);
        let mut launcher = spawn_ranks(dir.path(), &["--out", out]);
        wait_for_steps(&mut launcher, &run, 5);
        send(launcher.id(), signal);
        let (status, err, _) = wait_at_most(launcher, Duration::from_secs(120));
        assert_eq!(status.code(), Some(4), "signal {signal}: {err}");
        let step = common::lines_written(&run);
        assert!(step < 500, "signal {signal} came too late to test anything");
        for rank in 0..2 {
            let said = format!("[rank {rank}] interrupted after step {step}: checkpoint");
            assert!(err.contains(&said), "signal {signal}: {err}");
        }
        assert!(
            run.join(format!("checkpoints/step-{step:06}")).is_dir(),
            "signal {signal}: no checkpoint of step {step}"
        );
        assert!(!run.join("final").exists());
        let run_arg = run.display().to_string();
        let (status, err, _) = wait_at_most(
            spawn_ranks(dir.path(), &["--resume", &run_arg]),
            Duration::from_secs(120),
        );
        assert_eq!(status.code(), Some(0), "signal {signal}, resumed: {err}");
        assert_eq!(
            common::metrics_without_timing(&run),
            common::metrics_without_timing(&full),
            "signal {signal}: metrics differ"
        );
        assert!(
            weights(&run) == weights(&full),
            "signal {signal}: weights differ"
        );
    }
}

/// Sends `signal` to `child` every 30 ms until it ends, at most a minute. The kernel merges a
/// signal into one still pending, so on a loaded machine two signals sent close together can
/// arrive as one: a test of what a second signal does repeats it.
fn signal_until_it_ends(child: &mut Child, signal: libc::c_int) {
    let start = Instant::now();
    loop {
        send(child.id(), signal);
        std::thread::sleep(Duration::from_millis(30));
        if child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "signal {signal} did not end the process"
        );
    }
}

/// A job of long steps (a wider model, more prompts) started on two ranks in a fresh directory,
/// returned early in its third step, just after the ranks have agreed to go on past the second:
/// so a signal sent now lands within a step, with most of the step still to run. Gives the
/// directory, the launcher and the ranks' ids.
fn early_in_a_long_step() -> (tempfile::TempDir, Child, Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let job = "\
model policy = tiny(layers = 4, hidden = 256, heads = 4, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 64, seed = 1)
objective learn = sft(sums)
train { steps = 1000, prompts_per_step = 128, out = \"runs/job\" }
";
    std::fs::write(dir.path().join("job.recap"), job).unwrap();
    let run = dir.path().join("runs/job");
    let mut launcher = spawn_ranks(dir.path(), &[]);
    wait_for_steps(&mut launcher, &run, 1);
    let ranks = vec![rank_pid(&launcher, 0), rank_pid(&launcher, 1)];
    wait_for_steps(&mut launcher, &run, 2);
    std::thread::sleep(Duration::from_millis(50));
    (dir, launcher, ranks)
}

/// Sends SIGINT to the launcher of [`early_in_a_long_step`] until it ends, after stopping rank 0
/// with SIGSTOP if `stop_rank_0`: the second signal lands within the step the first one let
/// finish, and two signals sent close together can arrive as one, hence the repeats. Gives the
/// launcher's status and standard error; checks that no rank outlived it and that the run did
/// not reach its end. (On a loaded machine the repeat can come only once the step is over and
/// its checkpoint is being written, atomically, so a checkpoint may exist.)
fn interrupt_twice(stop_rank_0: bool) -> (ExitStatus, String) {
    let (dir, mut launcher, ranks) = early_in_a_long_step();
    let _reap = Reap(ranks.clone());
    if stop_rank_0 {
        send(ranks[0], libc::SIGSTOP);
    }
    signal_until_it_ends(&mut launcher, libc::SIGINT);
    let (status, err, _) = wait_at_most(launcher, Duration::from_secs(1));
    let run = dir.path().join("runs/job");
    assert!(!run.join("final").exists());
    assert!(
        !ranks.iter().any(|p| alive(*p)),
        "a rank outlived its launcher: {err}"
    );
    (status, err)
}

/// A rank that fails while the ranks finish their step after a SIGINT is a failure like any
/// other: named, and the job ends with code 3 rather than waiting for the rank's peers.
#[test]
fn a_rank_that_fails_after_a_sigint_is_named() {
    let (_dir, launcher, ranks) = early_in_a_long_step();
    let _reap = Reap(ranks.clone());
    send(launcher.id(), libc::SIGINT);
    send(ranks[1], libc::SIGKILL);
    let (status, err, _) = wait_at_most(launcher, Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("rank 1 failed (killed by signal 9)"), "{err}");
    assert!(!alive(ranks[0]), "rank 0 outlived its launcher");
}

/// A second SIGINT to the launcher ends every rank at once, and the launcher exits with 130 as
/// a single run does.
#[test]
fn a_second_sigint_ends_every_rank_at_once() {
    let (status, err) = interrupt_twice(false);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("killed"), "{err}");
}

/// A rank that does not end at the second signal (here stopped by SIGSTOP) is killed once the
/// grace is over, and the launcher still exits with 130.
#[test]
fn a_rank_that_ignores_the_second_sigint_is_killed_after_the_grace() {
    let (status, err) = interrupt_twice(true);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("rank 0 did not end within 3 s: killed"),
        "{err}"
    );
}
