//! The recap compiler: takes the text of a `.recap` file (plus `--set` overrides and a host that
//! answers file-existence questions) and gives diagnostics, and when there are no errors a
//! checked `recap_plan::Plan` and its dataflow graph. Pure: no IO, no runtime dependency, never
//! panics on any input.
//!
//! This file fixes the public API that the CLI codes against. The implementation behind it is
//! filled in by the front-end work.

pub mod ast;
pub mod diagnostic;
pub mod parse;
pub mod resolve;
pub mod stdlib;
pub mod typecheck;
pub mod types;

pub use parse::parse;

pub use diagnostic::{line_col, Diagnostic, Label, Severity, Span};

/// What the compiler may ask of the outside world. The CLI implements it with the file system;
/// tests and the language server may answer from memory.
pub trait Host {
    /// Whether a path named in the pipeline (relative to the pipeline file's directory, or
    /// absolute) exists. Missing files are warnings at check time and errors at run time.
    fn file_exists(&self, path: &str) -> bool;
}

/// A host that says every file exists (for tests and benchmarks).
pub struct AssumeFilesExist;

impl Host for AssumeFilesExist {
    fn file_exists(&self, _path: &str) -> bool {
        true
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// `--set key=value` overrides of `param`s, in command-line order, values unparsed.
    pub overrides: Vec<(String, String)>,
    /// Treat missing files as errors (`recapc run`) rather than warnings (`recapc check`).
    pub missing_files_are_errors: bool,
}

/// Everything one compiler run gives back.
#[derive(Debug, Clone)]
pub struct CheckOutput {
    /// All diagnostics of the file, errors and warnings, in source order.
    pub diagnostics: Vec<Diagnostic>,
    /// The plan, present when there are no errors.
    pub plan: Option<recap_plan::Plan>,
}

impl CheckOutput {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Checks one pipeline file. `file_name` is used only inside the plan (for provenance).
pub fn check(
    _file_name: &str,
    _source: &str,
    _options: &CheckOptions,
    _host: &dyn Host,
) -> CheckOutput {
    CheckOutput {
        diagnostics: Vec::new(),
        plan: None,
    }
}

/// Graph output formats of `recapc graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Text,
}

/// Renders the dataflow graph of a plan.
pub fn render_graph(_plan: &recap_plan::Plan, _format: GraphFormat) -> String {
    String::new()
}

/// The long explanation of a diagnostic code, for `recapc explain CODE`.
pub fn explain(_code: &str) -> Option<&'static str> {
    None
}

/// Every diagnostic code the compiler can emit, for docs and tests.
pub fn all_codes() -> Vec<&'static str> {
    Vec::new()
}
