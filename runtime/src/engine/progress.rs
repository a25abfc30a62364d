//! Run output: takes step records (JSON objects) and warnings; gives `metrics.jsonl` and
//! `samples.jsonl` in the run directory (one JSON object per line, flushed per line so a killed
//! run keeps every finished step) and the progress display: an indicatif bar on a terminal,
//! plain lines otherwise.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
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

/// The JSON Lines files of a run.
pub struct RunFiles {
    metrics: File,
    samples: File,
    pub dir: PathBuf,
}

/// Keeps the lines of a JSON Lines file whose `step` is at most `until` (a resumed run drops
/// what the interrupted run logged after its checkpoint), or empties it for a fresh run.
fn reset(path: &Path, until: Option<u64>) -> Result<File> {
    let kept = match until {
        Some(s) if path.exists() => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            text.lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|step| step <= s)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        }
        _ => String::new(),
    };
    std::fs::write(path, kept).with_context(|| format!("cannot write {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl RunFiles {
    pub fn open(dir: &Path, keep_until: Option<u64>) -> Result<RunFiles> {
        Ok(RunFiles {
            metrics: reset(&dir.join("metrics.jsonl"), keep_until)?,
            samples: reset(&dir.join("samples.jsonl"), keep_until)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn metric(&mut self, v: &Value) -> Result<()> {
        writeln!(self.metrics, "{v}").context("writing metrics.jsonl")
    }

    pub fn sample(&mut self, v: &Value) -> Result<()> {
        writeln!(self.samples, "{v}").context("writing samples.jsonl")
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

/// A one-line summary of a step record.
pub fn summary_line(rec: &Value) -> String {
    let lambdas: Vec<String> = rec
        .get("keys")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", fmt(v.get("lambda"), 2)))
                .collect()
        })
        .unwrap_or_default();
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
