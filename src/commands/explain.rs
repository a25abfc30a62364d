//! `recapc explain [CODE]`: takes a diagnostic code (in full, `recap::resolve::unknown_name`, or
//! just its last part, `unknown_name`), gives the long explanation of it: the compiler's, or
//! for a `recap::data::*` code of the pre-run data check, the runtime's. Without a
//! code, it lists the codes; an unknown code gets a "did you mean" for a near miss, or a
//! pointer to the list, rather than the whole list.

use recap_runtime::engine::data::DataProblem;

use super::{error_line, write_stdout};
use crate::cli::ExplainArgs;
use crate::exit::ExitCode;

pub fn run(args: &ExplainArgs) -> ExitCode {
    let mut codes = recap_compiler::all_codes();
    codes.extend(DataProblem::ALL.map(DataProblem::code));
    let Some(asked) = args.code.as_deref().map(str::trim) else {
        return write_stdout(&list(&codes));
    };
    match resolve(asked, &codes) {
        Some(code) => match explanation(code) {
            Some(text) => {
                let mut out = format!("{code}\n\n{}\n", text.trim_end());
                out.push_str(&example(code));
                write_stdout(&out)
            }
            None => {
                error_line(&format!(
                    "internal error, please report: code `{code}` has no explanation"
                ));
                ExitCode::Usage
            }
        },
        None if by_suffix(asked, &codes).count() > 1 => {
            // `missing_field` is a compiler code and a data code: name both, pick neither.
            let named: Vec<String> = by_suffix(asked, &codes).map(|c| format!("`{c}`")).collect();
            error_line(&format!(
                "`{asked}` is the end of several codes, {}; give the one you mean in full",
                named.join(" and ")
            ));
            ExitCode::Usage
        }
        None => {
            // A near miss gets one suggestion rather than the whole list, which hides it.
            let hint = match did_you_mean(asked, &codes) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "`recapc explain` lists every code".to_string(),
            };
            error_line(&format!("unknown diagnostic code `{asked}`; {hint}"));
            ExitCode::Usage
        }
    }
}

/// The long explanation of a compiler code, or of a data code of the pre-run data check.
fn explanation(code: &str) -> Option<&'static str> {
    recap_compiler::explain(code).or_else(|| {
        DataProblem::ALL
            .into_iter()
            .find(|p| p.code() == code)
            .map(DataProblem::explanation)
    })
}

/// The wrong and right snippets of `code`, indented as code under a heading each, or why no
/// snippet can show it.
pub fn example(code: &str) -> String {
    use recap_compiler::codes::{given_in_words, Example, Snippet};
    let shown = |heading: &str, s: &Snippet| {
        let mut out = format!("\n{heading}\n\n");
        for sentence in given_in_words(s.given) {
            out.push_str(&format!("  {sentence}\n"));
        }
        if !s.given.is_empty() {
            out.push('\n');
        }
        for line in s.text.lines() {
            out.push_str(format!("    {line}").trim_end());
            out.push('\n');
        }
        out
    };
    match recap_compiler::explain_example(code) {
        Some(Example::Pair { wrong, right }) => format!(
            "{}{}",
            shown(&format!("Wrong (gets {code}):"), &wrong),
            shown("Right:", &right)
        ),
        Some(Example::None(why)) => format!("\nNo example. {why}\n"),
        None if code.starts_with("recap::data::") => "\nNo example. A data code comes from the \
            rows of a source's data (or the policy's chat template) read before a run, not from \
            the pipeline's text alone.\n"
            .to_string(),
        None => String::new(),
    }
}

/// The full code that `asked` names: itself, or the one code whose last part it is.
pub fn resolve<'a>(asked: &str, codes: &[&'a str]) -> Option<&'a str> {
    if let Some(code) = codes.iter().find(|c| **c == asked) {
        return Some(code);
    }
    let mut found = by_suffix(asked, codes);
    match (found.next(), found.next()) {
        (Some(code), None) => Some(code),
        _ => None,
    }
}

/// The codes whose last parts are `asked`.
fn by_suffix<'a, 'c>(asked: &'c str, codes: &'c [&'a str]) -> impl Iterator<Item = &'a str> + 'c {
    codes
        .iter()
        .copied()
        .filter(move |c| c.rsplit("::").next() == Some(asked) || c.ends_with(&format!("::{asked}")))
}

/// The closest known code, when it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(asked: &str, codes: &[&'a str]) -> Option<&'a str> {
    let tail = |c: &str| c.rsplit("::").next().unwrap_or(c).to_string();
    codes
        .iter()
        .map(|c| {
            let full = strsim::jaro_winkler(asked, c);
            let short = strsim::jaro_winkler(&tail(asked), &tail(c));
            (full.max(short), *c)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn list(codes: &[&str]) -> String {
    if codes.is_empty() {
        return "the compiler lists no diagnostic codes\n".to_string();
    }
    let mut out = String::from("diagnostic codes (recapc explain CODE for the long text):\n");
    for code in codes {
        out.push_str("  ");
        out.push_str(code);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODES: &[&str] = &[
        "recap::resolve::unknown_name",
        "recap::resolve::duplicate_name",
        "recap::validate::out_of_range",
    ];

    #[test]
    fn resolves_full_codes_and_unique_last_parts() {
        assert_eq!(
            resolve("recap::resolve::unknown_name", CODES),
            Some("recap::resolve::unknown_name")
        );
        assert_eq!(
            resolve("out_of_range", CODES),
            Some("recap::validate::out_of_range")
        );
        assert_eq!(
            resolve("validate::out_of_range", CODES),
            Some("recap::validate::out_of_range")
        );
        assert_eq!(resolve("nope", CODES), None);
        // A last part that ends two codes names neither.
        let both = [
            "recap::validate::missing_field",
            "recap::data::missing_field",
        ];
        assert_eq!(resolve("missing_field", &both), None);
        assert_eq!(by_suffix("missing_field", &both).count(), 2);
        assert_eq!(
            resolve("data::missing_field", &both),
            Some("recap::data::missing_field")
        );
    }

    #[test]
    fn suggests_near_misses_only() {
        assert_eq!(
            did_you_mean("unknwon_name", CODES),
            Some("recap::resolve::unknown_name")
        );
        assert_eq!(
            did_you_mean("recap::validate::out_of_rnage", CODES),
            Some("recap::validate::out_of_range")
        );
        assert_eq!(did_you_mean("zzzzzzzzzzzzzzzzzzzzzzzzz", CODES), None);
    }
}
