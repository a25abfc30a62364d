//! `hf_dataset(...)` sources end to end: a DatasetDict saved with `save_to_disk` (the runtime's
//! fixtures, Arrow IPC stream shards) planned, hashed and trained on by `recapc`.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The saved DatasetDict of the runtime's tests (`train`: two shards, `test`: one).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/tests/data/hf_dataset/dict")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

const JOB: &str = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 1)
source sums = hf_dataset(\"data/sums\", split = \"train\", prompt = \"{question}\") {
  target = field(\"answer\")
}
objective o = sft(sums)
train { steps = 2, prompts_per_step = 2, out = \"runs/sums\" }
";

/// A job directory holding the pipeline and a copy of the saved dataset.
fn job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), &dir.path().join("data/sums"));
    std::fs::write(dir.path().join("job.recap"), JOB).unwrap();
    dir
}

#[test]
fn the_plan_hashes_the_layout_and_the_shards_of_the_split_read() {
    let dir = job();
    let o = common::recapc(&["plan", "job.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<&str> = plan["file_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "data/sums/dataset_dict.json",
            "data/sums/train/state.json",
            "data/sums/train/dataset_info.json",
            "data/sums/train/data-00000-of-00002.arrow",
            "data/sums/train/data-00001-of-00002.arrow",
        ]
    );
    let shard = std::fs::metadata(dir.path().join("data/sums/train/data-00001-of-00002.arrow"));
    assert_eq!(plan["file_hashes"][4]["bytes"], shard.unwrap().len());
}

#[test]
fn a_run_trains_on_a_saved_dataset_and_refuses_a_changed_shard() {
    let dir = job();
    let o = common::recapc(&["plan", "job.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    std::fs::write(dir.path().join("plan.json"), common::stdout(&o)).unwrap();
    let o = common::recapc(
        &["run", "plan.json", "--progress", "quiet", "--out", "out"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(dir.path().join("out/final").is_dir());
    // The second train shard replaced by the test split's: the saved plan no longer holds.
    let train = dir.path().join("data/sums/train");
    std::fs::copy(
        dir.path().join("data/sums/test/data-00000-of-00001.arrow"),
        train.join("data-00001-of-00002.arrow"),
    )
    .unwrap();
    let o = common::recapc(
        &["run", "plan.json", "--progress", "quiet", "--out", "again"],
        dir.path(),
    );
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`data/sums/train/data-00001-of-00002.arrow` (its contents) changed"),
        "{err}"
    );
}

/// `recapc check` reads the head of a saved dataset as it does a JSON Lines file: a split the
/// dataset lacks, and a field its rows lack, are diagnostics at the source's path before any
/// run.
#[test]
fn check_reads_a_saved_dataset_before_the_run() {
    let dir = job();
    for (from, to, code, says) in [
        (
            "split = \"train\"",
            "split = \"dev\"",
            "recap::data::unreadable",
            "has no split `dev`",
        ),
        (
            "field(\"answer\")",
            "field(\"solution\")",
            "recap::data::missing_field",
            "solution",
        ),
    ] {
        std::fs::write(dir.path().join("bad.recap"), JOB.replace(from, to)).unwrap();
        let o = common::recapc(&["check", "bad.recap"], dir.path());
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(code) && err.contains(says), "{err}");
        assert!(
            err.contains("hf_dataset(\"data/sums\""),
            "no span at the path: {err}"
        );
    }
}
