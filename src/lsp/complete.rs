//! Completion: takes an open document and a position; gives the names that fit there. The slot
//! the cursor stands in (read from the text before it, which need not parse) decides what is
//! offered: item keywords, a call's named arguments, a block's fields, a source's fields and
//! methods, or values: declared names, stdlib functions and enum members whose type fits what
//! the slot expects.

use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionList, CompletionTextEdit, Documentation,
    MarkupContent, MarkupKind, Position, TextEdit,
};
use recap_compiler::query::{self, Slot};
use recap_compiler::stdlib::stdlib;
use recap_compiler::types::{Kind, Ty};

use super::document::Document;

pub fn completion(doc: &Document, pos: Position) -> CompletionList {
    let offset = doc.offset(pos);
    let ctx = query::completion_context(&doc.text, offset);
    let mut items = Vec::new();
    match &ctx.slot {
        Slot::Item => {
            for k in query::item_keywords() {
                items.push(item(k, CompletionItemKind::KEYWORD, None, None));
            }
        }
        Slot::Member { base } => members(doc, offset, base, &mut items),
        Slot::Field { function } => arguments(function, &mut items),
        Slot::Argument { function, index } => {
            arguments(function, &mut items);
            values(
                doc,
                offset,
                query::param_type(function, None, *index),
                &mut items,
            );
        }
        Slot::ArgumentValue { function, name } => {
            let ty = query::param_type(function, Some(name), 0);
            values(doc, offset, ty, &mut items);
        }
        Slot::Value { kind } => values(doc, offset, kind.map(Ty::Kind), &mut items),
    }
    // Only the entries that start with what is typed; the list is marked incomplete so that
    // the editor asks again rather than filter a shorter word's answer.
    items.retain(|i| i.label.starts_with(&ctx.prefix));
    let range = doc.lines.range(
        &doc.text,
        recap_compiler::Span::new(ctx.prefix_start, offset),
    );
    for i in &mut items {
        let text = i.insert_text.take().unwrap_or_else(|| i.label.clone());
        i.text_edit = Some(CompletionTextEdit::Edit(TextEdit::new(range, text)));
    }
    CompletionList {
        is_incomplete: true,
        items,
    }
}

fn item(
    label: &str,
    kind: CompletionItemKind,
    detail: Option<String>,
    doc: Option<String>,
) -> CompletionItem {
    CompletionItem {
        label: label.to_string(),
        kind: Some(kind),
        detail,
        documentation: doc.filter(|d| !d.is_empty()).map(|d| {
            Documentation::MarkupContent(MarkupContent {
                kind: MarkupKind::Markdown,
                value: d,
            })
        }),
        ..Default::default()
    }
}

/// The named arguments (or block fields) of `function`, inserted as `name = `.
fn arguments(function: &str, items: &mut Vec<CompletionItem>) {
    let Some(sig) = stdlib().fns.get(function).and_then(|s| s.first()) else {
        return;
    };
    for p in sig
        .params
        .iter()
        .filter(|p| p.name != "self" && !p.variadic)
    {
        let mut it = item(&p.name, CompletionItemKind::FIELD, Some(p.describe()), None);
        it.insert_text = Some(format!("{} = ", p.name));
        items.push(it);
    }
}

/// Declared names visible at `offset`, stdlib functions and enum members whose type fits
/// `expected` (everything but methods when nothing is expected).
fn values(doc: &Document, offset: usize, expected: Option<Ty>, items: &mut Vec<CompletionItem>) {
    let fits = |have: &Ty| expected.as_ref().is_none_or(|w| query::accepts(w, have));
    for i in doc.index.visible_at(offset) {
        let s = &doc.index.symbols[i];
        // A name whose type the syntax does not tell (an arithmetic `let`) is offered anywhere.
        if s.ty.as_ref().is_none_or(fits) {
            let detail =
                s.ty.as_ref()
                    .map(|t| format!("{} {}: {t}", s.kind.keyword(), s.name));
            items.push(item(
                &s.name,
                CompletionItemKind::VARIABLE,
                detail,
                s.doc.clone(),
            ));
        }
    }
    let std = stdlib();
    for (name, sigs) in &std.fns {
        let Some(sig) = sigs
            .iter()
            .find(|s| !s.has_self() && fits(&Ty::Kind(s.ret)))
        else {
            continue;
        };
        items.push(item(
            name,
            CompletionItemKind::FUNCTION,
            Some(sig.describe()),
            Some(sig.doc.clone()),
        ));
    }
    let Some(want) = &expected else { return };
    for alt in want.alternatives() {
        let alt = match alt {
            Ty::List(inner) => inner.as_ref(),
            t => t,
        };
        match alt {
            Ty::Enum(e) => {
                if let Some(def) = std.enums.get(e) {
                    for m in &def.members {
                        let detail = Some(format!("enum {}", def.name));
                        items.push(item(m, CompletionItemKind::ENUM_MEMBER, detail, None));
                    }
                }
            }
            Ty::Bool => {
                for b in ["true", "false"] {
                    items.push(item(b, CompletionItemKind::KEYWORD, None, None));
                }
            }
            _ => {}
        }
    }
}

/// After `base.`: the fields a source provides (from its stdlib function's result) and the
/// methods whose receiver fits `base`.
fn members(doc: &Document, offset: usize, base: &str, items: &mut Vec<CompletionItem>) {
    let std = stdlib();
    let symbol = doc
        .index
        .visible_at(offset)
        .into_iter()
        .map(|i| &doc.index.symbols[i])
        .find(|s| s.name == base);
    let (callee, ty) = match symbol {
        Some(s) => (s.callee.clone(), s.ty.clone()),
        // A stdlib function named without a call (`first_number.trim()`) is its result.
        None => match std.fns.get(base).and_then(|s| s.first()) {
            Some(sig) => (None, Some(Ty::Kind(sig.ret))),
            None => return,
        },
    };
    if ty == Some(Ty::Kind(Kind::Source)) {
        let sig = callee.as_deref().and_then(|c| std.fns.get(c)?.first());
        for f in sig.map(|s| s.ret_fields.as_slice()).unwrap_or_default() {
            items.push(item(
                f,
                CompletionItemKind::FIELD,
                Some("field".into()),
                None,
            ));
        }
    }
    for (name, sigs) in &std.fns {
        let receiver = sigs.iter().find(|s| {
            s.param("self")
                .zip(ty.as_ref())
                .is_some_and(|(p, have)| query::accepts(&p.ty, have))
        });
        if let Some(sig) = receiver {
            let doc = Some(sig.doc.clone());
            items.push(item(
                name,
                CompletionItemKind::METHOD,
                Some(sig.describe()),
                doc,
            ));
        }
    }
}
