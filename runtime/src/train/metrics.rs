//! The per-step metrics record: takes what a training step measured (draws, reweighter
//! snapshot, rewards, losses, timings); gives one JSON line per step in `metrics.jsonl`, a
//! writer that appends them (and trims lines past a checkpoint when a run resumes, so a
//! resumed run's file equals an uninterrupted one's), and the benchmark summary (median
//! seconds per step after warm-up).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reweight::KeyWeight;

/// One training step. Fields that do not apply to a step (no RL objective, no KL term) are
/// `null`, so every line has the same keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1 for the first step.
    pub step: u64,
    /// The sources this step drew (one, or all under `mix all`).
    pub sources: Vec<String>,
    /// Per objective key: tracked scalar (`signal`), `c`, `i`, `lambda`.
    pub keys: Vec<KeyWeight>,
    /// Mean of each reward term over the completions it applied to, by `source.term`.
    pub rewards: BTreeMap<String, f64>,
    /// Mean combined (weighted) reward of the step's completions.
    pub reward: Option<f64>,
    /// Completions each reward term was not applicable to, by `source.term` (only non-zero).
    pub not_applicable: BTreeMap<String, usize>,
    /// Verifier calls that panicked this step.
    pub verifier_failures: usize,
    pub advantage_std: Option<f64>,
    pub kl: Option<f64>,
    pub clip_fraction: Option<f64>,
    /// Loss of each objective this step ran (after its weight), by objective name.
    pub losses: BTreeMap<String, f64>,
    /// The total loss the optimiser stepped on.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    pub lr: f64,
    pub generated_tokens: u64,
    /// Generated tokens per second of rollout time.
    pub tokens_per_s: Option<f64>,
    pub rollout_seconds: Option<f64>,
    /// Wall time of the whole step.
    pub seconds: f64,
}

impl StepRecord {
    /// Sets the timings and derives tokens per second from the rollout time.
    pub fn set_timing(&mut self, seconds: f64, rollout_seconds: Option<f64>) {
        self.seconds = seconds;
        self.rollout_seconds = rollout_seconds;
        self.tokens_per_s = rollout_seconds
            .filter(|s| *s > 0.0)
            .map(|s| self.generated_tokens as f64 / s);
    }

    /// The record as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// Appends step records to a `metrics.jsonl`, flushing after each line so a crash loses at
/// most the step in flight.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what} {}: {e}", path.display()))
}

impl MetricsWriter {
    /// Starts a new file (an existing one is replaced).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path).map_err(|e| io_error(path, "creating", e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Reopens the file of a run resumed after step `last_step`: lines of later steps (written
    /// after the checkpoint, before the interruption) are dropped, then new lines append. A
    /// line that is not a step record, except a torn last line, is an error naming the line.
    pub fn resume(path: &Path, last_step: u64) -> std::io::Result<Self> {
        let mut kept = Vec::new();
        if path.exists() {
            let file = File::open(path).map_err(|e| io_error(path, "opening", e))?;
            let lines: Vec<String> = BufReader::new(file)
                .lines()
                .collect::<std::io::Result<_>>()
                .map_err(|e| io_error(path, "reading", e))?;
            let count = lines.len();
            for (n, line) in lines.into_iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<StepRecord>(&line) {
                    Ok(r) if r.step <= last_step => kept.push(line),
                    Ok(_) => {}
                    // A crash mid-write can leave a torn final line; it belongs to a lost step.
                    Err(_) if n + 1 == count => {}
                    Err(e) => {
                        return Err(io_error(path, &format!("line {} of", n + 1), e));
                    }
                }
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut w =
                BufWriter::new(File::create(&tmp).map_err(|e| io_error(&tmp, "creating", e))?);
            for line in &kept {
                writeln!(w, "{line}").map_err(|e| io_error(&tmp, "writing", e))?;
            }
            w.flush().map_err(|e| io_error(&tmp, "writing", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, "replacing", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_error(path, "opening", e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, record: &StepRecord) -> std::io::Result<()> {
        let line = record
            .to_json_line()
            .map_err(|e| io_error(&self.path, "serialising a record for", e))?;
        writeln!(self.out, "{line}").map_err(|e| io_error(&self.path, "writing", e))?;
        self.out
            .flush()
            .map_err(|e| io_error(&self.path, "writing", e))
    }
}

/// Reads every record of a `metrics.jsonl`; a bad line is an error naming its number.
pub fn read_records(path: &Path) -> std::io::Result<Vec<StepRecord>> {
    let file = File::open(path).map_err(|e| io_error(path, "opening", e))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_error(path, "reading", e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| io_error(path, &format!("line {} of", n + 1), e))?,
        );
    }
    Ok(out)
}

/// The benchmark figures of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Steps measured (after the skipped warm-up steps).
    pub steps: usize,
    pub median_step_seconds: f64,
    pub median_rollout_seconds: Option<f64>,
    /// Generated tokens over rollout seconds, summed over the measured steps.
    pub tokens_per_s: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Median step time and throughput after skipping the first `warmup` records; `None` when no
/// record is left.
pub fn summarise(records: &[StepRecord], warmup: usize) -> Option<Summary> {
    let measured = records.get(warmup..).filter(|r| !r.is_empty())?;
    let rollout: Vec<f64> = measured.iter().filter_map(|r| r.rollout_seconds).collect();
    let rollout_total: f64 = rollout.iter().sum();
    let tokens: u64 = measured
        .iter()
        .filter(|r| r.rollout_seconds.is_some())
        .map(|r| r.generated_tokens)
        .sum();
    Some(Summary {
        steps: measured.len(),
        median_step_seconds: median(measured.iter().map(|r| r.seconds).collect())?,
        median_rollout_seconds: median(rollout),
        tokens_per_s: (rollout_total > 0.0).then(|| tokens as f64 / rollout_total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::reweight::KeyKind;

    fn record(step: u64, seconds: f64) -> StepRecord {
        let mut r = StepRecord {
            step,
            sources: vec!["math".into()],
            keys: vec![KeyWeight {
                key: "math.acc".into(),
                source: "math".into(),
                kind: KeyKind::Rl,
                signal: Some(0.5),
                last: Some(0.5),
                history: 1,
                c: 1.0,
                i: 0.0,
                lambda: 1.0,
            }],
            rewards: BTreeMap::from([("math.acc".into(), 0.5)]),
            reward: Some(0.5),
            loss: -0.1,
            lr: 1e-4,
            generated_tokens: 1000,
            ..Default::default()
        };
        r.set_timing(seconds, Some(seconds / 2.0));
        r
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let r = record(3, 0.2);
        let line = r.to_json_line().unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "step",
            "sources",
            "keys",
            "rewards",
            "reward",
            "advantage_std",
            "kl",
            "loss",
            "grad_norm",
            "lr",
            "generated_tokens",
            "tokens_per_s",
            "seconds",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["keys"][0]["lambda"], 1.0);
        assert_eq!(v["kl"], serde_json::Value::Null);
        assert!((r.tokens_per_s.unwrap() - 10_000.0).abs() < 1e-9);
        let back: StepRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn writer_appends_and_resume_drops_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::create(&path).unwrap();
        for s in 1..=5 {
            w.write(&record(s, 0.1)).unwrap();
        }
        drop(w);
        // Simulate a crash mid-line after step 5.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"step\": 6, \"sour").unwrap();
        drop(f);
        let mut w = MetricsWriter::resume(&path, 3).unwrap();
        w.write(&record(4, 0.3)).unwrap();
        drop(w);
        let steps: Vec<u64> = read_records(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        // A corrupt line in the middle is an error naming the line.
        std::fs::write(
            &path,
            format!(
                "{}\nnot json\n{}\n",
                record(1, 0.1).to_json_line().unwrap(),
                record(2, 0.1).to_json_line().unwrap()
            ),
        )
        .unwrap();
        let e = MetricsWriter::resume(&path, 5).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("metrics.jsonl"), "{e}");
        assert!(read_records(&path)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }

    #[test]
    fn summary_is_the_median_after_warmup() {
        let records: Vec<StepRecord> = [5.0, 4.0, 0.3, 0.1, 0.2, 0.4]
            .iter()
            .enumerate()
            .map(|(i, &s)| record(i as u64 + 1, s))
            .collect();
        let s = summarise(&records, 2).unwrap();
        assert_eq!(s.steps, 4);
        assert!((s.median_step_seconds - 0.25).abs() < 1e-12);
        assert!((s.median_rollout_seconds.unwrap() - 0.125).abs() < 1e-12);
        // 4000 tokens over 0.5 s of rollout.
        assert!((s.tokens_per_s.unwrap() - 8000.0).abs() < 1e-9);
        assert!(summarise(&records, 6).is_none());
    }
}
