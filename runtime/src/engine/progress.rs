//! Run output: takes step records (JSON objects) and warnings; gives `metrics.jsonl` and
//! `samples.jsonl` in the run directory (one JSON object per line, each line one write, so a
//! killed run keeps every finished step) and the progress display: an indicatif bar on a
//! terminal, plain lines otherwise.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use recap_plan::LogFormat;
use serde_json::Value;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Bar,
    Plain,
    /// Nothing (tests, benchmarks).
    Quiet,
}

/// The JSON Lines files of a run, and the other formats of its metrics that it asks for.
pub struct RunFiles {
    metrics: File,
    samples: File,
    logs: super::metrics_log::MetricLogs,
    pub dir: PathBuf,
}

/// Keeps the lines of a JSON Lines file whose `step` is at most `until` (a resumed run drops
/// what the interrupted run logged after its checkpoint), or empties it for a fresh run. The
/// kept lines go to a new file that replaces the old one, so a kill while this runs loses no
/// history, and a link in the file's place is neither read nor written through. Gives the file
/// open for appending and the records it kept.
fn reset(dir: &Path, name: &str, until: Option<u64>) -> Result<(File, Vec<Value>)> {
    let path = dir.join(name);
    let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    let mut kept = String::new();
    let mut records = Vec::new();
    if let (Some(s), true) = (until, regular) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v.get("step")
                .and_then(Value::as_u64)
                .is_some_and(|step| step <= s)
            {
                kept.push_str(line);
                kept.push('\n');
                records.push(v);
            }
        }
    }
    let file = super::rundir::replace_file(dir, name, kept.as_bytes())?;
    Ok((file, records))
}

/// Appends `v` and a newline to `dir/name` with one write: formatting straight into the file
/// would issue a write per token of the JSON, and a line cut between them is unparseable after
/// a kill.
fn write_line(file: &mut File, v: &Value, dir: &Path, name: &str) -> Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    super::rundir::append(file, line.as_bytes(), &dir.join(name))
}

impl RunFiles {
    /// Opens the run's files in `dir`, keeping the steps up to `keep_until` (a resume) or none,
    /// with the other formats of the metrics in `logs` rebuilt from the steps kept.
    pub fn open(dir: &Path, keep_until: Option<u64>, logs: &[LogFormat]) -> Result<RunFiles> {
        let (metrics, kept) = reset(dir, "metrics.jsonl", keep_until)?;
        let (samples, _) = reset(dir, "samples.jsonl", keep_until)?;
        Ok(RunFiles {
            metrics,
            samples,
            logs: super::metrics_log::MetricLogs::open(dir, logs, &kept, keep_until.is_some())?,
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a step's record to `metrics.jsonl` first, then to the other logs, which are
    /// rebuilt from it when a run resumes.
    pub fn metric(&mut self, v: &Value) -> Result<()> {
        write_line(&mut self.metrics, v, &self.dir, "metrics.jsonl")?;
        self.logs.record(v)
    }

    pub fn sample(&mut self, v: &Value) -> Result<()> {
        write_line(&mut self.samples, v, &self.dir, "samples.jsonl")
    }
}

/// The progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
}

fn fmt(v: Option<&Value>, digits: usize) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

/// How many objective keys a progress line names; a job with more shows the heaviest.
pub const LAMBDAS_SHOWN: usize = 8;

/// The `name=lambda` items of a step record's keys: all of them when there are at most
/// `LAMBDAS_SHOWN`, else the heaviest (ties by name) and a count of the rest with their
/// smallest weight. A job with thousands of sources would otherwise print lines of hundreds
/// of kilobytes every step.
fn lambda_items(rec: &Value) -> Vec<String> {
    let Some(keys) = rec.get("keys").and_then(Value::as_object) else {
        return Vec::new();
    };
    let lambda = |v: &Value| v.get("lambda").and_then(Value::as_f64);
    if keys.len() <= LAMBDAS_SHOWN {
        return keys
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt(v.get("lambda"), 2)))
            .collect();
    }
    let mut ranked: Vec<(&String, Option<f64>)> =
        keys.iter().map(|(k, v)| (k, lambda(v))).collect();
    // Heaviest first; keys without a weight last; then by name, so the line is deterministic.
    ranked.sort_by(|a, b| {
        let w = |x: Option<f64>| x.unwrap_or(f64::NEG_INFINITY);
        w(b.1).total_cmp(&w(a.1)).then_with(|| a.0.cmp(b.0))
    });
    let (shown, rest) = ranked.split_at(LAMBDAS_SHOWN);
    let mut items: Vec<String> = shown
        .iter()
        .map(|(k, w)| match w {
            Some(w) => format!("{k}={w:.2}"),
            None => format!("{k}=-"),
        })
        .collect();
    let min = rest.iter().filter_map(|(_, w)| *w).reduce(f64::min);
    items.push(match min {
        Some(m) => format!("(+{} more, min {m:.2})", rest.len()),
        None => format!("(+{} more)", rest.len()),
    });
    items
}

/// A one-line summary of a step record.
pub fn summary_line(rec: &Value) -> String {
    let lambdas = lambda_items(rec);
    let mut s = format!(
        "[{}] source={} reward={} loss={} lr={} {}s",
        rec.get("stage").and_then(Value::as_str).unwrap_or(""),
        rec.get("source")
            .map(|v| v.to_string().replace('"', ""))
            .unwrap_or_default(),
        fmt(rec.get("reward_mean"), 3),
        fmt(rec.get("loss"), 4),
        rec.get("lr")
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.2e}"))
            .unwrap_or_default(),
        fmt(rec.get("seconds"), 2),
    );
    if !lambdas.is_empty() {
        s.push_str(&format!(" lambda[{}]", lambdas.join(" ")));
    }
    if let Some(e) = rec.get("eval").and_then(Value::as_object) {
        for (name, terms) in e {
            if let Some(t) = terms.as_object() {
                for (term, v) in t {
                    s.push_str(&format!(" {name}.{term}={}", fmt(Some(v), 3)));
                }
            }
        }
    }
    s
}

impl Progress {
    pub fn new(mode: ProgressMode, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let (bar, plain) = match mode {
            ProgressMode::Quiet => (false, false),
            ProgressMode::Plain => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Auto => (terminal, !terminal),
        };
        let bar = bar.then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} eta {eta} {msg}")
            {
                b.set_style(style);
            }
            b
        });
        Progress { bar, plain, total }
    }

    pub fn step(&self, step: u64, rec: &Value) {
        let line = summary_line(rec);
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(line);
        } else if self.plain {
            eprintln!("step {step}/{} {line}", self.total);
        }
    }

    pub fn warn(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("warning: {msg}")),
            None if self.plain => eprintln!("warning: {msg}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics line the disk has no room for (`/dev/full` answers every write with ENOSPC)
    /// says so, naming the file, rather than giving the bare OS error.
    #[test]
    fn a_full_disk_under_the_metrics_is_named() {
        let mut full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let dir = Path::new("/runs/job");
        let err = write_line(
            &mut full,
            &serde_json::json!({ "step": 1 }),
            dir,
            "metrics.jsonl",
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "no space left on device while writing /runs/job/metrics.jsonl; what was written \
             before is kept. Free some space, then resume the run"
        );
    }

    fn record(weights: &[(&str, f64)]) -> Value {
        let keys: serde_json::Map<String, Value> = weights
            .iter()
            .map(|(k, w)| (k.to_string(), serde_json::json!({ "lambda": w })))
            .collect();
        serde_json::json!({ "stage": "main", "keys": keys })
    }

    #[test]
    fn a_few_keys_are_all_shown() {
        let line = summary_line(&record(&[("a", 1.5), ("b", 0.5)]));
        assert!(line.ends_with(" lambda[a=1.50 b=0.50]"), "{line}");
    }

    #[test]
    fn many_keys_show_the_heaviest_and_count_the_rest() {
        let weights: Vec<(String, f64)> = (0..1000)
            .map(|i| (format!("k{i:04}"), if i % 100 == 7 { 2.0 } else { 0.9 }))
            .collect();
        let refs: Vec<(&str, f64)> = weights.iter().map(|(k, w)| (k.as_str(), *w)).collect();
        let line = summary_line(&record(&refs));
        let lambdas = line.split(" lambda[").nth(1).expect("a lambda list");
        assert!(
            lambdas.starts_with("k0007=2.00 k0107=2.00 k0207=2.00 k0307=2.00 k0407=2.00 k0507=2.00 k0607=2.00 k0707=2.00 (+992 more, min 0.90)]"),
            "{lambdas}"
        );
        assert!(line.len() < 300, "{} bytes", line.len());
    }
}
