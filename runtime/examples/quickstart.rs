//! The quickstart job, built in code (the same shape as `pipelines/quickstart.recap`): an SFT
//! warm-up on generated addition and copying, then GRPO on addition with SFT replay of copying
//! under RECAP reweighting, on a ~100k-parameter model. Prints one line per step and the probes.
//!
//! `cargo run --release -p recap-runtime --example quickstart -- [OUT_DIR] [WARMUP_STEPS] [RL_STEPS]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use recap_runtime::engine::{presets, run, ProgressMode, RunOptions};

fn main() -> Result<()> {
    recap_runtime::alloc::tune_allocator();
    // The quickstart trains on the CPU.
    recap_runtime::alloc::keep_freed();
    recap_runtime::alloc::tune_threads();
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "runs/quickstart".into()));
    let warmup: u64 = args
        .next()
        .map_or(Ok(60), |s| s.parse())
        .context("WARMUP_STEPS")?;
    let rl: u64 = args
        .next()
        .map_or(Ok(100), |s| s.parse())
        .context("RL_STEPS")?;
    let plan = presets::quickstart(&out.display().to_string(), warmup, rl);
    let summary = run(
        &plan,
        &RunOptions {
            out: Some(out.clone()),
            // An example is rerun into the same directory while measuring; overwrite removes
            // only the files of the earlier run.
            overwrite: true,
            progress: ProgressMode::Plain,
            autograd: recap_runtime::engine::autograd_from_env(),
            ..RunOptions::default()
        },
    )?;
    println!(
        "{} steps in {:.1} s; run directory {}",
        summary.steps,
        summary.seconds,
        out.display()
    );
    Ok(())
}
