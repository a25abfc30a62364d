//! `recapc fmt`: in place, from standard input, `--check` with a diff, refusal of a file with a
//! syntax error; `check -`; and the CI check that every repository `.recap` file is formatted.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{recapc, stderr, stdout};

const MESSY: &str = "model   policy=tiny(layers=2,hidden=64,heads=4)   # the policy\n\n\n\nsource sums=arithmetic(count=10){answer=field(\"a\")}\n";
const TIDY: &str = "model policy = tiny(layers = 2, hidden = 64, heads = 4) # the policy\n\nsource sums = arithmetic(count = 10) { answer = field(\"a\") }\n";

/// Runs `recapc ARGS` in `dir` with `input` on its standard input.
fn with_stdin(args: &[&str], dir: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.recap` file of the repository that CI holds to the canonical layout: all but the
/// compiler's fixtures, whose `# ^^^` annotations mark columns of the line above and so are
/// laid out by hand (the compiler's tests still format them, to check the formatter).
fn formatted_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target"
                && !name.starts_with('.')
                && !path.ends_with("compiler/tests/fixtures")
            {
                formatted_files(&path, out);
            }
        } else if name.ends_with(".recap") {
            out.push(path);
        }
    }
}

#[test]
fn every_repository_recap_file_is_formatted() {
    let mut files = Vec::new();
    formatted_files(&repo(), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut args = vec!["fmt", "--check"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let o = recapc(&args, &repo());
    assert_eq!(
        o.status.code(),
        Some(0),
        "run `recapc fmt` on these files:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn fmt_rewrites_in_place_and_check_prints_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.recap"), MESSY).unwrap();
    let o = recapc(&["fmt", "--check", "p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let diff = stdout(&o);
    assert!(
        diff.starts_with("--- p.recap\n+++ p.recap (formatted)\n"),
        "{diff}"
    );
    assert!(diff.contains("\n-model   policy=tiny"), "{diff}");
    assert!(diff.contains("\n+model policy = tiny("), "{diff}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.recap")).unwrap(),
        MESSY,
        "--check changes nothing"
    );
    let o = recapc(&["fmt", "p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.recap")).unwrap(),
        TIDY
    );
    let o = recapc(&["fmt", "--check", "p.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).is_empty());
}

#[test]
fn fmt_reads_standard_input_and_writes_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    let o = with_stdin(&["fmt", "-"], dir.path(), MESSY.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), TIDY);
}

#[test]
fn fmt_refuses_a_file_with_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "model policy = tiny(layers = 2\nsource s = arithmetic()\n";
    std::fs::write(dir.path().join("b.recap"), broken).unwrap();
    let o = recapc(&["fmt", "b.recap"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("recap::parse::"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("so it was not formatted"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b.recap")).unwrap(),
        broken
    );
}

#[test]
fn check_reads_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let o = with_stdin(
        &["check", "-", "--format", "short"],
        dir.path(),
        b"let x = nope\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("<stdin>:1:9: error[recap::resolve::unknown_name]"),
        "{}",
        stdout(&o)
    );
}
