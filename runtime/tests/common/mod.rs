//! What several test binaries share: the path of the benchmark fixture, the largest
//! difference between two tensors, running a pipeline compiled from `.recap` text, checking
//! that a resumed run equals an uninterrupted one, and reading the request of a stub HTTP judge. Each binary uses a part of it, hence `allow(dead_code)`.

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

/// The metrics of a run directory, one JSON object per line of `metrics.jsonl`, without the
/// wall-clock fields, which differ between two runs of the same plan.
pub fn metrics_without_timing(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| without_timing(serde_json::from_str(l).unwrap()))
        .collect()
}

/// A metrics record without its wall-clock fields.
pub fn without_timing(mut v: serde_json::Value) -> serde_json::Value {
    for k in ["seconds", "tokens_per_s", "time"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

/// The two runs of [`resume_equals_uninterrupted`], for the checks particular to a plan.
pub struct ResumedRuns {
    /// The uninterrupted run's directory.
    pub full: tempfile::TempDir,
    /// The directory of the run stopped and then resumed.
    pub cut: tempfile::TempDir,
    /// What the stopped run and the resumed run reported.
    pub stopped: recap_runtime::engine::RunSummary,
    pub resumed: recap_runtime::engine::RunSummary,
}

/// Runs `plan` uninterrupted in one new temporary directory, and in another stopped after
/// `stop_after` global steps and then resumed (`opts` gives each run's options from its
/// directory). Checks that the stopped run left no final model, that the resumed run reaches
/// `steps`, and that both runs wrote the same metrics (timing aside) and the same bytes in each
/// of `finals` under `final/`.
pub fn resume_equals_uninterrupted(
    plan: &recap_plan::Plan,
    opts: impl Fn(&Path) -> recap_runtime::engine::RunOptions,
    stop_after: u64,
    steps: u64,
    finals: &[&str],
) -> ResumedRuns {
    use recap_runtime::engine::{run, RunOptions};
    let full = tempfile::tempdir().unwrap();
    run(plan, &opts(full.path())).unwrap();
    let cut = tempfile::tempdir().unwrap();
    let stopped = run(
        plan,
        &RunOptions {
            stop_after: Some(stop_after),
            ..opts(cut.path())
        },
    )
    .unwrap();
    assert_eq!(stopped.steps, stop_after);
    assert!(!cut.path().join("final").exists());
    let resumed = run(
        plan,
        &RunOptions {
            resume: Some(cut.path().to_path_buf()),
            ..opts(cut.path())
        },
    )
    .unwrap();
    assert_eq!(resumed.steps, steps);
    let metrics = metrics_without_timing(full.path());
    assert_eq!(metrics.len() as u64, steps);
    assert_eq!(metrics, metrics_without_timing(cut.path()));
    for f in finals {
        let a = std::fs::read(full.path().join("final").join(f)).unwrap();
        let b = std::fs::read(cut.path().join("final").join(f)).unwrap();
        assert!(a == b, "final/{f} differs after resume");
    }
    ResumedRuns {
        full,
        cut,
        stopped,
        resumed,
    }
}

/// The body of one HTTP request read from `reader` by a stub judge: the headers up to the blank
/// line, then `content-length` bytes. `None` when the request breaks off.
pub fn http_request_body(reader: &mut impl std::io::BufRead) -> Option<Vec<u8>> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}
