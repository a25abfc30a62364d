//! Parse's problems: takes what the parser found; gives the code, message and help line of its
//! diagnostic. The codes and their long explanations are declared here too (`ParseCode`), and
//! `codes.rs` lists them for `recapc explain`.

use super::{MAX_NESTING, MAX_SOURCE_BYTES};
use crate::diagnostic::{problem_codes, Problem};

problem_codes! {
    /// The codes of parse's problems, in the order `recapc explain` lists them.
    pub enum ParseCode {
        Syntax = "recap::parse::syntax" => "The file does not follow the grammar at this point. The message says what the parser expected (an item keyword, `=`, an expression, a closing bracket) and what it found. Items start with a keyword (`model`, `source`, `verifier`, `objective`, `eval`, `param`, `let`, `use`, `stage`, `reweight`, `mix`, `train`); blocks hold `name = value` fields. After a syntax error the parser resumes at the next line that starts with an item keyword, so later errors are reported too.\n\nExample:\n    model policy hf(\"models/qwen\")   # missing `=`\nFix:\n    model policy = hf(\"models/qwen\")",
        BadEscape = "recap::parse::bad_escape" => "A string holds a backslash escape recap does not know. Known escapes: \\n \\t \\r \\0 \\\\ \\\" \\{ \\}. Regular expressions are easiest as raw strings, which have no escapes: r\"\\d+\" or r#\"say \"hi\"\"#.",
        NumberTooLarge = "recap::parse::number_too_large" => "An integer does not fit in 64 bits, or a float is not finite. Use a smaller number; step counts and seeds never need more.",
        BadNumber = "recap::parse::bad_number" => "A range bound in a signature is not a number. Bounds are numbers or `inf`/`-inf`, e.g. `in [0, 1)`.",
        TooLarge = "recap::parse::too_large" => "The file is larger than 4 GiB (4,294,967,295 bytes), the most recap reads: byte offsets, entity ids and stage numbers are kept in 32 bits, which keeps the checker's data small. A pipeline that large is generated; generate fewer items per file, e.g. one job per file.",
        TooDeep = "recap::parse::too_deep" => "Brackets or prefix minus signs nest more than 100 levels deep. The limit protects the compiler's stack from generated or hostile input; real pipelines nest a few levels. Split the expression with `let` declarations.",
        PositionalAfterNamed = "recap::parse::positional_after_named" => "In a call, positional arguments come first and named ones after: `kl(base, coef = 0.04)`, not `kl(coef = 0.04, base)`. Name the late argument or move it to the front.",
        NotCallable = "recap::parse::not_callable" => "Only a name can be called: `hf(\"dir\")` or a method `value.after(\"####\")`. An expression such as `(a)(b)` or `\"text\"(1)` cannot.",
    }
}

/// One problem the parser found, with what its wording needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseProblem<'a> {
    /// The file is longer than `MAX_SOURCE_BYTES` (its length in bytes).
    TooLarge { len: usize },
    /// Brackets or prefix minus signs nest deeper than `MAX_NESTING`.
    TooDeep,
    /// pest stopped: what it expected (in words, sorted; may be empty) and what it found.
    Unexpected {
        expected: Vec<String>,
        found: String,
    },
    /// A number with a second decimal point (`1.5.0`).
    SecondDecimalPoint { literal: &'a str },
    /// A number with letters stuck to it (`1k`, `5min`).
    NumberWithSuffix { literal: &'a str },
    /// An item has a second value, block or range (which one).
    OnceOnly { what: &'a str },
    /// A range bound in a signature that is not a number (its text).
    BadBound { text: &'a str },
    /// Something other than a name is called.
    NotCallable,
    /// A positional argument follows a named one.
    PositionalAfterNamed,
    /// An integer literal past 64 bits (its text).
    IntTooLarge { text: &'a str },
    /// A float literal that is not finite (its text).
    FloatTooLarge { text: &'a str },
    /// A backslash escape recap does not know.
    BadEscape { escape: &'a str },
}

impl Problem for ParseProblem<'_> {
    type Code = ParseCode;

    fn kind(&self) -> ParseCode {
        use ParseCode as C;
        use ParseProblem as P;
        match self {
            P::TooLarge { .. } => C::TooLarge,
            P::TooDeep => C::TooDeep,
            P::Unexpected { .. }
            | P::SecondDecimalPoint { .. }
            | P::NumberWithSuffix { .. }
            | P::OnceOnly { .. } => C::Syntax,
            P::BadBound { .. } => C::BadNumber,
            P::NotCallable => C::NotCallable,
            P::PositionalAfterNamed => C::PositionalAfterNamed,
            P::IntTooLarge { .. } | P::FloatTooLarge { .. } => C::NumberTooLarge,
            P::BadEscape { .. } => C::BadEscape,
        }
    }

    fn message(&self) -> String {
        use ParseProblem as P;
        match self {
            P::TooLarge { len } => format!(
                "the file is {len} bytes; recap reads pipelines of up to {MAX_SOURCE_BYTES} bytes (4 GiB)"
            ),
            P::TooDeep => format!("expressions nest more than {MAX_NESTING} levels deep"),
            P::Unexpected { expected, found } => match expected.split_last() {
                None => format!("unexpected {found}"),
                Some((only, [])) => format!("expected {only}, found {found}"),
                Some((last, init)) => {
                    format!("expected {} or {last}, found {found}", init.join(", "))
                }
            },
            P::SecondDecimalPoint { literal } => {
                format!("`{literal}` is not a number: it has more than one decimal point")
            }
            P::NumberWithSuffix { literal } => {
                format!("`{literal}` is not a number: numbers take no unit or suffix")
            }
            P::OnceOnly { what } => format!("a second {what} here"),
            P::BadBound { text } => format!("`{text}` is not a number"),
            P::NotCallable => "only a name can be called".to_string(),
            P::PositionalAfterNamed => "a positional argument follows a named one".to_string(),
            P::IntTooLarge { text } | P::FloatTooLarge { text } => {
                format!("the number `{text}` is too large")
            }
            P::BadEscape { escape } => format!("unknown escape `{escape}`"),
        }
    }

    fn help(&self) -> String {
        use ParseProblem as P;
        match self {
            P::TooLarge { .. } => "a pipeline this large is generated: generate fewer items per file, e.g. one job per file".to_string(),
            P::TooDeep => "split the expression with `let` declarations".to_string(),
            P::Unexpected { expected, found } => unexpected_help(expected, found).to_string(),
            P::SecondDecimalPoint { literal } => format!(
                "write one decimal point, e.g. `1.5`; text such as a version goes in quotes: `\"{literal}\"`"
            ),
            P::NumberWithSuffix { .. } => "write the number out (`1000`, not `1k`); percentages take `%`, text goes in quotes".to_string(),
            P::OnceOnly { .. } => "an item takes at most one value, one block and one range, in that order".to_string(),
            P::BadBound { .. } => "write a number such as 2, 0.5 or inf".to_string(),
            P::NotCallable => "call a stdlib function by name, e.g. `hf(\"dir\")`, or a method with `value.name(...)`".to_string(),
            P::PositionalAfterNamed => "put positional arguments first, or name this one too".to_string(),
            P::IntTooLarge { .. } => "integers must lie between -9223372036854775808 and 9223372036854775807".to_string(),
            P::FloatTooLarge { .. } => "floating-point numbers must be below about 1.8e308".to_string(),
            P::BadEscape { .. } => "known escapes are \\n \\t \\r \\0 \\\\ \\\" \\{ \\}; for regular expressions use a raw string r\"...\"".to_string(),
        }
    }
}

/// The help line of a syntax error, guessed from what was expected and what was found.
fn unexpected_help(expected: &[String], found: &str) -> &'static str {
    let expects = |w: &str| expected.iter().any(|e| e == w);
    // A name or number where a separator was due: most often a forgotten comma.
    let found_value = found
        .strip_prefix('`')
        .and_then(|f| f.chars().next())
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"');
    if found == "the end of the file" {
        "something is not closed: check for a missing `)`, `]`, `}` or `\"`"
    } else if found == "`'`" {
        "strings are written in double quotes, `\"...\"` (raw strings `r\"...\"`)"
    } else if found == "`=`" && expects("`:`") && expected.len() == 1 {
        "a `param` names its type: `param steps: int = 100` (int, float, bool, string, percent or path)"
    } else if found == "`:`" && expects("`=`") {
        "fields and named arguments are written `name = value`, with `=` rather than `:`"
    } else if found_value && expects("`,`") {
        "is a `,` missing? list elements and arguments are separated by commas"
    } else if expects("`=`") {
        "fields and named arguments are written `name = value`"
    } else {
        "items start with a keyword (model, source, verifier, objective, eval, param, let, use, \
         stage, reweight, mix, train); blocks hold `name = value` fields"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected words are joined with commas and a last "or".
    #[test]
    fn unexpected_lists_what_was_expected() {
        let words = |ws: &[&str]| ParseProblem::Unexpected {
            expected: ws.iter().map(|w| w.to_string()).collect(),
            found: "`x`".to_string(),
        };
        assert_eq!(words(&[]).message(), "unexpected `x`");
        assert_eq!(words(&["`=`"]).message(), "expected `=`, found `x`");
        assert_eq!(
            words(&["a name", "`(`", "`=`"]).message(),
            "expected a name, `(` or `=`, found `x`"
        );
    }
}
