//! Comparing variants over seeds: takes loaded `Run`s, groups them into variants by the layout
//! convention (a `seed-N` directory belongs to the variant named by its parent directory; any
//! other directory is a variant of its own), and gives per variant and probe the mean and sample
//! standard deviation over seeds of the first and last probe value, and, against a baseline
//! variant, Welch's t-test p-value of the last values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::metrics::{seed_number, Run};
use super::summary::fmt_value;

/// The variant a run directory belongs to, by the layout convention.
pub fn variant_of(dir: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let own = name(dir);
    match dir.parent().map(name) {
        Some(parent) if seed_number(&own).is_some() && !parent.is_empty() => parent,
        _ => own,
    }
}

/// Mean and sample standard deviation (n - 1 in the denominator; `None` for one value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: Option<f64>,
}

impl MeanStd {
    pub fn of(xs: &[f64]) -> MeanStd {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = (xs.len() > 1).then(|| {
            let ss: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
            (ss / (n - 1.0)).sqrt()
        });
        MeanStd { mean, std }
    }

    fn markdown(&self) -> String {
        match self.std {
            Some(s) => format!("{} ± {}", fmt_value(self.mean), fmt_value(s)),
            None => fmt_value(self.mean),
        }
    }
}

/// One row of the table: a variant's numbers for one probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub variant: String,
    pub probe: String,
    /// Seeds (runs) of the variant that logged this probe.
    pub n: usize,
    pub start: MeanStd,
    pub end: MeanStd,
    /// The raw end values, in run order, so a reader can redo the test.
    pub end_values: Vec<f64>,
    /// Welch's two-sided p-value of the end values against the baseline's; `None` without a
    /// baseline, for the baseline itself, or where the test is undefined (fewer than two seeds
    /// on a side, or no spread on either side).
    pub p: Option<f64>,
}

/// A variant and the run directories that are its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub name: String,
    pub runs: Vec<String>,
}

/// The whole comparison, also the `--format json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub schema: &'static str,
    pub version: u32,
    pub baseline: Option<String>,
    /// Each variant with its run directories, in command-line order.
    pub variants: Vec<Variant>,
    pub rows: Vec<Row>,
}

/// Groups the runs and computes the table. Errors when a run has no probe records (there is
/// nothing to compare) or the baseline names no variant.
pub fn compare(runs: &[Run], baseline: Option<&str>) -> Result<Comparison, String> {
    let mut variants: Vec<(String, Vec<&Run>)> = Vec::new();
    for run in runs {
        if run.probes.is_empty() {
            return Err(format!(
                "`{}` has no probe records: add an `eval ... = probe(...)` to the pipeline to \
                 compare runs",
                run.dir.display()
            ));
        }
        let v = variant_of(&run.dir);
        match variants.iter_mut().find(|(name, _)| *name == v) {
            Some((_, members)) => members.push(run),
            None => variants.push((v, vec![run])),
        }
    }
    if let Some(b) = baseline {
        if !variants.iter().any(|(name, _)| name == b) {
            let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "--baseline `{b}` is not one of the variants: {}",
                names.join(", ")
            ));
        }
    }
    // Per variant, per probe: the (start, end) value of each run that logged the probe.
    let values: Vec<BTreeMap<&str, Vec<(f64, f64)>>> = variants
        .iter()
        .map(|(_, members)| {
            let mut by_probe: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            for run in members {
                for (probe, points) in &run.probes {
                    if let (Some(first), Some(last)) = (points.first(), points.last()) {
                        by_probe.entry(probe).or_default().push((first.1, last.1));
                    }
                }
            }
            by_probe
        })
        .collect();
    let baseline_ends = |probe: &str| -> Option<Vec<f64>> {
        let i = variants
            .iter()
            .position(|(n, _)| Some(n.as_str()) == baseline)?;
        Some(values[i].get(probe)?.iter().map(|v| v.1).collect())
    };
    let mut rows = Vec::new();
    for ((variant, _), by_probe) in variants.iter().zip(&values) {
        for (probe, vals) in by_probe {
            let starts: Vec<f64> = vals.iter().map(|v| v.0).collect();
            let ends: Vec<f64> = vals.iter().map(|v| v.1).collect();
            let p = match baseline {
                Some(b) if b != variant => {
                    baseline_ends(probe).and_then(|base| welch_p(&ends, &base))
                }
                _ => None,
            };
            rows.push(Row {
                variant: variant.clone(),
                probe: probe.to_string(),
                n: vals.len(),
                start: MeanStd::of(&starts),
                end: MeanStd::of(&ends),
                end_values: ends,
                p,
            });
        }
    }
    Ok(Comparison {
        schema: "recap-compare",
        version: 1,
        baseline: baseline.map(str::to_string),
        variants: variants
            .iter()
            .map(|(name, members)| Variant {
                name: name.clone(),
                runs: members
                    .iter()
                    .map(|r| r.dir.display().to_string())
                    .collect(),
            })
            .collect(),
        rows,
    })
}

/// Welch's unequal-variance t-test, two-sided: `None` where it is undefined (fewer than two
/// values on a side, or no spread on both sides).
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (ma, mb) = (MeanStd::of(a), MeanStd::of(b));
    let va = ma.std? * ma.std? / a.len() as f64;
    let vb = mb.std? * mb.std? / b.len() as f64;
    let se2 = va + vb;
    if se2 <= 0.0 {
        return None;
    }
    let t = (ma.mean - mb.mean) / se2.sqrt();
    // The Welch-Satterthwaite degrees of freedom.
    let df = se2 * se2 / (va * va / (a.len() as f64 - 1.0) + vb * vb / (b.len() as f64 - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some((2.0 * dist.cdf(-t.abs())).min(1.0))
}

fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// The table as Markdown: one row per variant and probe.
pub fn markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let p_head = match &c.baseline {
        Some(b) => format!(" | p (end vs {b}) |"),
        None => " |".to_string(),
    };
    let _ = writeln!(out, "| variant | probe | n | start | end{p_head}");
    let p_rule = if c.baseline.is_some() { "---:|" } else { "" };
    let _ = writeln!(out, "|---|---|---:|---:|---:|{p_rule}");
    for r in &c.rows {
        let p = match (&c.baseline, r.p) {
            (None, _) => String::new(),
            (Some(_), Some(p)) => format!(" {} |", fmt_p(p)),
            (Some(b), None) if *b == r.variant => " baseline |".to_string(),
            (Some(_), None) => " n/a |".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |{p}",
            r.variant,
            r.probe,
            r.n,
            r.start.markdown(),
            r.end.markdown()
        );
    }
    out
}
