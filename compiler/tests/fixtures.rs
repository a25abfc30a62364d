//! Data-driven tests: every `.recap` file under `tests/fixtures/` states its expected
//! diagnostics inline, and the checker must produce exactly those (severity, code and primary
//! span), no more and no fewer.
//!
//! Annotation scheme (Typst-style): a comment line whose text after `#` starts with carets
//! annotates the nearest line above it that is not an annotation:
//!
//! ```text
//! objective o = grpo(math) { group = 1 }
//! #                                  ^ error[recap::typecheck::out_of_range]
//! ```
//!
//! The carets cover the primary span exactly; `^+` means the span starts at the caret and
//! runs past the end of the line. `# <^^^` marks a span that starts at column 0 (where the
//! `#` itself stands), as long as the carets. `# error[code]` without carets (on its own line) expects a
//! diagnostic without a label (about the whole file). Header comments configure the run:
//! `# set: name=value` adds a `--set` override, `# missing: path` makes the host report that
//! file as missing, `# mode: run` turns missing files into errors, and `# data: path k1 k2`
//! gives the data file `path` a row with the fields `k1` and `k2` (one header per row, in
//! order; a row with no fields is `# data: path -`, a line that is not a JSON object
//! `# data: path ! reason`), and `# context: dir N` gives the model
//! directory `dir` a context of N positions.
//!
//! Valid fixtures (under `valid/`) must produce no errors; their AST and plan JSON are
//! snapshotted with insta.

use recap_compiler::{check, CheckOptions, DataRow, Diagnostic, Host, Severity};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The host of a fixture: files exist unless named `missing`; data files have the rows of
/// their `data` headers (and cannot be read without any).
struct FixtureHost {
    missing: Vec<String>,
    data: Vec<(String, Result<Vec<String>, String>)>,
    contexts: Vec<(String, u64)>,
}

impl Host for FixtureHost {
    fn file_exists(&self, path: &str) -> bool {
        !self.missing.iter().any(|m| m == path)
    }

    fn jsonl_rows(&self, path: &str) -> Option<Vec<DataRow>> {
        let rows: Vec<DataRow> = self
            .data
            .iter()
            .filter(|(p, _)| p == path)
            .enumerate()
            .map(|(i, (_, fields))| DataRow {
                line: i + 1,
                fields: fields.clone(),
            })
            .collect();
        (!rows.is_empty()).then_some(rows)
    }

    fn model_context(&self, dir: &str) -> Option<u64> {
        self.contexts
            .iter()
            .find(|(d, _)| d == dir)
            .map(|(_, n)| *n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    severity: String,
    code: String,
    start: usize,
    /// `None`: the span runs past the end of its line.
    end: Option<usize>,
    line: usize,
}

struct Fixture {
    expects: Vec<Expect>,
    options: CheckOptions,
    host: FixtureHost,
}

fn parse_annotation(text: &str) -> Option<(String, String)> {
    let text = text.trim();
    let (sev, rest) = if let Some(r) = text.strip_prefix("error[") {
        ("error", r)
    } else if let Some(r) = text.strip_prefix("warning[") {
        ("warning", r)
    } else {
        return None;
    };
    let code = rest.strip_suffix(']')?;
    Some((sev.to_string(), code.to_string()))
}

fn read_fixture(source: &str) -> Fixture {
    let mut expects = Vec::new();
    let mut options = CheckOptions::default();
    let mut missing = Vec::new();
    let mut data = Vec::new();
    let mut contexts = Vec::new();
    let mut offset = 0;
    // (start offset, line number) of the last line that is not an annotation
    let mut target: Option<(usize, usize, usize)> = None;
    for (i, line) in source.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        let content = trimmed.trim_end_matches(['\n', '\r']);
        let mut is_annotation = false;
        if let Some(after) = content.strip_prefix('#') {
            let body = after.trim_start();
            let at_zero = body.starts_with("<^");
            if body.starts_with('^') || at_zero {
                let caret_col = line.find('^').unwrap_or(0);
                let carets = line[caret_col..].chars().take_while(|c| *c == '^').count();
                let rest = &line[caret_col + carets..];
                let (open, rest) = match rest.strip_prefix('+') {
                    Some(r) => (true, r),
                    None => (false, rest),
                };
                let (sev, code) = parse_annotation(rest)
                    .unwrap_or_else(|| panic!("bad annotation on line {}: {line}", i + 1));
                let (tstart, tlen, tline) = target
                    .unwrap_or_else(|| panic!("annotation on line {} has no line above", i + 1));
                assert!(
                    caret_col < tlen.max(1) + 1,
                    "annotation on line {} points past its line",
                    i + 1
                );
                let col = if at_zero { 0 } else { caret_col };
                expects.push(Expect {
                    severity: sev,
                    code,
                    start: tstart + col,
                    end: (!open).then_some(tstart + col + carets),
                    line: tline,
                });
                is_annotation = true;
            } else if let Some((sev, code)) = parse_annotation(body) {
                expects.push(Expect {
                    severity: sev,
                    code,
                    start: 0,
                    end: Some(0),
                    line: 0,
                });
                is_annotation = true;
            } else if let Some(kv) = body.strip_prefix("set:") {
                let (k, v) = kv.trim().split_once('=').expect("`# set: name=value`");
                options.overrides.push((k.to_string(), v.to_string()));
            } else if let Some(p) = body.strip_prefix("missing:") {
                missing.push(p.trim().to_string());
            } else if let Some(row) = body.strip_prefix("data:") {
                let mut words = row.split_whitespace();
                let path = words.next().expect("`# data: path key...`").to_string();
                let rest: Vec<&str> = words.collect();
                let fields = match rest.split_first() {
                    // `!` and a reason: a line that is not a JSON object.
                    Some((&"!", why)) => Err(why.join(" ")),
                    _ => Ok(rest
                        .iter()
                        .filter(|w| **w != "-")
                        .map(|w| w.to_string())
                        .collect()),
                };
                data.push((path, fields));
            } else if let Some(c) = body.strip_prefix("context:") {
                let (dir, n) = c.trim().split_once(' ').expect("`# context: dir N`");
                contexts.push((dir.to_string(), n.trim().parse().expect("a number")));
            } else if body.trim() == "mode: run" {
                options.missing_files_are_errors = true;
            }
        }
        if !is_annotation {
            let len = line.trim_end_matches(['\n', '\r']).len();
            target = Some((offset, len, i + 1));
        }
        offset += line.len();
    }
    Fixture {
        expects,
        options,
        host: FixtureHost {
            missing,
            data,
            contexts,
        },
    }
}

fn actual(d: &Diagnostic, source: &str) -> (String, String, usize, usize) {
    let span = d.primary_span();
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = source;
    (sev.to_string(), d.code.clone(), span.start(), span.end())
}

fn line_end(source: &str, start: usize) -> usize {
    source[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(source.len())
}

/// Checks one fixture; returns a description of every mismatch.
fn run_fixture(path: &Path) -> (Vec<String>, recap_compiler::CheckOutput, Vec<Expect>) {
    let source = std::fs::read_to_string(path).expect("fixture readable");
    let fx = read_fixture(&source);
    let out = check(
        &path.file_name().unwrap().to_string_lossy(),
        &source,
        &fx.options,
        &fx.host,
    );
    let mut problems = Vec::new();
    let mut unmatched: Vec<&Diagnostic> = out.diagnostics.iter().collect();
    for e in &fx.expects {
        let pos = unmatched.iter().position(|d| {
            let (sev, code, s, end) = actual(d, &source);
            let no_label = d.labels.is_empty();
            sev == e.severity
                && code == e.code
                && if e.line == 0 {
                    no_label
                } else {
                    !no_label
                        && s == e.start
                        && match e.end {
                            Some(x) => end == x,
                            None => end > line_end(&source, s),
                        }
                }
        });
        match pos {
            Some(i) => {
                unmatched.remove(i);
            }
            None => problems.push(format!(
                "expected {}[{}] at line {} bytes {}..{:?}, not produced",
                e.severity, e.code, e.line, e.start, e.end
            )),
        }
    }
    for d in unmatched {
        let (sev, code, s, end) = actual(d, &source);
        let (l, c) = recap_compiler::line_col(&source, s);
        problems.push(format!(
            "unexpected {sev}[{code}] at {l}:{c} ({s}..{end}): {} `{}`",
            d.message,
            source.get(s..end).unwrap_or("")
        ));
    }
    (problems, out, fx.expects)
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "recap"))
        .collect();
    files.sort();
    files
}

#[test]
fn error_fixtures_produce_exactly_their_annotated_diagnostics() {
    let files = fixtures("errors");
    let mut failures = Vec::new();
    let mut codes = BTreeSet::new();
    for f in &files {
        let (problems, out, expects) = run_fixture(f);
        assert!(
            expects.iter().any(|e| e.severity == "error"),
            "{}: an error fixture must expect at least one error",
            f.display()
        );
        assert!(
            out.plan.is_none(),
            "{}: a file with errors has no plan",
            f.display()
        );
        for e in &expects {
            codes.insert(e.code.clone());
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", f.display(), problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "fixture mismatches:\n{}",
        failures.join("\n")
    );
    assert!(files.len() >= 40, "only {} error fixtures", files.len());
    let known: BTreeSet<String> = recap_compiler::all_codes()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for c in &codes {
        assert!(known.contains(c), "code {c} is not listed in all_codes()");
    }
    assert!(
        codes.len() >= 40,
        "only {} distinct codes covered: {codes:?}",
        codes.len()
    );
}

#[test]
fn warning_fixtures_produce_exactly_their_annotated_warnings() {
    let files = fixtures("warnings");
    let mut failures = Vec::new();
    for f in &files {
        let (problems, out, expects) = run_fixture(f);
        assert!(
            expects.iter().all(|e| e.severity == "warning"),
            "{}: only warnings here",
            f.display()
        );
        assert!(!expects.is_empty(), "{}: expects no warning", f.display());
        assert!(
            out.plan.is_some(),
            "{}: warnings do not prevent a plan",
            f.display()
        );
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", f.display(), problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "fixture mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn valid_fixtures_check_clean_and_match_snapshots() {
    let files = fixtures("valid");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        let (problems, out, _) = run_fixture(f);
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", f.display(), problems.join("\n  ")));
            continue;
        }
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(f).unwrap();
        let (ast, diags) = recap_compiler::parse(&source);
        assert!(diags.is_empty(), "{name}: {diags:?}");
        insta::assert_json_snapshot!(format!("ast_{name}"), ast);
        let plan = out.plan.expect("a valid fixture has a plan");
        insta::assert_snapshot!(format!("plan_{name}"), plan.to_json());
        insta::assert_snapshot!(
            format!("graph_{name}"),
            recap_compiler::render_graph(&plan, recap_compiler::GraphFormat::Text)
        );
        // The plan survives a round trip through JSON with its hash intact.
        let back = recap_plan::Plan::from_json(&plan.to_json()).expect("plan reads back");
        assert_eq!(back, plan);
    }
    assert!(
        failures.is_empty(),
        "fixture mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_code_has_an_explanation_and_every_emitted_code_is_listed() {
    let codes = recap_compiler::all_codes();
    let unique: BTreeSet<&str> = codes.iter().copied().collect();
    assert_eq!(unique.len(), codes.len(), "duplicate codes in the table");
    for c in &codes {
        let text = recap_compiler::explain(c).expect("explained");
        assert!(text.len() > 40, "{c}: explanation too short");
        let parts: Vec<&str> = c.split("::").collect();
        assert_eq!(parts.len(), 3, "{c}");
        assert_eq!(parts[0], "recap");
    }
    assert!(recap_compiler::explain("recap::nope::nothing").is_none());
    // Every code string used in the compiler's source, stage folders included, is in the
    // table.
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(
        files.iter().any(|p| p.ends_with("validate/mod.rs")),
        "the walk missed the stage folders"
    );
    for path in files {
        if path.file_name().is_some_and(|n| n == "codes.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices("\"recap::") {
            let rest = &text[i + 1..];
            let code = &rest[..rest.find('"').unwrap()];
            assert!(
                unique.contains(code),
                "{}: code {code} missing from codes.rs",
                path.display()
            );
        }
    }
}

/// Every code has an example for `recapc explain` (compiler/src/codes/examples.txt): its wrong
/// snippet gets the code and its right snippet does not, each checked with what it takes as
/// given (the fixtures' headers); or the example says why no snippet can show the code.
#[test]
fn explain_examples_get_their_code_and_their_fixes_do_not() {
    use recap_compiler::codes::{Example, Snippet};
    let codes_of = |s: &Snippet| {
        let headers: String = s
            .given
            .lines()
            .filter_map(|l| l.strip_prefix("given: "))
            .map(|g| format!("# {g}\n"))
            .collect();
        let fx = read_fixture(&headers);
        let out = check("example.recap", s.text, &fx.options, &fx.host);
        out.diagnostics
            .iter()
            .map(|d| d.code.clone())
            .collect::<BTreeSet<_>>()
    };
    let mut problems = Vec::new();
    let mut none = Vec::new();
    for code in recap_compiler::all_codes() {
        match recap_compiler::explain_example(code) {
            Some(Example::Pair { wrong, right }) => {
                let got = codes_of(&wrong);
                if !got.contains(code) {
                    problems.push(format!("{code}: the wrong snippet gets only {got:?}"));
                }
                let got = codes_of(&right);
                if got.contains(code) {
                    problems.push(format!("{code}: the right snippet gets it too: {got:?}"));
                }
                if wrong.text.is_empty() || right.text.is_empty() || wrong == right {
                    problems.push(format!("{code}: the snippets are empty or the same"));
                }
            }
            Some(Example::None(why)) => {
                assert!(!why.is_empty(), "{code}: no reason given");
                none.push(code);
            }
            None => problems.push(format!("{code}: no example")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Only codes that no snippet can reach go without one: a file over 4 GiB, a bound the
    // grammar does not let through, and the compiler's own faults.
    assert!(
        none.iter().all(|c| c.starts_with("recap::internal::")
            || c.ends_with("too_large")
            || c.ends_with("bad_number")),
        "{none:?}"
    );
}
