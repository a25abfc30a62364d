//! Diagnostics as data: every problem the compiler finds is a `Diagnostic` with a stable code,
//! a severity, labelled byte spans, a message and a help line. Takes nothing in; gives the types
//! that every stage returns and that the CLI and the language server render.

use serde::{Deserialize, Serialize};

/// A half-open byte range `start..end` into the source text. The offsets are stored in 32
/// bits: every node of the syntax tree and every typed value carries a span, and half-size
/// spans make the tree about a fifth smaller, which a large pipeline's check feels as fewer
/// cache misses. The parser refuses files past 4 GiB (`recap::parse::too_large`), so the
/// offsets of a checked file are exact; `new` clamps larger ones to `u32::MAX` rather than
/// panic.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        let clamp = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        Span {
            start: clamp(start),
            end: clamp(end),
        }
    }

    /// The byte offset where the span starts.
    pub fn start(self) -> usize {
        self.start as usize
    }

    /// The byte offset just past the span's end.
    pub fn end(self) -> usize {
        self.end as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One labelled span. The first label of a diagnostic is the primary one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Stable code of the form `recap::<stage>::<name>`, e.g. `recap::resolve::unknown_name`.
    pub code: String,
    pub severity: Severity,
    pub message: String,
    /// Primary label first; may be empty only for diagnostics about the whole file.
    pub labels: Vec<Label>,
    /// One line telling the user what to do about it.
    pub help: Option<String>,
    /// Machine-applicable fixes, for an editor's code actions and for tools: each one a set of
    /// text edits that together make the change the help line describes. Empty when no fix
    /// can be written without a person's judgement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<Fix>,
}

/// One machine-applicable fix of a diagnostic: a title and the edits that make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// What applying the fix does, e.g. "replace `sumz` with `sums`".
    pub message: String,
    /// The edits, in source order; their spans do not overlap.
    pub edits: Vec<Edit>,
}

/// Replace the text of `span` with `replacement` (an empty span inserts; an empty replacement
/// deletes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub span: Span,
    pub replacement: String,
}

impl Fix {
    /// The fix that replaces one span's text.
    pub fn replace(message: impl Into<String>, span: Span, replacement: impl Into<String>) -> Self {
        Fix {
            message: message.into(),
            edits: vec![Edit {
                span,
                replacement: replacement.into(),
            }],
        }
    }

    /// The fix that inserts text at a byte offset.
    pub fn insert(message: impl Into<String>, at: usize, text: impl Into<String>) -> Self {
        Fix::replace(message, Span::new(at, at), text)
    }

    /// The text with the fix's edits applied, or `None` when an edit's span is out of the
    /// text, not on character boundaries, or overlaps another.
    pub fn apply(&self, text: &str) -> Option<String> {
        let mut edits: Vec<&Edit> = self.edits.iter().collect();
        edits.sort_by_key(|e| (e.span.start(), e.span.end()));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for e in edits {
            if e.span.start() < at || e.span.end() < e.span.start() {
                return None;
            }
            out.push_str(text.get(at..e.span.start())?);
            text.get(e.span.start()..e.span.end())?;
            out.push_str(&e.replacement);
            at = e.span.end();
        }
        out.push_str(text.get(at..)?);
        Some(out)
    }
}

/// 1-based line and column (in characters) of a byte offset, for `file:line:col` output.
/// Scans the text up to `offset`; to place many offsets in one text, build a `LineIndex`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let col = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, col)
}

/// The byte offset of every line start of a text, so that placing a diagnostic costs a binary
/// search instead of a scan from the top of the file. Without it, a file with many diagnostics
/// takes time quadratic in its length to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIndex {
    starts: Vec<usize>,
}

/// Which bytes end a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnds {
    /// `\n` alone, as `file:line:col` positions and editors count lines.
    Newline,
    /// `\n`, `\r\n` or a lone `\r`, as miette counts lines when it draws a snippet.
    AnyBreak,
}

impl LineIndex {
    /// The index of `text` with lines ending at `\n`.
    pub fn new(text: &str) -> Self {
        Self::with_line_ends(text, LineEnds::Newline)
    }

    /// The index of `text` with lines ending as `ends` says.
    pub fn with_line_ends(text: &str, ends: LineEnds) -> Self {
        let bytes = text.as_bytes();
        let mut starts = Vec::with_capacity(text.len() / 32 + 1);
        starts.push(0);
        starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|&(i, &b)| match ends {
                    LineEnds::Newline => b == b'\n',
                    LineEnds::AnyBreak => {
                        b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
                    }
                })
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }

    /// The 0-based index of the line that holds byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        // The first start is 0, so at least one start is at or before any offset.
        self.starts.partition_point(|&s| s <= offset).max(1) - 1
    }

    /// The byte offset where the 0-based line `line` starts.
    pub fn line_start(&self, line: usize) -> Option<usize> {
        self.starts.get(line).copied()
    }

    /// 1-based line and column (in characters) of a byte offset of `text`, the text the
    /// index was built from; offsets past the end are placed at the end.
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.line_of(offset) + 1;
        let line_start = self.line_start(line - 1).unwrap_or(0);
        let col = text
            .get(line_start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - line_start)
            + 1;
        (line, col)
    }
}

impl Diagnostic {
    /// Adds a label; the first one a diagnostic gets (from `Problem::at`) is the primary one.
    pub fn label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Adds a machine-applicable fix.
    pub fn fix(mut self, fix: Fix) -> Self {
        self.fixes.push(fix);
        self
    }

    /// Adds the fix that replaces a misspelt name at `span` with `guess`, when there is a
    /// guess.
    pub fn fix_name(self, span: Span, name: &str, guess: Option<&str>) -> Self {
        match guess {
            Some(g) => self.fix(Fix::replace(
                format!("replace `{name}` with `{g}`"),
                span,
                g,
            )),
            None => self,
        }
    }

    /// The primary span, or an empty span at 0 for whole-file diagnostics.
    pub fn primary_span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// A problem a stage found: one variant of the stage's problem enum, which owns the wording,
/// so a call site says only what was found and where. Each enum maps its variants to the
/// stage's code enum (declared with `problem_codes!`), which owns the codes and their long
/// explanations; `codes.rs` lists those, so a code cannot be emitted without an explanation.
pub trait Problem {
    /// The stage's code enum.
    type Code: ProblemCode;
    /// Which of the stage's codes the problem has.
    fn kind(&self) -> Self::Code;
    /// The stable code, `recap::<stage>::<name>`.
    fn code(&self) -> &'static str {
        self.kind().code()
    }
    /// Whether the problem stops the run; most do.
    fn severity(&self) -> Severity {
        Severity::Error
    }
    /// What is wrong, in one sentence.
    fn message(&self) -> String;
    /// One line telling the user what to do about it.
    fn help(&self) -> String;

    /// The diagnostic of this problem with its primary label: the one way a stage builds a
    /// diagnostic. Add further labels with `Diagnostic::label`.
    fn at(&self, span: Span, label: impl Into<String>) -> Diagnostic
    where
        Self: Sized,
    {
        Diagnostic::from(self).label(span, label)
    }
}

/// The one place a diagnostic is built: every stage goes through a problem enum, so no code,
/// message or help line is written anywhere else. `Problem::at` adds the primary label; a
/// diagnostic about the whole file (too large, a bad `--set`) has none.
impl<P: Problem> From<&P> for Diagnostic {
    fn from(problem: &P) -> Self {
        Diagnostic {
            code: problem.code().to_string(),
            severity: problem.severity(),
            message: problem.message(),
            labels: Vec::new(),
            help: Some(problem.help()),
            fixes: Vec::new(),
        }
    }
}

/// A stage's code enum (declared with `problem_codes!`): each variant a stable code with its
/// long explanation.
pub trait ProblemCode: Copy + 'static {
    /// Every code of the stage, in the order `recapc explain` lists them.
    const ALL: &'static [Self];
    /// The stable code, `recap::<stage>::<name>`.
    fn code(self) -> &'static str;
    /// The long explanation, for `recapc explain` and the docs.
    fn explanation(self) -> &'static str;
}

/// Declares a stage's code enum: a fieldless enum whose variants each carry a stable code and
/// the long explanation `recapc explain` prints, with `ALL` listing the variants in order. One
/// declaration gives all three, so a variant cannot lack a code or an explanation, nor be left
/// out of the list.
macro_rules! problem_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:expr,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $crate::diagnostic::ProblemCode for $name {
            const ALL: &'static [$name] = &[$($name::$variant,)*];

            fn code(self) -> &'static str {
                match self {
                    $($name::$variant => $code,)*
                }
            }

            fn explanation(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}
pub(crate) use problem_codes;

/// The closest candidate to `name` (edit distance at most a third of its length, at least 1,
/// and less than the length of either, so a one-letter name is never "corrected" into another
/// one-letter name), for "did you mean" help.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let len = name.chars().count();
    let limit = (len / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        // The distance is at least the difference of the lengths, so most candidates are
        // ruled out without computing it: a file full of unknown names asks this of every
        // declared name once per error, and on every keystroke in an editor.
        let c_len = c.chars().count();
        let bound = best.map_or(limit, |(bd, _)| bd);
        if len.abs_diff(c_len) > bound || bag_distance(name, c) > bound {
            continue;
        }
        let d = strsim::damerau_levenshtein(name, c);
        // Replacing every character of one of the two names is no correction.
        let shortest = len.min(c_len);
        if d <= limit && d < shortest && best.is_none_or(|(bd, bc)| (d, c) < (bd, bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A lower bound of the edit distance of two names that needs no allocation. Count the
/// characters `a` has more of than `b` and those it has fewer of: an insertion or a deletion
/// adds one to one count, a substitution one to each, a transposition nothing, so the larger
/// count is at most the number of edits. Characters outside ASCII are counted together, which
/// only lowers the counts.
fn bag_distance(a: &str, b: &str) -> usize {
    let mut counts = [0i32; 129];
    let slot = |c: char| usize::try_from(u32::from(c)).map_or(128, |i| i.min(128));
    for c in a.chars() {
        if let Some(n) = counts.get_mut(slot(c)) {
            *n += 1;
        }
    }
    for c in b.chars() {
        if let Some(n) = counts.get_mut(slot(c)) {
            *n -= 1;
        }
    }
    let (more, fewer) = counts.iter().fold((0, 0), |(m, f), &n| {
        (m + n.max(0) as usize, f + (-n).max(0) as usize)
    });
    more.max(fewer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheap bound that spares did-you-mean most distance computations never exceeds the
    /// distance, so it never rules out a guess.
    #[test]
    fn bag_distance_bounds_the_edit_distance() {
        let names = [
            "",
            "a",
            "ab",
            "ba",
            "sums",
            "sumz",
            "sum",
            "task_1",
            "tsk_1",
            "format_12",
            "é",
            "éa",
            "ü",
            "accuracy",
            "acuracy",
            "ccuracya",
            "policy",
            "polciy",
        ];
        for a in names {
            for b in names {
                assert!(
                    bag_distance(a, b) <= strsim::damerau_levenshtein(a, b),
                    "{a:?} {b:?}"
                );
            }
        }
        assert_eq!(bag_distance("task_1", "format_12"), 5);
    }

    /// The index must place every offset exactly where `line_col`'s scan from the top does.
    #[test]
    fn line_index_agrees_with_a_scan_from_the_top() {
        let scan = line_col;
        for text in ["", "\n", "a", "ab\ncd\n\nef", "é\r\nxé\n", "\n\nz"] {
            let index = LineIndex::new(text);
            for offset in 0..text.len() + 3 {
                assert_eq!(
                    index.line_col(text, offset),
                    scan(text, offset),
                    "{text:?} at {offset}"
                );
            }
        }
    }

    /// `\r\n` ends one line under both rules; a lone `\r` only under miette's.
    #[test]
    fn line_ends_differ_only_on_a_lone_carriage_return() {
        let text = "a\r\nb\rc\nd";
        let starts = |ends| {
            let index = LineIndex::with_line_ends(text, ends);
            (0..5)
                .map_while(|l| index.line_start(l))
                .collect::<Vec<_>>()
        };
        assert_eq!(starts(LineEnds::Newline), vec![0, 3, 7]);
        assert_eq!(starts(LineEnds::AnyBreak), vec![0, 3, 5, 7]);
        let any = LineIndex::with_line_ends(text, LineEnds::AnyBreak);
        assert_eq!((any.line_of(4), any.line_of(5), any.line_of(99)), (1, 2, 3));
    }

    #[test]
    fn did_you_mean_corrects_typos_but_not_whole_names() {
        assert_eq!(
            did_you_mean("corect", ["correct", "format"]),
            Some("correct")
        );
        assert_eq!(did_you_mean("adam", ["adamw", "sgd"]), Some("adamw"));
        assert_eq!(did_you_mean("t", ["s", "u"]), None);
        assert_eq!(did_you_mean("ab", ["a"]), None);
        assert_eq!(did_you_mean("xyz", ["abc"]), None);
    }
}
