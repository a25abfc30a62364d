//! Human rendering of diagnostics with source snippets, via miette's graphical handler: takes
//! a diagnostic, the file name and text, and whether to colour; gives the rendered text.
//! Unicode box drawing always; colour only when asked (a terminal without `NO_COLOR`).

use std::fmt;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents,
    SourceCode, SourceSpan, SpanContents,
};
use recap_compiler::{Diagnostic, LineEnds, LineIndex, Severity};

use super::clamp_span;

/// Options of the human renderer.
#[derive(Debug, Clone, Copy)]
pub struct HumanOptions {
    pub color: bool,
    /// Wrapping width in columns.
    pub width: usize,
}

impl Default for HumanOptions {
    fn default() -> Self {
        HumanOptions {
            color: false,
            width: 100,
        }
    }
}

/// Renders one diagnostic of file `name` whose text is `text`. To render many diagnostics of
/// one file, build a `Source` once and call `render_in`.
pub fn render(name: &str, text: &str, diagnostic: &Diagnostic, options: HumanOptions) -> String {
    render_in(&Source::new(name, text), diagnostic, options)
}

/// Renders one diagnostic of `source`.
pub fn render_in(source: &Source<'_>, diagnostic: &Diagnostic, options: HumanOptions) -> String {
    let theme = if options.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_links(false)
        .with_width(options.width);
    let adapter = Adapter { source, diagnostic };
    let mut out = String::new();
    if handler.render_report(&mut out, &adapter).is_err() {
        // miette refuses spans it cannot read; the plain form still carries everything.
        out = super::short::render_one(source.name, source.text, diagnostic);
        out.push('\n');
    }
    out
}

/// The whole-file summary line printed after the diagnostics of `recapc check`.
pub fn summary(files: usize, errors: usize, warnings: usize) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    let what = if files == 1 {
        "1 file".to_string()
    } else {
        format!("{files} files")
    };
    if errors == 0 && warnings == 0 {
        format!("checked {what}: no problems")
    } else {
        format!(
            "checked {what}: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        )
    }
}

/// A file's text with its name, borrowed, so rendering copies nothing, and the start of each
/// of its lines. miette finds a snippet by scanning the text from the top, which makes a file
/// with many diagnostics quadratic to report; with the line starts, it scans from the first
/// line of the snippet instead.
pub struct Source<'a> {
    name: &'a str,
    text: &'a str,
    /// Line starts as miette counts lines: a line ends at `\n`, `\r\n` or a lone `\r`.
    lines: LineIndex,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        Source {
            name,
            text,
            lines: LineIndex::with_line_ends(text, LineEnds::AnyBreak),
        }
    }

    /// Where to start reading the snippet of `span` with `before` context lines: the byte
    /// offset and index of the first line miette will show, or `None` when the snippet must be
    /// read from the top of the text (it starts on the first line, which is cheap, or the span
    /// starts inside a `\r\n` pair, which miette counts differently).
    fn window(&self, span: &SourceSpan, before: usize) -> Option<(usize, usize)> {
        let offset = span.offset();
        let line = self.lines.line_of(offset);
        let mut first = line.saturating_sub(before);
        // miette takes a span's last byte to be the one before its end, so an empty span at
        // the start of the window would end before it: start one line earlier. (miette reads
        // primary labels without context lines, so this is the common case of an empty span
        // at the start of a line.)
        if first > 0
            && self
                .lines
                .line_start(first)
                .is_some_and(|s| s >= offset + span.len())
        {
            first -= 1;
        }
        let bytes = self.text.as_bytes();
        let splits_crlf = offset > 0
            && bytes.get(offset) == Some(&b'\n')
            && bytes.get(offset - 1) == Some(&b'\r');
        let window = self.lines.line_start(first)?;
        // The last test is a guard: after the step back above, the window starts before the
        // span's end.
        (first > 0 && !splits_crlf && window < offset + span.len()).then_some((window, first))
    }

    /// The snippet miette would read from the whole text, read from a window that starts at
    /// the first line the snippet shows; positions are shifted back to the whole text.
    fn read_windowed(
        &self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<MietteSpanContents<'a>, MietteError> {
        // Without a window (a snippet near the top), the window is the whole text.
        let (window, first) = self.window(span, before).unwrap_or((0, 0));
        let offset = span.offset();
        let rest = self.text.get(window..).ok_or(MietteError::OutOfBounds)?;
        let local: SourceSpan = (offset - window, span.len()).into();
        let inner = rest.read_span(&local, before, after)?;
        let shifted: SourceSpan = (inner.span().offset() + window, inner.span().len()).into();
        Ok(MietteSpanContents::new_named(
            self.name.to_string(),
            inner.data(),
            shifted,
            inner.line() + first,
            inner.column(),
            inner.line_count() + first,
        ))
    }
}

impl SourceCode for Source<'_> {
    fn read_span<'b>(
        &'b self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'b> + 'b>, MietteError> {
        Ok(Box::new(self.read_windowed(
            span,
            context_lines_before,
            context_lines_after,
        )?))
    }
}

/// Presents a compiler diagnostic to miette.
struct Adapter<'a> {
    source: &'a Source<'a>,
    diagnostic: &'a Diagnostic,
}

impl fmt::Debug for Adapter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diagnostic, f)
    }
}

impl fmt::Display for Adapter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.diagnostic.labels.is_empty() {
            // Without a label miette shows no snippet, and so no file name: say it here.
            write!(f, "{}: {}", self.source.name, self.diagnostic.message)
        } else {
            f.write_str(&self.diagnostic.message)
        }
    }
}

impl std::error::Error for Adapter<'_> {}

impl miette::Diagnostic for Adapter<'_> {
    /// The header line, `error[recap::...]` or `warning[recap::...]`, as rustc writes it: the
    /// `×` miette draws for either says nothing to someone reading without colour.
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        let word = match self.diagnostic.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        Some(Box::new(format!("{word}[{}]", self.diagnostic.code)))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.diagnostic.labels.is_empty() {
            return None;
        }
        let text = self.source.text;
        Some(Box::new(self.diagnostic.labels.iter().enumerate().map(
            move |(i, label)| {
                let span = clamp_span(text, label.span);
                let range: SourceSpan = (span.start(), span.end() - span.start()).into();
                let message = (!label.message.is_empty()).then(|| label.message.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(message, range)
                } else {
                    LabeledSpan::new_with_span(message, range)
                }
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snippets deep in a large file are read from a window a few lines long, never from the
    /// top: reading from the top for each of many diagnostics made reporting quadratic.
    #[test]
    fn snippets_deep_in_a_file_are_read_from_near_them() {
        let line = "source s = jsonl(\"x\")\r\n";
        let text = line.repeat(5_000);
        let source = Source::new("t", &text);
        let last_line = text.len() - line.len();
        for (start, len) in [(last_line + 7, 1), (last_line, 0), (last_line + 3, 5)] {
            let span: SourceSpan = (start, len).into();
            for before in [0, 1, 3] {
                let (window, _) = source.window(&span, before).expect("a window");
                assert!(
                    window + line.len() * (before + 2) > start,
                    "span at {start} (+{len}), {before} context lines: window at {window}"
                );
            }
        }
    }

    /// Reading from a window must give exactly what miette reads from the whole text, for
    /// every span of texts with every kind of line ending, and for several context sizes.
    #[test]
    fn windowed_snippets_match_whole_text_snippets() {
        let texts = [
            "a\nbb\nccc\n\ndddd\ne",
            "one\r\ntwo\r\n\r\nthree\rfour\n",
            "x\r\r\n\ny\n\r\nz",
            "é\nü\n€x\n",
            "",
        ];
        for text in texts {
            let source = Source::new("t", text);
            for start in 0..=text.len() {
                for end in start..=text.len() {
                    if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
                        continue;
                    }
                    let span: SourceSpan = (start, end - start).into();
                    for (before, after) in [(0, 0), (1, 1), (2, 0), (0, 2), (3, 3)] {
                        let whole = text.read_span(&span, before, after);
                        let windowed = source.read_windowed(&span, before, after);
                        match (whole, windowed) {
                            (Ok(w), Ok(v)) => {
                                let what = format!("{text:?} {start}..{end} ({before}, {after})");
                                assert_eq!(w.data(), v.data(), "data of {what}");
                                assert_eq!(w.span(), v.span(), "span of {what}");
                                assert_eq!(w.line(), v.line(), "line of {what}");
                                assert_eq!(w.column(), v.column(), "column of {what}");
                                assert_eq!(w.line_count(), v.line_count(), "count of {what}");
                            }
                            (Err(_), Err(_)) => {}
                            (w, v) => panic!(
                                "{text:?} {start}..{end}: whole {:?}, windowed {:?}",
                                w.is_ok(),
                                v.is_ok()
                            ),
                        }
                    }
                }
            }
        }
    }
}
