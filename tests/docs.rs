//! Every pipeline a user reads is checked: each ```recap block of README.md and docs/*.md and
//! each file in examples/ and pipelines/ must compile without errors, unless it is marked as
//! intentionally bad. Markers:
//!
//! - a code block with info string `recap,error=CODE` (or a file with a line
//!   `# recap-test: error CODE`) must give an error with that code (repeat for several codes);
//! - `recap,fragment` marks an excerpt (a few items, not a whole job): it must parse without
//!   syntax errors (no `recap::parse::*` code), but is not checked as a complete pipeline.
//!
//! Files are checked against the real file system relative to their own directory, so a
//! missing data file is a warning, as with `recapc check`.

use std::path::{Path, PathBuf};

use recap_compiler::{AssumeFilesExist, CheckOptions, Diagnostic, Severity};
use recapc::host::FsHost;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug, PartialEq)]
enum Expect {
    Clean,
    Errors(Vec<String>),
    Fragment,
}

fn errors(diagnostics: &[Diagnostic]) -> Vec<&Diagnostic> {
    diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

fn describe(diagnostics: &[&Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("{} {}", d.code, d.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks one pipeline text; returns a failure message or `None`.
fn verify(what: &str, base: &Path, text: &str, expect: &Expect) -> Option<String> {
    if *expect == Expect::Fragment {
        // Only the fixed API is used: a fragment may fail later stages, never parsing.
        let out = recap_compiler::check(what, text, &CheckOptions::default(), &AssumeFilesExist);
        let errs: Vec<&Diagnostic> = errors(&out.diagnostics)
            .into_iter()
            .filter(|d| d.code.starts_with("recap::parse::"))
            .collect();
        return (!errs.is_empty())
            .then(|| format!("{what}: fragment does not parse: {}", describe(&errs)));
    }
    let host = FsHost::for_pipeline(&base.join("pipeline.recap"));
    let out = recap_compiler::check(what, text, &CheckOptions::default(), &host);
    let errs = errors(&out.diagnostics);
    match expect {
        Expect::Clean if !errs.is_empty() => Some(format!("{what}: {}", describe(&errs))),
        Expect::Clean if out.plan.is_none() => Some(format!("{what}: no errors but no plan")),
        Expect::Errors(codes) => {
            let missing: Vec<&String> = codes
                .iter()
                .filter(|c| !errs.iter().any(|d| &d.code == *c))
                .collect();
            (!missing.is_empty() || errs.is_empty()).then(|| {
                format!(
                    "{what}: expected errors {codes:?}, got [{}]",
                    describe(&errs)
                )
            })
        }
        _ => None,
    }
}

/// The expectation written in a pipeline file (`# recap-test: error CODE`).
fn file_expectation(text: &str) -> Expect {
    let codes: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# recap-test: error"))
        .flat_map(|rest| rest.split_whitespace().map(str::to_string))
        .collect();
    if text
        .lines()
        .any(|l| l.trim().starts_with("# recap-test: error"))
    {
        Expect::Errors(codes)
    } else {
        Expect::Clean
    }
}

/// The ```recap blocks of a Markdown text, with their first line number and expectation.
fn recap_blocks(markdown: &str) -> Vec<(usize, Expect, String)> {
    let mut blocks = Vec::new();
    // Inside a fence: `Some(None)` for a block in another language, `Some(Some(..))` for recap.
    let mut fence: Option<Option<(usize, Expect, String)>> = None;
    for (i, line) in markdown.lines().enumerate() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            if let Some(Some((_, _, text))) = fence.as_mut() {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        };
        match fence.take() {
            Some(Some(block)) => blocks.push(block),
            Some(None) => {}
            None => fence = Some(parse_info(info).map(|expect| (i + 2, expect, String::new()))),
        }
    }
    blocks
}

/// The expectation of a fence's info string, or `None` when it is not a recap block.
fn parse_info(info: &str) -> Option<Expect> {
    let mut parts = info.trim().split(',').map(str::trim);
    if parts.next() != Some("recap") {
        return None;
    }
    let mut expect = Expect::Clean;
    for part in parts {
        if part == "fragment" {
            expect = Expect::Fragment;
        } else if let Some(code) = part.strip_prefix("error=") {
            match &mut expect {
                Expect::Errors(codes) => codes.push(code.to_string()),
                _ => expect = Expect::Errors(vec![code.to_string()]),
            }
        } else if part == "error" && expect == Expect::Clean {
            expect = Expect::Errors(Vec::new());
        }
    }
    Some(expect)
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

#[test]
fn every_example_and_pipeline_checks() {
    let root = repo();
    let mut files = Vec::new();
    files_under(&root.join("examples"), "recap", &mut files);
    files_under(&root.join("pipelines"), "recap", &mut files);
    files.sort();
    assert!(files.len() >= 5, "examples/ and pipelines/ hold pipelines");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let shown = path.strip_prefix(&root).unwrap().display().to_string();
            verify(
                &shown,
                path.parent().unwrap(),
                &text,
                &file_expectation(&text),
            )
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_recap_block_in_the_docs_checks() {
    let root = repo();
    let mut docs = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    files_under(&root.join("docs"), "md", &mut docs);
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
        let shown = doc.strip_prefix(&root).unwrap().display().to_string();
        for (line, expect, block) in recap_blocks(&text) {
            checked += 1;
            // Blocks resolve paths against the repository root, as a reader would run them.
            if let Some(f) = verify(&format!("{shown}:{line}"), &root, &block, &expect) {
                failures.push(f);
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} recap blocks found in the docs"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_block_scanner_reads_info_strings() {
    let md = "x\n```recap\nmodel a = tiny()\n```\n```text\nnot recap\n```\n\
              ```recap,error=recap::a::b,error=recap::c::d\nbad\n```\n```recap,fragment\nf\n```\n";
    let blocks = recap_blocks(md);
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        blocks[0],
        (3, Expect::Clean, "model a = tiny()\n".to_string())
    );
    assert_eq!(
        blocks[1].1,
        Expect::Errors(vec!["recap::a::b".into(), "recap::c::d".into()])
    );
    assert_eq!(blocks[2].1, Expect::Fragment);
    assert_eq!(
        file_expectation("# recap-test: error recap::x::y\nmodel"),
        Expect::Errors(vec!["recap::x::y".into()])
    );
    assert_eq!(file_expectation("model a = b"), Expect::Clean);
}

#[test]
fn every_diagnostic_code_is_in_docs_diagnostics() {
    let text = std::fs::read_to_string(repo().join("docs/diagnostics.md")).unwrap();
    let missing: Vec<&str> = recap_compiler::all_codes()
        .into_iter()
        .filter(|code| !text.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/diagnostics.md does not list: {missing:?}"
    );
}

#[test]
fn every_stdlib_entry_is_in_docs_language() {
    let text = std::fs::read_to_string(repo().join("docs/language.md")).unwrap();
    let entries = recap_compiler::stdlib_docs();
    assert!(entries.len() >= 40, "the stdlib lists its entries");
    let missing: Vec<String> = entries
        .iter()
        .filter(|e| !text.contains(&format!("#### `{}`", e.name)))
        .map(|e| format!("{} ({})", e.name, e.module))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/language.md has no section for: {missing:?}"
    );
}

/// The README's quick start has exactly two commands, and CI runs the second one verbatim.
#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let section = &readme[start..];
    let block_start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let block = &section[block_start..];
    let block = &block[..block.find("```").unwrap()];
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "two set-up commands: {commands:?}");
    assert_eq!(
        commands[0],
        "cargo run --release -- run pipelines/quickstart.recap"
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == commands[1]),
        ".ci/run does not run `{}`",
        commands[1]
    );
}

/// Each summary in docs/diagnostics.md's code table is whole sentences, never cut after "e.g."
/// or inside a code span, and opens `recapc explain CODE` word for word; and the stages the
/// page names are the stages the codes name.
#[test]
fn diagnostics_summaries_are_whole_sentences_and_stages_match() {
    let text = std::fs::read_to_string(repo().join("docs/diagnostics.md")).unwrap();
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in recap_compiler::all_codes() {
        let row = format!("| `{code}` | ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row for {code}"));
        let summary = line
            .strip_prefix(&row)
            .and_then(|s| s.strip_suffix(" |"))
            .unwrap_or_default()
            .replace("\\|", "|");
        let summary = squash(&summary);
        assert!(
            summary.ends_with('.') && !summary.ends_with("e.g."),
            "{code}: {summary:?}"
        );
        // The summary is the explanation's opening, word for word, so the two cannot drift.
        let explanation = squash(recap_compiler::explain(code).unwrap_or_default());
        assert!(
            explanation.starts_with(&summary),
            "{code}: the summary {summary:?} is not how `recapc explain` opens: {explanation:?}"
        );
        // `recapc explain` shows an example of every code, or says why it cannot.
        assert!(
            recap_compiler::explain_example(code).is_some(),
            "{code} has no example in compiler/src/codes/examples.txt"
        );
        assert_eq!(summary.matches('`').count() % 2, 0, "{code}: {summary:?}");
    }
    let forms = text
        .lines()
        .skip_while(|l| !l.starts_with("Codes have the form"))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    for code in recap_compiler::all_codes() {
        let stage = code.split("::").nth(1).unwrap();
        assert!(
            forms.contains(&format!("`{stage}`")),
            "{stage} not in {forms:?}"
        );
    }
    assert!(
        !forms.contains("`type`") && !forms.contains("`dag`"),
        "{forms}"
    );
}
