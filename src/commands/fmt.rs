//! `recapc fmt [--check] FILE...`: takes pipeline files, gives them in the compiler's one
//! canonical layout (`recap_compiler::format::format`), written back in place, or with `-` read
//! from standard input and written to standard output. `--check` changes nothing and prints a
//! unified diff of each file that is not formatted. Exit 0 when every file is formatted (or
//! was written), 1 when `--check` found one that is not or a file has a syntax error (its
//! diagnostics on stderr, the file left alone), 2 when a file cannot be read or written.

use similar::TextDiff;

use super::{error_line, print_human, write_stdout};
use crate::cli::FmtArgs;
use crate::exit::ExitCode;
use crate::input::{is_stdin, read_source};

pub fn run(args: &FmtArgs) -> ExitCode {
    let mut code = ExitCode::Success;
    for path in &args.files {
        let source = match read_source(path) {
            Ok(source) => source,
            Err(e) => {
                error_line(&e.to_string());
                code = code.worst(ExitCode::Usage);
                continue;
            }
        };
        let formatted = match recap_compiler::format::format(&source.text) {
            Ok(text) => text,
            Err(errors) => {
                print_human(&source, &errors);
                error_line(&format!(
                    "`{}` has a syntax error, so it was not formatted",
                    source.name()
                ));
                code = code.worst(ExitCode::Errors);
                continue;
            }
        };
        let name = source.name();
        let outcome = if args.check {
            if formatted == source.text {
                ExitCode::Success
            } else {
                let diff = TextDiff::from_lines(&source.text, &formatted)
                    .unified_diff()
                    .header(&name, &format!("{name} (formatted)"))
                    .to_string();
                write_stdout(&diff).worst(ExitCode::Errors)
            }
        } else if is_stdin(path) {
            write_stdout(&formatted)
        } else if formatted == source.text {
            ExitCode::Success
        } else {
            match std::fs::write(path, &formatted) {
                Ok(()) => ExitCode::Success,
                Err(e) => {
                    error_line(&format!("cannot write `{name}`: {e}"));
                    ExitCode::Usage
                }
            }
        };
        code = code.worst(outcome);
    }
    code
}
