//! Parse: takes the text of a `.recap` file and gives its typed AST (`ast::File`) plus syntax
//! diagnostics. pest reads the file with the grammar in grammar/recap.pest, the language's
//! specification; this module turns pest's pairs into the AST and pest's errors into plain
//! words.
//!
//! After a syntax error it reads one item at a time, so it resynchronises at the next line that
//! starts with an item keyword and reports the errors of later items in the same run. It never
//! panics: unexpected tree shapes become `recap::internal::parse_tree` diagnostics.

mod problems;

pub use problems::{ParseCode, ParseProblem};

use crate::ast::*;
use crate::diagnostic::{Diagnostic, Problem, Severity, Span};
use crate::internal::InternalProblem;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/recap.pest"]
struct RecapParser;

type PResult<T> = Result<T, Box<Diagnostic>>;

/// Parses a whole file. Returns the AST when the file has no syntax errors (the items that did
/// parse are still checked for later diagnostics by `parse_partial`).
pub fn parse(source: &str) -> (Option<File>, Vec<Diagnostic>) {
    let (file, diags) = parse_partial(source);
    if diags.iter().any(|d| d.severity == Severity::Error) {
        (None, diags)
    } else {
        (Some(file), diags)
    }
}

/// Parses every item that can be parsed; the file holds those, the diagnostics the rest.
pub fn parse_partial(source: &str) -> (File, Vec<Diagnostic>) {
    refused(source).unwrap_or_else(|| pest_items(source))
}

/// An empty file and the one diagnostic, when `source` is too large or nests too deep for
/// the parser (checked before it runs).
fn refused(source: &str) -> Option<(File, Vec<Diagnostic>)> {
    let d = too_large(source.len()).or_else(|| too_deep(source))?;
    let file = File {
        items: Vec::new(),
        span: Span::new(0, source.len()),
    };
    Some((file, vec![d]))
}

/// The pest parse of a file that `refused` let through.
fn pest_items(source: &str) -> (File, Vec<Diagnostic>) {
    let mut items = Vec::new();
    let mut diags = Vec::new();
    // pest's error detail (which literal tokens were expected, and how far they got) words
    // every syntax error. It is a process-wide switch that pest reads when a parse starts, so
    // it is simply left on: setting it here, before every parse, keeps it on whatever else in
    // the process did, and it costs a clean file's parse little (see docs/performance.md).
    pest::set_error_detail(true);
    // First the whole file in one parse. pest indexes the lines of its whole input on
    // every call, so reading item by item would cost time quadratic in the file's length.
    if let Ok(mut pairs) = RecapParser::parse(Rule::file, source) {
        if let Some(file) = pairs.next() {
            for pair in file.into_inner() {
                if pair.as_rule() == Rule::EOI {
                    continue;
                }
                match build_item(pair, 0, source) {
                    Ok(item) => items.push(item),
                    Err(d) => diags.push(*d),
                }
            }
            return (
                File {
                    items,
                    span: Span::new(0, source.len()),
                },
                diags,
            );
        }
    }
    // Slow path, for files with syntax errors: item by item, each parse bounded by the next
    // line that starts with an item keyword (so it stays linear), retried on the whole rest
    // when the bound cut an item (a stage whose items are not indented).
    parse_items(source, &mut items, &mut diags);
    (
        File {
            items,
            span: Span::new(0, source.len()),
        },
        diags,
    )
}

fn parse_items(source: &str, items: &mut Vec<Item>, diags: &mut Vec<Diagnostic>) {
    let mut pos = 0usize;
    'items: loop {
        pos = skip_blank(source, pos);
        if pos >= source.len() {
            break;
        }
        // An item is read up to the next line that starts with an item keyword. When the
        // parse runs into the end of that slice, the bound may have cut the item (a stage whose
        // items are not indented), so it is read again with the bound moved past twice as many
        // such lines each time (linear in all); an error before the end is the item's own.
        // Reading the whole rest of the file again instead cost time in its length for every
        // broken item, which made a file with an error in each item quadratic.
        let mut bound = resync(source, pos).unwrap_or(source.len());
        let mut step = 1;
        let parsed = loop {
            let Some(slice) = source.get(pos..bound) else {
                break 'items;
            };
            match RecapParser::parse(Rule::next_item, slice) {
                Err(e) if bound < source.len() && error_offset(&e) >= slice.trim_end().len() => {
                    for _ in 0..step {
                        bound = resync(source, bound).unwrap_or(source.len());
                    }
                    step *= 2;
                }
                other => break other,
            }
        };
        match parsed {
            Ok(mut pairs) => {
                let Some(pair) = pairs.next() else {
                    diags.push(internal(pos, "the parser read an empty item"));
                    break;
                };
                let end = pair.as_span().end();
                match build_item(pair, pos, source) {
                    Ok(item) => items.push(item),
                    Err(d) => diags.push(*d),
                }
                if end == 0 {
                    diags.push(internal(pos, "the parser made no progress"));
                    break;
                }
                pos += end;
            }
            Err(e) => {
                diags.push(syntax_error(&e, pos, source));
                match resync(source, pos) {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
}

/// The first offset at or after `pos` that is not whitespace or inside a comment.
fn skip_blank(source: &str, mut pos: usize) -> usize {
    let bytes = source.as_bytes();
    while let Some(&b) = bytes.get(pos) {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
            b'#' => {
                while bytes.get(pos).is_some_and(|&c| c != b'\n') {
                    pos += 1;
                }
            }
            _ => break,
        }
    }
    pos
}

/// How deeply brackets and prefix minus signs may nest. The parser and the checker recurse
/// once per level; real pipelines nest a handful of levels, and the limit keeps hostile input
/// from overflowing the stack.
pub const MAX_NESTING: usize = 100;

/// The largest file recap reads, in bytes. Spans, entity ids and stage numbers are kept in 32
/// bits (which keeps the syntax tree and the name table small); refusing larger files up front
/// keeps every one of them exact rather than clamped.
pub const MAX_SOURCE_BYTES: usize = u32::MAX as usize;

/// A `recap::parse::too_large` error for a file of `len` bytes beyond `MAX_SOURCE_BYTES`.
fn too_large(len: usize) -> Option<Diagnostic> {
    // The whole file is the problem, so the diagnostic has no label.
    (len > MAX_SOURCE_BYTES).then(|| Diagnostic::from(&ParseProblem::TooLarge { len }))
}

/// A `recap::parse::too_deep` error when brackets or `-` prefixes nest beyond `MAX_NESTING`.
/// Strings and comments are skipped; the scan is linear.
fn too_deep(source: &str) -> Option<Diagnostic> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut minus_run = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(b' ');
        match b {
            b'#' => {
                while i < bytes.len() && bytes.get(i) != Some(&b'\n') {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes.get(i) != Some(&b'"') {
                    if bytes.get(i) == Some(&b'\\') {
                        i += 1;
                    }
                    i += 1;
                }
                minus_run = 0;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                minus_run = 0;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                minus_run = 0;
            }
            b'-' => minus_run += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => minus_run = 0,
        }
        if depth + minus_run > MAX_NESTING {
            let at = if source.is_char_boundary(i) { i } else { 0 };
            return Some(
                ParseProblem::TooDeep
                    .at(Span::new(at, (at + 1).min(source.len())), "too deep here"),
            );
        }
        i += 1;
    }
    None
}

/// The keywords that start an item (the grammar's `item_start`): where reading resumes after a
/// syntax error. The seven after `use` declare a name, as `declared_names` takes them.
pub(crate) const ITEM_KEYWORDS: &[&str] = &[
    "use",
    "param",
    "let",
    "model",
    "source",
    "verifier",
    "objective",
    "eval",
    "reweight",
    "mix",
    "train",
    "stage",
    "fn",
    "enum",
];

/// The names that lines of `source` declare, read from the text alone: a line that starts
/// (after indentation) with a declaring keyword and a name. When a syntax error loses an item,
/// its name is still here, so a use of it elsewhere is not reported as unknown; declarations
/// may come in any order, and such an error would send the reader to declare what is declared.
pub fn declared_names(source: &str) -> std::collections::HashSet<&str> {
    let declaring = ITEM_KEYWORDS.get(1..8).unwrap_or_default();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = declaring.iter().find_map(|kw| line.strip_prefix(kw))?;
            let rest = rest.strip_prefix([' ', '\t'])?.trim_start();
            let name = &rest[..rest.find(|c| !is_name(c)).unwrap_or(rest.len())];
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The start of the first line after `from`'s line that begins (at column 0) with an item
/// keyword: where reading resumes after a syntax error.
fn resync(source: &str, from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let nl = source.get(at..)?.find('\n')?;
        at += nl + 1;
        let line = source.get(at..)?;
        for kw in ITEM_KEYWORDS {
            if let Some(after) = line.strip_prefix(kw) {
                let boundary = after
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
                if boundary {
                    return Some(at);
                }
            }
        }
    }
}

/// A `recap::internal::parse_tree` error at byte `at`: the tree had a shape the grammar rules
/// out, which is a bug in recapc rather than in the file.
fn internal(at: usize, what: &str) -> Diagnostic {
    InternalProblem::ParseTree(what).at(Span::new(at, at), "here")
}

/// The error of `problem` at `span`, boxed as the tree builders return it.
fn err(problem: ParseProblem, span: Span, label: &str) -> Box<Diagnostic> {
    Box::new(problem.at(span, label))
}

/// What a rule means to a person, for "expected ..." messages. `None` hides the rule.
fn rule_words(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "the end of the file",
        Rule::use_item | Rule::kw_use => "`use`",
        Rule::param_item | Rule::kw_param => "`param`",
        Rule::let_item | Rule::kw_let => "`let`",
        Rule::decl_item | Rule::decl_kind => {
            "a declaration (`model`, `source`, `verifier`, `objective`, `eval`)"
        }
        Rule::setting_item | Rule::setting_kind => "a setting (`reweight`, `mix`, `train`)",
        Rule::stage_item | Rule::kw_stage => "`stage`",
        Rule::fn_item | Rule::kw_fn => "`fn`",
        Rule::enum_item | Rule::kw_enum => "`enum`",
        Rule::kw_in => "`in`",
        Rule::expr
        | Rule::int
        | Rule::float
        | Rule::percent
        | Rule::string
        | Rule::raw_string
        | Rule::list
        | Rule::paren
        | Rule::neg => "an expression",
        Rule::ident | Rule::path | Rule::arg_key => "a name",
        Rule::call_args => "`(`",
        Rule::member => "`.`",
        Rule::add | Rule::sub | Rule::mul | Rule::div => "an operator",
        Rule::block => "a block `{ ... }`",
        Rule::field | Rule::named_arg => "`name = value`",
        Rule::type_expr | Rule::type_atom => "a type",
        Rule::optional => "`?`",
        Rule::range => "a range `in [lo, hi]`",
        Rule::range_open => "`[` or `(`",
        Rule::range_close => "`]` or `)`",
        Rule::bound => "a number or `inf`",
        Rule::param_sig | Rule::variadic => "a parameter",
        Rule::ret_type => "a kind",
        _ => return None,
    })
}

/// What is at `at`: a word, a character, or the end of the file.
fn found_at(source: &str, at: usize) -> String {
    let rest = source.get(at..).unwrap_or("");
    let mut chars = rest.chars();
    match chars.next() {
        None => "the end of the file".into(),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .take(40)
                .collect();
            format!("`{word}`")
        }
        Some('\n') => "the end of the line".into(),
        Some(c) => format!("`{c}`"),
    }
}

/// Where in its input a pest parse failed.
fn error_offset(e: &pest::error::Error<Rule>) -> usize {
    match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    }
}

fn syntax_error(e: &pest::error::Error<Rule>, base: usize, source: &str) -> Diagnostic {
    let mut rel = error_offset(e);
    let mut expected: Vec<String> = Vec::new();
    let mut push = |w: String| {
        if !expected.contains(&w) {
            expected.push(w);
        }
    };
    let mut use_rules = true;
    if let Some(attempts) = e.parse_attempts() {
        // Literal tokens (`=`, `)`) are tracked only as attempts; when they got further than
        // any rule, the error is where they were expected.
        if attempts.max_position > rel {
            rel = attempts.max_position;
            use_rules = false;
        }
        for t in attempts.expected_tokens() {
            let t = t.to_string();
            // Whitespace is matched by character ranges (`' '..' '`, `'\t'..'\n'`); it is
            // allowed everywhere and never what a person is missing.
            if t.split("..")
                .all(|end| !end.is_empty() && end.chars().all(char::is_whitespace))
            {
                continue;
            }
            let t = t.trim();
            if t == "#" || t.is_empty() {
                continue;
            }
            if t.contains("..") {
                if t.starts_with('0') {
                    push("a number".into());
                } else {
                    push("a name".into());
                }
            } else if t.len() <= 2 && !t.chars().any(|c| c.is_ascii_alphanumeric()) {
                push(format!("`{t}`"));
            }
        }
    }
    if use_rules {
        if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
            for r in positives {
                if let Some(w) = rule_words(*r) {
                    push(w.to_string());
                }
            }
        }
    }
    let at = base + rel;
    if let Some(d) = second_decimal_point(source, at).or_else(|| number_with_suffix(source, at)) {
        return d;
    }
    if expected.iter().any(|w| w == "an expression") {
        // Every way an expression can start is summed up by "an expression".
        let starts = ["a name", "a number", "`\"`", "`(`", "`-`", "`[`"];
        expected.retain(|w| !starts.contains(&w.as_str()));
    }
    expected.retain(|w| w != "`_`");
    if expected.iter().any(|w| w == "an operator") {
        let ops = ["`+`", "`-`", "`*`", "`/`"];
        expected.retain(|w| !ops.contains(&w.as_str()));
    }
    expected.sort_by_key(|w| (w.starts_with('`'), w.clone()));
    let found = found_at(source, at);
    let end = source
        .get(at..)
        .and_then(|r| r.chars().next())
        .map(|c| at + c.len_utf8())
        .unwrap_or(at);
    let at_end = at >= source.len();
    let d = ParseProblem::Unexpected { expected, found }.at(Span::new(at, end), "unexpected here");
    // At the end of the file the error is far from its cause, a bracket or string left open
    // somewhere in the item; pointing back at it saves a search through the whole item.
    match source.get(base..).filter(|_| at_end).and_then(unclosed) {
        Some((open, c)) => d.label(
            Span::new(base + open, base + open + 1),
            format!("this `{c}` is never closed"),
        ),
        None => d,
    }
}

/// The innermost bracket or string of `text` that is still open at its end: its offset and
/// character. Comments and the insides of strings are skipped, as the grammar skips them.
fn unclosed(text: &str) -> Option<(usize, char)> {
    let bytes = text.as_bytes();
    let mut open: Vec<(usize, u8)> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let after_name = i > 0
            && bytes
                .get(i - 1)
                .is_some_and(|p| p.is_ascii_alphanumeric() || *p == b'_');
        match b {
            b'(' | b'[' | b'{' => open.push((i, b)),
            b')' | b']' | b'}' => {
                open.pop();
            }
            b'#' => match text.get(i..).and_then(|r| r.find('\n')) {
                Some(nl) => i += nl,
                None => break,
            },
            b'"' => {
                // A plain string: a backslash escapes the next byte.
                let mut j = i + 1;
                loop {
                    match bytes.get(j) {
                        None => return Some((i, '"')),
                        Some(b'\\') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j;
            }
            b'r' if !after_name && matches!(bytes.get(i + 1), Some(b'"' | b'#')) => {
                let hashed = bytes.get(i + 1) == Some(&b'#');
                let (quote, close) = if hashed {
                    (i + 2, "\"#")
                } else {
                    (i + 1, "\"")
                };
                if bytes.get(quote) == Some(&b'"') {
                    match text.get(quote + 1..).and_then(|r| r.find(close)) {
                        Some(k) => i = quote + k + close.len(),
                        None => return Some((quote, '"')),
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    open.pop().map(|(at, b)| (at, char::from(b)))
}

/// A `recap::parse::syntax` error worded for a number with a second decimal point (`1.5.0`),
/// when the parser stopped at the digit after it. The grammar reads `1.5` and then expects a
/// field name after the `.`, which would be a baffling thing to say; versions and other dotted
/// text belong in quotes.
fn second_decimal_point(source: &str, at: usize) -> Option<Diagnostic> {
    let bytes = source.as_bytes();
    if !bytes.get(at)?.is_ascii_digit() || at < 1 || bytes.get(at - 1) != Some(&b'.') {
        return None;
    }
    let is_number_byte = |b: u8| b.is_ascii_digit() || b == b'.' || b == b'_';
    let start = bytes
        .get(..at)?
        .iter()
        .rposition(|&b| !is_number_byte(b))
        .map_or(0, |i| i + 1);
    let end = bytes
        .get(at..)?
        .iter()
        .position(|&b| !is_number_byte(b))
        .map_or(bytes.len(), |i| at + i);
    let literal = source.get(start..end)?;
    let starts_with_digit = literal.as_bytes().first().is_some_and(u8::is_ascii_digit);
    // A name before the digits (`x1.5.0`) is a member access gone wrong, not a number.
    let after_name = start > 0
        && bytes
            .get(start - 1)
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
    if !starts_with_digit || after_name || literal.matches('.').count() < 2 {
        return None;
    }
    Some(ParseProblem::SecondDecimalPoint { literal }.at(Span::new(start, end), "not a number"))
}

/// A `recap::parse::syntax` error worded for a number with letters stuck to it (`1k`, `5min`),
/// found where the parser stopped: at the letters (inside a call), or just after them (in a
/// block, where the letters read as the next field's name).
fn number_with_suffix(source: &str, at: usize) -> Option<Diagnostic> {
    let bytes = source.as_bytes();
    let is_letter = |b: &u8| b.is_ascii_alphabetic() || *b == b'_';
    // The letters: starting at `at`, or the word that ends before the blanks before `at`.
    let (word_start, word_end) = if bytes.get(at).is_some_and(is_letter) {
        let end = bytes
            .get(at..)?
            .iter()
            .position(|b| !is_letter(b) && !b.is_ascii_digit())
            .map_or(bytes.len(), |i| at + i);
        (at, end)
    } else {
        let end = bytes
            .get(..at)?
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'))
            .map(|i| i + 1)?;
        let start = bytes
            .get(..end)?
            .iter()
            .rposition(|b| !is_letter(b))
            .map_or(0, |i| i + 1);
        (start, end)
    };
    if word_start == 0 || word_start >= word_end || !bytes.get(word_start - 1)?.is_ascii_digit() {
        return None;
    }
    let start = bytes
        .get(..word_start)?
        .iter()
        .rposition(|b| !b.is_ascii_digit() && *b != b'.' && *b != b'_')
        .map_or(0, |i| i + 1);
    // Digits that end a name (`layer2x`) are not a number.
    if start > 0 && bytes.get(start - 1).is_some_and(is_letter) {
        return None;
    }
    let literal = source.get(start..word_end)?;
    Some(ParseProblem::NumberWithSuffix { literal }.at(Span::new(start, word_end), "not a number"))
}

fn span_of(pair: &Pair<Rule>, base: usize) -> Span {
    let s = pair.as_span();
    // A safety net: a rule never ends in the whitespace before an absent optional part.
    let trimmed = pair.as_str().trim_end().len();
    Span::new(base + s.start(), base + s.start() + trimmed)
}

/// The text of the `##` lines directly above byte offset `start`.
pub(crate) fn doc_above(source: &str, start: usize) -> Option<String> {
    let line_start = source.get(..start)?.rfind('\n').map(|i| i + 1).unwrap_or(0);
    // Only items that begin their line can have a doc comment.
    if !source.get(line_start..start)?.trim().is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    let mut end = line_start;
    while end > 0 {
        let prev_end = end - 1; // the '\n' ending the previous line
        let prev_start = source
            .get(..prev_end)?
            .rfind('\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let line = source.get(prev_start..prev_end)?.trim();
        match line.strip_prefix("##") {
            Some(text) => lines.push(
                text.strip_prefix(' ')
                    .unwrap_or(text)
                    .trim_end()
                    .to_string(),
            ),
            None => break,
        }
        end = prev_start;
    }
    if lines.is_empty() {
        return None;
    }
    lines.reverse();
    Some(lines.join("\n"))
}

struct Children<'i> {
    inner: pest::iterators::Pairs<'i, Rule>,
    parent: Span,
}

impl<'i> Children<'i> {
    fn new(pair: Pair<'i, Rule>, base: usize) -> Self {
        let parent = span_of(&pair, base);
        Children {
            inner: pair.into_inner(),
            parent,
        }
    }
    fn next(&mut self) -> PResult<Pair<'i, Rule>> {
        self.inner.next().ok_or_else(|| {
            Box::new(internal(
                self.parent.start(),
                "a syntax node is missing a part",
            ))
        })
    }
    fn peek_rule(&self) -> Option<Rule> {
        self.inner.peek().map(|p| p.as_rule())
    }
    fn next_if(&mut self, rule: Rule) -> Option<Pair<'i, Rule>> {
        if self.peek_rule() == Some(rule) {
            self.inner.next()
        } else {
            None
        }
    }
}

fn ident(pair: Pair<Rule>, base: usize) -> Ident {
    Ident {
        span: span_of(&pair, base),
        name: pair.as_str().into(),
    }
}

fn build_item(pair: Pair<Rule>, base: usize, source: &str) -> PResult<Item> {
    let span = span_of(&pair, base);
    let rule = pair.as_rule();
    let mut c = Children::new(pair, base);
    let kind = match rule {
        Rule::use_item => {
            let _kw = c.next()?;
            let path = c.next()?;
            ItemKind::Use {
                path: path.into_inner().map(|p| ident(p, base)).collect(),
            }
        }
        Rule::param_item => {
            let _kw = c.next()?;
            let name = ident(c.next()?, base);
            let ty = build_type(c.next()?, base)?;
            let value = build_expr(c.next()?, base)?;
            let range = match c.next_if(Rule::range) {
                Some(r) => Some(build_range(r, base)?),
                None => None,
            };
            if let Some(extra) = c.next_if(Rule::range) {
                return Err(once_only(&extra, base, "range"));
            }
            ItemKind::Param {
                name,
                ty,
                value,
                range,
            }
        }
        Rule::let_item => {
            let _kw = c.next()?;
            let name = ident(c.next()?, base);
            let value = build_expr(c.next()?, base)?;
            ItemKind::Let { name, value }
        }
        Rule::decl_item => {
            let kw = c.next()?;
            let kind_span = span_of(&kw, base);
            let kind = match kw.as_str() {
                "model" => DeclKind::Model,
                "source" => DeclKind::Source,
                "verifier" => DeclKind::Verifier,
                "objective" => DeclKind::Objective,
                _ => DeclKind::Eval,
            };
            let name = ident(c.next()?, base);
            let value = build_expr(c.next()?, base)?;
            let block = match c.next_if(Rule::block) {
                Some(b) => Some(build_block(b, base)?),
                None => None,
            };
            if let Some(extra) = c.next_if(Rule::block) {
                return Err(once_only(&extra, base, "block"));
            }
            ItemKind::Decl {
                kind,
                kind_span,
                name,
                value,
                block,
            }
        }
        Rule::setting_item => {
            let kw = c.next()?;
            let kind_span = span_of(&kw, base);
            let kind = match kw.as_str() {
                "reweight" => SettingKind::Reweight,
                "mix" => SettingKind::Mix,
                _ => SettingKind::Train,
            };
            let value = match c.next_if(Rule::expr) {
                Some(e) => Some(build_expr(e, base)?),
                None => None,
            };
            let block = match c.next_if(Rule::block) {
                Some(b) => Some(build_block(b, base)?),
                None => None,
            };
            if let Some(extra) = c.inner.next() {
                let what = if extra.as_rule() == Rule::block {
                    "block"
                } else {
                    "value"
                };
                return Err(once_only(&extra, base, what));
            }
            ItemKind::Setting {
                kind,
                kind_span,
                value,
                block,
            }
        }
        Rule::stage_item => {
            let _kw = c.next()?;
            let name = ident(c.next()?, base);
            let mut items = Vec::new();
            for p in c.inner.by_ref() {
                items.push(build_item(p, base, source)?);
            }
            ItemKind::Stage { name, items }
        }
        Rule::fn_item => {
            let _kw = c.next()?;
            let name = ident(c.next()?, base);
            let mut params = Vec::new();
            while let Some(p) = c.next_if(Rule::param_sig) {
                params.push(build_param_sig(p, base)?);
            }
            let ret = c.next()?;
            let mut rc = Children::new(ret, base);
            let ret = ident(rc.next()?, base);
            let ret_fields = rc.inner.map(|p| ident(p, base)).collect();
            ItemKind::Fn(FnSig {
                name,
                params,
                ret,
                ret_fields,
            })
        }
        Rule::enum_item => {
            let _kw = c.next()?;
            let name = ident(c.next()?, base);
            let members = c.inner.map(|p| ident(p, base)).collect();
            ItemKind::Enum { name, members }
        }
        _ => return Err(Box::new(internal(span.start(), "an unknown item rule"))),
    };
    Ok(Item {
        kind,
        span,
        doc: doc_above(source, span.start()),
    })
}

fn once_only(pair: &Pair<Rule>, base: usize, what: &str) -> Box<Diagnostic> {
    err(
        ParseProblem::OnceOnly { what },
        span_of(pair, base),
        "one too many",
    )
}

fn build_param_sig(pair: Pair<Rule>, base: usize) -> PResult<ParamSig> {
    let span = span_of(&pair, base);
    let mut c = Children::new(pair, base);
    let variadic = c.next_if(Rule::variadic).is_some();
    let name = ident(c.next()?, base);
    let ty = build_type(c.next()?, base)?;
    let mut default = None;
    let mut range = None;
    for part in c.inner.by_ref() {
        match part.as_rule() {
            Rule::default_value if default.is_none() && range.is_none() => {
                let mut d = Children::new(part, base);
                default = Some(build_expr(d.next()?, base)?);
            }
            Rule::range if range.is_none() => range = Some(build_range(part, base)?),
            _ => return Err(once_only(&part, base, "default or range")),
        }
    }
    Ok(ParamSig {
        name,
        variadic,
        ty,
        default,
        range,
        span,
    })
}

fn build_type(pair: Pair<Rule>, base: usize) -> PResult<TypeExpr> {
    let span = span_of(&pair, base);
    let mut alternatives = Vec::new();
    let mut optional = false;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::type_atom => {
                let mut c = Children::new(p, base);
                let name = ident(c.next()?, base);
                let arg = match c.next_if(Rule::type_expr) {
                    Some(t) => Some(Box::new(build_type(t, base)?)),
                    None => None,
                };
                alternatives.push(TypeAtom { name, arg });
            }
            Rule::optional => optional = true,
            _ => return Err(Box::new(internal(span.start(), "an unknown type part"))),
        }
    }
    Ok(TypeExpr {
        alternatives,
        optional,
        span,
    })
}

fn build_range(pair: Pair<Rule>, base: usize) -> PResult<Range> {
    let span = span_of(&pair, base);
    let mut c = Children::new(pair, base);
    let _kw = c.next()?;
    let open = c.next()?;
    let lo = c.next()?;
    let hi = c.next()?;
    let close = c.next()?;
    let bound = |p: Pair<Rule>| -> PResult<f64> {
        let text = p.as_str().replace('_', "");
        let sp = span_of(&p, base);
        match text.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            t => t
                .parse::<f64>()
                .map_err(|_| err(ParseProblem::BadBound { text: t }, sp, "not a number")),
        }
    };
    let lo_v = bound(lo)?;
    let hi_v = bound(hi)?;
    Ok(Range {
        lo: lo_v,
        lo_inclusive: open.as_str() == "[" && lo_v.is_finite(),
        hi: hi_v,
        hi_inclusive: close.as_str() == "]" && hi_v.is_finite(),
        span,
    })
}

fn build_block(pair: Pair<Rule>, base: usize) -> PResult<Block> {
    let span = span_of(&pair, base);
    let mut fields = Vec::new();
    for f in pair.into_inner() {
        let mut c = Children::new(f, base);
        let name = ident(c.next()?, base);
        let value = build_expr(c.next()?, base)?;
        fields.push(NamedArg { name, value });
    }
    Ok(Block { fields, span })
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::postfix(Rule::call_args) | Op::postfix(Rule::member))
    })
}

fn build_expr(pair: Pair<Rule>, base: usize) -> PResult<Expr> {
    pratt()
        .map_primary(|p| build_primary(p, base))
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let start = base + op.as_span().start();
            Ok(Expr {
                span: Span::new(start, rhs.span.end()),
                kind: ExprKind::Neg(Box::new(rhs)),
            })
        })
        .map_postfix(|lhs, op| {
            let lhs = lhs?;
            let op_span = span_of(&op, base);
            let span = Span::new(lhs.span.start(), op_span.end());
            match op.as_rule() {
                Rule::member => {
                    let mut c = Children::new(op, base);
                    let name = ident(c.next()?, base);
                    Ok(Expr {
                        span,
                        kind: ExprKind::Member {
                            base: Box::new(lhs),
                            name,
                        },
                    })
                }
                _ => {
                    let args = build_args(op, base)?;
                    match lhs.kind {
                        ExprKind::Name(func) => Ok(Expr {
                            span,
                            kind: ExprKind::Call {
                                func,
                                args: Box::new(args),
                            },
                        }),
                        ExprKind::Member { base: recv, name } => Ok(Expr {
                            span,
                            kind: ExprKind::Method {
                                receiver: recv,
                                name,
                                args: Box::new(args),
                            },
                        }),
                        _ => Err(err(
                            ParseProblem::NotCallable,
                            lhs.span,
                            "this is not a function name",
                        )),
                    }
                }
            }
        })
        .map_infix(|lhs, op, rhs| {
            let lhs = lhs?;
            let rhs = rhs?;
            let op = match op.as_rule() {
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                _ => BinOp::Div,
            };
            Ok(Expr {
                span: Span::new(lhs.span.start(), rhs.span.end()),
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            })
        })
        .parse(pair.into_inner())
}

fn build_args(pair: Pair<Rule>, base: usize) -> PResult<Args> {
    let span = span_of(&pair, base);
    let mut args = Args {
        span,
        ..Args::default()
    };
    for a in pair.into_inner() {
        match a.as_rule() {
            Rule::named_arg => {
                let mut c = Children::new(a, base);
                let name = ident(c.next()?, base);
                let value = build_expr(c.next()?, base)?;
                args.named.push(NamedArg { name, value });
            }
            _ => {
                let e = build_expr(a, base)?;
                if let Some(first_named) = args.named.first() {
                    return Err(Box::new(
                        ParseProblem::PositionalAfterNamed
                            .at(e.span, "positional argument")
                            .label(first_named.name.span, "after this named argument"),
                    ));
                }
                args.positional.push(e);
            }
        }
    }
    Ok(args)
}

fn number_text(p: &Pair<Rule>) -> String {
    p.as_str().replace('_', "")
}

fn parse_int(p: &Pair<Rule>, base: usize) -> PResult<i64> {
    number_text(p).parse::<i64>().map_err(|_| {
        err(
            ParseProblem::IntTooLarge { text: p.as_str() },
            span_of(p, base),
            "does not fit in 64 bits",
        )
    })
}

fn parse_float(p: &Pair<Rule>, base: usize) -> PResult<f64> {
    match number_text(p).parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(err(
            ParseProblem::FloatTooLarge { text: p.as_str() },
            span_of(p, base),
            "not a finite number",
        )),
    }
}

fn build_primary(pair: Pair<Rule>, base: usize) -> PResult<Expr> {
    let span = span_of(&pair, base);
    let kind = match pair.as_rule() {
        Rule::int => ExprKind::Int(parse_int(&pair, base)?),
        Rule::float => ExprKind::Float(parse_float(&pair, base)?),
        Rule::percent => {
            let mut c = Children::new(pair, base);
            let n = c.next()?;
            ExprKind::Percent(parse_float(&n, base)?)
        }
        // The grammar reads `true` and `false` as names (see `primary` in recap.pest).
        Rule::ident if pair.as_str() == "true" => ExprKind::Bool(true),
        Rule::ident if pair.as_str() == "false" => ExprKind::Bool(false),
        Rule::ident => ExprKind::Name(ident(pair, base)),
        Rule::paren => {
            let mut c = Children::new(pair, base);
            let inner = build_expr(c.next()?, base)?;
            // The parentheses belong to the expression's span, so labels cover them.
            return Ok(Expr {
                kind: inner.kind,
                span,
            });
        }
        Rule::list => {
            let mut items = Vec::new();
            for e in pair.into_inner() {
                items.push(build_expr(e, base)?);
            }
            ExprKind::List(items)
        }
        Rule::raw_string => {
            let mut text = String::new();
            for p in pair.into_inner() {
                if matches!(p.as_rule(), Rule::raw_text | Rule::raw_text_hash) {
                    text.push_str(p.as_str());
                }
            }
            ExprKind::Str(StrLit {
                parts: vec![StrPart::Text(text.into())],
                raw: true,
            })
        }
        Rule::string => ExprKind::Str(build_string(pair, base)?),
        _ => {
            return Err(Box::new(internal(
                span.start(),
                "an unknown expression rule",
            )))
        }
    };
    Ok(Expr { kind, span })
}

fn build_string(pair: Pair<Rule>, base: usize) -> PResult<StrLit> {
    let mut parts: Vec<StrPart> = Vec::new();
    let mut text = String::new();
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::str_text | Rule::lone_brace => text.push_str(p.as_str()),
            Rule::escape => {
                let c = match p.as_str() {
                    "\\n" => '\n',
                    "\\t" => '\t',
                    "\\r" => '\r',
                    "\\0" => '\0',
                    "\\\\" => '\\',
                    "\\\"" => '"',
                    "\\{" => '{',
                    "\\}" => '}',
                    other => {
                        return Err(err(
                            ParseProblem::BadEscape { escape: other },
                            span_of(&p, base),
                            "unknown escape",
                        ))
                    }
                };
                text.push(c);
            }
            Rule::placeholder => {
                if !text.is_empty() {
                    parts.push(StrPart::Text(std::mem::take(&mut text).into()));
                }
                let mut c = Children::new(p, base);
                parts.push(StrPart::Placeholder(ident(c.next()?, base)));
            }
            _ => {}
        }
    }
    if !text.is_empty() || parts.is_empty() {
        parts.push(StrPart::Text(text.into()));
    }
    Ok(StrLit { parts, raw: false })
}

#[cfg(test)]
mod tests {
    use super::{too_large, MAX_SOURCE_BYTES};

    /// A file past 4 GiB is one whole-file error; a file at the limit is read. (The check looks
    /// only at the length, so no 4 GiB text is built.)
    #[test]
    fn files_past_4_gib_are_refused_with_one_error() {
        assert!(too_large(MAX_SOURCE_BYTES).is_none());
        let d = too_large(MAX_SOURCE_BYTES + 1).expect("refused");
        assert_eq!(d.code, "recap::parse::too_large");
        assert!(d.labels.is_empty());
        assert!(d.message.contains("4294967296 bytes"), "{}", d.message);
    }
}
