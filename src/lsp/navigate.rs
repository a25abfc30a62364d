//! Hover, go to definition, find references, rename and document symbols: takes an open
//! document and a position; gives the answer from the document's symbol index and the stdlib's
//! signatures and doc comments.

use std::collections::HashMap;

use lsp_types::{
    DocumentSymbol, Hover, HoverContents, Location, MarkupContent, MarkupKind, Position,
    SymbolKind as LspSymbolKind, TextEdit, WorkspaceEdit,
};
use recap_compiler::query::{is_item_keyword, SymbolKind, Target};
use recap_compiler::stdlib::stdlib;

use super::document::Document;

/// The hover text at `pos`: a declared name's item and doc comment, a stdlib function's
/// signature and doc, a named argument's parameter, an enum member's enum.
pub fn hover(doc: &Document, pos: Position) -> Option<Hover> {
    let occ = doc.index.at(doc.offset(pos))?;
    let std = stdlib();
    let (code, docs) = match &occ.target {
        Target::Symbol { symbol, .. } => {
            let s = doc.index.symbols.get(*symbol)?;
            let item = doc
                .text
                .get(s.span.start()..s.span.end())
                .unwrap_or_default();
            // The first line of the item is its declaration; the rest is its block.
            let head = item.lines().next().unwrap_or_default().trim_end();
            let mut docs = s.doc.clone().unwrap_or_default();
            if let Some(sig) = s.callee.as_deref().and_then(|c| std.fns.get(c)?.first()) {
                if !docs.is_empty() {
                    docs.push_str("\n\n");
                }
                docs.push_str(&format!("`{}`: {}", sig.describe(), sig.doc));
            }
            (head.to_string(), docs)
        }
        Target::Function(name) => {
            let sigs = std.fns.get(name)?;
            let code: Vec<String> = sigs.iter().map(|s| s.describe()).collect();
            let docs: Vec<&str> = sigs.iter().map(|s| s.doc.as_str()).collect();
            (code.join("\n"), docs.join("\n\n"))
        }
        Target::Argument { function, name } => {
            let sig = std.fns.get(function)?.first()?;
            let param = sig
                .param(name)
                .or_else(|| sig.variadic())
                .map(|p| p.describe())?;
            (
                param,
                format!("Argument of `{}`: {}", sig.describe(), sig.doc),
            )
        }
        Target::EnumMember(member) => {
            let e = std.enums.values().find(|e| e.members.contains(member))?;
            let code = format!("enum {} {{ {} }}", e.name, e.members.join(", "));
            (code, e.doc.clone())
        }
    };
    let mut value = format!("```recap\n{code}\n```");
    if !docs.is_empty() {
        value.push_str("\n\n");
        value.push_str(&docs);
    }
    Some(Hover {
        contents: HoverContents::Markup(MarkupContent {
            kind: MarkupKind::Markdown,
            value,
        }),
        range: Some(doc.range(occ.span)),
    })
}

/// The declared symbol at `pos`, if a declared name is there.
fn symbol_at(doc: &Document, pos: Position) -> Option<usize> {
    match doc.index.at(doc.offset(pos))?.target {
        Target::Symbol { symbol, .. } => Some(symbol),
        _ => None,
    }
}

pub fn definition(doc: &Document, pos: Position) -> Option<Location> {
    let s = doc.index.symbols.get(symbol_at(doc, pos)?)?;
    Some(Location::new(doc.uri.clone(), doc.range(s.name_span)))
}

pub fn references(doc: &Document, pos: Position, include_declaration: bool) -> Vec<Location> {
    let Some(symbol) = symbol_at(doc, pos) else {
        return Vec::new();
    };
    let decl = doc.index.symbols.get(symbol).map(|s| s.name_span);
    doc.index
        .references(symbol)
        .into_iter()
        .filter(|&span| include_declaration || Some(span) != decl)
        .map(|span| Location::new(doc.uri.clone(), doc.range(span)))
        .collect()
}

/// The edits that rename the declared name at `pos` to `new_name` everywhere in the file, or
/// why it cannot be renamed.
pub fn rename(doc: &Document, pos: Position, new_name: &str) -> Result<WorkspaceEdit, String> {
    let symbol = symbol_at(doc, pos).ok_or("only a declared name can be renamed here")?;
    let mut chars = new_name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || is_item_keyword(new_name) {
        return Err(format!("`{new_name}` is not a name recap accepts"));
    }
    let edits = doc
        .index
        .references(symbol)
        .into_iter()
        .map(|span| TextEdit::new(doc.range(span), new_name.to_string()))
        .collect();
    Ok(WorkspaceEdit {
        changes: Some(HashMap::from([(doc.uri.clone(), edits)])),
        ..Default::default()
    })
}

/// Every declared name, stages holding their own.
pub fn document_symbols(doc: &Document) -> Vec<DocumentSymbol> {
    let symbols = &doc.index.symbols;
    let make = |i: usize| -> DocumentSymbol {
        let s = &symbols[i];
        #[allow(deprecated)]
        DocumentSymbol {
            name: s.name.clone(),
            detail: Some(s.kind.keyword().to_string()),
            kind: match s.kind {
                SymbolKind::Param => LspSymbolKind::CONSTANT,
                SymbolKind::Let => LspSymbolKind::VARIABLE,
                SymbolKind::Decl(_) => LspSymbolKind::OBJECT,
                SymbolKind::Stage => LspSymbolKind::NAMESPACE,
            },
            tags: None,
            deprecated: None,
            range: doc.range(s.span),
            selection_range: doc.range(s.name_span),
            children: None,
        }
    };
    let mut out = Vec::new();
    for (i, s) in symbols.iter().enumerate() {
        if s.stage.is_some() {
            continue;
        }
        let mut sym = make(i);
        if s.kind == SymbolKind::Stage {
            let children = (0..symbols.len())
                .filter(|&j| symbols[j].stage == Some(i))
                .map(make)
                .collect();
            sym.children = Some(children);
        }
        out.push(sym);
    }
    out
}
