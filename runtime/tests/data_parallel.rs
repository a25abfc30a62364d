//! The data-parallel step on ranks that are threads of this process (`ThreadGroup`): a job of
//! two ranks equals one process given the job's shard count, bit for bit (metrics, checkpoints
//! and final weights); checkpoints do not depend on the world size that wrote them, so a run
//! resumes on another world size and ends where the uninterrupted run ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use recap_plan::*;
use recap_runtime::dist::{Collective, ThreadGroup};
use recap_runtime::engine::presets::{self, seal};
use recap_runtime::engine::{run, run_with, ProgressMode, RunOptions, RunSummary};
use serde_json::Value;

mod common;
use common::without_timing;

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        out: Some(dir.to_path_buf()),
        progress: ProgressMode::Quiet,
        base_dir: dir.to_path_buf(),
        samples_every: 2,
        ..RunOptions::default()
    }
}

/// SFT warm-up, then GRPO with a KL term and SFT replay under RECAP (its lambdas depend on
/// every key's signal), probes every two steps and a checkpoint after every RL step.
fn plan() -> Plan {
    let mut plan = presets::quickstart("unused", 2, 3);
    for st in &mut plan.stages {
        st.train.prompts_per_step = 4;
        for e in &mut st.evals {
            e.every = 2;
            e.limit = Some(6);
        }
    }
    plan.stages[1].train.checkpoint = Some(Checkpoint {
        every: 1,
        keep: None,
    });
    seal(plan)
}

/// Runs `opts` on every rank of a thread group of `world`; gives the ranks' summaries.
fn on_ranks(plan: &Plan, world: usize, opts: RunOptions) -> Vec<RunSummary> {
    let plan = Arc::new(plan.clone());
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .map(|mut g| {
            let (plan, opts) = (plan.clone(), opts.clone());
            std::thread::spawn(move || run_with(&plan, &opts, &mut g as &mut dyn Collective))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| without_timing(serde_json::from_str(l).unwrap()))
        .collect()
}

/// Every file under `dir` (relative path, bytes), sorted; the run's id and the files that
/// hold it or the times are left out.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The tensor files of the final weights and of every checkpoint.
fn tensors(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "safetensors"))
        .collect()
}

#[test]
fn two_ranks_equal_one_process_with_their_shards() {
    let plan = plan();
    let one = tempfile::tempdir().unwrap();
    let single = run(
        &plan,
        &RunOptions {
            shards: Some(2),
            ..opts(one.path())
        },
    )
    .unwrap();
    let two = tempfile::tempdir().unwrap();
    let ranks = on_ranks(&plan, 2, opts(two.path()));

    let m1 = lines(&one.path().join("metrics.jsonl"));
    let m2 = lines(&two.path().join("metrics.jsonl"));
    assert_eq!(m1.len(), 5);
    assert_eq!(m1, m2, "the metrics differ");
    // Both ranks computed the same records (every sum went through the collective).
    let records =
        |s: &RunSummary| -> Vec<Value> { s.metrics.iter().cloned().map(without_timing).collect() };
    assert_eq!(records(&ranks[0]), records(&ranks[1]));
    assert_eq!(records(&ranks[0]), records(&single));
    // The probes ran (step 2 of each stage) and the RL steps had real signal.
    assert!(m1[1]["eval"]["math_probe"]["accuracy"].is_number());
    assert!(m1[3]["keys"]["math.accuracy"]["lambda"].is_number());
    assert!(m1[2]["grad_norm"].as_f64().unwrap() > 0.0);
    // A GRPO step ran (rollouts split across the ranks, advantages and KL summed).
    assert!(m1
        .iter()
        .any(|m| m["reward_mean"].is_number() && m["kl"].is_number()));
    // Final weights and every checkpoint (weights, reference and the ZeRO-1 optimiser state
    // gathered to rank 0) are the same bytes.
    let (t1, t2) = (tensors(one.path()), tensors(two.path()));
    assert!(t1.iter().any(|(p, _)| p.ends_with("optimizer.safetensors")));
    assert_eq!(t1.len(), t2.len());
    for ((p1, b1), (p2, b2)) in t1.iter().zip(&t2) {
        assert_eq!(p1, p2);
        assert!(b1 == b2, "{} differs", p1.display());
    }
    assert_eq!(
        lines(&one.path().join("samples.jsonl")),
        lines(&two.path().join("samples.jsonl"))
    );
}

/// A run stopped after global step 4 (its newest checkpoint is step 4's) resumes on another
/// world size and ends with the weights of the uninterrupted run.
#[test]
fn resume_crosses_world_sizes() {
    let plan = plan();
    let full = tempfile::tempdir().unwrap();
    run(
        &plan,
        &RunOptions {
            shards: Some(2),
            ..opts(full.path())
        },
    )
    .unwrap();
    let want = files(&full.path().join("final"));

    // Two ranks stop; one process (with the job's two shards) resumes.
    let cut = tempfile::tempdir().unwrap();
    let stopped = on_ranks(
        &plan,
        2,
        RunOptions {
            stop_after: Some(4),
            ..opts(cut.path())
        },
    );
    assert_eq!(stopped[0].steps, 4);
    let resumed = run(
        &plan,
        &RunOptions {
            resume: Some(cut.path().to_path_buf()),
            shards: Some(2),
            ..opts(cut.path())
        },
    )
    .unwrap();
    assert_eq!(resumed.steps, 5);
    assert!(
        files(&cut.path().join("final")) == want,
        "2 ranks -> 1 process"
    );

    // One process stops; two ranks resume.
    let cut = tempfile::tempdir().unwrap();
    run(
        &plan,
        &RunOptions {
            stop_after: Some(4),
            shards: Some(2),
            ..opts(cut.path())
        },
    )
    .unwrap();
    let resumed = on_ranks(
        &plan,
        2,
        RunOptions {
            resume: Some(cut.path().to_path_buf()),
            ..opts(cut.path())
        },
    );
    assert_eq!(resumed[1].steps, 5);
    assert!(
        files(&cut.path().join("final")) == want,
        "1 process -> 2 ranks"
    );
}

/// A batch smaller than the job's shards is refused before anything runs.
#[test]
fn every_rank_needs_a_prompt() {
    let mut plan = plan();
    plan.stages[0].train.prompts_per_step = 2;
    let plan = seal(plan);
    let dir = tempfile::tempdir().unwrap();
    let e = run(
        &plan,
        &RunOptions {
            shards: Some(3),
            ..opts(dir.path())
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("takes 2 prompts per step"), "{e}");
}

/// The dry run of a job of several ranks estimates one rank: a share of the batch, a ZeRO-1
/// shard of the optimiser state and the update's ZeRO-2 shard of the summed gradient, whether
/// it runs on those ranks or as one process told their number.
#[test]
fn dry_run_estimates_one_rank() {
    let plan = plan();
    let dir = tempfile::tempdir().unwrap();
    let dry = |ranks: Option<usize>| RunOptions {
        dry_run: true,
        estimate_ranks: ranks,
        ..opts(dir.path())
    };
    let one = run(&plan, &dry(None)).unwrap();
    let four = run(&plan, &dry(Some(4))).unwrap();
    let two = on_ranks(&plan, 2, dry(None));
    for (a, b) in one.costs.iter().zip(&four.costs) {
        assert_eq!((a.ranks, b.ranks), (1, 4));
        assert_eq!(b.prompts, a.prompts / 4);
        // AdamW's two f32 moments: a quarter each, up to one parameter's worth of imbalance.
        assert!(b.optimizer_bytes * 4 >= a.optimizer_bytes);
        assert!(b.optimizer_bytes * 3 < a.optimizer_bytes, "{b:?}");
        assert_eq!(
            a.weight_bytes, b.weight_bytes,
            "weights are whole on every rank"
        );
        // One process of f32 variables updates in place; a rank of four holds its summed shard
        // in f32 (about a quarter of the model) and the CPU hub's 4 + 4 copies of a bucket,
        // here the whole model (smaller than one bucket).
        let model = a.weight_bytes;
        assert_eq!(a.update_bytes, 0);
        assert!(b.update_bytes > 8 * model + model / 5, "{b:?}");
        assert!(b.update_bytes < 8 * model + model / 3, "{b:?}");
    }
    for rank in &two {
        assert_eq!(rank.costs[1].ranks, 2);
        assert_eq!(rank.costs[1].prompts, one.costs[1].prompts / 2);
        assert!(rank.costs[1].dry_step_seconds.is_some());
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a dry run writes nothing"
    );
}

/// Two ranks against one process with one shard (the default): the same global batch, summed
/// in another order. SFT has no sampling, so the two runs see the same rows and targets and
/// differ only by the rounding of their sums (each rank's chunk sums, then the ranks' sum,
/// against one process's chunk sums): the losses agree to 1e-5 relative and the weights to
/// 1e-5 after three SGD steps. (AdamW would not do for this comparison: an element whose
/// gradient is near zero moves by the learning rate in a direction that rounding picks.)
#[test]
fn two_ranks_match_one_process_on_the_same_batch() {
    let mut plan = presets::quickstart("unused", 3, 1);
    plan.stages.truncate(1);
    plan.stages[0].evals.clear();
    plan.stages[0].train.prompts_per_step = 6;
    plan.stages[0].train.optimizer = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
    };
    let plan = seal(plan);
    let one = tempfile::tempdir().unwrap();
    let single = run(&plan, &opts(one.path())).unwrap();
    let two = tempfile::tempdir().unwrap();
    let ranks = on_ranks(&plan, 2, opts(two.path()));
    for (a, b) in single.metrics.iter().zip(&ranks[0].metrics) {
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    }
    let weights = |dir: &Path| {
        let path = dir.join("final").join("model.safetensors");
        candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
    };
    let (a, b) = (weights(one.path()), weights(two.path()));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (name, t) in &a {
        let diff = (t - &b[name]).unwrap().abs().unwrap();
        worst = worst.max(
            diff.flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap(),
        );
    }
    assert!(worst < 1e-5, "weights differ by {worst}");
    // The bits need not agree here, unlike the comparison with the job's shard count above.
    eprintln!("largest weight difference: {worst:e}");
}
