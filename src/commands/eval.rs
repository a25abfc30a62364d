//! `recapc eval CKPT FILE.recap`: takes a checkpoint and a pipeline; runs the pipeline's probes
//! on the checkpoint's weights with its data and verifiers, prints one line per probe and, with
//! `--out`, writes the results as JSON (schema `recap-eval` version 1). Exit codes as for
//! `generate`, and 1 when the pipeline has errors.

use recap_runtime::engine::{trial, RunOptions};
use serde_json::{json, Value};

use super::{compile_for_plan, error_line};
use crate::cli::EvalArgs;
use crate::exit::ExitCode;

pub fn run(args: &EvalArgs) -> ExitCode {
    let plan = match compile_for_plan(&args.file, args.set.pairs(), true) {
        Ok((_, plan)) => plan,
        Err(code) => return code,
    };
    let options = RunOptions {
        device: args.device.clone(),
        base_dir: super::pipeline_dir(&args.file),
        ..RunOptions::default()
    };
    let results = match trial::evaluate(&plan, &args.checkpoint, &options) {
        Ok(r) => r,
        Err(e) => return super::generate::exit_for(&e),
    };
    let mut text = String::new();
    for r in &results {
        let scores: Vec<String> = r
            .scores
            .iter()
            .map(|(term, v)| match v.as_f64() {
                Some(x) => format!("{term}={x:.4}"),
                None => format!("{term}=-"),
            })
            .collect();
        text.push_str(&format!(
            "[{}] {} on {} ({} rows): {}\n",
            r.stage,
            r.probe,
            r.source,
            r.rows,
            scores.join(" ")
        ));
    }
    let code = super::write_stdout(&text);
    if let Some(out) = &args.out {
        let doc: Value = json!({
            "schema": "recap-eval",
            "version": 1,
            "checkpoint": args.checkpoint.display().to_string(),
            "pipeline": args.file.display().to_string(),
            "probes": results,
        });
        let body = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(out, body) {
            error_line(&format!("cannot write {}: {e}", out.display()));
            return ExitCode::Usage;
        }
    }
    code
}
