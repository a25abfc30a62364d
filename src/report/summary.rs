//! The numbers a run ends with: takes a loaded `Run`, gives its `Summary` (steps, wall time,
//! generated tokens per second, final and best value of each probe) and renders it as Markdown
//! for `summary.md` or as a few lines for the terminal at the end of `recapc run`. Both renderings
//! read the same `Summary`, so the terminal and the report never disagree.

use std::fmt::Write;

use super::metrics::{Point, Run};

/// A probe's final value and its best, each with the step it was logged at.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSummary {
    /// `probe.term`.
    pub name: String,
    pub final_value: Point,
    /// The highest value (probes are accuracies); the earliest step that reached it.
    pub best: Point,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub label: String,
    /// The last global step in the metrics.
    pub steps: u64,
    /// The sum of the steps' wall-clock times (loading models and data is not in the metrics).
    pub seconds: f64,
    /// Generated tokens per second over the steps that generated any; `None` when none did
    /// (a run of SFT objectives only).
    pub tokens_per_s: Option<f64>,
    pub probes: Vec<ProbeSummary>,
}

pub fn summarise(run: &Run) -> Summary {
    let steps = run.costs.iter().map(|c| c.step).max().unwrap_or(0);
    let seconds = run.costs.iter().map(|c| c.seconds).sum();
    let generating = run.costs.iter().filter(|c| c.generated_tokens > 0.0);
    let (tokens, gen_seconds) = generating.fold((0.0, 0.0), |(t, s), c| {
        (t + c.generated_tokens, s + c.seconds)
    });
    let tokens_per_s = (tokens > 0.0 && gen_seconds > 0.0).then(|| tokens / gen_seconds);
    let probes = run
        .probes
        .iter()
        .filter_map(|(name, points)| {
            let final_value = *points.last()?;
            // `fold` keeps the first of equal maxima: the step the best was first reached.
            let best = points
                .iter()
                .copied()
                .fold(points[0], |b, p| if p.1 > b.1 { p } else { b });
            Some(ProbeSummary {
                name: name.clone(),
                final_value,
                best,
            })
        })
        .collect();
    Summary {
        label: run.label.clone(),
        steps,
        seconds,
        tokens_per_s,
        probes,
    }
}

impl ProbeSummary {
    /// The final value, its step, the best value, its step: as both renderings print them.
    fn cells(&self) -> [String; 4] {
        [
            fmt_value(self.final_value.1),
            self.final_value.0.to_string(),
            fmt_value(self.best.1),
            self.best.0.to_string(),
        ]
    }
}

/// A value as the reports print it: three decimals (probes and rewards live in [0, 1]).
pub fn fmt_value(v: f64) -> String {
    format!("{v:.3}")
}

fn fmt_tokens(t: Option<f64>) -> String {
    t.map_or_else(
        || "n/a (no step generated tokens)".to_string(),
        |t| format!("{t:.0}"),
    )
}

/// The Markdown section of one run in `summary.md`.
pub fn markdown(s: &Summary, dir: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", s.label);
    let _ = writeln!(out, "- run directory: `{dir}`");
    let _ = writeln!(out, "- steps: {}", s.steps);
    let _ = writeln!(out, "- wall time (sum of step times): {:.1} s", s.seconds);
    let _ = writeln!(
        out,
        "- generated tokens/s: {}\n",
        fmt_tokens(s.tokens_per_s)
    );
    if s.probes.is_empty() {
        let _ = writeln!(out, "No probe records.\n");
        return out;
    }
    let _ = writeln!(out, "| probe | final | at step | best | at step |");
    let _ = writeln!(out, "|-------|------:|--------:|-----:|--------:|");
    for p in &s.probes {
        let [last, last_step, best, best_step] = p.cells();
        let _ = writeln!(
            out,
            "| {} | {last} | {last_step} | {best} | {best_step} |",
            p.name
        );
    }
    out.push('\n');
    out
}

/// The lines `recapc run` prints on stderr when a run ends.
pub fn terminal(s: &Summary) -> String {
    let mut out = String::new();
    let tokens = s
        .tokens_per_s
        .map(|t| format!(", {t:.0} generated tokens/s"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "summary: {} steps, {:.1} s of steps{tokens}",
        s.steps, s.seconds
    );
    let width = s.probes.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &s.probes {
        let [last, last_step, best, best_step] = p.cells();
        let _ = writeln!(
            out,
            "  {:width$}  final {last} (step {last_step}), best {best} (step {best_step})",
            p.name
        );
    }
    out
}
