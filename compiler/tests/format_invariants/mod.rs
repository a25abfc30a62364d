//! The formatter's promises, checked on one input: a text it formats is formatted again to
//! itself, keeps every token and comment in order (only whitespace changes), and compiles to
//! the same diagnostics and the same plan. What the never-panics inputs and the repository's
//! files share.

use recap_compiler::{check, format::format, AssumeFilesExist, CheckOptions};

/// The text without any whitespace: equal for two texts whose tokens and comments are the
/// same, in the same order.
fn without_whitespace(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The codes of a check's diagnostics and the plan's hash.
fn outcome(src: &str) -> (Vec<String>, Option<String>) {
    let out = check("f.recap", src, &CheckOptions::default(), &AssumeFilesExist);
    (
        out.diagnostics.into_iter().map(|d| d.code).collect(),
        out.plan.map(|p| p.compute_hash()),
    )
}

/// Checks the promises on `src`; returns whether the formatter accepted it (a text with a
/// syntax error is refused, with at least one error).
pub fn check_format(src: &str) -> bool {
    let formatted = match format(src) {
        Ok(f) => f,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason: {src:?}");
            return false;
        }
    };
    assert_eq!(
        format(&formatted).as_deref(),
        Ok(formatted.as_str()),
        "not idempotent on {src:?}"
    );
    assert_eq!(
        without_whitespace(&formatted),
        without_whitespace(src),
        "a token or comment changed: {src:?}\n->\n{formatted}"
    );
    assert_eq!(
        outcome(&formatted),
        outcome(src),
        "the check changed: {src:?}\n->\n{formatted}"
    );
    true
}
