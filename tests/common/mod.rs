//! What the CLI test files share: running the built `recapc` binary and reading its streams.

use std::path::Path;
use std::process::{Command, Output};

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
