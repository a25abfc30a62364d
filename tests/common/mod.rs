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
