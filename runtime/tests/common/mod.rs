//! What several test binaries share: takes nothing, gives the path of the benchmark fixture.

use std::path::{Path, PathBuf};

/// The benchmark fixture (`bench/fixture-tiny`, a Qwen2 model in Hugging Face layout with
/// prompts): `RECAP_FIXTURE_TINY`, else `shared/bench/fixture-tiny` beside the repository, else
/// /work/shared/bench/fixture-tiny. Panics with what to set when none exists, as the tests that
/// call it cannot run without it.
pub fn fixture() -> PathBuf {
    if let Some(p) = std::env::var_os("RECAP_FIXTURE_TINY") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../../shared/bench/fixture-tiny"),
        manifest.join("../shared/bench/fixture-tiny"),
        PathBuf::from("/work/shared/bench/fixture-tiny"),
    ];
    candidates
        .into_iter()
        .find(|c| c.join("config.json").is_file())
        .unwrap_or_else(|| {
            panic!("fixture-tiny not found: set RECAP_FIXTURE_TINY to the bench/fixture-tiny directory")
        })
}
