//! The machine-readable form of `recapc check --format json`: takes the diagnostics of every
//! file checked, gives one JSON document of schema `recap-diagnostics`, version 1. The types
//! here are the schema (docs/diagnostics.md describes it field by field); any incompatible
//! change bumps `JSON_SCHEMA_VERSION`.

use recap_compiler::{Diagnostic, LineIndex, Severity};
use serde::{Deserialize, Serialize};

use super::clamp_span;

/// Name of the schema, the document's `schema` field.
pub const JSON_SCHEMA_NAME: &str = "recap-diagnostics";
/// Version of the schema, the document's `version` field.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub version: u32,
    /// One entry per file named on the command line, in command-line order.
    pub files: Vec<FileReport>,
    /// Every diagnostic of every file, files in command-line order, each file in source order.
    pub diagnostics: Vec<JsonDiagnostic>,
    /// Number of diagnostics of severity error, over all files.
    pub errors: usize,
    /// Number of diagnostics of severity warning, over all files.
    pub warnings: usize,
}

/// Whether a file was checked or could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    Checked,
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    pub file: String,
    pub status: FileStatus,
    /// Why the file could not be read; null when it was checked.
    pub error: Option<String>,
    pub errors: usize,
    pub warnings: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonDiagnostic {
    pub file: String,
    /// Stable code `recap::<stage>::<name>`; `recapc explain CODE` gives the long text.
    pub code: String,
    pub severity: Severity,
    pub message: String,
    pub help: Option<String>,
    /// Primary label first. Empty only for diagnostics about the whole file.
    pub labels: Vec<JsonLabel>,
    /// Machine-applicable fixes; the field is left out when there are none, so a tool that
    /// reads version 1 without it reads the same document as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<JsonFix>,
}

/// One fix: what it does and the text edits that do it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonFix {
    pub message: String,
    pub edits: Vec<JsonEdit>,
}

/// Replace the text of `span` (empty to insert) with `replacement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonEdit {
    /// Byte offsets into the file, half-open.
    pub span: JsonSpan,
    /// Position of `span.start`.
    pub start: Position,
    /// Position of `span.end`.
    pub end: Position,
    pub replacement: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonLabel {
    pub primary: bool,
    pub message: String,
    /// Byte offsets into the file, half-open.
    pub span: JsonSpan,
    /// Position of `span.start`.
    pub start: Position,
    /// Position of `span.end` (just past the last character of the label).
    pub end: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonSpan {
    pub start: usize,
    pub end: usize,
}

/// 1-based line and 1-based column counted in Unicode scalar values (characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            schema: JSON_SCHEMA_NAME.to_string(),
            version: JSON_SCHEMA_VERSION,
            files: Vec::new(),
            diagnostics: Vec::new(),
            errors: 0,
            warnings: 0,
        }
    }
}

impl Report {
    /// Adds a checked file and its diagnostics.
    pub fn add_checked(&mut self, name: &str, text: &str, diagnostics: &[Diagnostic]) {
        let errors = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = diagnostics.len() - errors;
        self.errors += errors;
        self.warnings += warnings;
        self.files.push(FileReport {
            file: name.to_string(),
            status: FileStatus::Checked,
            error: None,
            errors,
            warnings,
        });
        let index = LineIndex::new(text);
        self.diagnostics.extend(
            diagnostics
                .iter()
                .map(|d| to_json_in(name, text, &index, d)),
        );
    }

    /// Adds a file that could not be read.
    pub fn add_unreadable(&mut self, name: &str, reason: &str) {
        self.files.push(FileReport {
            file: name.to_string(),
            status: FileStatus::Unreadable,
            error: Some(reason.to_string()),
            errors: 0,
            warnings: 0,
        });
    }
}

/// Converts one diagnostic, computing line and column of every label.
pub fn to_json(name: &str, text: &str, diagnostic: &Diagnostic) -> JsonDiagnostic {
    to_json_in(name, text, &LineIndex::new(text), diagnostic)
}

/// `to_json` with the line index of `text` built by the caller.
fn to_json_in(
    name: &str,
    text: &str,
    index: &LineIndex,
    diagnostic: &Diagnostic,
) -> JsonDiagnostic {
    let position = |offset: usize| {
        let (line, column) = index.line_col(text, offset);
        Position { line, column }
    };
    JsonDiagnostic {
        file: name.to_string(),
        code: diagnostic.code.clone(),
        severity: diagnostic.severity,
        message: diagnostic.message.clone(),
        help: diagnostic.help.clone(),
        labels: diagnostic
            .labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let span = clamp_span(text, label.span);
                JsonLabel {
                    primary: i == 0,
                    message: label.message.clone(),
                    span: JsonSpan {
                        start: span.start(),
                        end: span.end(),
                    },
                    start: position(span.start()),
                    end: position(span.end()),
                }
            })
            .collect(),
        fixes: diagnostic
            .fixes
            .iter()
            .map(|fix| JsonFix {
                message: fix.message.clone(),
                edits: fix
                    .edits
                    .iter()
                    .map(|edit| {
                        let span = clamp_span(text, edit.span);
                        JsonEdit {
                            span: JsonSpan {
                                start: span.start(),
                                end: span.end(),
                            },
                            start: position(span.start()),
                            end: position(span.end()),
                            replacement: edit.replacement.clone(),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}
