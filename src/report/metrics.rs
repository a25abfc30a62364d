//! Reading a run directory: takes the path of a directory written by `recapc run`, gives its
//! `metrics.jsonl` as one `Run` of named series over global steps. The record shape is the
//! runtime's (`runtime/src/engine/step.rs`, `record`); only the fields the reports draw are read,
//! so records from newer runtimes with more fields still load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One point of a series: the global step and the value logged at it.
pub type Point = (u64, f64);

/// A series per name, in name order.
pub type Series = BTreeMap<String, Vec<Point>>;

/// One step's numbers that are not plotted per key: what the summary adds up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCost {
    pub step: u64,
    /// Wall-clock seconds of the step, probes included.
    pub seconds: f64,
    pub generated_tokens: f64,
}

/// Everything the reports read from one run directory.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub dir: PathBuf,
    /// How charts and tables name the run (see `run_label`).
    pub label: String,
    /// Mean reward of each term (`source.term`).
    pub rewards: Series,
    /// The weight each key applied at the step (`lambda`).
    pub lambda: Series,
    /// The convergence signal c of each key.
    pub convergence: Series,
    /// The instability signal i of each key.
    pub instability: Series,
    /// The KL estimate to the reference model, under the name `kl`.
    pub kl: Series,
    /// The step's summed loss, under the name `loss`.
    pub loss: Series,
    /// Probe accuracies, named `probe.term`.
    pub probes: Series,
    pub costs: Vec<StepCost>,
}

/// How charts and tables name a run: its directory name, with the parent's name in front for a
/// `seed-N` directory, so `study/recap/seed-3` reads `recap/seed-3`.
pub fn run_label(dir: &Path) -> String {
    let name = file_name(dir);
    if seed_number(&name).is_some() {
        if let Some(parent) = dir.parent().map(file_name).filter(|p| !p.is_empty()) {
            return format!("{parent}/{name}");
        }
    }
    name
}

/// The number N of a directory named `seed-N`.
pub fn seed_number(name: &str) -> Option<u64> {
    name.strip_prefix("seed-")?.parse().ok()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads `DIR/metrics.jsonl`. Errors name the file and, for a bad record, its line.
pub fn load_run(dir: &Path) -> Result<Run, String> {
    if !dir.is_dir() {
        return Err(format!(
            "`{}` is not a run directory (no such directory)",
            dir.display()
        ));
    }
    // The canonical path gives `.` and `..` their real names, so labels and variants come out
    // the same however the directory was written on the command line.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut run = Run {
        label: run_label(&dir),
        dir,
        ..Run::default()
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(line).map_err(|e| {
            format!(
                "`{}` line {}: not a JSON record ({e}); the file is corrupt",
                path.display(),
                i + 1
            )
        })?;
        add_record(&mut run, &record)
            .map_err(|m| format!("`{}` line {}: {m}", path.display(), i + 1))?;
    }
    if run.costs.is_empty() {
        return Err(format!(
            "`{}` has no records: the run finished no step",
            path.display()
        ));
    }
    Ok(run)
}

fn add_record(run: &mut Run, record: &Value) -> Result<(), String> {
    let step = record
        .get("step")
        .and_then(Value::as_u64)
        .ok_or("the record has no whole-number `step`; is this a recap metrics file?")?;
    let number = |v: Option<&Value>| v.and_then(Value::as_f64);
    let push = |series: &mut Series, name: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            series.entry(name.to_string()).or_default().push((step, v));
        }
    };
    for (term, v) in objects(record.get("rewards")) {
        push(&mut run.rewards, term, v.as_f64());
    }
    for (key, k) in objects(record.get("keys")) {
        push(&mut run.lambda, key, number(k.get("lambda")));
        push(&mut run.convergence, key, number(k.get("c")));
        push(&mut run.instability, key, number(k.get("i")));
    }
    push(&mut run.kl, "kl", number(record.get("kl")));
    push(&mut run.loss, "loss", number(record.get("loss")));
    for (probe, terms) in objects(record.get("eval")) {
        for (term, v) in objects(Some(terms)) {
            push(&mut run.probes, &format!("{probe}.{term}"), v.as_f64());
        }
    }
    run.costs.push(StepCost {
        step,
        seconds: number(record.get("seconds")).unwrap_or(0.0),
        generated_tokens: number(record.get("generated_tokens")).unwrap_or(0.0),
    });
    Ok(())
}

/// The entries of a JSON object (none for anything else).
fn objects(v: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    v.and_then(Value::as_object).into_iter().flatten()
}

/// Reads every run directory, stopping at the first that cannot be read.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>, String> {
    dirs.iter().map(|d| load_run(d)).collect()
}
