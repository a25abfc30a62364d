//! Differential test of the two parsers: takes every fixture, example, pipeline, stdlib
//! module and ```recap block of the docs, plus hand-written inputs aimed at the corners of the
//! grammar (comments where spans end, operators after calls, strings, raw strings, numbers,
//! signatures, errors the AST builder reports), and checks that the fast parser and the pest
//! parser agree on each (same AST, same diagnostics). It also checks that the fast parser
//! accepts every file pest parses cleanly, so agreement does not come from giving up.
//! `never_panics.rs` runs the same comparison on its ~10,500 random and mutated inputs.

mod common;

use common::assert_parsers_agree;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn recap_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            recap_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "recap") {
            out.push(path);
        }
    }
}

/// The ```recap blocks of a Markdown file.
fn recap_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```recap") => current = Some(String::new()),
            Some(text) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn parsers_agree_on_every_file_of_the_repository() {
    let root = repo();
    let mut files = Vec::new();
    for dir in ["compiler/tests/fixtures", "examples", "pipelines", "stdlib"] {
        recap_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        files.len() >= 80,
        "expected the fixtures, examples, pipelines and stdlib, found {} files",
        files.len()
    );
    let mut texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
            (f.display().to_string(), text)
        })
        .collect();
    let mut docs = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        docs.extend(entries.flatten().map(|e| e.path()));
    }
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(doc).unwrap_or_default();
        for (i, block) in recap_blocks(&text).into_iter().enumerate() {
            texts.push((format!("{} block {i}", doc.display()), block));
        }
    }
    let mut clean = 0;
    for (name, text) in &texts {
        let outcome = assert_parsers_agree(text);
        if outcome.pest_clean {
            clean += 1;
            assert!(
                outcome.fast_accepted,
                "{name}: pest parses it cleanly but the fast parser gives up"
            );
        }
    }
    assert!(clean >= 60, "only {clean} inputs parse cleanly");
}

/// Inputs aimed at the places where the parsers could differ. Each either parses (and then
/// both parsers must give the same AST) or has a syntax error (and then pest's diagnostics
/// must come out of `parse_partial` unchanged).
const CORNERS: &[&str] = &[
    // Where spans end: an expression without an operator ends after the comment that follows
    // it; with an operator it ends at a last call or member, else after the comment.
    "let a = f(x) # c\nlet b = a + f(x) # c\nlet c = a + b # c\nlet d = -f(x).y # c\nlet e = a * b.c # c\n",
    "let a = b # c\u{b}\nlet d = e # c\u{3000}\n\nlet f = g\r\n# tail",
    "param p: int # c\n = 1 # c2\nparam q: list[int] | float? = 1 in [1, inf) # c\nparam r: int? ? = -2 in (-inf, 0] # c\n",
    "param p: int = 1 in [1, 2) in [1, 2)",
    "use a.b # c\nuse c # d\nuse e . f",
    "mix # c\n",
    "mix uniform # c\ntrain { } # c\nreweight recap(window = 10) { a = 1 } # c\n",
    "mix uniform uniform",
    "train { } x",
    "train { } { }",
    "stage s { mix uniform # c\n train { steps = 1 } } # c\nstage t { }",
    "stage s { mix uniform x }",
    "stage s { let a = 1 2 }",
    "fn f(..xs: Verifier, a: int = 1 # c\n, b: int in [0, 1) # c\n, c: float? # c\n) -> Source{prompt, answer,} # c\nfn g() -> Model # c\nenum E { a, b, } # c\n",
    "fn f(a: int = 1 + g(x)) -> Model\nfn h(a: int = 1 + g(x) # c\n, b: list[list[int]]) -> X",
    "fn f(a: int in [0, 1) = 2) -> Model",
    "fn f(a: int = 1 = 2) -> Model",
    "fn f(. . a: int) -> Model",
    "fn f() - > Model",
    "fn f(a: int in [1%, 2)) -> Model",
    "fn f(a: int in [- 1, 2)) -> Model",
    "fn f(a: float in [-1_0.5e1, 1e999)) -> Model",
    "fn f(a: float in [-0, inf_)) -> Model",
    "enum E { }",
    // Strings and raw strings.
    "let s = \"a{b}c{ d}\\{x\\}{}{1}{_}{b_2}\\n\\t\\r\\0\\\\\\\"é{\"",
    "let s = \"line\nbreak\" let t = \"\"",
    "let r = r\"C:\\no\\escapes\" let q = r#\"say \"hi\"\"# let p = r#\"\"#",
    "let r = r#\"abc\nlet q = r",
    "let r = r\"abc\nlet q = 1",
    "let s = \"\\q\"",
    "let s = \"\\é\"",
    "let s = \"open",
    "let s = \"{a}\" + \"{b}x\"",
    // Numbers.
    "let n = 1_000 + 1.5e3 * 2% - 1e-3 / 7E+2 + 2.5% + 0.5 + 1e5_ + 00",
    "let m = 1.x let k = 1_000._5 let j = 1e",
    "let x = 99999999999999999999",
    "let x = 1e999",
    "let x = 1e999%",
    "let x = 10 %",
    "let x = 1abc",
    // Expressions.
    "let t = true.x let u = false let v = truex",
    "let u = (a)(b)",
    "let u = \"x\"(1)",
    "let u = (f)(1)",
    "let u = (a.b)(1)",
    "let w = f(a = 1, 2)",
    "let w = f(a = 1, b = g(c = 2, 3))",
    "let x = [1, [2, (3)], -(-4),] let y = [] let z = f()",
    "let x = a.b.c(1, k = 2,).d",
    "let x = - - a * - b.c(d) / (e - f) - -g",
    "let x = a - b - c / d / e * f + g",
    "let x = a.",
    "let x = a.5",
    "let x = f(a == b)",
    "let x = f(,)",
    "let x = [,]",
    "let x = f(a b)",
    "let x = (a, b)",
    "let x = a +",
    "let x = a + + b",
    "let x = -",
    // Blocks, declarations and item boundaries.
    "objective o = grpo(s) { a = 1, b = 2 c = 3 }",
    "objective o = grpo(s) { a = 1,, b = 2 }",
    "objective o = grpo(s) { a b }",
    "model p = f(x) { 1 }",
    "model p = f(x) { a = 1 } { b = 2 }",
    "model a = f(x)model b = g(y)mix uniform",
    "let a = x { b = 1 }",
    "model # c\n p # c\n = # c\n hf # c\n ( # c\n \"x\" # c\n ) # c\n { # c\n a # c\n = # c\n 1 # c\n } # c\n",
    "## doc\n## more\nmodel p = hf(\"x\")\n  ## not a doc\nlet a = p\n##\n#\n## after a comment\nlet b = a",
    "let model = 1 let mix = model mix model",
    "models p = 1",
    "modelé p = 1",
    "let é = 1",
    "",
    "   \n# only a comment",
    "let a = b\u{feff}",
    "let x = (((((((((((1)))))))))))",
];

#[test]
fn parsers_agree_on_the_corners_of_the_grammar() {
    let mut accepted = 0;
    for src in CORNERS {
        let outcome = assert_parsers_agree(src);
        accepted += usize::from(outcome.fast_accepted);
        // Also every prefix, which cuts items, strings and comments at every place.
        for end in (0..src.len()).filter(|&i| src.is_char_boundary(i)) {
            assert_parsers_agree(&src[..end]);
        }
    }
    assert!(
        accepted >= 20,
        "the fast parser accepts only {accepted} inputs"
    );
}
