//! Compiles a `.recap` file with recap-compiler (a dev-dependency of the runtime, so the
//! runtime itself never links the compiler) and runs it with the engine: what `recapc run`
//! does, for trying the engine before the CLI wiring lands.
//!
//! `cargo run --release -p recap-runtime --example run_pipeline -- FILE [key=value ...]`
//! Relative paths of the pipeline resolve against the current directory.

use anyhow::{anyhow, bail, Context, Result};
use recap_compiler::{check, CheckOptions, Host};
use recap_runtime::engine::{run, ProgressMode, RunOptions};

struct Fs;

impl Host for Fs {
    fn file_exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }
}

fn main() -> Result<()> {
    recap_runtime::alloc::tune_allocator();
    recap_runtime::alloc::tune_threads();
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        bail!("usage: run_pipeline FILE [key=value ...]");
    };
    let overrides = args
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("override `{a}` is not key=value"))
        })
        .collect::<Result<Vec<_>>>()?;
    let source = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let out = check(
        &file,
        &source,
        &CheckOptions {
            overrides,
            missing_files_are_errors: true,
        },
        &Fs,
    );
    for d in &out.diagnostics {
        eprintln!("{:?}: {} ({})", d.severity, d.message, d.code);
    }
    let plan = out.plan.ok_or_else(|| anyhow!("{file} does not compile"))?;
    let summary = run(
        &plan,
        &RunOptions {
            progress: ProgressMode::Plain,
            // An example is rerun into the same directory while measuring; overwrite removes
            // only the files of the earlier run.
            overwrite: true,
            autograd: recap_runtime::engine::autograd_from_env(),
            ..RunOptions::default()
        },
    )?;
    println!(
        "{} steps in {:.1} s; run directory {}",
        summary.steps,
        summary.seconds,
        summary
            .run_dir
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}
