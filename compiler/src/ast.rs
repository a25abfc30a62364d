//! The typed syntax tree of one `.recap` file (or one stdlib file). Takes nothing in; gives the
//! types that `parse` produces and every later stage reads. Every node carries the byte span of
//! its source text. The tree is serialisable so tests can snapshot it; it never mentions pest.

use crate::diagnostic::Span;
use compact_str::CompactString;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct File {
    pub items: Vec<Item>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ident {
    /// Names up to 24 bytes (nearly all) are stored inline, without an allocation of their
    /// own: a large pipeline has hundreds of thousands of them, and keeping them inside the
    /// tree makes every later stage's name lookups read memory that is already near.
    pub name: CompactString,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub span: Span,
    /// The `##` lines directly above the item, without the `##` and one following space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ItemKind {
    Use {
        path: Vec<Ident>,
    },
    Param {
        name: Ident,
        ty: TypeExpr,
        value: Expr,
        range: Option<Range>,
    },
    Let {
        name: Ident,
        value: Expr,
    },
    Decl {
        kind: DeclKind,
        kind_span: Span,
        name: Ident,
        value: Expr,
        block: Option<Block>,
    },
    Setting {
        kind: SettingKind,
        kind_span: Span,
        value: Option<Expr>,
        block: Option<Block>,
    },
    Stage {
        name: Ident,
        items: Vec<Item>,
    },
    Fn(FnSig),
    Enum {
        name: Ident,
        members: Vec<Ident>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclKind {
    Model,
    Source,
    Verifier,
    Objective,
    Eval,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Model => "model",
            DeclKind::Source => "source",
            DeclKind::Verifier => "verifier",
            DeclKind::Objective => "objective",
            DeclKind::Eval => "eval",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingKind {
    Reweight,
    Mix,
    Train,
}

impl SettingKind {
    pub fn keyword(self) -> &'static str {
        match self {
            SettingKind::Reweight => "reweight",
            SettingKind::Mix => "mix",
            SettingKind::Train => "train",
        }
    }
}

/// `{ name = expr ... }`: the named arguments of the item's call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    pub fields: Vec<NamedArg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedArg {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Args {
    pub positional: Vec<Expr>,
    pub named: Vec<NamedArg>,
    pub span: Span,
}

/// `fn name(params) -> Kind{fields}` (stdlib only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FnSig {
    pub name: Ident,
    pub params: Vec<ParamSig>,
    pub ret: Ident,
    /// Fields a returned source always provides (`-> Source{prompt, answer}`).
    pub ret_fields: Vec<Ident>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSig {
    pub name: Ident,
    pub variadic: bool,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub range: Option<Range>,
    pub span: Span,
}

/// `int`, `list[Verifier]`, `int | percent`, `Model?`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeExpr {
    pub alternatives: Vec<TypeAtom>,
    pub optional: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeAtom {
    pub name: Ident,
    pub arg: Option<Box<TypeExpr>>,
}

/// `in [lo, hi)`: brackets inclusive, parentheses exclusive; infinite bounds are exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub lo: f64,
    pub lo_inclusive: bool,
    pub hi: f64,
    pub hi_inclusive: bool,
    pub span: Span,
}

impl Range {
    pub fn contains(&self, v: f64) -> bool {
        let above = if self.lo_inclusive {
            v >= self.lo
        } else {
            v > self.lo
        };
        let below = if self.hi_inclusive {
            v <= self.hi
        } else {
            v < self.hi
        };
        above && below
    }

    /// The range in the notation of the source, e.g. `[2, inf)`.
    pub fn describe(&self) -> String {
        fn bound(v: f64) -> String {
            if v == f64::INFINITY {
                "inf".into()
            } else if v == f64::NEG_INFINITY {
                "-inf".into()
            } else {
                format!("{v}")
            }
        }
        format!(
            "{}{}, {}{}",
            if self.lo_inclusive { "[" } else { "(" },
            bound(self.lo),
            bound(self.hi),
            if self.hi_inclusive { "]" } else { ")" }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    /// `10%` is `Percent(10.0)`.
    Percent(f64),
    Str(StrLit),
    Bool(bool),
    List(Vec<Expr>),
    Name(Ident),
    /// `base.name`, e.g. `math.answer`.
    Member {
        base: Box<Expr>,
        name: Ident,
    },
    /// `name(args)`. The arguments are boxed, which keeps every expression node small: they
    /// are the largest part of a call, and most nodes are names, numbers and strings.
    Call {
        func: Ident,
        args: Box<Args>,
    },
    /// `receiver.name(args)`.
    Method {
        receiver: Box<Expr>,
        name: Ident,
        args: Box<Args>,
    },
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrLit {
    pub parts: Vec<StrPart>,
    pub raw: bool,
}

impl StrLit {
    /// The text with placeholders written back as `{name}`. A string without placeholders is
    /// its one part, copied (without an allocation up to 24 bytes, which are held inline).
    pub fn text(&self) -> CompactString {
        if let [StrPart::Text(t)] = self.parts.as_slice() {
            return t.clone();
        }
        let mut s = CompactString::default();
        for p in &self.parts {
            match p {
                StrPart::Text(t) => s.push_str(t),
                StrPart::Placeholder(id) => {
                    s.push('{');
                    s.push_str(&id.name);
                    s.push('}');
                }
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StrPart {
    Text(CompactString),
    Placeholder(Ident),
}

/// Writes an expression back as recap source (for signatures in docs and help lines).
pub fn render_expr(e: &Expr) -> String {
    fn args(a: &Args) -> String {
        let mut parts: Vec<String> = a.positional.iter().map(render_expr).collect();
        parts.extend(
            a.named
                .iter()
                .map(|n| format!("{} = {}", n.name.name, render_expr(&n.value))),
        );
        parts.join(", ")
    }
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(f) => {
            let s = f.to_string();
            if s.contains(['.', 'e', 'E']) || !f.is_finite() {
                s
            } else {
                format!("{s}.0")
            }
        }
        ExprKind::Percent(p) => format!("{p}%"),
        ExprKind::Str(s) => {
            if s.raw {
                format!("r\"{}\"", s.text())
            } else {
                format!("{:?}", s.text())
            }
        }
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::List(items) => {
            let parts: Vec<String> = items.iter().map(render_expr).collect();
            format!("[{}]", parts.join(", "))
        }
        ExprKind::Name(id) => id.name.to_string(),
        ExprKind::Member { base, name } => format!("{}.{}", render_expr(base), name.name),
        ExprKind::Call { func, args: a } => format!("{}({})", func.name, args(a)),
        ExprKind::Method {
            receiver,
            name,
            args: a,
        } => format!("{}.{}({})", render_expr(receiver), name.name, args(a)),
        ExprKind::Neg(inner) => format!("-{}", render_expr(inner)),
        ExprKind::Binary { op, lhs, rhs } => {
            format!("{} {} {}", render_expr(lhs), op.symbol(), render_expr(rhs))
        }
    }
}

/// Writes a type expression back as recap source.
pub fn render_type(t: &TypeExpr) -> String {
    let parts: Vec<String> = t
        .alternatives
        .iter()
        .map(|a| match &a.arg {
            Some(inner) => format!("{}[{}]", a.name.name, render_type(inner)),
            None => a.name.name.to_string(),
        })
        .collect();
    format!("{}{}", parts.join(" | "), if t.optional { "?" } else { "" })
}
