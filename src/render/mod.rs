//! Rendering of compiler diagnostics at the edge: takes `recap_compiler::Diagnostic` values and
//! the text they point into, gives text for people (`human`, through miette), one line each for
//! editors (`short`) and a versioned JSON document for tools (`json`). The compiler never
//! formats diagnostics itself, so every front end shows the same data.

pub mod human;
pub mod json;
pub mod short;

use recap_compiler::Span;

/// Clamps a span to the text and to character boundaries, so that a span that is off by a
/// byte (an internal bug) still renders instead of failing.
pub fn clamp_span(text: &str, span: Span) -> Span {
    let mut start = span.start().min(text.len());
    let mut end = span.end().min(text.len()).max(start);
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    Span::new(start, end)
}

/// Whether coloured output is wanted on a stream: only on a terminal, and never when the
/// `NO_COLOR` environment variable is set to a non-empty value (https://no-color.org).
pub fn want_color(stream_is_terminal: bool) -> bool {
    color_decision(stream_is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// The rule behind `want_color`, with the environment passed in so it can be tested.
pub fn color_decision(stream_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stream_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(color_decision(true, None));
        assert!(color_decision(true, Some(OsStr::new(""))));
        assert!(!color_decision(true, Some(OsStr::new("1"))));
        assert!(!color_decision(false, None));
    }

    #[test]
    fn clamp_keeps_spans_inside_the_text_and_on_char_boundaries() {
        let text = "aé b";
        assert_eq!(clamp_span(text, Span::new(0, 1)), Span::new(0, 1));
        assert_eq!(clamp_span(text, Span::new(2, 2)), Span::new(1, 3));
        assert_eq!(clamp_span(text, Span::new(3, 99)), Span::new(3, 5));
        assert_eq!(clamp_span(text, Span::new(7, 2)), Span::new(5, 5));
    }
}
