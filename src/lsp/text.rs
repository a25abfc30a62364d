//! Positions: takes a document's text; gives the conversions between the compiler's byte
//! offsets and LSP positions, whose columns count UTF-16 code units (the protocol's default
//! encoding), so that a diagnostic after an `é` or an emoji lands on the right character.

use lsp_types::{Position, Range};
use recap_compiler::Span;

/// The byte offset of every line start of one text.
#[derive(Debug, Clone)]
pub struct LineMap {
    starts: Vec<usize>,
}

impl LineMap {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineMap { starts }
    }

    /// The LSP position of byte `offset` (clamped to the text and to a char boundary).
    pub fn position(&self, text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(0);
        let character = text
            .get(start..offset)
            .map_or(0, |s| s.encode_utf16().count());
        Position::new(to_u32(line), to_u32(character))
    }

    /// The byte offset of an LSP position; a column past the end of its line is the line's end
    /// and a line past the end of the text is the text's end, as the protocol asks.
    pub fn offset(&self, text: &str, pos: Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else {
            return text.len();
        };
        let line = text.get(start..).unwrap_or_default();
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let mut units = 0;
        for (i, c) in line.char_indices() {
            if units >= pos.character as usize {
                return start + i;
            }
            units += c.len_utf16();
        }
        start + line.len()
    }

    pub fn range(&self, text: &str, span: Span) -> Range {
        Range::new(
            self.position(text, span.start()),
            self.position(text, span.end()),
        )
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_utf16_units_and_round_trip() {
        let text = "a\n\"é🙂\" x\n";
        let map = LineMap::new(text);
        let x = text.find('x').unwrap();
        // `"`, `é` (one unit), the emoji (two units), `"` and a space come before `x`.
        assert_eq!(map.position(text, x), Position::new(1, 6));
        assert_eq!(map.offset(text, Position::new(1, 6)), x);
        assert_eq!(map.offset(text, Position::new(1, 99)), text.len() - 1);
        assert_eq!(map.offset(text, Position::new(9, 0)), text.len());
        // An offset inside the emoji falls back to its start.
        let emoji = text.find('🙂').unwrap();
        assert_eq!(map.position(text, emoji + 2), Position::new(1, 2));
    }
}
