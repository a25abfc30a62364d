//! What the CLI test files share: running the built `recapc` binary and reading its streams.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs `recapc ARGS` in `dir`, without colour.
pub fn recapc(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the recapc binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The lines of a run's `metrics.jsonl` without the fields that measure time, which differ
/// between two runs of one job.
#[allow(dead_code)] // Used by the files that compare runs, not by every file including this.
pub fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            for k in ["seconds", "tokens_per_s", "time"] {
                m.remove(k);
            }
            v
        })
        .collect()
}

/// Lines of `metrics.jsonl` in `run`, 0 while it does not exist.
#[allow(dead_code)] // Used by the files that stop runs midway, not by every file including this.
pub fn lines_written(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits until the run `child` writes (alone or as the launcher of its ranks) has written `n`
/// metrics lines; panics if it ends first.
#[allow(dead_code)] // Used by the files that stop runs midway, not by every file including this.
pub fn wait_for_steps(child: &mut Child, run: &Path, n: usize) {
    let start = Instant::now();
    while lines_written(run) < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {n}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
}
