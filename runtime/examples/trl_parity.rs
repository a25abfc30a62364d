//! The peer benchmark of DESIGN.md §8: takes an HF directory holding `train.jsonl`
//! (`../shared/bench/fixture-tiny`), compiles `pipelines/bench/trl-parity.recap` (the one
//! definition of TRL's GRPO workload; recap-compiler is a dev-dependency, so the runtime never
//! links it) with that directory, runs it for 20 steps through the engine and prints median seconds per step after 2 warm-up steps, rollout seconds, generated
//! tokens per second, peak RSS and the share of a step spent outside tensor work, verifiers and
//! sampling (the executor's overhead).
//!
//! `cargo run --release -p recap-runtime --example trl_parity -- /work/shared/bench/fixture-tiny [steps]`

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use recap_compiler::{check, CheckOptions, Host};
use recap_runtime::engine::{run, ProgressMode, RunOptions};
use serde_json::Value;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// A `VmHWM`-style line of /proc/self/status in MB.
fn status_mb(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1000.0)
}

/// Paths as the compiler sees them: relative to the pipeline's directory.
struct Fs(PathBuf);

impl Host for Fs {
    fn file_exists(&self, path: &str) -> bool {
        self.0.join(path).exists()
    }
}

fn main() -> Result<()> {
    recap_runtime::alloc::tune_allocator();
    recap_runtime::alloc::tune_threads();
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        bail!("usage: trl_parity FIXTURE_DIR [STEPS] [DEVICE]");
    };
    let steps: u64 = match args.next() {
        Some(s) => s.parse().context("STEPS must be a number")?,
        None => 20,
    };
    let device = args.next().unwrap_or_else(|| "cpu".into());
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("fixture {dir}"))?;
    let data = dir.join("train.jsonl");
    let out = std::env::temp_dir().join(format!("recap-trl-parity-{}", std::process::id()));
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipelines/bench/trl-parity.recap");
    let base = file
        .parent()
        .context("the pipeline has a directory")?
        .to_path_buf();
    let source = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    let compiled = check(
        &file.display().to_string(),
        &source,
        &CheckOptions {
            overrides: vec![
                ("fixture".into(), dir.display().to_string()),
                ("data".into(), data.display().to_string()),
                ("steps".into(), steps.to_string()),
            ],
            missing_files_are_errors: true,
        },
        &Fs(base.clone()),
    );
    for d in &compiled.diagnostics {
        eprintln!("{:?}: {} ({})", d.severity, d.message, d.code);
    }
    let plan = compiled
        .plan
        .ok_or_else(|| anyhow!("{} does not compile", file.display()))?;
    let summary = run(
        &plan,
        &RunOptions {
            base_dir: base,
            device,
            out: Some(out.clone()),
            progress: ProgressMode::Quiet,
            samples_every: 0,
            autograd: recap_runtime::engine::autograd_from_env(),
            ..RunOptions::default()
        },
    )?;
    let _ = std::fs::remove_dir_all(&out);
    let timed: Vec<&Value> = summary.metrics.iter().skip(2).collect();
    if timed.is_empty() {
        bail!("need more than 2 steps to time");
    }
    let f = |v: &Value, path: &[&str]| -> f64 {
        let mut v = v;
        for p in path {
            v = &v[*p];
        }
        v.as_f64().unwrap_or(f64::NAN)
    };
    let step_s = median(timed.iter().map(|m| f(m, &["seconds"])).collect());
    let rollout_s = median(timed.iter().map(|m| f(m, &["time", "rollout"])).collect());
    let tensor_s = median(timed.iter().map(|m| f(m, &["time", "tensor"])).collect());
    let optim_s = median(timed.iter().map(|m| f(m, &["time", "optimizer"])).collect());
    let verify_s = median(timed.iter().map(|m| f(m, &["time", "verify"])).collect());
    let overhead: Vec<f64> = timed
        .iter()
        .map(|m| f(m, &["time", "overhead"]) / f(m, &["seconds"]))
        .collect();
    let gen: f64 = timed.iter().map(|m| f(m, &["generated_tokens"])).sum();
    let roll_total: f64 = timed.iter().map(|m| f(m, &["time", "rollout"])).sum();
    let first = &summary.metrics[0];
    let last = summary.metrics.last().unwrap_or(first);
    println!(
        "recap trl-parity on {} ({} steps, {} timed)",
        dir.display(),
        summary.metrics.len(),
        timed.len()
    );
    println!("median step        {step_s:.4} s   (TRL 1.16: 0.195 s)");
    println!("median rollout     {rollout_s:.4} s   (TRL: 0.076 s)");
    println!("median tensor work {tensor_s:.4} s (log-probs, reference, loss, backward)");
    println!("median optimizer   {optim_s:.4} s");
    println!("median verifiers   {verify_s:.5} s");
    println!(
        "generated tokens/s {:.0} (per rollout second)",
        gen / roll_total.max(1e-9)
    );
    println!(
        "executor overhead  {:.2} % of a step (median)",
        100.0 * median(overhead)
    );
    match status_mb("VmHWM:") {
        Some(mb) => println!("peak RSS           {mb:.0} MB   (TRL: 1410 MB)"),
        None => println!("peak RSS           unknown (no /proc/self/status)"),
    }
    println!(
        "reward mean        {:.3} (step 1) -> {:.3} (step {})",
        f(first, &["reward_mean"]),
        f(last, &["reward_mean"]),
        summary.metrics.len()
    );
    Ok(())
}
