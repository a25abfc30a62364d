//! `recapc report RUN_DIR... [--out DIR] [--format png|svg|both]`: takes finished run
//! directories, gives charts of their metrics (every run overlaid, see `report::charts`) and a
//! `summary.md` with each run's steps, time, tokens/s and probe values, in `--out` (by default
//! `report/` inside the first run directory). Unreadable input or output is exit code 2.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::error_line;
use crate::cli::{ChartFormat, ReportArgs};
use crate::exit::ExitCode;
use crate::report::{charts, load_runs, summary, Run};

pub fn run(args: &ReportArgs) -> ExitCode {
    match report(args) {
        Ok(written) => {
            for path in written {
                eprintln!("wrote {}", path.display());
            }
            ExitCode::Success
        }
        Err(message) => {
            error_line(&message);
            ExitCode::Usage
        }
    }
}

fn report(args: &ReportArgs) -> Result<Vec<PathBuf>, String> {
    let runs = load_runs(&args.runs)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| runs[0].dir.join("report"));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create `{}`: {e}", out.display()))?;
    let format = match args.format {
        ChartFormat::Png => charts::Format::Png,
        ChartFormat::Svg => charts::Format::Svg,
        ChartFormat::Both => charts::Format::Both,
    };
    let mut written = charts::write_charts(&runs, &out, format)?;
    let path = out.join("summary.md");
    std::fs::write(&path, summary_md(&runs, &written))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    written.push(path);
    Ok(written)
}

/// `summary.md`: the charts written, then one section per run.
fn summary_md(runs: &[Run], charts: &[PathBuf]) -> String {
    let mut out = String::from("# Run report\n\n");
    let names: Vec<String> = charts
        .iter()
        .map(|p| format!("`{}`", file_name(p)))
        .collect();
    if names.is_empty() {
        out.push_str("No charts: the metrics have no rewards, weights, KL, loss or probes.\n\n");
    } else {
        let _ = writeln!(out, "Charts: {}.\n", names.join(", "));
    }
    for run in runs {
        out.push_str(&summary::markdown(
            &summary::summarise(run),
            &run.dir.display().to_string(),
        ));
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
