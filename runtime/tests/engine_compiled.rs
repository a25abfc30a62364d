//! The engine runs plans the compiler produces: a quickstart-shaped pipeline (an SFT warm-up,
//! then GRPO on addition with KL and SFT replay of copying under RECAP) compiled from source.

mod common;

mod engine_compiled {
    use super::common::{metrics_without_timing, resume_equals_uninterrupted};
    use recap_compiler::{check, AssumeFilesExist, CheckOptions};
    use recap_runtime::engine::{run, ProgressMode, RunOptions};

    const PIPELINE: &str = r#"
param warmup_steps: int = 4 in [1, inf)
param rl_steps: int = 6 in [1, inf)

model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
model base = frozen(policy)

source sums = arithmetic(ops = "+", digits = 1, count = 200, seed = 1)
source copies = copying(length = 3, count = 200, seed = 2)

verifier correct = numeric(expected = sums.answer, extract = last_number)
verifier terse = length_penalty(max_tokens = 6, target = 3)

stage warmup {
  objective learn_copying = sft(copies)
  train { steps = warmup_steps }
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
  reweight recap(window = 10, temperature = 5.0, alpha = 0.5)
  mix uniform
  train { steps = rl_steps }
}

train {
  prompts_per_step = 4
  optimizer = adamw(lr = 1e-3)
  schedule = constant
  seed = 42
  checkpoint = every(3, keep = 1)
  out = "runs/quickstart"
}
"#;

    #[test]
    fn engine_runs_a_compiled_pipeline() {
        let out = check(
            "quickstart.recap",
            PIPELINE,
            &CheckOptions {
                overrides: vec![("rl_steps".into(), "5".into())],
                missing_files_are_errors: true,
            },
            &AssumeFilesExist,
        );
        let plan = match out.plan {
            Some(p) => p,
            None => panic!("the pipeline does not compile: {:#?}", out.diagnostics),
        };
        let dir = tempfile::tempdir().unwrap();
        let s = run(
            &plan,
            &RunOptions {
                base_dir: dir.path().to_path_buf(),
                progress: ProgressMode::Quiet,
                ..RunOptions::default()
            },
        )
        .unwrap();
        assert_eq!(s.steps, 9);
        let run_dir = dir.path().join("runs/quickstart");
        assert_eq!(s.run_dir.as_deref(), Some(run_dir.as_path()));
        let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 9);
        let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        assert_eq!(last["stage"], "rl");
        // K = 3 keys in the RL stage: two reward terms of `sums` and the replayed source.
        let keys = last["keys"].as_object().unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(run_dir.join("final/config.json").exists());
        assert_eq!(
            std::fs::read_dir(run_dir.join("checkpoints"))
                .unwrap()
                .count(),
            1
        );
    }

    /// One step of a GRPO objective on `sums` with the given rewards and reweight line; the
    /// first sample completions with their advantages.
    fn first_step_samples(rewards: &str, reweight: &str) -> Vec<(String, f64)> {
        let text = format!(
            r#"
model policy = tiny(layers = 2, hidden = 64, heads = 4, seed = 7)
source sums = arithmetic(ops = "+", digits = 1, count = 50, seed = 1)
verifier terse = length_penalty(max_tokens = 8, target = 2)
verifier digit = regex("[0-9]")
objective sharpen = grpo(sums) {{ rewards = {rewards}, group = 4, max_tokens = 8 }}
{reweight}
train {{ steps = 1, prompts_per_step = 2, seed = 42, out = "runs/t" }}
"#
        );
        let opts = RunOptions {
            progress: ProgressMode::Quiet,
            samples_every: 1,
            ..RunOptions::default()
        };
        let dir = super::common::run_compiled("t.recap", &text, opts);
        let lines = std::fs::read_to_string(dir.path().join("runs/t/samples.jsonl")).unwrap();
        lines
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let completion = v["completion"].as_str().unwrap().to_string();
                (completion, v["advantage"].as_f64().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_static_term_weight_of_zero_leaves_the_other_term_alone() {
        // `sums.digit = 0` weighs the `digit` term before group normalisation, so the
        // advantages are those of `terse` alone; a weight on the whole objective would cancel.
        let weighted = first_step_samples("[terse, digit]", "reweight static(sums.digit = 0)");
        let alone = first_step_samples("[terse]", "");
        let both = first_step_samples("[terse, digit]", "");
        assert!(!weighted.is_empty());
        assert_eq!(weighted.len(), alone.len());
        for ((wc, wa), (ac, aa)) in weighted.iter().zip(&alone) {
            assert_eq!(wc, ac, "the rollouts differ");
            assert!((wa - aa).abs() < 1e-9, "{weighted:?} vs {alone:?}");
        }
        // The digit term changes the advantages when it is not weighed away.
        let differs = both
            .iter()
            .zip(&weighted)
            .any(|((_, b), (_, w))| (b - w).abs() > 1e-6);
        assert!(differs, "{both:?} vs {weighted:?}");
    }

    const LORA: &str = r#"
model policy = lora(tiny(layers = 2, hidden = 32, heads = 4, seed = 3), rank = 2, alpha = 4, targets = [q_proj, down_proj])
model base = frozen(policy)
source sums = arithmetic(ops = "+", digits = 1, count = 100, seed = 1)
verifier digit = regex(r"^[0-9]")
objective rl = grpo(sums) {
  rewards = [digit]
  group = 4
  max_tokens = 4
  kl = kl(base, coef = 0.1)
}
train {
  steps = 4
  prompts_per_step = 2
  optimizer = adamw(lr = 1e-2)
  seed = 5
  checkpoint = every(2)
  out = "runs/lora"
}
"#;

    fn tensors(path: &std::path::Path) -> std::collections::HashMap<String, Vec<f32>> {
        candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    }

    /// A LoRA policy with KL against its base: only the adapters have optimiser moments, the
    /// base weights are never changed, a resumed run equals an uninterrupted one bit for bit,
    /// and the final model holds the merged weights beside the PEFT adapter.
    #[test]
    fn a_lora_run_trains_adapters_only_and_resumes_bit_exact() {
        let out = check(
            "lora.recap",
            LORA,
            &CheckOptions::default(),
            &AssumeFilesExist,
        );
        let plan = out.plan.unwrap_or_else(|| panic!("{:#?}", out.diagnostics));
        let opts = |dir: &std::path::Path| RunOptions {
            out: Some(dir.to_path_buf()),
            base_dir: dir.to_path_buf(),
            progress: ProgressMode::Quiet,
            ..RunOptions::default()
        };
        let finals = ["model.safetensors", "adapter_model.safetensors"];
        let runs = resume_equals_uninterrupted(&plan, opts, 3, 4, &finals);
        let full = &runs.full;
        let m = metrics_without_timing(full.path());
        assert!(m.iter().all(|r| r["kl"].is_number()), "{m:?}");
        let ck = full.path().join("checkpoints/step-000002");
        let moments = tensors(&ck.join("optimizer.safetensors"));
        assert!(!moments.is_empty());
        assert!(
            moments.keys().all(|n| n.contains(".lora_")),
            "moments of frozen weights: {:?}",
            moments.keys().collect::<Vec<_>>()
        );
        assert!(!ck.join("reference.safetensors").exists());
        // Untargeted weights are the base's at every save; targeted ones hold the merged update.
        let early = tensors(&ck.join("model.safetensors"));
        let last = tensors(&full.path().join("final/model.safetensors"));
        let name = |m: &str| format!("model.layers.1.{m}.weight");
        for m in ["self_attn.k_proj", "mlp.up_proj", "self_attn.o_proj"] {
            assert!(early[&name(m)] == last[&name(m)], "{m} changed");
        }
        for m in ["self_attn.q_proj", "mlp.down_proj"] {
            assert!(early[&name(m)] != last[&name(m)], "{m} did not change");
        }
        let config =
            std::fs::read_to_string(full.path().join("final/adapter_config.json")).unwrap();
        assert!(config.contains("\"down_proj\""), "{config}");
    }
}
