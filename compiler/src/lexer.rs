//! The lexer of the fast parser: takes the text of a `.recap` file and gives its tokens one at
//! a time (`Lexer::next_token`), each with its byte span, skipping whitespace and comments as
//! `WHITESPACE` in `grammar/recap.pest` does. It never fails: text that starts no token of the
//! grammar becomes a `Kind::Bad` token, and the parser hands such files to pest.
//!
//! The tokens follow the grammar's atomic rules, so that a token means what pest would read at
//! the same place: `Word` is `ident` (and every keyword), `Int`, `Float` and `Percent` are
//! `int`, `float` and `percent`, `Str` is `string`, `RawStr` is `raw_string`. Tokens are made
//! on demand rather than collected into a vector first, so a large file never holds a second,
//! larger copy of itself in memory.

/// What a token is. Punctuation is one byte; `..` and `->` are two `Punct` tokens that the
/// parser checks are adjacent, as pest matches them as one literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `[A-Za-z_][A-Za-z0-9_]*`: a name or a keyword.
    Word,
    /// Digits and underscores: `42`, `10_000`.
    Int,
    /// `1.5`, `1e-6`, `2.5E3`.
    Float,
    /// An int or a float directly followed by `%`.
    Percent,
    /// `"..."`, quotes included; the parser reads escapes and placeholders.
    Str,
    /// `r"..."`, quotes included.
    RawStr,
    /// `r#"..."#`, quotes and hashes included.
    RawStrHash,
    /// One of `= { } ( ) [ ] , . + - * / : ? | >`.
    Punct(u8),
    /// The end of the text.
    Eof,
    /// Anything else: an unknown character, an unterminated string, a lone `%`.
    Bad,
}

#[derive(Debug, Clone, Copy)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// Whether the token is the punctuation byte `b`.
    pub fn is(&self, b: u8) -> bool {
        self.kind == Kind::Punct(b)
    }
}

pub struct Lexer<'s> {
    bytes: &'s [u8],
    pos: usize,
}

pub fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

pub fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl<'s> Lexer<'s> {
    pub fn new(source: &'s str) -> Self {
        Lexer {
            bytes: source.as_bytes(),
            pos: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        // Zero is never a byte the grammar gives a meaning to, so it stands for the end.
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// Skips what pest's `WHITESPACE` rule skips: space, tab, line feed, carriage return and
    /// comments from `#` to the end of the line (the line feed is left for the next round).
    fn skip_trivia(&mut self) {
        loop {
            match self.at(self.pos) {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                b'#' => {
                    let rest = self.bytes.get(self.pos..).unwrap_or(&[]);
                    self.pos += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
                }
                _ => return,
            }
        }
    }

    /// The next token. After the end of the text it keeps giving `Eof` at the text's length.
    pub fn next_token(&mut self) -> Token {
        self.skip_trivia();
        let start = self.pos;
        let b = self.at(start);
        let (kind, end) = if start >= self.bytes.len() {
            (Kind::Eof, start)
        } else if b == b'r' && self.at(start + 1) == b'"' {
            match self.find(start + 2, b"\"") {
                Some(close) => (Kind::RawStr, close + 1),
                // pest then reads `r` as a name, and the quote starts a string.
                None => (Kind::Word, self.word_end(start)),
            }
        } else if b == b'r' && self.at(start + 1) == b'#' && self.at(start + 2) == b'"' {
            match self.find(start + 3, b"\"#") {
                Some(close) => (Kind::RawStrHash, close + 2),
                // pest then reads `r` as a name, and `#` starts a comment.
                None => (Kind::Word, self.word_end(start)),
            }
        } else if is_ident_start(b) {
            (Kind::Word, self.word_end(start))
        } else if b.is_ascii_digit() {
            self.number(start)
        } else if b == b'"' {
            self.string(start)
        } else {
            match b {
                b'=' | b'{' | b'}' | b'(' | b')' | b'[' | b']' | b',' | b'.' | b'+' | b'-'
                | b'*' | b'/' | b':' | b'?' | b'|' | b'>' => (Kind::Punct(b), start + 1),
                // The token covers the whole character, so its span stays on char boundaries.
                _ => (Kind::Bad, self.char_end(start)),
            }
        };
        self.pos = end;
        Token { kind, start, end }
    }

    /// The offset of the first occurrence of `needle` at or after `from`.
    fn find(&self, from: usize, needle: &[u8]) -> Option<usize> {
        let hay = self.bytes.get(from..)?;
        hay.windows(needle.len())
            .position(|w| w == needle)
            .map(|i| from + i)
    }

    fn char_end(&self, start: usize) -> usize {
        let mut i = start + 1;
        while self.at(i) & 0xC0 == 0x80 {
            i += 1;
        }
        i
    }

    fn word_end(&self, start: usize) -> usize {
        let mut i = start + 1;
        while is_ident_continue(self.at(i)) {
            i += 1;
        }
        i
    }

    fn digits_end(&self, mut i: usize, underscores: bool) -> usize {
        while self.at(i).is_ascii_digit() || (underscores && self.at(i) == b'_') {
            i += 1;
        }
        i
    }

    /// `int`, `float` or `percent` of the grammar: the float when its fraction or exponent is
    /// complete, else the int; then a directly following `%` makes it a percent.
    fn number(&self, start: usize) -> (Kind, usize) {
        let int_end = self.digits_end(start, true);
        let (mut kind, mut end) = (Kind::Int, int_end);
        if self.at(int_end) == b'.' && self.at(int_end + 1).is_ascii_digit() {
            let frac_end = self.digits_end(int_end + 1, false);
            kind = Kind::Float;
            end = self.exponent_end(frac_end).unwrap_or(frac_end);
        } else if let Some(e) = self.exponent_end(int_end) {
            kind = Kind::Float;
            end = e;
        }
        if self.at(end) == b'%' {
            (Kind::Percent, end + 1)
        } else {
            (kind, end)
        }
    }

    /// The end of `exponent` (`e`, an optional sign, digits) when one starts at `i`.
    fn exponent_end(&self, i: usize) -> Option<usize> {
        if !matches!(self.at(i), b'e' | b'E') {
            return None;
        }
        let mut j = i + 1;
        if matches!(self.at(j), b'+' | b'-') {
            j += 1;
        }
        if !self.at(j).is_ascii_digit() {
            return None;
        }
        Some(self.digits_end(j, false))
    }

    /// A string up to its closing quote; a backslash takes the next byte with it, which is
    /// enough to find the end (the parser reads the escapes, by character).
    fn string(&self, start: usize) -> (Kind, usize) {
        let mut i = start + 1;
        while i < self.bytes.len() {
            match self.at(i) {
                b'"' => return (Kind::Str, i + 1),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        (Kind::Bad, self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(Kind, &str)> {
        let mut lx = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token();
            if t.kind == Kind::Eof {
                assert_eq!(t.start, src.len());
                return out;
            }
            out.push((t.kind, &src[t.start..t.end]));
        }
    }

    #[test]
    fn numbers_follow_the_grammar() {
        assert_eq!(
            kinds("1_000 1.5e3 1e5 1.x 1e 10% 2.5% 7E-2"),
            vec![
                (Kind::Int, "1_000"),
                (Kind::Float, "1.5e3"),
                (Kind::Float, "1e5"),
                (Kind::Int, "1"),
                (Kind::Punct(b'.'), "."),
                (Kind::Word, "x"),
                (Kind::Int, "1"),
                (Kind::Word, "e"),
                (Kind::Percent, "10%"),
                (Kind::Percent, "2.5%"),
                (Kind::Float, "7E-2"),
            ]
        );
    }

    #[test]
    fn strings_raw_strings_and_comments() {
        assert_eq!(
            kinds("\"a\\\"b\" r\"x\\\" r#\"q\"\"# # comment\nreward"),
            vec![
                (Kind::Str, "\"a\\\"b\""),
                (Kind::RawStr, "r\"x\\\""),
                (Kind::RawStrHash, "r#\"q\"\"#"),
                (Kind::Word, "reward"),
            ]
        );
        // An unterminated raw string is the name `r`, then a comment (as pest reads it).
        assert_eq!(
            kinds("r#\"abc\nx"),
            vec![(Kind::Word, "r"), (Kind::Word, "x")]
        );
        assert_eq!(kinds("\"open"), vec![(Kind::Bad, "\"open")]);
        assert_eq!(kinds("a % \u{b}"), {
            vec![(Kind::Word, "a"), (Kind::Bad, "%"), (Kind::Bad, "\u{b}")]
        });
    }
}
