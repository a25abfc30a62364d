//! The forgetting study end to end: `scripts/forgetting-study.sh --ci` runs the warm-up and two
//! variants of `pipelines/forgetting/` with the built `recapc`, in the directory layout that
//! `recapc compare` groups by. The full study is too long for CI; this keeps its script, its
//! pipelines and the hand-over of the warm-up's weights working.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn study(out: &Path, recapc: &str) -> Output {
    Command::new("bash")
        .arg(repo().join("scripts/forgetting-study.sh"))
        .args(["--ci", "--jobs", "2", "--out"])
        .arg(out)
        .env("RECAPC", recapc)
        .env("NO_COLOR", "1")
        .output()
        .expect("bash runs the study script")
}

/// The probe scores of one run: (step, copy score, sums score) for every step that probed.
fn probes(run: &Path) -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let eval = record.get("eval")?;
            let score = |probe: &str, reward: &str| eval[probe][reward].as_f64().unwrap();
            Some((
                record["step"].as_u64().unwrap(),
                score("copy_probe", "copied"),
                score("sums_probe", "correct"),
            ))
        })
        .collect()
}

#[test]
fn ci_study_runs_warmup_then_variants_from_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let o = study(&out, env!("CARGO_BIN_EXE_recapc"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("wall time"), "{stdout}");

    let warmup = out.join("warmup/seed-1");
    assert!(warmup.join("final/model.safetensors").is_file());
    assert_eq!(probes(&warmup).len(), 1, "one probe, at the warm-up's end");
    for variant in ["reasoning-only", "recap"] {
        let run = out.join(variant).join("seed-1");
        // The variant must have loaded the warm-up's weights, not the pipeline's default.
        let plan = std::fs::read_to_string(run.join("plan.json")).unwrap();
        let init = warmup.join("final").display().to_string();
        assert!(plan.contains(&init), "{variant} does not start from {init}");
        let steps: Vec<u64> = probes(&run).iter().map(|p| p.0).collect();
        assert_eq!(steps, [20, 40], "{variant}: probes of both skills");
    }
    // RECAP logs its three keys: the two reward terms of the RL objective and the replay.
    let metrics = std::fs::read_to_string(out.join("recap/seed-1/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let mut keys: Vec<&String> = last["keys"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["copies", "sums.correct", "sums.format"]);

    // The table holds the warm-up as the skills before RL, beside both variants.
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    for variant in ["warmup", "reasoning-only", "recap"] {
        assert!(
            table.contains(&format!("| {variant} | copy_probe.copied |")),
            "{table}"
        );
    }
}

#[test]
fn study_fails_loudly_without_recapc() {
    let dir = tempfile::tempdir().unwrap();
    let o = study(&dir.path().join("study"), "/nonexistent/recapc");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("recapc not found"));
}
