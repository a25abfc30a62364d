//! Command dispatch: takes a parsed `Cli`, runs the one command it names, gives the exit code.
//! One file per command; the helpers here (compile a file, print diagnostics, write to stdout)
//! are what several commands share.

mod check;
mod compare;
mod completions;
mod data_check;
mod eval;
mod explain;
mod fmt;
mod generate;
mod graph;
mod import;
mod launch;
mod list_templates;
mod new;
mod plan;
mod report;
mod run;

use std::io::{IsTerminal, Write};
use std::path::Path;

use recap_compiler::{CheckOptions, CheckOutput};

use crate::cli::{Cli, Command};
use crate::exit::ExitCode;
use crate::host::FsHost;
use crate::input::{read_source, SourceFile};
use crate::render::{self, human::HumanOptions};

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::New(args) => new::run(&args),
        Command::Import(cmd) => import::run(&cmd),
        Command::Templates => list_templates::run(),
        Command::Fmt(args) => fmt::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Completions(args) => completions::run(&args),
        Command::Lsp(args) => crate::lsp::run(&args),
    }
}

/// A file read and compiled.
pub(crate) struct Compiled {
    pub source: SourceFile,
    pub host: FsHost,
    pub output: CheckOutput,
}

/// Reads and checks one pipeline. Reports an unreadable file on stderr and returns `Err` with
/// exit code 2; otherwise returns the compiler's output without printing anything.
pub(crate) fn compile(
    path: &Path,
    overrides: Vec<(String, String)>,
    missing_files_are_errors: bool,
) -> Result<Compiled, ExitCode> {
    let source = read_source(path).map_err(|e| {
        error_line(&e.to_string());
        ExitCode::Usage
    })?;
    Ok(compile_source(source, overrides, missing_files_are_errors))
}

/// Checks a pipeline already read, and then the head of its data against the plan (see
/// `data_check`).
pub(crate) fn compile_source(
    source: SourceFile,
    overrides: Vec<(String, String)>,
    missing_files_are_errors: bool,
) -> Compiled {
    let host = FsHost::for_pipeline(&source.path);
    let options = CheckOptions {
        overrides,
        missing_files_are_errors,
    };
    let (mut output, file) =
        recap_compiler::check_with_syntax(&source.name(), &source.text, &options, &host);
    // The data is held against a plan the compiler accepted; a pipeline with errors has none.
    if let Some(plan) = output.plan.as_ref().filter(|_| !output.has_errors()) {
        let found = data_check::check(plan, &pipeline_dir(&source.path), Some(&file));
        output.diagnostics.extend(found);
    }
    Compiled {
        source,
        host,
        output,
    }
}

/// Compiles a file for a command that needs a plan (`plan`, `graph`, `run`): prints every
/// diagnostic on stderr and returns the compiled file only when it has a plan.
pub(crate) fn compile_for_plan(
    path: &Path,
    overrides: Vec<(String, String)>,
    missing_files_are_errors: bool,
) -> Result<(Compiled, recap_plan::Plan), ExitCode> {
    let compiled = compile(path, overrides, missing_files_are_errors)?;
    print_human(&compiled.source, &compiled.output.diagnostics);
    if compiled.output.has_errors() {
        let errors = compiled
            .output
            .diagnostics
            .iter()
            .filter(|d| d.severity == recap_compiler::Severity::Error)
            .count();
        let (noun, them) = if errors == 1 {
            ("error", "it")
        } else {
            ("errors", "them")
        };
        error_line(&format!(
            "`{}` has {errors} {noun}; fix {them} and try again",
            compiled.source.name()
        ));
        return Err(ExitCode::Errors);
    }
    match compiled.output.plan.clone() {
        Some(plan) => Ok((compiled, plan)),
        None => {
            // The compiler promises a plan whenever there is no error; say so plainly if not.
            error_line(&format!(
                "internal error, please report: `{}` has no errors but the compiler gave no plan",
                compiled.source.name()
            ));
            Err(ExitCode::Errors)
        }
    }
}

/// Prints diagnostics of one file in human form on stderr.
pub(crate) fn print_human(source: &SourceFile, diagnostics: &[recap_compiler::Diagnostic]) {
    if diagnostics.is_empty() {
        return;
    }
    let options = HumanOptions {
        color: render::want_color(std::io::stderr().is_terminal()),
        ..HumanOptions::default()
    };
    let name = source.name();
    let indexed = render::human::Source::new(&name, &source.text);
    let mut text = String::new();
    for d in diagnostics {
        text.push_str(&render::human::render_in(&indexed, d, options));
        text.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The directory of a pipeline file, which its relative paths (data, model directories,
/// `out`) start from, as the checker resolved them.
pub(crate) fn pipeline_dir(file: &Path) -> std::path::PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

/// Prints `error: message` on stderr.
pub(crate) fn error_line(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
}

/// Writes `value` to stdout as pretty JSON with a final newline (`check --format json`,
/// `plan`). Serialising these report types cannot fail; if it ever does, that is our bug.
pub(crate) fn write_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            write_stdout(&text)
        }
        Err(e) => {
            error_line(&format!("internal error, please report: {e}"));
            ExitCode::Usage
        }
    }
}

/// Writes to stdout. A closed pipe (`recapc plan f | head`) is not an error worth a panic.
pub(crate) fn write_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::Success,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::Success,
        Err(e) => {
            error_line(&format!("cannot write to standard output: {e}"));
            ExitCode::Usage
        }
    }
}
