//! The diagnostic codes: takes nothing in; gives every code the compiler can emit with its long
//! explanation, for `recapc explain`, the docs and the tests that check every emitted code is
//! listed. Each stage declares its codes beside its problem enum (`parse::problems`,
//! `resolve::problems`, `typecheck::problems`, `validate::problems`, `internal`), so they are
//! listed from there and cannot drift from what the stage emits.

use crate::diagnostic::ProblemCode;
use crate::internal::InternalCode;
use crate::parse::ParseCode;
use crate::resolve::ResolveCode;
use crate::typecheck::TypecheckCode;
use crate::validate::ValidateCode;

/// Every code with its explanation, by stage in pipeline order, internal errors last.
pub fn codes() -> impl Iterator<Item = (&'static str, &'static str)> {
    listed::<ParseCode>()
        .chain(listed::<ResolveCode>())
        .chain(listed::<TypecheckCode>())
        .chain(listed::<ValidateCode>())
        .chain(listed::<InternalCode>())
}

/// The codes of a stage with their explanations.
fn listed<C: ProblemCode>() -> impl Iterator<Item = (&'static str, &'static str)> {
    C::ALL.iter().map(|c| (c.code(), c.explanation()))
}

/// The examples of `recapc explain CODE`, one entry per code (see the file's header).
const EXAMPLES: &str = include_str!("codes/examples.txt");

/// A snippet of an example: what it takes as given (lines of the form `set: name=value`,
/// `missing: path`, `data: path field...`, `context: dir N`; see `given_in_words`) and the
/// pipeline text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snippet {
    pub given: &'static str,
    pub text: &'static str,
}

/// The example of one code: a snippet that gets it and the same put right, or why no snippet
/// can show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Example {
    Pair { wrong: Snippet, right: Snippet },
    None(&'static str),
}

/// The example of `code`, when the examples file has one.
pub fn example(code: &str) -> Option<Example> {
    let start = EXAMPLES.find(&format!("\n== {code}\n"))? + code.len() + 5;
    let body = EXAMPLES.get(start..)?;
    let body = body.get(..body.find("\n== ").unwrap_or(body.len()))?;
    if let Some(why) = body.strip_prefix("-- none\n") {
        return Some(Example::None(why.trim()));
    }
    let pair = body.strip_prefix("-- wrong\n")?;
    let (wrong, right) = pair.split_once("-- right\n")?;
    Some(Example::Pair {
        wrong: snippet(wrong),
        right: snippet(right),
    })
}

/// A snippet's `given:` lines and its text.
fn snippet(text: &'static str) -> Snippet {
    let mut given_end = 0;
    for line in text.split_inclusive('\n') {
        if !line.starts_with("given: ") {
            break;
        }
        given_end += line.len();
    }
    let (given, text) = text.split_at(given_end);
    Snippet {
        given: given.trim_end(),
        text: text.trim_end(),
    }
}

/// The `given:` lines of a snippet in words, one sentence each, for `recapc explain`.
pub fn given_in_words(given: &str) -> Vec<String> {
    given
        .lines()
        .filter_map(|l| l.strip_prefix("given: "))
        .map(|g| {
            let (what, rest) = g.split_once(':').unwrap_or((g, ""));
            let rest = rest.trim();
            match what {
                "set" => format!("Checked with `--set {rest}`."),
                "missing" => format!("The file `{rest}` does not exist."),
                "data" => match rest.split_once(' ') {
                    Some((path, row)) if row.starts_with('!') => {
                        format!("A line of `{path}` is not a JSON object.")
                    }
                    Some((path, fields)) => format!(
                        "A line of `{path}` has the fields {}.",
                        fields
                            .split_whitespace()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!("The data file `{rest}` is read."),
                },
                "context" => match rest.split_once(' ') {
                    Some((dir, n)) => format!("The model in `{dir}` has a context of {n} tokens."),
                    None => format!("The model in `{rest}` is read."),
                },
                _ => g.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage's codes name that stage, `recap::<stage>::<name>`, so a code declared in the
    /// wrong enum is caught.
    #[test]
    fn every_code_names_its_stage() {
        fn names<C: ProblemCode + std::fmt::Debug>(stage: &str) {
            for c in C::ALL {
                assert_eq!(c.code().split("::").nth(1), Some(stage), "{c:?}");
            }
        }
        names::<ParseCode>("parse");
        names::<ResolveCode>("resolve");
        names::<TypecheckCode>("typecheck");
        names::<ValidateCode>("validate");
        names::<InternalCode>("internal");
    }
}
