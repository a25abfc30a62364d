//! The one-line form of diagnostics for editors and grep: takes a diagnostic and its file,
//! gives `file:line:col: severity[code]: message` (line and column 1-based, column in
//! characters, at the start of the primary label; 1:1 for diagnostics about the whole file).

use recap_compiler::{Diagnostic, LineIndex, Severity};

use super::clamp_span;

/// `error` or `warning`.
pub fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// Renders one diagnostic as one line (no trailing newline). Line breaks inside the message
/// become spaces so the one-line promise holds.
pub fn render_one(name: &str, text: &str, diagnostic: &Diagnostic) -> String {
    render_in(name, text, &LineIndex::new(text), diagnostic)
}

/// Renders every diagnostic of one file, one line each, indexing the file's lines once.
pub fn render_all(name: &str, text: &str, diagnostics: &[Diagnostic]) -> String {
    let index = LineIndex::new(text);
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&render_in(name, text, &index, d));
        out.push('\n');
    }
    out
}

/// `render_one` with the line index of `text` built by the caller.
fn render_in(name: &str, text: &str, index: &LineIndex, diagnostic: &Diagnostic) -> String {
    let (line, col) = match diagnostic.labels.first() {
        Some(label) => index.line_col(text, clamp_span(text, label.span).start()),
        None => (1, 1),
    };
    let message = diagnostic.message.replace(['\r', '\n'], " ");
    format!(
        "{name}:{line}:{col}: {}[{}]: {message}",
        severity_word(diagnostic.severity),
        diagnostic.code
    )
}
