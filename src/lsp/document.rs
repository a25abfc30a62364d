//! Open documents: takes a document's URI and text; gives everything the requests read, built
//! once per edit: the diagnostics of the same pure `check` that `recapc check` runs, the
//! syntax tree's symbol index and the line map.

use std::path::PathBuf;

use lsp_types::{DiagnosticRelatedInformation, DiagnosticSeverity, Location, NumberOrString, Uri};
use recap_compiler::query::{self, Index};
use recap_compiler::{AssumeFilesExist, CheckOptions, Diagnostic, Severity};

use super::text::LineMap;
use crate::host::FsHost;

pub struct Document {
    pub uri: Uri,
    pub text: String,
    pub lines: LineMap,
    pub index: Index,
    pub diagnostics: Vec<Diagnostic>,
}

impl Document {
    pub fn new(uri: Uri, text: String) -> Self {
        let path = file_path(&uri);
        let name = path
            .as_ref()
            .map_or_else(|| uri.as_str().to_string(), |p| p.display().to_string());
        let options = CheckOptions::default();
        // Files named in the pipeline resolve against the document's directory, as on the
        // command line; a document that is not a file cannot name any, so all are taken as
        // present rather than reported missing.
        let (out, file) = match &path {
            Some(p) => {
                let host = FsHost::for_pipeline(p);
                recap_compiler::check_with_syntax(&name, &text, &options, &host)
            }
            None => recap_compiler::check_with_syntax(&name, &text, &options, &AssumeFilesExist),
        };
        let index = query::index(&file);
        Document {
            uri,
            lines: LineMap::new(&text),
            text,
            index,
            diagnostics: out.diagnostics,
        }
    }

    pub fn range(&self, span: recap_compiler::Span) -> lsp_types::Range {
        self.lines.range(&self.text, span)
    }

    pub fn offset(&self, pos: lsp_types::Position) -> usize {
        self.lines.offset(&self.text, pos)
    }

    /// The diagnostics as the protocol carries them: the primary label is the range, the help
    /// line follows the message, other labels are related information.
    pub fn lsp_diagnostics(&self) -> Vec<lsp_types::Diagnostic> {
        self.diagnostics
            .iter()
            .map(|d| self.lsp_diagnostic(d))
            .collect()
    }

    pub fn lsp_diagnostic(&self, d: &Diagnostic) -> lsp_types::Diagnostic {
        let mut message = d.message.clone();
        if let Some(help) = &d.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let related: Vec<DiagnosticRelatedInformation> = d
            .labels
            .iter()
            .skip(1)
            .map(|l| DiagnosticRelatedInformation {
                location: Location::new(self.uri.clone(), self.range(l.span)),
                message: l.message.clone(),
            })
            .collect();
        lsp_types::Diagnostic {
            range: self.range(d.primary_span()),
            severity: Some(match d.severity {
                Severity::Error => DiagnosticSeverity::ERROR,
                Severity::Warning => DiagnosticSeverity::WARNING,
            }),
            code: Some(NumberOrString::String(d.code.clone())),
            source: Some("recapc".into()),
            message,
            related_information: (!related.is_empty()).then_some(related),
            ..Default::default()
        }
    }
}

/// The file a `file:` URI names, with its percent-escapes decoded.
pub fn file_path(uri: &Uri) -> Option<PathBuf> {
    let rest = uri.as_str().strip_prefix("file://")?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(PathBuf::from)
}
