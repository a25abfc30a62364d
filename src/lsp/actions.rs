//! Code actions and formatting: takes an open document (and a range); gives one quick fix per
//! machine-applicable fix of each diagnostic on that range (did-you-mean, a missing `train`, a
//! missing field mapping), with the edits the compiler attached to the diagnostic, or the edit
//! that gives the document the canonical layout of `recapc fmt`.

use std::collections::HashMap;

use lsp_types::{CodeAction, CodeActionKind, CodeActionOrCommand, Range, TextEdit, WorkspaceEdit};

use super::document::Document;

pub fn code_actions(doc: &Document, range: Range) -> Vec<CodeActionOrCommand> {
    let mut out = Vec::new();
    for d in &doc.diagnostics {
        let lsp = doc.lsp_diagnostic(d);
        // Positions compare as (line, character), so this is "the ranges touch".
        if lsp.range.end < range.start || range.end < lsp.range.start {
            continue;
        }
        for fix in &d.fixes {
            let edits = fix
                .edits
                .iter()
                .map(|e| TextEdit::new(doc.range(e.span), e.replacement.clone()))
                .collect();
            out.push(CodeActionOrCommand::CodeAction(CodeAction {
                title: fix.message.clone(),
                kind: Some(CodeActionKind::QUICKFIX),
                diagnostics: Some(vec![lsp.clone()]),
                edit: Some(WorkspaceEdit {
                    changes: Some(HashMap::from([(doc.uri.clone(), edits)])),
                    ..Default::default()
                }),
                is_preferred: Some(d.fixes.len() == 1),
                ..Default::default()
            }));
        }
    }
    out
}

/// The edit that formats the whole document as `recapc fmt` would; none when it already is,
/// or why not (a file with syntax errors is not formatted).
pub fn formatting(doc: &Document) -> Result<Vec<TextEdit>, String> {
    let formatted = recap_compiler::format::format(&doc.text).map_err(|diags| {
        let first = diags.first().map_or("", |d| d.message.as_str());
        format!("not formatted: the file has syntax errors ({first})")
    })?;
    if formatted == doc.text {
        return Ok(Vec::new());
    }
    let whole = recap_compiler::Span::new(0, doc.text.len());
    Ok(vec![TextEdit::new(doc.range(whole), formatted)])
}
