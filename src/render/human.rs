//! Human rendering of diagnostics with source snippets, via miette's graphical handler: takes
//! a diagnostic, the file name and text, and whether to colour; gives the rendered text.
//! Unicode box drawing always; colour only when asked (a terminal without `NO_COLOR`).

use std::fmt;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents,
    SourceCode, SourceSpan, SpanContents,
};
use recap_compiler::{Diagnostic, Severity};

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

/// Renders one diagnostic of file `name` whose text is `text`.
pub fn render(name: &str, text: &str, diagnostic: &Diagnostic, options: HumanOptions) -> String {
    let theme = if options.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_links(false)
        .with_width(options.width);
    let adapter = Adapter {
        source: Named { name, text },
        diagnostic,
    };
    let mut out = String::new();
    if handler.render_report(&mut out, &adapter).is_err() {
        // miette refuses spans it cannot read; the plain form still carries everything.
        out = super::short::render_one(name, text, diagnostic);
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

/// A file's text with its name, borrowed, so rendering copies nothing.
struct Named<'a> {
    name: &'a str,
    text: &'a str,
}

impl SourceCode for Named<'_> {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.to_string(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// Presents a compiler diagnostic to miette.
struct Adapter<'a> {
    source: Named<'a>,
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
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(&self.diagnostic.code))
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
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.diagnostic.labels.is_empty() {
            return None;
        }
        let text = self.source.text;
        Some(Box::new(self.diagnostic.labels.iter().enumerate().map(
            move |(i, label)| {
                let span = clamp_span(text, label.span);
                let range: SourceSpan = (span.start, span.end - span.start).into();
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
