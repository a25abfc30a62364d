//! The recap compiler: takes the text of a `.recap` file (plus `--set` overrides and a host that
//! answers file-existence questions) and gives diagnostics, and when there are no errors a
//! checked `recap_plan::Plan` and its dataflow graph. Pure: no IO, no runtime dependency, never
//! panics on any input.
//!
//! This file fixes the public API that the CLI codes against. The stages, one module each:
//! `parse` (text -> AST), `resolve` (AST -> scopes and evaluation order), `typecheck` (values
//! checked against the stdlib signatures), `validate` (semantic rules), `lower` (-> Plan) and
//! `dag` (the plan's dataflow graph).

pub mod ast;
pub mod codes;
pub mod dag;
pub mod diagnostic;
pub mod format;
pub mod internal;
pub mod lower;
pub mod parse;
pub mod query;
pub mod resolve;
pub mod stdlib;
pub mod typecheck;
pub mod types;
pub mod validate;

pub use parse::parse;

pub use diagnostic::{line_col, Diagnostic, Edit, Fix, Label, LineEnds, LineIndex, Severity, Span};

/// What the compiler may ask of the outside world. The CLI implements it with the file system;
/// tests and the language server may answer from memory.
pub trait Host {
    /// Whether a path named in the pipeline (relative to the pipeline file's directory, or
    /// absolute) exists. Missing files are warnings at check time and errors at run time.
    fn file_exists(&self, path: &str) -> bool;

    /// The first rows of a JSON Lines data file (blank lines skipped), so that the checker can
    /// hold a source's prompt and fields against its data before anything runs. `None` when
    /// the host does not read files or cannot read this one; the checker then says nothing
    /// about the data.
    fn jsonl_rows(&self, _path: &str) -> Option<Vec<DataRow>> {
        None
    }

    /// The context length of a Hugging Face model directory (`max_position_embeddings` in its
    /// `config.json`), so that the checker can tell a generation budget that cannot fit.
    /// `None` when the host does not read files or cannot read this one.
    fn model_context(&self, _dir: &str) -> Option<u64> {
        None
    }
}

/// One row of a data file as a `Host` read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// The row's field names, or why the line is not a JSON object (`not valid JSON: ...`).
    pub fields: Result<Vec<String>, String>,
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
    file_name: &str,
    source: &str,
    options: &CheckOptions,
    host: &dyn Host,
) -> CheckOutput {
    check_with_syntax(file_name, source, options, host).0
}

/// Checks one pipeline file as `check` does, and gives back the syntax tree of the items that
/// parsed too, so that a caller who needs both (the language server's index) parses once.
pub fn check_with_syntax(
    file_name: &str,
    source: &str,
    options: &CheckOptions,
    host: &dyn Host,
) -> (CheckOutput, ast::File) {
    let (file, parse_diags) = parse::parse_partial(source);
    let out = check_parsed(file_name, source, &file, parse_diags, options, host);
    (out, file)
}

/// The stages after the parse, on the items that parsed and the parse's diagnostics.
fn check_parsed(
    file_name: &str,
    source: &str,
    file: &ast::File,
    parse_diags: Vec<Diagnostic>,
    options: &CheckOptions,
    host: &dyn Host,
) -> CheckOutput {
    let mut diagnostics = Vec::new();
    let std = stdlib::stdlib();
    for e in &std.errors {
        diagnostics.push(Diagnostic::from(&internal::InternalProblem::Stdlib(e)));
    }
    let parse_failed = parse_diags.iter().any(|d| d.severity == Severity::Error);
    diagnostics.extend(parse_diags);
    // The items that did parse are still resolved and checked, so one run reports as much as
    // it can. A name that an item lost to a syntax error declares is not reported as unknown:
    // the syntax error is the one problem there.
    let resolved = if parse_failed {
        let lost = parse::declared_names(source);
        resolve::resolve_partial(file, &options.overrides, &lost, &mut diagnostics)
    } else {
        resolve::resolve(file, &options.overrides, true, &mut diagnostics)
    };
    let typed = typecheck::typecheck(&resolved, &mut diagnostics);
    let has_errors = |d: &[Diagnostic]| d.iter().any(|x| x.severity == Severity::Error);
    let mut plan = None;
    let validated = validate::validate(
        &resolved,
        &typed,
        options,
        host,
        !parse_failed,
        &mut diagnostics,
    );
    if !has_errors(&diagnostics) {
        match lower::lower(file_name, &resolved, &typed, &validated) {
            Ok(p) => plan = Some(p),
            Err(d) => diagnostics.push(d),
        }
    }
    finish(&mut diagnostics);
    CheckOutput { diagnostics, plan }
}

/// Sorts diagnostics into source order and drops exact repeats (a top-level `train` field is
/// checked once per stage).
fn finish(diags: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.code.clone(), d.primary_span(), d.message.clone())));
    diags.sort_by_key(|d| {
        let s = d.primary_span();
        // Whole-file diagnostics (no label) come first.
        (!d.labels.is_empty(), s.start(), s.end())
    });
}

/// Graph output formats of `recapc graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Text,
}

/// Renders the dataflow graph of a plan.
pub fn render_graph(plan: &recap_plan::Plan, format: GraphFormat) -> String {
    dag::render(plan, format)
}

/// The long explanation of a diagnostic code, for `recapc explain CODE`.
pub fn explain(code: &str) -> Option<&'static str> {
    codes::codes()
        .find(|(c, _)| *c == code)
        .map(|(_, text)| text)
}

/// The wrong and right snippets of a diagnostic code, for `recapc explain CODE`.
pub fn explain_example(code: &str) -> Option<codes::Example> {
    codes::example(code)
}

/// Every diagnostic code the compiler can emit, for docs and tests.
pub fn all_codes() -> Vec<&'static str> {
    codes::codes().map(|(c, _)| c).collect()
}

/// Documentation of every stdlib function and enum (signature and doc comment), for
/// `recapc explain`, hover, completion and the reference docs.
pub fn stdlib_docs() -> Vec<stdlib::StdlibDoc> {
    stdlib::docs()
}
