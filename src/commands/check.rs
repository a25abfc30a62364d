//! `recapc check FILE... [--format human|short|json] [--set k=v]`: takes pipeline files, gives
//! every diagnostic of every file. Human output goes to stderr (like rustc); short and JSON go
//! to stdout, since there they are the requested output. Exit 0 when no file has errors, 1 when
//! one has, 2 when a file cannot be read (the other files are still checked).

use recap_compiler::Severity;

use super::{compile_source, error_line, print_human, write_json, write_stdout};
use crate::cli::{CheckArgs, CheckFormat};
use crate::exit::ExitCode;
use crate::input::read_source;
use crate::render::{self, json::Report};

pub fn run(args: &CheckArgs) -> ExitCode {
    let mut code = ExitCode::Success;
    let mut report = Report::default();
    let mut short = String::new();
    let (mut checked, mut errors, mut warnings) = (0, 0, 0);
    for path in &args.files {
        let source = match read_source(path) {
            Ok(source) => source,
            Err(e) => {
                // Said on stderr in every format; JSON also records it in the document.
                error_line(&e.to_string());
                report.add_unreadable(&path.display().to_string(), &e.reason);
                code = code.worst(ExitCode::Usage);
                continue;
            }
        };
        let compiled = compile_source(source, args.set.pairs(), false);
        let diagnostics = &compiled.output.diagnostics;
        let file_errors = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        checked += 1;
        errors += file_errors;
        warnings += diagnostics.len() - file_errors;
        if file_errors > 0 {
            code = code.worst(ExitCode::Errors);
        }
        let name = compiled.source.name();
        match args.format {
            CheckFormat::Human => print_human(&compiled.source, diagnostics),
            CheckFormat::Short => {
                short.push_str(&render::short::render_all(
                    &name,
                    &compiled.source.text,
                    diagnostics,
                ));
            }
            CheckFormat::Json => report.add_checked(&name, &compiled.source.text, diagnostics),
        }
    }
    let printed = match args.format {
        CheckFormat::Human => {
            // With no file read there is nothing to sum up; the IO errors said it all.
            if checked > 0 {
                eprintln!("{}", render::human::summary(checked, errors, warnings));
            }
            ExitCode::Success
        }
        CheckFormat::Short => write_stdout(&short),
        CheckFormat::Json => write_json(&report),
    };
    code.worst(printed)
}
