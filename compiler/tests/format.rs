//! The formatter over every `.recap` file of the repository (examples, pipelines, the stdlib,
//! the fixtures): idempotent, tokens and comments kept, and the same diagnostics and plan hash
//! before and after. The never-panics inputs get the same checks in `never_panics.rs`.

mod format_invariants;

use std::path::{Path, PathBuf};

fn recap_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                recap_files(&path, out);
            }
        } else if path.extension().is_some_and(|x| x == "recap") {
            out.push(path);
        }
    }
}

#[test]
fn every_repository_file_formats_to_the_same_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    recap_files(&root, &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut formatted = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if format_invariants::check_format(&text) {
            formatted += 1;
        }
    }
    // Only the fixtures of syntax errors are refused.
    assert!(
        formatted + 20 > files.len(),
        "{formatted} of {}",
        files.len()
    );
}
