//! Shared by the differential tests: takes a source text, runs the fast parser and the pest
//! parser on it, and fails the test when they disagree. Gives back what each parser did, so a
//! test can also check that the fast parser is not simply giving up on everything.

use recap_compiler::parse::{parse_fast, parse_partial, parse_partial_pest, pest_only};

/// What the two parsers did with one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The fast parser accepted the input (and gave the same AST as pest).
    pub fast_accepted: bool,
    /// pest parsed the input without any diagnostic.
    pub pest_clean: bool,
}

/// Panics unless the parsers agree on `src`: when the fast parser accepts a file, pest must
/// parse it without a diagnostic into the same AST (compared with `==` and, so that `-0.0`
/// against `0.0` and similar differences show, through `Debug`); and the public
/// `parse_partial`, fast path and fallback together, must give exactly pest's file and
/// diagnostics.
///
/// It also fails when the fast parser gives up on a file that the grammar accepts as a whole
/// and that gives no diagnostic, so the fast path cannot quietly shrink. Two kinds of input
/// are exempt: files pest accepts only on its item-by-item recovery path (the grammar rejects
/// the whole file: a raw string left open in one item but closed in a later one is read to the
/// later item by the grammar, and as the name `r` and a comment by the recovery path), and
/// files with `r#"` where pest reads a name `r` followed by a comment (`model r#"x` then
/// `= ...` on the next line), which the fast parser leaves to pest.
pub fn assert_parsers_agree(src: &str) -> Outcome {
    let (pest_file, pest_diags) = parse_partial_pest(src);
    let fast = parse_fast(src);
    if let Some(fast_file) = &fast {
        assert!(
            pest_diags.is_empty(),
            "the fast parser accepts input that pest reports: {pest_diags:?}\ninput: {src:?}"
        );
        // Compared item by item, so a failure shows the one item that differs.
        for (fast_item, pest_item) in fast_file.items.iter().zip(&pest_file.items) {
            assert_eq!(
                fast_item, pest_item,
                "the parsers give different items for {src:?}"
            );
            assert_eq!(
                format!("{fast_item:?}"),
                format!("{pest_item:?}"),
                "the parsers give items that print differently for {src:?}"
            );
        }
        assert_eq!(
            fast_file, &pest_file,
            "the parsers give different files for {src:?}"
        );
    }
    let (file, diags) = parse_partial(src);
    assert_eq!(
        file, pest_file,
        "parse_partial's AST differs from pest's for {src:?}"
    );
    assert_eq!(
        diags, pest_diags,
        "parse_partial's diagnostics differ from pest's for {src:?}"
    );
    if pest_diags.is_empty() && fast.is_none() && pest_only(src) && !src.contains("r#\"") {
        panic!("the fast parser gives up on a file that pest parses cleanly: {src:?}");
    }
    Outcome {
        fast_accepted: fast.is_some(),
        pest_clean: pest_diags.is_empty(),
    }
}
