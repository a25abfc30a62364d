//! `recapc compare RUN_DIR... [--baseline VARIANT] [--out FILE] [--format markdown|json]`:
//! takes finished run directories laid out as variants and seeds (see `report::compare`), gives
//! one table of each variant's probe values at the start and end (mean +- std over seeds) with
//! Welch's p-value against the baseline, on stdout and in `--out`. Bad input is exit code 2.

use super::{error_line, write_stdout};
use crate::cli::{CompareArgs, CompareFormat};
use crate::exit::ExitCode;
use crate::report::{compare, load_runs};

pub fn run(args: &CompareArgs) -> ExitCode {
    match table(args) {
        Ok(text) => {
            if let Some(path) = &args.out {
                if let Err(e) = std::fs::write(path, &text) {
                    error_line(&format!("cannot write `{}`: {e}", path.display()));
                    return ExitCode::Usage;
                }
            }
            write_stdout(&text)
        }
        Err(message) => {
            error_line(&message);
            ExitCode::Usage
        }
    }
}

fn table(args: &CompareArgs) -> Result<String, String> {
    let runs = load_runs(&args.runs)?;
    let c = compare::compare(&runs, args.baseline.as_deref())?;
    Ok(match args.format {
        CompareFormat::Markdown => compare::markdown(&c),
        CompareFormat::Json => {
            let mut text = serde_json::to_string_pretty(&c)
                .map_err(|e| format!("internal error, please report: {e}"))?;
            text.push('\n');
            text
        }
    })
}
