//! The formatter behind `recapc fmt`: takes the text of a `.recap` file, gives it in the one
//! canonical layout, or the syntax errors that stop it. Pure and total, like the rest of the
//! compiler.
//!
//! The layout works on tokens, not on the syntax tree, so that every comment stays where it was
//! written and the tokens themselves (names, numbers, strings) are never rewritten: formatting
//! cannot change what a file means, and so never changes its plan. What it decides is the
//! whitespace: one space between tokens except where the notation is tight (`f(x)`, `a.b`,
//! `list[int]`, `-1`, `10%`), two spaces of indentation per open bracket, at most one blank
//! line in a row, no trailing spaces, and one newline at the end. Line breaks are the writer's:
//! the formatter keeps them, so a block written on one line stays on one line. Trailing
//! comments on consecutive lines are aligned one column past the longest line's code.

use crate::diagnostic::{Diagnostic, Severity};

/// One indentation level.
const INDENT: &str = "  ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A name, keyword or number (a percentage included), written as it is.
    Word(&'a str),
    /// A string or raw string, verbatim (it may span lines).
    Str(&'a str),
    /// An operator or a bracket.
    Punct(&'a str),
}

/// One source line: its tokens and the comment that ends it, if any.
#[derive(Debug, Default)]
struct Line<'a> {
    toks: Vec<Tok<'a>>,
    comment: Option<&'a str>,
}

/// The text in canonical layout, or the errors of a file that does not parse: a file with a
/// syntax error is left alone, as no layout of it can be trusted to keep its meaning.
pub fn format(source: &str) -> Result<String, Vec<Diagnostic>> {
    let (_, diags) = crate::parse::parse_partial(source);
    let errors: Vec<Diagnostic> = diags
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let formatted = layout(&lines(source));
    // The tokens are read without the grammar, which decides some of them by context (after
    // `use`, `r#"` is a name and a comment, not a raw string). Where the two readings part,
    // a layout could move text inside what the parser reads as a comment or a string, and a
    // second pass would read the result differently again; such a text is left as written,
    // which every pass then leaves alone.
    let faithful = without_whitespace(&formatted) == without_whitespace(source)
        && layout(&lines(&formatted)) == formatted;
    Ok(if faithful {
        formatted
    } else {
        source.to_string()
    })
}

/// The text without any whitespace.
fn without_whitespace(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Splits the text into lines of tokens. The text parsed, so every character is part of a
/// token, a comment or whitespace; a character that is none of these is kept as a token of
/// its own rather than dropped.
fn lines(source: &str) -> Vec<Line<'_>> {
    let bytes = source.as_bytes();
    let mut out = vec![Line::default()];
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        let rest = source.get(i..).unwrap_or_default();
        match b {
            b'\n' => {
                out.push(Line::default());
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                let len = rest.find('\n').unwrap_or(rest.len());
                if let Some(l) = out.last_mut() {
                    l.comment = rest.get(..len).map(str::trim_end);
                }
                i += len;
                continue;
            }
            b'"' => i += string_len(rest),
            // A raw string; one that never closes is the name `r` and then a comment
            // (`r#"...`), as the parser read it: the file parsed.
            b'r' if raw_string_len(rest).is_some() => i += raw_string_len(rest).unwrap_or(1),
            b'0'..=b'9' => i += number_len(rest),
            b if b.is_ascii_alphabetic() || b == b'_' => {
                i += rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
            }
            _ if rest.starts_with("->") || rest.starts_with("..") => i += 2,
            _ => i += rest.chars().next().map_or(1, char::len_utf8),
        }
        let text = source.get(start..i).unwrap_or_default();
        let tok = match b {
            b'"' | b'r' if text.ends_with('"') || text.ends_with("\"#") => Tok::Str(text),
            b'0'..=b'9' | b'_' | b'a'..=b'z' | b'A'..=b'Z' => Tok::Word(text),
            _ => Tok::Punct(text),
        };
        if let Some(l) = out.last_mut() {
            l.toks.push(tok);
        }
    }
    out
}

/// The length of the raw string (`r"..."` or `r#"..."#`) that starts `rest`, when it is one
/// that closes.
fn raw_string_len(rest: &str) -> Option<usize> {
    let (open, close) = if rest.starts_with("r#\"") {
        (3, "\"#")
    } else if rest.starts_with("r\"") {
        (2, "\"")
    } else {
        return None;
    };
    let body = rest.get(open..)?;
    body.find(close).map(|e| open + e + close.len())
}

/// The length of the string literal that starts `rest` (at its `"`), escapes included.
fn string_len(rest: &str) -> usize {
    let mut chars = rest.char_indices().skip(1);
    while let Some((j, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => return j + 1,
            _ => {}
        }
    }
    rest.len()
}

/// The length of the number (`1_000`, `2.5`, `1e-4`, `10%`) that starts `rest`.
fn number_len(rest: &str) -> usize {
    let b = rest.as_bytes();
    let digits = |mut j: usize| {
        while b.get(j).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
            j += 1;
        }
        j
    };
    let mut j = digits(0);
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j = digits(j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
        if b.get(j + 1 + sign).is_some_and(u8::is_ascii_digit) {
            j = digits(j + 1 + sign);
        }
    }
    if b.get(j) == Some(&b'%') {
        j += 1;
    }
    j
}

fn is_opener(t: Tok) -> bool {
    matches!(t, Tok::Punct("(" | "[" | "{"))
}

fn is_closer(t: Tok) -> bool {
    matches!(t, Tok::Punct(")" | "]" | "}"))
}

/// Whether a `-` after `prev` negates rather than subtracts: it does where no operand ends
/// just before it.
fn is_unary(prev: Option<Tok>) -> bool {
    match prev {
        None => true,
        Some(Tok::Word(w)) => w == "in",
        Some(Tok::Str(_)) => false,
        Some(p) => !is_closer(p),
    }
}

/// Whether a line that starts with `first`, after a line that ended with `last`, continues an
/// expression, and so is indented one level more than the brackets alone say.
fn continues(last: Option<Tok>, first: Option<Tok>) -> bool {
    let operator = |t: Option<Tok>| {
        matches!(
            t,
            Some(Tok::Punct("=" | "+" | "-" | "*" | "/" | "|" | "->" | ":"))
        )
    };
    let binary_start = match first {
        Some(Tok::Punct("+" | "*" | "/" | "|" | "->" | ".")) => true,
        Some(Tok::Punct("-")) => !is_unary(last),
        _ => false,
    };
    binary_start || operator(last)
}

/// The code of one line with canonical spacing between its tokens.
fn render(toks: &[Tok]) -> String {
    let mut out = String::new();
    let mut prev: Option<Tok> = None;
    let mut prev_unary_minus = false;
    // Inside the fields of a signature's return type, `-> Source{prompt, answer}`, which the
    // stdlib writes tight, as one type.
    let mut in_return_fields = false;
    for (i, &t) in toks.iter().enumerate() {
        let after_arrow = i >= 2 && toks.get(i - 2) == Some(&Tok::Punct("->"));
        let opens_fields = t == Tok::Punct("{") && after_arrow;
        let tight = opens_fields || (in_return_fields && t == Tok::Punct("}"));
        if let Some(p) = prev {
            if !tight
                && space_between(p, t, prev_unary_minus)
                && !(in_return_fields && p == Tok::Punct("{"))
            {
                out.push(' ');
            }
        }
        if opens_fields {
            in_return_fields = true;
        } else if t == Tok::Punct("}") {
            in_return_fields = false;
        }
        prev_unary_minus = t == Tok::Punct("-") && is_unary(prev);
        out.push_str(match t {
            Tok::Word(s) | Tok::Str(s) | Tok::Punct(s) => s,
        });
        prev = Some(t);
    }
    out
}

/// Whether one space separates `prev` and `next` on a line.
fn space_between(prev: Tok, next: Tok, prev_unary_minus: bool) -> bool {
    if prev_unary_minus {
        return false;
    }
    match (prev, next) {
        (_, Tok::Punct(")" | "]" | "," | "." | "?" | ":")) => false,
        (Tok::Punct("{"), Tok::Punct("}")) => false,
        (Tok::Punct("(" | "[" | "." | ".."), _) => false,
        // A call, a signature or a type argument: `f(x)`, `list[int]`; `in [0, 1)` is a range.
        (Tok::Word(w), Tok::Punct("(" | "[")) => w == "in",
        (Tok::Punct(")" | "]"), Tok::Punct("(" | "[")) => false,
        _ => true,
    }
}

/// Lays the lines out: indentation from the brackets open at each line's start, blank lines
/// collapsed, trailing comments aligned, one newline at the end.
fn layout(lines: &[Line]) -> String {
    // (indent, code, comment) per line; `None` for a blank line.
    let mut laid: Vec<Option<(usize, String, Option<&str>)>> = Vec::new();
    let mut depth: usize = 0;
    let mut last: Option<Tok> = None;
    for line in lines {
        if line.toks.is_empty() && line.comment.is_none() {
            if laid.last().is_some_and(Option::is_some) {
                laid.push(None);
            }
            continue;
        }
        let leading_closers = line.toks.iter().take_while(|t| is_closer(**t)).count();
        let first = line.toks.first().copied();
        let extra = usize::from(first.is_some() && continues(last, first));
        let indent = depth.saturating_sub(leading_closers) + extra;
        for &t in &line.toks {
            if is_opener(t) {
                depth += 1;
            } else if is_closer(t) {
                depth = depth.saturating_sub(1);
            }
        }
        if let Some(&t) = line.toks.last() {
            last = Some(t);
        }
        laid.push(Some((indent, render(&line.toks), line.comment)));
    }
    while laid.last().is_some_and(Option::is_none) {
        laid.pop();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < laid.len() {
        // A run of consecutive lines with code and a trailing comment shares one comment column.
        let trailing = |l: &Option<(usize, String, Option<&str>)>| {
            l.as_ref()
                .is_some_and(|(_, code, c)| !code.is_empty() && c.is_some())
        };
        let mut end = i + 1;
        if laid.get(i).is_some_and(trailing) {
            while laid.get(end).is_some_and(trailing) {
                end += 1;
            }
        }
        let column = laid
            .get(i..end)
            .unwrap_or_default()
            .iter()
            .flatten()
            .map(|(indent, code, _)| indent * INDENT.len() + code.chars().count())
            .max()
            .unwrap_or(0);
        for l in laid.get(i..end).unwrap_or_default() {
            match l {
                None => {}
                Some((indent, code, comment)) => {
                    let mut text = INDENT.repeat(*indent);
                    text.push_str(code);
                    if let Some(c) = comment {
                        if !code.is_empty() {
                            let width = text.chars().count();
                            text.push_str(&" ".repeat(column - width + 1));
                        }
                        text.push_str(c);
                    }
                    out.push_str(&text);
                }
            }
            out.push('\n');
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        format(s).unwrap_or_else(|e| panic!("{s}: {e:#?}"))
    }

    #[test]
    fn spacing_is_canonical() {
        assert_eq!(
            fmt("model   policy=hf( \"m\" ){dtype=bf16}\n"),
            "model policy = hf(\"m\") { dtype = bf16 }\n"
        );
        assert_eq!(
            fmt("param lr:float=1e-4 in ( 0 ,inf )\nlet x=-lr*2+3- -1\nlet y=[ 1,-2 ]\n"),
            "param lr: float = 1e-4 in (0, inf)\nlet x = -lr * 2 + 3 - -1\nlet y = [1, -2]\n"
        );
        assert_eq!(
            fmt("fn f(a :list[ int ]?, ..rest:Extractor)->Source{prompt,answer}\n"),
            "fn f(a: list[int]?, ..rest: Extractor) -> Source{prompt, answer}\n"
        );
    }

    #[test]
    fn blocks_are_indented_and_comments_kept_in_place() {
        let src = "\n\n# head\nobjective o = grpo(s) {   # opens\n        rewards = [a]  # why\n group = 8 # size\n\n\n\n   # inside\n}\n\n\n";
        assert_eq!(
            fmt(src),
            "# head\nobjective o = grpo(s) { # opens\n  rewards = [a]         # why\n  group = 8             # size\n\n  # inside\n}\n"
        );
    }

    /// After `use`, the parser reads `r#"` as the name `r` and a comment to the end of the
    /// line, where the formatter's tokens see raw strings and strings that pair differently:
    /// the text stays as written, so formatting is still idempotent and changes nothing the
    /// parser reads (found by the never-panics token soup).
    #[test]
    fn a_text_the_tokens_read_otherwise_is_left_alone() {
        let src = "use r#\" \" \"# \"{x}\" -1 \"# param hf(\"x\") \"{x}\" .. { steps r#\" ) \"# - verifier .";
        assert_eq!(fmt(src), src);
        assert_eq!(fmt(&fmt(src)), fmt(src));
    }

    #[test]
    fn strings_are_kept_verbatim() {
        let src = "source s = jsonl(\"a  b\", prompt = r#\"x \"  {y}\"#) {answer=field( \"a\\\"  b\" )}\n";
        assert_eq!(
            fmt(src),
            "source s = jsonl(\"a  b\", prompt = r#\"x \"  {y}\"#) { answer = field(\"a\\\"  b\") }\n"
        );
    }

    /// `r#"` that never closes is the name `r` and a comment, not a raw string to the end of
    /// the file; found by the never-panics inputs.
    #[test]
    fn an_unclosed_raw_string_is_a_name_and_a_comment() {
        let src = "use r#\" not a string\nlet x = 0.1 * r#\"x\n";
        let once = fmt(src);
        assert_eq!(
            once,
            "use r           #\" not a string\nlet x = 0.1 * r #\"x\n"
        );
        assert_eq!(fmt(&once), once);
    }

    #[test]
    fn a_file_with_a_syntax_error_is_refused() {
        let errors = format("model p = hf(\"m\"\n").unwrap_err();
        assert!(errors
            .iter()
            .all(|d| d.code.split("::").nth(1) == Some("parse")));
        assert!(!errors.is_empty());
    }
}
