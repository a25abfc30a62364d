//! Timings of the training engine's host-side parts on the benchmark fixture's sizes, without a
//! model: an AdamW step with gradient clipping (fused in-place update and tensor-op update), the
//! GRPO advantages and loss with its backward, and the benchmark's two verifiers. Prints the
//! median time of each.
//!
//! Run: `cargo bench -p recap-runtime --bench train` (add `-- NAME` to run only the parts whose
//! name contains NAME: `adamw`, `grpo` or `verifiers`).

use candle_core::{DType, Device, Tensor, Var};
use recap_plan::{AdvantageScale, LossAggregation, Optimizer as PlanOptimizer};
use recap_runtime::train::grpo::{group_advantages, grpo_loss, GrpoBatch, GrpoConfig};
use recap_runtime::train::optim::Optimizer;
use recap_runtime::train::verifiers::{score_batch, Sample, Verifier, Verify};
use serde_json::json;
use std::time::Instant;

/// Median wall time in milliseconds of `runs` calls of `f`.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// One AdamW step plus global-norm clipping over about a million parameters in 30 tensors.
fn adamw() {
    let dev = Device::Cpu;
    let vars: Vec<(String, Var)> = (0..30)
        .map(|i| {
            let v = Var::ones((128, 260), DType::F32, &dev).expect("parameter");
            (format!("p{i}"), v)
        })
        .collect();
    // Each parameter's gradient is 1e-5 times itself: the gradient of 0.5e-5 * sum(p^2).
    let mut loss = Tensor::zeros((), DType::F32, &dev).expect("zero");
    for (_, v) in &vars {
        let term = v.as_tensor().sqr().and_then(|t| t.sum_all()).expect("term");
        loss = (loss + term.affine(0.5e-5, 0.0).expect("scaled")).expect("sum");
    }
    let store = loss.backward().expect("backward");
    for fused in [true, false] {
        let config = PlanOptimizer::Adamw {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = Optimizer::new(&config, vars.clone()).expect("optimizer");
        opt.set_fused(fused);
        let grads = opt.grads(&store).expect("gradients");
        let ms = median_ms(15, || {
            let mut g = grads.clone();
            g.clip_global_norm(1.0).expect("clip");
            opt.step(&g, 1e-4).expect("step");
        });
        println!(
            "adamw step + clip, {} params, fused {fused}: median {ms:.2} ms",
            30 * 128 * 260
        );
    }
}

/// Advantages plus the GRPO loss (with k3) and its backward on the benchmark's shapes
/// (8 prompts x 8 completions x 16 tokens).
fn grpo() {
    let (b, t) = (64usize, 16usize);
    let dev = Device::Cpu;
    let vals: Vec<f32> = (0..b * t).map(|i| -0.1 - (i % 7) as f32 * 0.3).collect();
    let logp = Var::from_vec(vals.clone(), (b, t), &dev).expect("logp");
    let shifted: Vec<f32> = vals.iter().map(|v| v - 0.05).collect();
    let refp = Tensor::from_vec(shifted, (b, t), &dev).expect("ref logp");
    let mask = Tensor::ones((b, t), DType::F32, &dev).expect("mask");
    let rewards: Vec<f64> = (0..b).map(|i| ((i * 5) % 3) as f64 * 0.5).collect();
    let config = GrpoConfig {
        group: 8,
        max_tokens: t,
        scale: AdvantageScale::Group,
        eps_low: 0.2,
        eps_high: 0.2,
        beta: 0.04,
        aggregation: LossAggregation::TokenMean,
        drop_zero_variance: false,
    };
    let ms = median_ms(21, || {
        let adv = group_advantages(&rewards, 8, AdvantageScale::Group, false).expect("advantages");
        let batch = GrpoBatch {
            logp: logp.as_tensor(),
            old_logp: None,
            ref_logp: Some(&refp),
            mask: &mask,
            advantages: &adv,
            token_normaliser: None,
        };
        let out = grpo_loss(&config, &batch).expect("loss");
        let grads = out.loss.backward().expect("backward");
        assert!(grads.get(logp.as_tensor()).is_some());
    });
    println!("advantages + grpo loss + backward, {b} x {t}: median {ms:.3} ms");
}

/// The benchmark's two rewards (leading-integer accuracy, starts-with-an-integer format) over
/// one step's 64 completions.
fn verifiers() {
    let verifier = |config: serde_json::Value| {
        let plan: recap_plan::Verifier = serde_json::from_value(config).expect("verifier config");
        Verifier::new(&plan).expect("verifier")
    };
    let acc = verifier(
        json!({"name": "acc", "spec": {"kind": "numeric", "expected": {"field": "answer"},
            "extract": {"steps": [{"op": "trim"}]}, "tolerance": 1e-6}}),
    );
    let fmt = verifier(
        json!({"name": "fmt", "spec": {"kind": "regex", "pattern": r"^\s*-?\d+",
        "extract": {"steps": []}}}),
    );
    let fields = json!({"answer": "122"})
        .as_object()
        .cloned()
        .expect("fields");
    let completions: Vec<String> = (0..64).map(|i| format!("{}+7=abc", 100 + i)).collect();
    let samples: Vec<Sample> = completions
        .iter()
        .map(|c| Sample {
            id: "b",
            prompt: "59+63=",
            completion: c,
            fields: &fields,
            completion_tokens: None,
        })
        .collect();
    let verifiers: [&dyn Verify; 2] = [&acc, &fmt];
    let ms = median_ms(21, || {
        let table = score_batch(&verifiers, &samples);
        assert_eq!(table.outcomes.len(), samples.len());
    });
    println!("2 verifiers x 64 completions: median {ms:.3} ms");
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters the parts by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let parts: [(&str, fn()); 3] = [("adamw", adamw), ("grpo", grpo), ("verifiers", verifiers)];
    for (name, run) in parts {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            run();
        }
    }
}
