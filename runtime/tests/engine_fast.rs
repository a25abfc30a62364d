//! The engine's training step on the hand-written CPU pass (`model::fast`, the default for f32
//! models on the CPU) against the same run on candle's autograd (the run option `autograd`, which
//! `RECAP_AUTOGRAD=1` sets on the command line): an SFT warm-up, then GRPO with a KL term to a
//! frozen reference and SFT replay, compiled from source. Every step's loss, gradient norm, KL
//! and rewards must agree.

mod common;

use recap_runtime::engine::{ProgressMode, RunOptions};
use serde_json::Value;

const PIPELINE: &str = r#"
model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
model base = frozen(policy)

source sums = arithmetic(ops = "+", digits = 1, count = 200, seed = 1)
source copies = copying(length = 3, count = 200, seed = 2)

verifier correct = numeric(expected = sums.answer, extract = last_number)
verifier terse = length_penalty(max_tokens = 6, target = 3)

stage warmup {
  objective learn_copying = sft(copies)
  train { steps = 2 }
}

stage rl {
  objective sharpen = grpo(sums) {
    rewards = [correct, 0.1 * terse]
    group = 4
    max_tokens = 4
    temperature = 1.0
    kl = kl(base, coef = 0.04, estimator = k3)
  }
  objective keep_copying = sft(copies)
  mix uniform
  train { steps = 3 }
}

train {
  prompts_per_step = 4
  optimizer = adamw(lr = 1e-3)
  schedule = constant
  seed = 42
  out = "runs/fast"
}
"#;

/// Runs the pipeline, through candle's autograd when `autograd`, and gives its metrics records.
fn metrics(autograd: bool) -> Vec<Value> {
    let opts = RunOptions {
        progress: ProgressMode::Quiet,
        autograd,
        ..RunOptions::default()
    };
    let dir = common::run_compiled("fast.recap", PIPELINE, opts);
    let lines = std::fs::read_to_string(dir.path().join("runs/fast/metrics.jsonl")).unwrap();
    lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Compares every numeric field of two records except timings; gives how many were compared.
fn compare(path: &str, a: &Value, b: &Value) -> usize {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .filter(|(k, _)| !k.contains("time") && !k.contains("sec") && !k.ends_with("_s"))
            .map(|(k, v)| {
                let w = y
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing on the autograd run"));
                compare(&format!("{path}.{k}"), v, w)
            })
            .sum(),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + x.abs().max(y.abs())),
                "{path}: fast {x} vs autograd {y}"
            );
            1
        }
        _ => 0,
    }
}

#[test]
fn engine_fast_pass_matches_autograd() {
    let fast = metrics(false);
    let autograd = metrics(true);
    assert_eq!(fast.len(), 5);
    assert_eq!(fast.len(), autograd.len());
    let mut compared = 0;
    for (i, (a, b)) in fast.iter().zip(&autograd).enumerate() {
        assert!(
            a.get("loss").is_some_and(Value::is_number),
            "step {i} has no loss"
        );
        compared += compare(&format!("step{i}"), a, b);
    }
    // The rl steps carry KL values: make sure the reference path was compared.
    assert!(
        fast.iter().any(|m| m.to_string().contains("\"kl\":")),
        "no KL in the metrics: {fast:?}"
    );
    assert!(compared >= 20, "only {compared} numbers compared");
}
