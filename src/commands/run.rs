//! `recapc run FILE|PLAN.json`: takes a pipeline (compiled here with missing files as errors, since
//! a run cannot start without its data) or a plan JSON saved by `recapc plan` (run without the
//! compiler), and executes it with the candle runtime: gives a run directory with the plan,
//! metrics, samples and checkpoints, or a dry run's cost estimate. Exit code 3 means the job
//! failed while running (a model that does not load, a device that cannot be opened), as
//! opposed to 1 (the pipeline is wrong) and 2 (usage or IO, including a run directory that is
//! not empty and not this run's without `--overwrite`, or that another run holds). SIGINT or
//! SIGTERM asks the run to stop: the step under way finishes, a checkpoint is written, and the
//! run exits with code 4 and a line saying how to resume; a second signal ends the process at
//! once (130 after SIGINT, 143 after SIGTERM, as a shell reports a death by those signals).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use recap_runtime::engine::{self, ProgressMode, RunOptions};

use super::{compile_for_plan, error_line};
use crate::cli::{ProgressArg, RunArgs};
use crate::exit::ExitCode;
use crate::report;

pub fn run(args: &RunArgs) -> ExitCode {
    let is_plan_json = args.file.extension().is_some_and(|e| e == "json");
    let plan = if is_plan_json {
        match read_plan(&args.file) {
            Ok(plan) => plan,
            Err(message) => {
                error_line(&message);
                return ExitCode::Usage;
            }
        }
    } else {
        match compile_for_plan(&args.file, args.set.pairs(), true) {
            Ok((_compiled, plan)) => plan,
            Err(code) => return code,
        }
    };
    if is_plan_json && !args.set.overrides.is_empty() {
        error_line("--set applies to pipelines, not to a saved plan: its params are already fixed");
        return ExitCode::Usage;
    }
    // Relative paths in the plan (data, model directories, `out`) are relative to the pipeline
    // file, as the checker resolved them.
    let base_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let options = RunOptions {
        device: args.device.clone(),
        out: args.out.clone(),
        resume: args.resume.clone(),
        overwrite: args.overwrite,
        dry_run: args.dry_run,
        progress: match args.progress {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Bar => ProgressMode::Bar,
            ProgressArg::Plain => ProgressMode::Plain,
            ProgressArg::Quiet => ProgressMode::Quiet,
        },
        base_dir,
        samples_every: args.samples_every,
        autograd: engine::autograd_from_env(),
        ..RunOptions::default()
    };
    let options = if args.dry_run {
        options
    } else {
        match stop_on_signals() {
            Ok(stop) => RunOptions {
                stop: Some(stop),
                ..options
            },
            Err(e) => {
                error_line(&format!("cannot handle SIGINT and SIGTERM: {e}"));
                return ExitCode::RunFailed;
            }
        }
    };
    match engine::run(&plan, &options) {
        Ok(summary) if summary.interrupted.is_some() => {
            let checkpoint = summary.interrupted.as_deref().unwrap_or(Path::new("?"));
            let dir = summary.run_dir.as_deref().unwrap_or(Path::new("?"));
            eprintln!(
                "interrupted after step {}: checkpoint {}; continue with `recapc run {} --resume {}`",
                summary.steps,
                checkpoint.display(),
                args.file.display(),
                dir.display()
            );
            ExitCode::Interrupted
        }
        Ok(summary) => {
            if args.dry_run {
                print_costs(&summary.costs);
            } else if let Some(dir) = &summary.run_dir {
                eprintln!(
                    "finished {} steps in {:.1} s; run directory: {}",
                    summary.steps,
                    summary.seconds,
                    dir.display()
                );
                print_summary(dir);
            }
            ExitCode::Success
        }
        // A run directory the run may not use is a usage problem, not a failed run.
        Err(e) if e.downcast_ref::<engine::RunDirError>().is_some() => {
            error_line(&format!("{e:#}"));
            ExitCode::Usage
        }
        Err(e) => {
            error_line(&format!("the run failed: {e:#}"));
            ExitCode::RunFailed
        }
    }
}

/// Installs the run's SIGINT and SIGTERM handlers: the first signal sets the flag the engine
/// reads after each step; a second one, with the flag already set, exits at once with 128 plus
/// the signal's number.
fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The conditional exit is registered first, so that it sees the flag as it was before
        // this signal: unset on the first signal, set on the second.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Prints the run's summary (the numbers `recapc report` puts in summary.md), read back from
/// the whole metrics.jsonl so that a resumed run is summarised from its first step. The run has
/// succeeded by now, so a summary that cannot be read is a warning, not a failure.
fn print_summary(dir: &Path) {
    match report::load_run(dir) {
        Ok(run) => eprint!(
            "{}",
            report::summary::terminal(&report::summary::summarise(&run))
        ),
        Err(e) => eprintln!("warning: no summary: {e}"),
    }
}

fn read_plan(path: &Path) -> Result<recap_plan::Plan, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read plan `{}`: {e}", path.display()))?;
    recap_plan::Plan::from_json(&text)
        .map_err(|e| format!("`{}` is not a usable plan: {e}", path.display()))
}

fn print_costs(costs: &[engine::CostEstimate]) {
    const MB: f64 = 1024.0 * 1024.0;
    println!(
        "dry run: every node built, data and models loaded, one step on two prompts per stage"
    );
    for c in costs {
        println!("stage {}:", c.stage);
        println!(
            "  generated tokens per step (at most) {:>12}",
            c.generated_tokens
        );
        println!(
            "  forward+backward tokens per step    {:>12}",
            c.forward_backward_tokens
        );
        println!(
            "  reference forward tokens per step   {:>12}",
            c.reference_tokens
        );
        println!(
            "  weights                             {:>9.1} MB",
            c.weight_bytes as f64 / MB
        );
        println!(
            "  optimiser state                     {:>9.1} MB",
            c.optimizer_bytes as f64 / MB
        );
        println!(
            "  reference model                     {:>9.1} MB",
            c.reference_bytes as f64 / MB
        );
        println!(
            "  activations (bound)                 {:>9.1} MB",
            c.activation_bytes as f64 / MB
        );
        println!(
            "  measured dry step                   {:>9.3} s",
            c.dry_step_seconds
        );
    }
}
