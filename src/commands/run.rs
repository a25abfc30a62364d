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

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::Value;
use signal_hook::consts::{SIGINT, SIGTERM};

use recap_compiler::Severity;
use recap_runtime::engine::{self, ProgressMode, RunOptions};

use super::plan::{dataset_files, hash_files, named_files};
use super::{compile_for_plan, error_line};
use crate::cli::{ProgressArg, RunArgs};
use crate::exit::ExitCode;
use crate::host::FsHost;
use crate::report;

pub fn run(args: &RunArgs) -> ExitCode {
    let is_plan_json = args.file.extension().is_some_and(|e| e == "json");
    let (plan, recorded) = if is_plan_json {
        match read_plan(&args.file) {
            Ok(plan) => plan,
            Err(message) => {
                error_line(&message);
                return ExitCode::Usage;
            }
        }
    } else {
        match compile_for_plan(&args.file, args.set.pairs(), true) {
            Ok((_compiled, plan)) => (plan, None),
            Err(code) => return code,
        }
    };
    if is_plan_json && !args.set.overrides.is_empty() {
        error_line("--set applies to pipelines, not to a saved plan: its params are already fixed");
        return ExitCode::Usage;
    }
    let base_dir = super::pipeline_dir(&args.file);
    // A pipeline's data was checked with it; a saved plan's is checked here, before the run
    // directory is made or a model loaded.
    if is_plan_json {
        let found = super::data_check::check(&plan, &base_dir, None);
        let plan_file = crate::input::SourceFile {
            path: args.file.clone(),
            text: String::new(),
        };
        super::print_human(&plan_file, &found);
        if found.iter().any(|d| d.severity == Severity::Error) {
            error_line(&format!(
                "the data of `{}` does not fit its plan; fix it and try again",
                args.file.display()
            ));
            return ExitCode::Errors;
        }
    }
    // Refused before the run directory is made, so a refusal leaves nothing behind.
    if let Some(v) = plan.verifiers.iter().find(|v| v.spec.runs_programs()) {
        if !args.allow_exec {
            error_line(&format!(
                "verifier `{}` runs a program, and programs run only when allowed: pass `--allow-exec` to `recapc run` (docs/rewards.md)",
                v.name
            ));
            return ExitCode::Usage;
        }
    }
    let hashes = if args.dry_run {
        None
    } else {
        match check_inputs(args, &plan, recorded.as_ref()) {
            Ok(h) => Some(h),
            Err(message) => {
                error_line(&message);
                return ExitCode::Usage;
            }
        }
    };
    // The checks above ran once; each rank the launcher starts runs them again for itself.
    if let Some(ranks) = args.ranks {
        return super::launch::run_ranks(ranks, &args.device);
    }
    let (device, mut comm) = match super::launch::join_job(&args.device) {
        Ok(joined) => joined,
        Err(code) => return code,
    };
    // Training on the CPU frees and allocates the same large buffers every step: the heap keeps
    // them. On a GPU the host's large buffers are transient and go back to the kernel.
    if device == "cpu" {
        recap_runtime::alloc::keep_freed();
    }
    let options = RunOptions {
        device,
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
        file_hashes: hashes,
        allow_exec: args.allow_exec,
        shards: args.shards.map(|n| n as usize),
        estimate_ranks: args.shards.map(|n| n as usize),
        // The summary printed at the end is read from the run directory, so the records are
        // not held in memory for the length of the run.
        keep_records: false,
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
    match engine::run_with(&plan, &options, comm.as_mut()) {
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
    if std::env::var_os(super::launch::LAUNCHED).is_some() {
        on_launcher_death(&stop)?;
    }
    Ok(stop)
}

/// A rank started by `recapc run --ranks` writes to pipes its launcher reads, and gets SIGHUP
/// when the launcher dies (`launch::run_ranks`). With the pipes gone its next message would
/// fail and end it without a checkpoint, so on SIGHUP its output goes to /dev/null and it stops
/// after the step under way, as on SIGTERM.
fn on_launcher_death(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // Opened now: a signal handler may call dup2(2) but should not open files.
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .into_raw_fd();
    let stop = Arc::clone(stop);
    // SAFETY: the handler calls only dup2(2), which is async-signal-safe, and stores to an
    // atomic; it allocates nothing and takes no lock.
    unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGHUP, move || {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })?;
    }
    Ok(())
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

/// Reads a saved plan and the file hashes `recapc plan` recorded in it, if any.
fn read_plan(path: &Path) -> Result<(recap_plan::Plan, Option<Value>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read plan `{}`: {e}", path.display()))?;
    let plan = recap_plan::Plan::from_json(&text)
        .map_err(|e| format!("`{}` is not a usable plan: {e}", path.display()))?;
    Ok((plan, recorded_hashes(&text)))
}

/// The `file_hashes` field of a plan document.
fn recorded_hashes(text: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("file_hashes").cloned()
}

/// Hashes the files the plan reads and holds them against the hashes recorded when the saved
/// plan was made (`recorded`) and when the resumed run started (its `plan.json`): a file that
/// changed, appeared or went since is refused, naming it, unless `--allow-changed-inputs`, which
/// turns the refusal into a warning. Gives the hashes of now, for the run directory.
fn check_inputs(
    args: &RunArgs,
    plan: &recap_plan::Plan,
    recorded: Option<&Value>,
) -> Result<Value, String> {
    let host = FsHost::for_pipeline(&args.file);
    let named = [named_files(plan, &host), dataset_files(&host, plan)].concat();
    let now = hash_files(&host, &named)?;
    let now = serde_json::to_value(&now).map_err(|e| format!("cannot record file hashes: {e}"))?;
    let mut checks = Vec::new();
    if let Some(r) = recorded {
        checks.push((
            r.clone(),
            format!("the plan `{}` was made", args.file.display()),
        ));
    }
    if let Some(dir) = &args.resume {
        // Read as a plain file only: a link there is refused when the run opens its directory.
        let path = dir.join("plan.json");
        let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        if let Some(r) = is_file
            .then(|| std::fs::read_to_string(&path).ok())
            .flatten()
            .and_then(|t| recorded_hashes(&t))
        {
            checks.push((r, format!("the run in `{}` started", dir.display())));
        }
    }
    for (then, when) in checks {
        let changed = changed_files(&then, &now);
        if changed.is_empty() {
            continue;
        }
        let message = format!(
            "{} changed since {when}; the run would train on other inputs than planned",
            changed.join(", ")
        );
        if !args.allow_changed_inputs {
            return Err(format!(
                "{message}. Make the plan again, or pass `--allow-changed-inputs` to run anyway"
            ));
        }
        eprintln!("warning: {message} (allowed by --allow-changed-inputs)");
    }
    Ok(now)
}

/// The paths whose size or sha256 differ between two `file_hashes` lists, or that are in only
/// one of them, each with what became of it.
fn changed_files(then: &Value, now: &Value) -> Vec<String> {
    let table = |v: &Value| -> std::collections::BTreeMap<String, (Value, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let path = f.get("path")?.as_str()?.to_string();
                Some((path, (f["bytes"].clone(), f["sha256"].clone())))
            })
            .collect()
    };
    let (then, now) = (table(then), table(now));
    let mut out = Vec::new();
    for (path, old) in &then {
        match now.get(path) {
            None => out.push(format!("`{path}` (gone)")),
            Some(new) if new != old => out.push(format!("`{path}` (its contents)")),
            Some(_) => {}
        }
    }
    out.extend(
        now.keys()
            .filter(|p| !then.contains_key(*p))
            .map(|p| format!("`{p}` (new)")),
    );
    out
}

fn print_costs(costs: &[engine::CostEstimate]) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "dry run: every node built, data and models loaded, memory estimated from the shapes, \
         one step on two prompts per stage where it fits"
    );
    for c in costs {
        println!("stage {} ({} prompts per step):", c.stage, c.prompts);
        let tokens = [
            ("generated tokens per step (at most)", c.generated_tokens),
            (
                "forward+backward tokens per step",
                c.forward_backward_tokens,
            ),
            ("reference forward tokens per step", c.reference_tokens),
        ];
        for (what, n) in tokens {
            println!("  {what:<36}{n:>12}");
        }
        // The process's own memory is measured on the CPU only: a GPU's holds none of it.
        let mut memory = Vec::new();
        if c.process_bytes > 0 {
            memory.push(("process (runtime, sources)", c.process_bytes));
        }
        memory.extend([
            ("weights", c.weight_bytes),
            ("gradients", c.gradient_bytes),
            ("optimiser state", c.optimizer_bytes),
            ("reference model", c.reference_bytes),
            ("KV cache of the rollout", c.kv_cache_bytes),
            ("activations (bound)", c.activation_bytes),
            ("logits (bound)", c.logits_bytes),
            ("update (f32 gradients, buckets)", c.update_bytes),
            ("estimated peak", c.peak_bytes()),
        ]);
        for (what, b) in memory {
            println!("  {what:<36}{:>9.1} MiB", b as f64 / MIB);
        }
        match (c.dry_step_seconds, &c.dry_step_skipped) {
            (Some(s), _) => println!("  {:<36}{s:>9.3} s", "measured dry step"),
            (None, Some(why)) => println!("  measured dry step skipped: {why}"),
            (None, None) => println!("  measured dry step not run"),
        }
    }
}
