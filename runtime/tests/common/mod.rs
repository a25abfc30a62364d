//! What several test binaries share: the path of the benchmark fixture, the largest
//! difference between two tensors, and running a pipeline compiled from `.recap` text. Each binary uses a part of it, hence `allow(dead_code)`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

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

/// The largest absolute difference between two tensors of one shape, on any device.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Compiles `text` (every file taken to exist) and runs its plan with `opts` in a new
/// temporary directory, which it returns so the caller can read the run's files. Panics with
/// the diagnostics when the text does not compile.
pub fn run_compiled(
    name: &str,
    text: &str,
    opts: recap_runtime::engine::RunOptions,
) -> tempfile::TempDir {
    use recap_compiler::{check, AssumeFilesExist, CheckOptions};
    let out = check(name, text, &CheckOptions::default(), &AssumeFilesExist);
    let plan = match out.plan {
        Some(p) => p,
        None => panic!("the pipeline does not compile: {:#?}", out.diagnostics),
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = recap_runtime::engine::RunOptions {
        base_dir: dir.path().to_path_buf(),
        ..opts
    };
    recap_runtime::engine::run(&plan, &opts).unwrap();
    dir
}
