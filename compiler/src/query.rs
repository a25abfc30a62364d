//! Editor queries: takes a parsed file (as `parse_partial` gives it, so a file with syntax
//! errors still answers for the items that parsed) and gives an `Index` of every declared name,
//! every use of one, every stdlib function, named argument and enum member written in the file,
//! each with its span. The language server answers hover, go to definition, references, rename
//! and document symbols from it. Pure: no IO, no panics.
//!
//! The index is built from the syntax tree alone, with resolve's scoping rule (top-level names
//! are visible everywhere, stage names only inside their stage), so that it also covers files
//! whose later stages fail: an editor asks about a file while it is being typed.

use crate::ast::*;
use crate::diagnostic::Span;
use crate::stdlib::{stdlib, Signature};
use crate::types::{Kind, Ty};
use std::collections::HashMap;

/// What a declared name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolKind {
    Param,
    Let,
    Decl(DeclKind),
    Stage,
}

impl SymbolKind {
    /// The keyword that declares it.
    pub fn keyword(self) -> &'static str {
        match self {
            SymbolKind::Param => "param",
            SymbolKind::Let => "let",
            SymbolKind::Decl(k) => k.keyword(),
            SymbolKind::Stage => "stage",
        }
    }
}

/// One declared name of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub kind: SymbolKind,
    /// The span of the name where it is declared.
    pub name_span: Span,
    /// The span of the whole item.
    pub span: Span,
    /// The index (in `Index::symbols`) of the stage that declares it; `None` at the top level.
    pub stage: Option<usize>,
    /// The `##` doc comment above the item.
    pub doc: Option<String>,
    /// The stdlib function the value calls (`grpo` for `objective o = grpo(math)`).
    pub callee: Option<String>,
    /// The type of the value as far as the syntax tells: a declaration's kind, a param's
    /// declared type, a let's call result. `None` when unknown (stages, arithmetic lets).
    pub ty: Option<Ty>,
}

/// What a span of the file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A declared name: its declaration (`definition` true) or a use of it.
    Symbol { symbol: usize, definition: bool },
    /// A stdlib function called (or named, as in `mix uniform`) here.
    Function(String),
    /// The named argument `name` of a call of `function`, or a field of the block of an item
    /// whose value calls `function`.
    Argument { function: String, name: String },
    /// A member of a stdlib enum.
    EnumMember(String),
}

/// One span of the file and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub span: Span,
    pub target: Target,
}

/// Every declared name of a file and every span that names something.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub symbols: Vec<Symbol>,
    /// In source order.
    pub occurrences: Vec<Occurrence>,
}

impl Index {
    /// What the file names at byte `offset` (a cursor just past a name still names it).
    pub fn at(&self, offset: usize) -> Option<&Occurrence> {
        self.occurrences
            .iter()
            .find(|o| o.span.start() <= offset && offset <= o.span.end())
    }

    /// The declaration and every use of symbol `symbol`, in source order.
    pub fn references(&self, symbol: usize) -> Vec<Span> {
        self.occurrences
            .iter()
            .filter(|o| matches!(o.target, Target::Symbol { symbol: s, .. } if s == symbol))
            .map(|o| o.span)
            .collect()
    }

    /// The stage whose item holds byte `offset`, if any.
    pub fn stage_at(&self, offset: usize) -> Option<usize> {
        self.symbols.iter().position(|s| {
            s.kind == SymbolKind::Stage && s.span.start() <= offset && offset <= s.span.end()
        })
    }

    /// The symbols visible at byte `offset`: every top-level name and the names of the stage
    /// that holds it.
    pub fn visible_at(&self, offset: usize) -> Vec<usize> {
        let stage = self.stage_at(offset);
        (0..self.symbols.len())
            .filter(|&i| {
                let s = &self.symbols[i];
                s.kind != SymbolKind::Stage && (s.stage.is_none() || s.stage == stage)
            })
            .collect()
    }
}

/// Builds the index of a parsed file.
pub fn index(file: &File) -> Index {
    let mut b = Builder::default();
    b.declare(&file.items, None);
    b.walk_items(&file.items, None);
    b.index
        .occurrences
        .sort_by_key(|o| (o.span.start(), o.span.end()));
    b.index
}

#[derive(Default)]
struct Builder {
    index: Index,
    /// Name -> symbol, per scope: `None` is the top level, `Some(i)` the stage symbol `i`.
    scopes: HashMap<Option<usize>, HashMap<String, usize>>,
}

impl Builder {
    fn push(&mut self, span: Span, target: Target) {
        self.index.occurrences.push(Occurrence { span, target });
    }

    fn add(&mut self, item: &Item, name: &Ident, kind: SymbolKind, stage: Option<usize>) -> usize {
        let (callee, ty) = match &item.kind {
            ItemKind::Decl { kind, value, .. } => (
                callee_of(value),
                Some(Ty::Kind(crate::typecheck::decl_kind(*kind))),
            ),
            ItemKind::Param { ty, .. } => {
                let std = stdlib();
                (None, Ty::from_ast(ty, &|n| std.enums.contains_key(n)).ok())
            }
            ItemKind::Let { value, .. } => {
                let callee = callee_of(value);
                let ty = callee
                    .as_deref()
                    .and_then(|c| stdlib().fns.get(c))
                    .and_then(|sigs| sigs.first())
                    .map(|s| Ty::Kind(s.ret));
                (callee, ty)
            }
            _ => (None, None),
        };
        let id = self.index.symbols.len();
        self.index.symbols.push(Symbol {
            name: name.name.to_string(),
            kind,
            name_span: name.span,
            span: item.span,
            stage,
            doc: item.doc.clone(),
            callee,
            ty,
        });
        // The first declaration wins, as in resolve (a repeat is a duplicate-name error).
        self.scopes
            .entry(stage)
            .or_default()
            .entry(name.name.to_string())
            .or_insert(id);
        self.push(
            name.span,
            Target::Symbol {
                symbol: id,
                definition: true,
            },
        );
        id
    }

    fn declare(&mut self, items: &[Item], stage: Option<usize>) {
        for item in items {
            match &item.kind {
                ItemKind::Param { name, .. } => {
                    self.add(item, name, SymbolKind::Param, stage);
                }
                ItemKind::Let { name, .. } => {
                    self.add(item, name, SymbolKind::Let, stage);
                }
                ItemKind::Decl { kind, name, .. } => {
                    self.add(item, name, SymbolKind::Decl(*kind), stage);
                }
                ItemKind::Stage { name, items } => {
                    let id = self.add(item, name, SymbolKind::Stage, stage);
                    self.declare(items, Some(id));
                }
                _ => {}
            }
        }
    }

    fn lookup(&self, name: &str, stage: Option<usize>) -> Option<usize> {
        let find = |scope: Option<usize>| self.scopes.get(&scope)?.get(name).copied();
        stage.and_then(|s| find(Some(s))).or_else(|| find(None))
    }

    fn walk_items(&mut self, items: &[Item], stage: Option<usize>) {
        for item in items {
            match &item.kind {
                ItemKind::Param { value, .. } | ItemKind::Let { value, .. } => {
                    self.walk(value, stage)
                }
                ItemKind::Decl { value, block, .. } => {
                    self.walk(value, stage);
                    if let Some(b) = block {
                        self.walk_block(b, callee_of(value), stage);
                    }
                }
                ItemKind::Setting {
                    kind, value, block, ..
                } => {
                    if let Some(v) = value {
                        self.walk(v, stage);
                    }
                    if let Some(b) = block {
                        // `train { ... }` sets the arguments of the stdlib's `train`; any
                        // other setting's block belongs to the function its value names.
                        let callee = match kind {
                            SettingKind::Train => Some("train".to_string()),
                            _ => value.as_ref().and_then(callee_of),
                        };
                        self.walk_block(b, callee, stage);
                    }
                }
                ItemKind::Stage { name, items } => {
                    let id = self.lookup_stage(name);
                    self.walk_items(items, id.or(stage));
                }
                ItemKind::Use { .. } | ItemKind::Fn(_) | ItemKind::Enum { .. } => {}
            }
        }
    }

    fn lookup_stage(&self, name: &Ident) -> Option<usize> {
        self.index
            .symbols
            .iter()
            .position(|s| s.kind == SymbolKind::Stage && s.name_span == name.span)
    }

    fn walk_block(&mut self, block: &Block, callee: Option<String>, stage: Option<usize>) {
        for f in &block.fields {
            if let Some(c) = &callee {
                self.push(
                    f.name.span,
                    Target::Argument {
                        function: c.clone(),
                        name: f.name.name.to_string(),
                    },
                );
            }
            self.walk(&f.value, stage);
        }
    }

    fn walk_args(&mut self, function: &str, args: &Args, stage: Option<usize>) {
        for e in &args.positional {
            self.walk(e, stage);
        }
        for n in &args.named {
            self.push(
                n.name.span,
                Target::Argument {
                    function: function.to_string(),
                    name: n.name.name.to_string(),
                },
            );
            self.walk(&n.value, stage);
        }
    }

    fn walk(&mut self, e: &Expr, stage: Option<usize>) {
        let std = stdlib();
        match &e.kind {
            ExprKind::Name(id) => {
                if let Some(s) = self.lookup(&id.name, stage) {
                    self.push(
                        id.span,
                        Target::Symbol {
                            symbol: s,
                            definition: false,
                        },
                    );
                } else if std.fns.contains_key(id.name.as_str()) {
                    self.push(id.span, Target::Function(id.name.to_string()));
                } else if std.is_enum_member(&id.name) {
                    self.push(id.span, Target::EnumMember(id.name.to_string()));
                }
            }
            ExprKind::Call { func, args } => {
                if std.fns.contains_key(func.name.as_str()) {
                    self.push(func.span, Target::Function(func.name.to_string()));
                }
                self.walk_args(&func.name, args, stage);
            }
            ExprKind::Method {
                receiver,
                name,
                args,
            } => {
                self.walk(receiver, stage);
                if std.fns.contains_key(name.name.as_str()) {
                    self.push(name.span, Target::Function(name.name.to_string()));
                }
                self.walk_args(&name.name, args, stage);
            }
            ExprKind::Member { base, .. } => self.walk(base, stage),
            ExprKind::List(items) => {
                for i in items {
                    self.walk(i, stage);
                }
            }
            ExprKind::Neg(inner) => self.walk(inner, stage),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.walk(lhs, stage);
                self.walk(rhs, stage);
            }
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Percent(_)
            | ExprKind::Str(_)
            | ExprKind::Bool(_) => {}
        }
    }
}

/// The stdlib function a value calls or names (`grpo(math)`, `x.after("#")`, `uniform`).
fn callee_of(e: &Expr) -> Option<String> {
    let name = match &e.kind {
        ExprKind::Call { func, .. } => &func.name,
        ExprKind::Method { name, .. } => &name.name,
        ExprKind::Name(id) => &id.name,
        _ => return None,
    };
    stdlib()
        .fns
        .contains_key(name.as_str())
        .then(|| name.to_string())
}

/// Whether a value of type `have` may stand where `want` is expected, as far as an editor
/// can tell: an entry of a list, a kind that fits (a verifier is a reward), the same scalar,
/// or an int where a float goes.
pub fn accepts(want: &Ty, have: &Ty) -> bool {
    want.alternatives().iter().any(|w| match (w, have) {
        (Ty::List(inner), _) => accepts(inner, have),
        (Ty::Kind(w), Ty::Kind(h)) => h.fits(*w),
        (Ty::Float, Ty::Int) => true,
        (w, h) => h.alternatives().contains(w),
    })
}

/// The type a stdlib function's parameter expects: the named parameter `name`, or else the
/// `index`th positional one (`self` of a method does not count).
pub fn param_type(function: &str, name: Option<&str>, index: usize) -> Option<Ty> {
    let sig = stdlib().fns.get(function)?.first()?;
    param_of(sig, name, index).map(|p| p.ty.clone())
}

fn param_of<'s>(
    sig: &'s Signature,
    name: Option<&str>,
    index: usize,
) -> Option<&'s crate::stdlib::ParamDef> {
    match name {
        Some(n) => sig.param(n),
        None => sig
            .params
            .iter()
            .filter(|p| p.name != "self" && !p.variadic)
            .nth(index),
    }
}

/// Where in an item a cursor stands, read from the text before it (which need not parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// After `base.`: a field of a source, or a method.
    Member { base: String },
    /// Inside the parentheses of a call of `function`, at the `index`th argument, where a
    /// named argument may start or a value go.
    Argument { function: String, index: usize },
    /// Where a block field of an item calling `function` may start.
    Field { function: String },
    /// The value of the named argument (or field) `name` of `function`.
    ArgumentValue { function: String, name: String },
    /// The value of an item: a declaration of kind `kind` (`None` for `let`, `param`, or an
    /// unknown context).
    Value { kind: Option<Kind> },
    /// Where an item starts: keywords.
    Item,
}

/// What completion needs to know at a cursor: the identifier typed so far and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionContext {
    /// The identifier characters just before the cursor.
    pub prefix: String,
    /// Byte offset where `prefix` starts (completions replace `prefix_start..offset`).
    pub prefix_start: usize,
    pub slot: Slot,
}

/// The keywords that start an item of a pipeline (the parser's list less `fn` and `enum`,
/// which only the stdlib declares), for completion at the start of an item.
pub fn item_keywords() -> impl Iterator<Item = &'static str> {
    crate::parse::ITEM_KEYWORDS
        .iter()
        .copied()
        .filter(|k| !matches!(*k, "fn" | "enum"))
}

/// Whether `word` is a keyword that starts an item (stdlib items included), so not a name.
pub fn is_item_keyword(word: &str) -> bool {
    crate::parse::ITEM_KEYWORDS.contains(&word)
}

/// One open bracket while scanning toward the cursor.
#[derive(Debug, Default)]
struct Frame {
    open: u8,
    /// The function whose arguments (for `(`) or block fields (for `{`) this holds.
    callee: Option<String>,
    commas: usize,
    /// The argument or field whose value is being written (after `name =`).
    key: Option<String>,
    /// In an item list (top level or a stage): the kind of the item being written and
    /// whether its value has started.
    item: Option<&'static str>,
    in_value: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(u8),
    Other,
}

/// Reads where the cursor at byte `offset` stands from the text before it: a small lexer
/// that skips strings and comments and keeps a stack of open brackets, so that it answers for
/// half-written text that does not parse.
pub fn completion_context(source: &str, offset: usize) -> CompletionContext {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut prefix_start = offset;
    while prefix_start > 0 && bytes.get(prefix_start - 1).copied().is_some_and(is_ident) {
        prefix_start -= 1;
    }
    let prefix = source
        .get(prefix_start..offset)
        .unwrap_or_default()
        .to_string();

    let mut stack = vec![Frame {
        open: b'^',
        ..Frame::default()
    }];
    let mut prev = Tok::Other;
    let mut before_prev = Tok::Other;
    let mut last_closed: Option<String> = None;
    let mut i = 0;
    while i < prefix_start {
        let b = bytes[i];
        let tok;
        if b == b'#' {
            while i < prefix_start && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if b == b'"' || (b == b'r' && bytes.get(i + 1) == Some(&b'"')) {
            let raw = b == b'r';
            i += if raw { 2 } else { 1 };
            while i < prefix_start && bytes[i] != b'"' {
                i += if !raw && bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            tok = Tok::Other;
        } else if is_ident(b) {
            let start = i;
            while i < prefix_start && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &source[start..i];
            let top = stack.last_mut().expect("the stack keeps its base frame");
            if matches!(top.open, b'^' | b's') {
                if let Some(k) = item_keywords().find(|k| *k == word) {
                    top.item = Some(k);
                    top.in_value = matches!(k, "mix" | "reweight");
                    top.key = None;
                }
            }
            tok = Tok::Ident(word.to_string());
        } else if b == b'\n' {
            // A new line in a block starts a new field, and in an item list a new item, once
            // the last one has a value.
            let top = stack.last_mut().expect("the stack keeps its base frame");
            if !matches!(prev, Tok::Punct(b'=' | b'+' | b'-' | b'*' | b'/')) {
                match top.open {
                    b'{' => top.key = None,
                    b'^' | b's' if !matches!(prev, Tok::Ident(_)) || top.in_value => {
                        top.in_value = false;
                        top.item = None;
                    }
                    _ => {}
                }
            }
            i += 1;
            continue;
        } else if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else {
            i += 1;
            match b {
                b'(' | b'[' | b'{' => {
                    let mut frame = Frame {
                        open: b,
                        ..Frame::default()
                    };
                    match (b, &prev) {
                        (b'(', Tok::Ident(f)) => frame.callee = Some(f.clone()),
                        (b'{', Tok::Punct(b')')) => frame.callee = last_closed.clone(),
                        (b'{', Tok::Ident(name)) => {
                            if before_prev == Tok::Ident("stage".into()) {
                                frame.open = b's';
                            } else {
                                frame.callee = Some(name.clone());
                            }
                        }
                        (b'[', _) => {
                            // A list's entries are values of the argument it is given to.
                            let top = stack.last().expect("the stack keeps its base frame");
                            frame.callee = top.callee.clone();
                            frame.key = top.key.clone();
                            frame.item = top.item;
                            frame.in_value = top.in_value;
                        }
                        _ => {}
                    }
                    stack.push(frame);
                }
                b')' | b']' | b'}' if stack.len() > 1 => {
                    let f = stack.pop().expect("checked by the guard");
                    if b == b')' {
                        last_closed = f.callee;
                    }
                }
                b',' => {
                    let top = stack.last_mut().expect("the stack keeps its base frame");
                    if top.open != b'[' {
                        top.commas += 1;
                        top.key = None;
                    }
                }
                b'=' => {
                    let top = stack.last_mut().expect("the stack keeps its base frame");
                    match (&prev, top.open) {
                        (_, b'^' | b's') => top.in_value = true,
                        (Tok::Ident(k), _) => top.key = Some(k.clone()),
                        _ => {}
                    }
                }
                _ => {}
            }
            tok = Tok::Punct(b);
        }
        before_prev = std::mem::replace(&mut prev, tok);
    }

    let top = stack.last().expect("the stack keeps its base frame");
    let slot = if let (Tok::Punct(b'.'), Tok::Ident(base)) = (&prev, &before_prev) {
        Slot::Member { base: base.clone() }
    } else {
        match (top.open, &top.callee, &top.key) {
            (b'(' | b'{' | b'[', Some(f), Some(k)) => Slot::ArgumentValue {
                function: f.clone(),
                name: k.clone(),
            },
            (b'(', Some(f), None) => Slot::Argument {
                function: f.clone(),
                index: top.commas,
            },
            (b'[', Some(f), None) => Slot::Argument {
                function: f.clone(),
                index: top.commas,
            },
            (b'{', Some(f), None) => Slot::Field {
                function: f.clone(),
            },
            (b'^' | b's' | b'[', _, _) if top.in_value => Slot::Value {
                kind: match top.item {
                    Some("model") => Some(Kind::Model),
                    Some("source") => Some(Kind::Source),
                    Some("verifier") => Some(Kind::Verifier),
                    Some("objective") => Some(Kind::Objective),
                    Some("eval") => Some(Kind::Eval),
                    Some("mix") => Some(Kind::Mixer),
                    Some("reweight") => Some(Kind::Reweighter),
                    _ => None,
                },
            },
            (b'^' | b's', _, _) => Slot::Item,
            _ => Slot::Value { kind: None },
        }
    };
    CompletionContext {
        prefix,
        prefix_start,
        slot,
    }
}

/// The largest char boundary at or before `i` (so a cursor inside a multi-byte character
/// never splits it).
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
param steps: int = 10 in [1, inf)
## The policy.
model policy = tiny(seed = 1)
source sums = arithmetic(count = 10)
verifier correct = numeric(extract = first_number)
stage rl {
  objective o = grpo(sums) { rewards = [correct], group = steps, loss = token_mean }
  mix uniform
}
train { steps = steps }
";

    fn idx() -> Index {
        let (file, diags) = crate::parse::parse_partial(SRC);
        assert!(diags.is_empty(), "{diags:?}");
        index(&file)
    }

    fn off(needle: &str, nth: usize) -> usize {
        SRC.match_indices(needle).nth(nth).map(|(i, _)| i).unwrap()
    }

    #[test]
    fn declarations_and_uses_of_a_name_are_found_from_either() {
        let ix = idx();
        let Some(Occurrence {
            target: Target::Symbol { symbol, .. },
            ..
        }) = ix.at(off("steps", 1))
        else {
            panic!("no symbol at the use of steps");
        };
        let sym = &ix.symbols[*symbol];
        assert_eq!((sym.name.as_str(), sym.kind), ("steps", SymbolKind::Param));
        let spans: Vec<usize> = ix.references(*symbol).iter().map(|s| s.start()).collect();
        // The declaration, the use in the stage block and the use in `train` (not the
        // field name `steps` of `train`, which is an argument).
        assert_eq!(
            spans,
            vec![off("steps", 0), off("steps", 1), off("steps", 3)]
        );
        assert_eq!(sym.doc, None);
        let policy = ix.symbols.iter().find(|s| s.name == "policy").unwrap();
        assert_eq!(policy.doc.as_deref(), Some("The policy."));
        assert_eq!(policy.callee.as_deref(), Some("tiny"));
    }

    #[test]
    fn callees_arguments_fields_and_enum_members_are_named() {
        let ix = idx();
        let target = |o: usize| ix.at(o).map(|o| o.target.clone());
        assert_eq!(
            target(off("grpo", 0)),
            Some(Target::Function("grpo".into()))
        );
        assert_eq!(
            target(off("uniform", 0)),
            Some(Target::Function("uniform".into()))
        );
        assert_eq!(
            target(off("group", 0)),
            Some(Target::Argument {
                function: "grpo".into(),
                name: "group".into()
            })
        );
        assert_eq!(
            target(off("steps = steps", 0)),
            Some(Target::Argument {
                function: "train".into(),
                name: "steps".into()
            })
        );
        assert_eq!(
            target(off("first_number", 0)),
            Some(Target::Function("first_number".into()))
        );
        assert_eq!(
            target(off("token_mean", 0)),
            Some(Target::EnumMember("token_mean".into()))
        );
    }

    #[test]
    fn stage_names_are_visible_only_inside_their_stage() {
        let ix = idx();
        let names = |o: usize| -> Vec<String> {
            ix.visible_at(o)
                .into_iter()
                .map(|i| ix.symbols[i].name.clone())
                .collect()
        };
        assert!(names(off("mix", 0)).contains(&"o".to_string()));
        assert!(!names(off("train", 0)).contains(&"o".to_string()));
        assert!(names(off("train", 0)).contains(&"policy".to_string()));
    }

    fn slot(text: &str) -> Slot {
        completion_context(text, text.len()).slot
    }

    #[test]
    fn completion_slots_are_read_from_half_written_text() {
        assert_eq!(
            slot("model m = ti"),
            Slot::Value {
                kind: Some(Kind::Model)
            }
        );
        assert_eq!(slot("param p: int = 3\nmo"), Slot::Item);
        assert_eq!(
            slot("objective o = grpo(sums, gr"),
            Slot::Argument {
                function: "grpo".into(),
                index: 1
            }
        );
        assert_eq!(
            slot("objective o = grpo(sums, rewards = [correct, f"),
            Slot::ArgumentValue {
                function: "grpo".into(),
                name: "rewards".into()
            }
        );
        assert_eq!(
            slot("objective o = grpo(sums) {\n  group = 4\n  ma"),
            Slot::Field {
                function: "grpo".into()
            }
        );
        assert_eq!(
            slot("train { optimizer = ad"),
            Slot::ArgumentValue {
                function: "train".into(),
                name: "optimizer".into()
            }
        );
        assert_eq!(
            slot("stage s {\n  mix un"),
            Slot::Value {
                kind: Some(Kind::Mixer)
            }
        );
        assert_eq!(
            slot("let x = sums.an"),
            Slot::Member {
                base: "sums".into()
            }
        );
        // Brackets and `=` inside strings and comments do not count.
        assert_eq!(
            slot("source s = jsonl(\"a(b\", prompt = \"{q}\") # (\nmodel m = "),
            Slot::Value {
                kind: Some(Kind::Model)
            }
        );
        let ctx = completion_context("model m = tiny(se", 17);
        assert_eq!((ctx.prefix.as_str(), ctx.prefix_start), ("se", 15));
    }

    #[test]
    fn types_are_accepted_by_kind_list_entry_and_widening() {
        assert!(accepts(
            &Ty::List(Box::new(Ty::Kind(Kind::Reward))),
            &Ty::Kind(Kind::Verifier)
        ));
        assert!(!accepts(&Ty::Kind(Kind::Source), &Ty::Kind(Kind::Model)));
        assert!(accepts(&Ty::Float, &Ty::Int));
        assert!(!accepts(&Ty::Int, &Ty::Float));
        assert_eq!(param_type("grpo", Some("group"), 0), Some(Ty::Int));
        assert_eq!(param_type("grpo", None, 0), Some(Ty::Kind(Kind::Source)));
        assert_eq!(param_type("after", None, 0), Some(Ty::Str));
    }
}
