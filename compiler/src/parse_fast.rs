//! The fast parser: takes the text of a `.recap` file and gives its AST (`ast::File`) when the
//! file is free of syntax errors, or `None` when it finds any error or anything it is unsure
//! of. It is the fast path of `parse::parse_partial`; on `None` the pest parser reads the file
//! again and produces the diagnostics, so this parser never reports anything itself.
//!
//! It must give exactly the AST that the pest grammar (`grammar/recap.pest`) and
//! `parse::build_item` give, spans included, for every file it accepts; the differential tests
//! (`compiler/tests/parsers_agree.rs`, and every input of `never_panics.rs`) check that. So
//! each function below follows one rule of the grammar, tries alternatives in the grammar's
//! order, and gives up (`Err(Bail)`) wherever pest would backtrack into another alternative,
//! since following pest there is harder than letting it do the work.
//!
//! Spans follow pest's rules: a rule's span ends after its last part, and when that part is an
//! optional or repeated part that matched nothing, the whitespace and comments before it
//! belong to the rule (so a declaration without a block ends after the comment on its line).
//! `parse::span_of` then trims trailing whitespace; `trimmed` does the same here.

use crate::ast::*;
use crate::diagnostic::Span;
use crate::lexer::{is_ident_continue, is_ident_start, Kind, Lexer, Token};

/// The fast parser gave up; the caller falls back to pest. It carries no reason: pest finds
/// and words the error.
#[derive(Debug)]
pub struct Bail;

type R<T> = Result<T, Bail>;

/// How deeply brackets, stages and prefix signs may nest before this parser gives up. The
/// `too_deep` check in `parse` rejects deeper nesting before this parser runs; this limit only
/// keeps the recursion bounded when it is called on its own.
const MAX_DEPTH: usize = 2 * crate::parse::MAX_NESTING;

/// Parses a whole file; `None` when pest must do it (an error, or something unusual).
pub fn parse_file(source: &str) -> Option<File> {
    let mut p = Parser::new(source);
    // Room for one item per 64 bytes, more than real pipelines have (their items average over
    // 100 bytes), trimmed in place at the end: a large file's item vector is allocated once
    // rather than copied at every doubling.
    let mut items = Vec::with_capacity(source.len() / 64 + 8);
    while p.cur.kind != Kind::Eof {
        items.push(p.item().ok()?);
    }
    items.shrink_to_fit();
    Some(File {
        items,
        span: Span::new(0, source.len()),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKw {
    Use,
    Param,
    Let,
    Decl(DeclKind),
    Setting(SettingKind),
    Stage,
    Fn,
    Enum,
}

/// The item keyword a word is, if any. A keyword is only a keyword as a whole word, as the
/// grammar's `!(ASCII_ALPHANUMERIC | "_")` after each keyword says.
fn item_keyword(word: &str) -> Option<ItemKw> {
    Some(match word {
        "model" => ItemKw::Decl(DeclKind::Model),
        "source" => ItemKw::Decl(DeclKind::Source),
        "verifier" => ItemKw::Decl(DeclKind::Verifier),
        "objective" => ItemKw::Decl(DeclKind::Objective),
        "eval" => ItemKw::Decl(DeclKind::Eval),
        "reweight" => ItemKw::Setting(SettingKind::Reweight),
        "mix" => ItemKw::Setting(SettingKind::Mix),
        "train" => ItemKw::Setting(SettingKind::Train),
        "let" => ItemKw::Let,
        "param" => ItemKw::Param,
        "use" => ItemKw::Use,
        "stage" => ItemKw::Stage,
        "fn" => ItemKw::Fn,
        "enum" => ItemKw::Enum,
        _ => return None,
    })
}

struct Parser<'s> {
    src: &'s str,
    lexer: Lexer<'s>,
    /// The next token, not yet consumed.
    cur: Token,
    /// The token after `cur`, once something looked that far.
    ahead: Option<Token>,
    /// The end of the last consumed token: where a rule that ends exactly at a token ends.
    prev_end: usize,
    depth: usize,
    /// Fields, named arguments and list elements being read, of every enclosing bracket at
    /// once. Each bracket pushes its elements here and, at its end, moves them into a vector of
    /// exactly their number: one allocation per bracket, where growing a vector element by
    /// element would reallocate and copy, and leave spare capacity for the rest of the check.
    named_stack: Vec<NamedArg>,
    expr_stack: Vec<Expr>,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        let mut lexer = Lexer::new(src);
        let cur = lexer.next_token();
        Parser {
            src,
            lexer,
            cur,
            ahead: None,
            prev_end: 0,
            depth: 0,
            named_stack: Vec::new(),
            expr_stack: Vec::new(),
        }
    }

    fn bump(&mut self) {
        self.prev_end = self.cur.end;
        self.cur = match self.ahead.take() {
            Some(t) => t,
            None => self.lexer.next_token(),
        };
    }

    fn peek2(&mut self) -> Token {
        match self.ahead {
            Some(t) => t,
            None => {
                let t = self.lexer.next_token();
                self.ahead = Some(t);
                t
            }
        }
    }

    fn text(&self, t: Token) -> &'s str {
        self.src.get(t.start..t.end).unwrap_or("")
    }

    /// Where a rule ends whose optional tail matched nothing: after the whitespace and
    /// comments that pest skipped before trying that tail, i.e. where the next token starts.
    fn after_skip(&self) -> usize {
        self.cur.start
    }

    /// The span `start..end` without trailing whitespace, as `parse::span_of` trims it.
    fn trimmed(&self, start: usize, end: usize) -> Span {
        let len = self
            .src
            .get(start..end)
            .map(|s| s.trim_end().len())
            .unwrap_or(end.saturating_sub(start));
        Span::new(start, start + len)
    }

    fn expect(&mut self, b: u8) -> R<()> {
        if self.cur.is(b) {
            self.bump();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// Consumes `b` when it directly follows the previous token (the second byte of `..` or
    /// `->`, which pest matches as one literal).
    fn expect_adjacent(&mut self, b: u8) -> R<()> {
        if self.cur.is(b) && self.cur.start == self.prev_end {
            self.bump();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    fn ident(&mut self) -> R<Ident> {
        if self.cur.kind != Kind::Word {
            return Err(Bail);
        }
        let t = self.cur;
        self.bump();
        Ok(Ident {
            name: self.text(t).into(),
            span: Span::new(t.start, t.end),
        })
    }

    fn cur_keyword(&self) -> Option<ItemKw> {
        if self.cur.kind == Kind::Word {
            item_keyword(self.text(self.cur))
        } else {
            None
        }
    }

    fn is_word(&self, w: &str) -> bool {
        self.cur.kind == Kind::Word && self.text(self.cur) == w
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(Bail)
        } else {
            Ok(())
        }
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // -----------------------------------------------------------------------------------------
    // Items

    /// One item (`item` in the grammar); the current token must be its keyword.
    fn item(&mut self) -> R<Item> {
        let kw = self.cur_keyword().ok_or(Bail)?;
        let kw_tok = self.cur;
        let start = kw_tok.start;
        self.bump();
        let (kind, raw_end) = match kw {
            ItemKw::Use => {
                // use_item = kw_use ~ path; path = ident ~ ("." ~ ident)*
                let mut path = vec![self.ident()?];
                let mut end = None;
                while self.cur.is(b'.') {
                    self.bump();
                    path.push(self.ident()?);
                    end = Some(self.prev_end);
                }
                (
                    ItemKind::Use { path },
                    end.unwrap_or_else(|| self.after_skip()),
                )
            }
            ItemKw::Param => {
                // param_item = kw_param ~ ident ~ ":" ~ type_expr ~ "=" ~ expr ~ range*
                let name = self.ident()?;
                self.expect(b':')?;
                let (ty, _) = self.type_expr()?;
                self.expect(b'=')?;
                let (value, _) = self.expr()?;
                let (range, end) = if self.is_word("in") {
                    (Some(self.range()?), self.prev_end)
                } else {
                    (None, self.after_skip())
                };
                if self.is_word("in") {
                    // A second range is an error that pest's path words.
                    return Err(Bail);
                }
                (
                    ItemKind::Param {
                        name,
                        ty,
                        value,
                        range,
                    },
                    end,
                )
            }
            ItemKw::Let => {
                // let_item = kw_let ~ ident ~ "=" ~ expr
                let name = self.ident()?;
                self.expect(b'=')?;
                let (value, end) = self.expr()?;
                (ItemKind::Let { name, value }, end)
            }
            ItemKw::Decl(kind) => {
                // decl_item = decl_kind ~ ident ~ "=" ~ expr ~ block*
                let name = self.ident()?;
                self.expect(b'=')?;
                let (value, _) = self.expr()?;
                let (block, end) = if self.cur.is(b'{') {
                    (Some(self.block()?), self.prev_end)
                } else {
                    (None, self.after_skip())
                };
                if self.cur.is(b'{') {
                    return Err(Bail);
                }
                (
                    ItemKind::Decl {
                        kind,
                        kind_span: Span::new(kw_tok.start, kw_tok.end),
                        name,
                        value,
                        block,
                    },
                    end,
                )
            }
            ItemKw::Setting(kind) => {
                // setting_item = setting_kind ~ (!item_start ~ (expr | block))*
                // Each round is an expression or a block; `build_item` allows one expression
                // and then one block, and anything more is an error pest's path words.
                let mut value = None;
                let mut block = None;
                let mut end = self.after_skip();
                loop {
                    if self.cur_keyword().is_some() {
                        break;
                    }
                    if self.starts_expr() {
                        if value.is_some() || block.is_some() {
                            return Err(Bail);
                        }
                        let (e, e_end) = self.expr()?;
                        value = Some(e);
                        end = e_end;
                    } else if self.cur.is(b'{') {
                        if block.is_some() {
                            return Err(Bail);
                        }
                        block = Some(self.block()?);
                        end = self.prev_end;
                    } else {
                        break;
                    }
                }
                (
                    ItemKind::Setting {
                        kind,
                        kind_span: Span::new(kw_tok.start, kw_tok.end),
                        value,
                        block,
                    },
                    end,
                )
            }
            ItemKw::Stage => {
                // stage_item = kw_stage ~ ident ~ "{" ~ (item ~ &(item_start | "}"))* ~ "}"
                let name = self.ident()?;
                self.expect(b'{')?;
                self.enter()?;
                let mut items = Vec::new();
                while !self.cur.is(b'}') {
                    items.push(self.item()?);
                    if !(self.cur.is(b'}') || self.cur_keyword().is_some()) {
                        return Err(Bail);
                    }
                }
                self.leave();
                self.bump();
                (ItemKind::Stage { name, items }, self.prev_end)
            }
            ItemKw::Fn => self.fn_item()?,
            ItemKw::Enum => {
                // enum_item = kw_enum ~ ident ~ "{" ~ ident ~ ("," ~ ident)* ~ ","? ~ "}"
                let name = self.ident()?;
                self.expect(b'{')?;
                let mut members = vec![self.ident()?];
                while self.cur.is(b',') {
                    self.bump();
                    if self.cur.is(b'}') {
                        break;
                    }
                    members.push(self.ident()?);
                }
                self.expect(b'}')?;
                (ItemKind::Enum { name, members }, self.prev_end)
            }
        };
        Ok(Item {
            kind,
            span: self.trimmed(start, raw_end),
            doc: crate::parse::doc_above(self.src, start),
        })
    }

    /// fn_item = kw_fn ~ ident ~ "(" ~ (param_sig ~ ("," ~ param_sig)* ~ ","?)? ~ ")" ~ "->" ~ ret_type
    fn fn_item(&mut self) -> R<(ItemKind, usize)> {
        let name = self.ident()?;
        self.expect(b'(')?;
        let mut params = Vec::new();
        while !self.cur.is(b')') {
            params.push(self.param_sig()?);
            if self.cur.is(b',') {
                self.bump();
            } else if !self.cur.is(b')') {
                return Err(Bail);
            }
        }
        self.bump();
        self.expect(b'-')?;
        self.expect_adjacent(b'>')?;
        // ret_type = ident ~ ("{" ~ ident ~ ("," ~ ident)* ~ ","? ~ "}")?
        let ret = self.ident()?;
        let mut ret_fields = Vec::new();
        let end = if self.cur.is(b'{') {
            self.bump();
            ret_fields.push(self.ident()?);
            while self.cur.is(b',') {
                self.bump();
                if self.cur.is(b'}') {
                    break;
                }
                ret_fields.push(self.ident()?);
            }
            self.expect(b'}')?;
            self.prev_end
        } else {
            self.after_skip()
        };
        Ok((
            ItemKind::Fn(FnSig {
                name,
                params,
                ret,
                ret_fields,
            }),
            end,
        ))
    }

    /// param_sig = variadic? ~ ident ~ ":" ~ type_expr ~ (default_value | range)*
    fn param_sig(&mut self) -> R<ParamSig> {
        let start = self.cur.start;
        let variadic = self.cur.is(b'.');
        if variadic {
            self.bump();
            self.expect_adjacent(b'.')?;
        }
        let name = self.ident()?;
        self.expect(b':')?;
        let (ty, _) = self.type_expr()?;
        let mut default = None;
        let mut range = None;
        let mut end = self.after_skip();
        loop {
            if self.cur.is(b'=') {
                // `build_param_sig` takes a default only before any range, once.
                if default.is_some() || range.is_some() {
                    return Err(Bail);
                }
                self.bump();
                let (e, e_end) = self.expr()?;
                default = Some(e);
                end = e_end;
            } else if self.is_word("in") {
                if range.is_some() {
                    return Err(Bail);
                }
                range = Some(self.range()?);
                end = self.prev_end;
            } else {
                break;
            }
        }
        Ok(ParamSig {
            name,
            variadic,
            ty,
            default,
            range,
            span: self.trimmed(start, end),
        })
    }

    /// type_expr = type_atom ~ (("|" ~ type_atom) | optional)*; gives the type and where the
    /// rule ends before trimming.
    fn type_expr(&mut self) -> R<(TypeExpr, usize)> {
        self.enter()?;
        let start = self.cur.start;
        let (first, mut end) = self.type_atom()?;
        let mut alternatives = vec![first];
        let mut optional = false;
        loop {
            if self.cur.is(b'|') {
                self.bump();
                let (atom, atom_end) = self.type_atom()?;
                alternatives.push(atom);
                end = atom_end;
            } else if self.cur.is(b'?') {
                self.bump();
                optional = true;
                end = self.prev_end;
            } else {
                break;
            }
        }
        self.leave();
        Ok((
            TypeExpr {
                alternatives,
                optional,
                span: self.trimmed(start, end),
            },
            end,
        ))
    }

    /// type_atom = ident ~ ("[" ~ type_expr ~ "]")?
    fn type_atom(&mut self) -> R<(TypeAtom, usize)> {
        let name = self.ident()?;
        if self.cur.is(b'[') {
            self.bump();
            let (inner, _) = self.type_expr()?;
            self.expect(b']')?;
            Ok((
                TypeAtom {
                    name,
                    arg: Some(Box::new(inner)),
                },
                self.prev_end,
            ))
        } else {
            Ok((TypeAtom { name, arg: None }, self.after_skip()))
        }
    }

    /// range = kw_in ~ range_open ~ bound ~ "," ~ bound ~ range_close
    fn range(&mut self) -> R<Range> {
        let start = self.cur.start;
        self.bump();
        let lo_open = if self.cur.is(b'[') || self.cur.is(b'(') {
            self.cur.is(b'[')
        } else {
            return Err(Bail);
        };
        self.bump();
        let lo = self.bound()?;
        self.expect(b',')?;
        let hi = self.bound()?;
        let hi_closed = if self.cur.is(b']') || self.cur.is(b')') {
            self.cur.is(b']')
        } else {
            return Err(Bail);
        };
        self.bump();
        Ok(Range {
            lo,
            lo_inclusive: lo_open && lo.is_finite(),
            hi,
            hi_inclusive: hi_closed && hi.is_finite(),
            span: Span::new(start, self.prev_end),
        })
    }

    /// bound = @{ "-"? ~ ("inf" | float | int) }: atomic, so a `-` must touch its number.
    fn bound(&mut self) -> R<f64> {
        let negative = self.cur.is(b'-');
        if negative {
            self.bump();
            if self.cur.start != self.prev_end {
                return Err(Bail);
            }
        }
        let t = self.cur;
        let v = match t.kind {
            Kind::Word if self.text(t) == "inf" => f64::INFINITY,
            Kind::Int | Kind::Float => number(self.text(t))?,
            _ => return Err(Bail),
        };
        self.bump();
        Ok(if negative { -v } else { v })
    }

    /// block = "{" ~ (field ~ ","?)* ~ "}"; field = ident ~ "=" ~ expr
    fn block(&mut self) -> R<Block> {
        let start = self.cur.start;
        self.bump();
        self.enter()?;
        let base = self.named_stack.len();
        while !self.cur.is(b'}') {
            let name = self.ident()?;
            self.expect(b'=')?;
            let (value, _) = self.expr()?;
            self.named_stack.push(NamedArg { name, value });
            if self.cur.is(b',') {
                self.bump();
            }
        }
        self.leave();
        self.bump();
        Ok(Block {
            fields: self.named_stack.drain(base..).collect(),
            span: Span::new(start, self.prev_end),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Expressions

    /// Whether the current token can start an expression: a prefix `-` or a primary. Must
    /// cover every token pest's `expr` can start with, since a setting stops reading values
    /// at the first token outside this set.
    fn starts_expr(&self) -> bool {
        matches!(
            self.cur.kind,
            Kind::Word
                | Kind::Int
                | Kind::Float
                | Kind::Percent
                | Kind::Str
                | Kind::RawStr
                | Kind::RawStrHash
                | Kind::Punct(b'-' | b'[' | b'(')
        )
    }

    /// expr = prefix* ~ primary ~ postfix* ~ (infix ~ prefix* ~ primary ~ postfix*)*, read by
    /// precedence climbing as pest's Pratt parser reads it: `+ -` below `* /`, both
    /// left-associative, prefix `-` above them, postfix calls and members above all.
    ///
    /// Gives the expression and where the `expr` rule ends: after the whitespace that follows
    /// it, except when an operator was read and the last operand ends with a postfix (then the
    /// rule's last repetition ends exactly at that postfix).
    fn expr(&mut self) -> R<(Expr, usize)> {
        self.enter()?;
        let mut any_infix = false;
        let (first, mut last_postfix) = self.operand()?;
        let mut sum = self.product_tail(first, &mut any_infix, &mut last_postfix)?;
        loop {
            let op = match self.cur.kind {
                Kind::Punct(b'+') => BinOp::Add,
                Kind::Punct(b'-') => BinOp::Sub,
                _ => break,
            };
            self.bump();
            any_infix = true;
            let (rhs, pf) = self.operand()?;
            last_postfix = pf;
            let rhs = self.product_tail(rhs, &mut any_infix, &mut last_postfix)?;
            sum = binary(op, sum, rhs);
        }
        self.leave();
        let end = if any_infix && last_postfix {
            self.prev_end
        } else {
            self.after_skip()
        };
        Ok((sum, end))
    }

    fn product_tail(
        &mut self,
        mut lhs: Expr,
        any_infix: &mut bool,
        last_postfix: &mut bool,
    ) -> R<Expr> {
        loop {
            let op = match self.cur.kind {
                Kind::Punct(b'*') => BinOp::Mul,
                Kind::Punct(b'/') => BinOp::Div,
                _ => return Ok(lhs),
            };
            self.bump();
            *any_infix = true;
            let (rhs, pf) = self.operand()?;
            *last_postfix = pf;
            lhs = binary(op, lhs, rhs);
        }
    }

    /// prefix* ~ primary ~ postfix*: gives the operand and whether it ends with a postfix.
    fn operand(&mut self) -> R<(Expr, bool)> {
        if self.cur.is(b'-') {
            let start = self.cur.start;
            self.bump();
            self.enter()?;
            let (inner, pf) = self.operand()?;
            self.leave();
            return Ok((
                Expr {
                    span: Span::new(start, inner.span.end()),
                    kind: ExprKind::Neg(Box::new(inner)),
                },
                pf,
            ));
        }
        let mut e = self.primary()?;
        let mut postfix = false;
        loop {
            if self.cur.is(b'(') {
                let args = self.call_args()?;
                let span = Span::new(e.span.start(), args.span.end());
                let kind = match e.kind {
                    ExprKind::Name(func) => ExprKind::Call {
                        func: func.ident,
                        args,
                    },
                    ExprKind::Member { base, name } => ExprKind::Method {
                        receiver: base,
                        name,
                        args,
                    },
                    // `recap::parse::not_callable`, worded by pest's path.
                    _ => return Err(Bail),
                };
                e = Expr { kind, span };
            } else if self.cur.is(b'.') {
                self.bump();
                let name = self.ident()?;
                let span = Span::new(e.span.start(), name.span.end());
                e = Expr {
                    kind: ExprKind::Member {
                        base: Box::new(e),
                        name,
                    },
                    span,
                };
            } else {
                return Ok((e, postfix));
            }
            postfix = true;
        }
    }

    /// primary = string | raw_string | ident | percent | float | int | list | paren
    fn primary(&mut self) -> R<Expr> {
        let t = self.cur;
        let span = Span::new(t.start, t.end);
        let kind = match t.kind {
            Kind::Str => ExprKind::Str(self.string(t)?),
            Kind::RawStr | Kind::RawStrHash => {
                let open = if t.kind == Kind::RawStr { 2 } else { 3 };
                let text = self
                    .src
                    .get(t.start + open..t.end - (open - 1))
                    .ok_or(Bail)?;
                ExprKind::Str(StrLit {
                    parts: vec![StrPart::Text(text.into())],
                    raw: true,
                })
            }
            // The grammar reads `true` and `false` as names; `build_primary` turns them into
            // booleans.
            Kind::Word => match self.text(t) {
                "true" => ExprKind::Bool(true),
                "false" => ExprKind::Bool(false),
                name => ExprKind::Name(
                    Ident {
                        name: name.into(),
                        span,
                    }
                    .into(),
                ),
            },
            Kind::Int => ExprKind::Int(int(self.text(t))?),
            Kind::Float => ExprKind::Float(finite(number(self.text(t))?)?),
            Kind::Percent => {
                let text = self.text(t);
                let digits = text.get(..text.len() - 1).ok_or(Bail)?;
                ExprKind::Percent(finite(number(digits)?)?)
            }
            Kind::Punct(b'[') => return self.list(),
            Kind::Punct(b'(') => {
                // paren = "(" ~ expr ~ ")"; the parentheses belong to the span.
                self.bump();
                let (inner, _) = self.expr()?;
                self.expect(b')')?;
                return Ok(Expr {
                    kind: inner.kind,
                    span: Span::new(t.start, self.prev_end),
                });
            }
            _ => return Err(Bail),
        };
        self.bump();
        Ok(Expr { kind, span })
    }

    /// list = "[" ~ (expr ~ ("," ~ expr)* ~ ","?)? ~ "]"
    fn list(&mut self) -> R<Expr> {
        let start = self.cur.start;
        self.bump();
        let base = self.expr_stack.len();
        while !self.cur.is(b']') {
            let item = self.expr()?.0;
            self.expr_stack.push(item);
            if self.cur.is(b',') {
                self.bump();
            } else if !self.cur.is(b']') {
                return Err(Bail);
            }
        }
        self.bump();
        Ok(Expr {
            kind: ExprKind::List(self.expr_stack.drain(base..).collect()),
            span: Span::new(start, self.prev_end),
        })
    }

    /// call_args = "(" ~ (arg ~ ("," ~ arg)* ~ ","?)? ~ ")"; arg = named_arg | expr
    fn call_args(&mut self) -> R<Box<Args>> {
        let start = self.cur.start;
        self.bump();
        let (positional_base, named_base) = (self.expr_stack.len(), self.named_stack.len());
        while !self.cur.is(b')') {
            if self.cur.kind == Kind::Word && self.peek2().is(b'=') {
                let name = self.ident()?;
                self.bump();
                let (value, _) = self.expr()?;
                self.named_stack.push(NamedArg { name, value });
            } else {
                // `recap::parse::positional_after_named` is worded by pest's path.
                if self.named_stack.len() > named_base {
                    return Err(Bail);
                }
                let arg = self.expr()?.0;
                self.expr_stack.push(arg);
            }
            if self.cur.is(b',') {
                self.bump();
            } else if !self.cur.is(b')') {
                return Err(Bail);
            }
        }
        self.bump();
        Ok(Box::new(Args {
            positional: self.expr_stack.drain(positional_base..).collect(),
            named: self.named_stack.drain(named_base..).collect(),
            span: Span::new(start, self.prev_end),
        }))
    }

    /// string = "\"" ~ (escape | placeholder | lone_brace | str_text)* ~ "\"", as
    /// `parse::build_string` turns it into text and placeholders.
    fn string(&self, t: Token) -> R<StrLit> {
        let bytes = self.src.as_bytes();
        let end = t.end - 1;
        let mut i = t.start + 1;
        let mut parts = Vec::new();
        let mut text = String::new();
        while i < end {
            match bytes.get(i).copied().ok_or(Bail)? {
                b'\\' => {
                    let c = match bytes.get(i + 1).copied().ok_or(Bail)? {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'0' => '\0',
                        b'\\' => '\\',
                        b'"' => '"',
                        b'{' => '{',
                        b'}' => '}',
                        // `recap::parse::bad_escape`, worded by pest's path.
                        _ => return Err(Bail),
                    };
                    text.push(c);
                    i += 2;
                }
                b'{' => {
                    // placeholder = "{" ~ ident ~ "}", with nothing between; anything else
                    // is a literal brace.
                    let name_start = i + 1;
                    let mut k = name_start;
                    if bytes.get(k).is_some_and(|&b| is_ident_start(b)) {
                        k += 1;
                        while bytes.get(k).is_some_and(|&b| is_ident_continue(b)) {
                            k += 1;
                        }
                    }
                    if k > name_start && k < end && bytes.get(k) == Some(&b'}') {
                        if !text.is_empty() {
                            parts.push(StrPart::Text(std::mem::take(&mut text).into()));
                        }
                        parts.push(StrPart::Placeholder(Ident {
                            name: self.src.get(name_start..k).ok_or(Bail)?.into(),
                            span: Span::new(name_start, k),
                        }));
                        i = k + 1;
                    } else {
                        text.push('{');
                        i += 1;
                    }
                }
                _ => {
                    let run = bytes
                        .get(i..end)
                        .ok_or(Bail)?
                        .iter()
                        .position(|&b| matches!(b, b'\\' | b'{'))
                        .map_or(end, |k| i + k);
                    text.push_str(self.src.get(i..run).ok_or(Bail)?);
                    i = run;
                }
            }
        }
        if !text.is_empty() || parts.is_empty() {
            parts.push(StrPart::Text(text.into()));
        }
        Ok(StrLit { parts, raw: false })
    }
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr) -> Expr {
    Expr {
        span: Span::new(lhs.span.start(), rhs.span.end()),
        kind: ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
    }
}

/// The text of a number without its `_` separators (borrowed when it has none).
fn digits(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('_') {
        std::borrow::Cow::Owned(text.replace('_', ""))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// An int; too large for 64 bits is `recap::parse::number_too_large`, worded by pest's path.
fn int(text: &str) -> R<i64> {
    digits(text).parse::<i64>().map_err(|_| Bail)
}

fn number(text: &str) -> R<f64> {
    digits(text).parse::<f64>().map_err(|_| Bail)
}

/// A float must be finite (`recap::parse::number_too_large` otherwise, worded by pest's path).
fn finite(v: f64) -> R<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Bail)
    }
}
