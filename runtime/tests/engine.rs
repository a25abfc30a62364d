//! End-to-end tests of the training engine on tiny models: the reward rises on a learnable toy
//! task, a resumed run equals an uninterrupted one bit for bit, a bad JSON Lines line is
//! reported with file and line number, dry runs estimate costs and write nothing.

mod common;

mod engine {
    use std::path::Path;

    use super::common::{metrics_without_timing, resume_equals_uninterrupted, without_timing};

    use recap_plan::*;
    use recap_runtime::engine::presets::{self, *};
    use recap_runtime::engine::{run, ProgressMode, RunOptions};
    use serde_json::Value;

    fn opts(dir: &Path) -> RunOptions {
        RunOptions {
            out: Some(dir.to_path_buf()),
            progress: ProgressMode::Quiet,
            base_dir: dir.to_path_buf(),
            samples_every: 5,
            ..RunOptions::default()
        }
    }

    /// GRPO on generated addition prompts with one regex reward: the completion starts with a
    /// digit. A random ~80k-parameter model does so about a fifth of the time.
    fn format_plan(steps: u64, seed: u64) -> Plan {
        let mut plan = base_plan(tiny_model("policy", 64, 2, 128, seed));
        plan.sources = vec![arithmetic("math", 64, 1, 3)];
        plan.verifiers = vec![regex_verifier("digit", r"^[0-9]")];
        plan.stages = vec![Stage {
            name: "main".into(),
            rollouts: vec![rollout("math", 8, 3)],
            objectives: vec![grpo("rl", "math", vec![term("digit", 1.0)], None)],
            reweight: Reweight::Uniform,
            mix: Mix::RoundRobin,
            train: train(steps, 4, 1e-3, 5, "unused"),
            evals: vec![],
        }];
        seal(plan)
    }

    fn rewards(metrics: &[Value]) -> Vec<f64> {
        metrics
            .iter()
            .map(|m| m["reward_mean"].as_f64().expect("reward_mean"))
            .collect()
    }

    #[test]
    fn engine_reward_rises_on_a_learnable_task() {
        let dir = tempfile::tempdir().unwrap();
        let s = run(&format_plan(30, 11), &opts(dir.path())).unwrap();
        let r = rewards(&s.metrics);
        assert_eq!(r.len(), 30);
        let first: f64 = r[..4].iter().sum::<f64>() / 4.0;
        let last: f64 = r[22..].iter().sum::<f64>() / 8.0;
        eprintln!("first {first:.3} last {last:.3}: {r:?}");
        assert!(
            last > first + 0.3,
            "reward did not rise: first {first:.3}, last {last:.3}"
        );
        // The run directory holds the plan, one metrics line per step, samples and final weights.
        let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 30);
        let first_line: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        for k in [
            "step",
            "stage",
            "source",
            "keys",
            "rewards",
            "advantage_std",
            "loss",
            "grad_norm",
            "lr",
            "generated_tokens",
            "tokens_per_s",
            "seconds",
        ] {
            assert!(
                first_line.get(k).is_some(),
                "metrics line lacks `{k}`: {first_line}"
            );
        }
        assert!(first_line["keys"]["math.digit"]["lambda"].is_number());
        // No KL term is declared, so no reference model is loaded and no KL is logged.
        assert!(first_line["kl"].is_null());
        assert!(dir.path().join("plan.json").exists());
        assert!(dir.path().join("final/model.safetensors").exists());
        let samples = std::fs::read_to_string(dir.path().join("samples.jsonl")).unwrap();
        // Samples every 5 steps, two groups of 8 each time.
        assert_eq!(samples.lines().count(), 6 * 16);
    }

    /// Two stages (SFT then GRPO with KL and replay under RECAP), checkpoints every 2 steps.
    fn resume_plan() -> Plan {
        let mut plan = presets::quickstart("unused", 3, 5);
        for st in &mut plan.stages {
            st.train.checkpoint = Some(Checkpoint {
                every: 2,
                keep: Some(2),
            });
            st.train.prompts_per_step = 4;
            for e in &mut st.evals {
                e.every = 3;
                e.limit = Some(4);
            }
        }
        seal(plan)
    }

    #[test]
    fn engine_resume_equals_uninterrupted_run() {
        // Checkpoints fall on global steps 2 (warm-up step 2), 5 and 7 (RL steps 2 and 4).
        // Killed after global step 6, the run resumes from step 5 and redoes step 6.
        let runs = resume_equals_uninterrupted(&resume_plan(), opts, 6, 8, &["model.safetensors"]);
        let (full, cut) = (&runs.full, &runs.cut);
        assert_eq!(
            runs.resumed.metrics.len(),
            3,
            "the resumed run continues from step 5"
        );
        // The RL stage declares a KL term against the frozen copy taken when it started.
        let full_metrics = metrics_without_timing(full.path());
        let kl = full_metrics.iter().filter(|m| m["kl"].is_number()).count();
        assert!(kl > 0);
        // Pruned to keep = 2.
        let n = std::fs::read_dir(cut.path().join("checkpoints"))
            .unwrap()
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn engine_reports_bad_jsonl_line_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.jsonl");
        std::fs::write(
            &data,
            "{\"q\": \"1+1=\", \"answer\": \"2\"}\n\n{\"q\": \"2+2=\" \"answer\": 4}\n",
        )
        .unwrap();
        let mut plan = format_plan(2, 1);
        plan.sources = vec![Source {
            name: "math".into(),
            spec: SourceSpec::Jsonl {
                file: "data.jsonl".into(),
                prompt: Some(Template {
                    text: "{q}".into(),
                    placeholders: vec!["q".into()],
                }),
                limit: None,
                shuffle: false,
                system: None,
            },
            fields: [("answer".into(), field("answer"))].into_iter().collect(),
        }];
        // The data lives in the directory; each run writes beside it, in a directory of its own.
        let opts = |d: &Path, out: &str| RunOptions {
            out: Some(d.join(out)),
            ..opts(d)
        };
        let err = run(&seal(plan.clone()), &opts(dir.path(), "a")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("{}:3", data.display())), "{msg}");

        // A row that lacks a template field is reported the same way.
        std::fs::write(
            &data,
            "{\"q\": \"1+1=\", \"answer\": \"2\"}\n{\"question\": \"2+2=\", \"answer\": \"4\"}\n",
        )
        .unwrap();
        let msg = format!(
            "{:#}",
            run(&seal(plan), &opts(dir.path(), "b")).unwrap_err()
        );
        assert!(
            msg.contains(&format!("{}:2", data.display())) && msg.contains("`q`"),
            "{msg}"
        );
    }

    /// A stage the mixer or the reweighter refuses fails the run with the stage named, and the
    /// component's own error stays in the chain rather than being flattened into text.
    #[test]
    fn engine_keeps_component_errors_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = format_plan(1, 1);
        plan.stages[0].mix = Mix::Weights {
            weights: [("maths".into(), 1.0)].into(),
        };
        let err = run(&seal(plan), &opts(dir.path())).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "stage `main`: mix: weights: unknown source `maths`"
        );
        assert!(err
            .root_cause()
            .downcast_ref::<recap_runtime::train::mix::MixError>()
            .is_some());
        let mut plan = format_plan(1, 1);
        plan.stages[0].reweight = Reweight::Dwa { temperature: 0.0 };
        // The failed run above holds its directory; this one starts in another.
        let dir = tempfile::tempdir().unwrap();
        let err = run(&seal(plan), &opts(dir.path())).unwrap_err();
        assert!(err
            .root_cause()
            .downcast_ref::<recap_runtime::train::reweight::ReweightError>()
            .is_some_and(|e| e.to_string().contains("dwa: temperature")));
        assert!(format!("{err:#}").starts_with("stage `main`: reweight: "));
    }

    #[test]
    fn engine_dry_run_estimates_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let plan = presets::quickstart("unused", 3, 3);
        let s = run(
            &plan,
            &RunOptions {
                dry_run: true,
                out: Some(out.clone()),
                ..opts(dir.path())
            },
        )
        .unwrap();
        assert!(!out.exists());
        assert_eq!(s.costs.len(), 2);
        let rl = &s.costs[1];
        // 8 prompts x 8 completions x 4 tokens at most.
        assert_eq!(rl.generated_tokens, 8 * 8 * 4);
        assert!(rl.reference_tokens > 0 && rl.reference_bytes == rl.weight_bytes);
        assert_eq!(rl.optimizer_bytes, 2 * rl.weight_bytes);
        assert_eq!(s.costs[0].generated_tokens, 0);
        // One f32 gradient set per chunk in flight (the CPU runs one per core side by side).
        assert!(
            rl.gradient_bytes >= rl.weight_bytes
                && rl.gradient_bytes.is_multiple_of(rl.weight_bytes)
        );
        assert!(rl.kv_cache_bytes > 0 && rl.logits_bytes > 0);
        assert!(rl.peak_bytes() > rl.weight_bytes + rl.optimizer_bytes + rl.reference_bytes);
        // A CPU dry run measures the process's own memory (Linux reports it) and the peak
        // counts it.
        if cfg!(target_os = "linux") {
            assert!(rl.process_bytes > 0);
            let without = recap_runtime::engine::CostEstimate {
                process_bytes: 0,
                ..rl.clone()
            };
            assert_eq!(rl.peak_bytes(), without.peak_bytes() + rl.process_bytes);
        }
        // A model this small fits: the dry step ran and was timed, on every stage.
        assert!(s
            .costs
            .iter()
            .all(|c| c.dry_step_seconds.is_some() && c.dry_step_skipped.is_none()));
        assert_eq!(s.metrics.len(), 2);
        // The RL stage's estimate for a plan changed by `edit`.
        let rl_cost = |edit: &dyn Fn(&mut Stage)| {
            let mut p = plan.clone();
            edit(&mut p.stages[1]);
            let dry = RunOptions {
                dry_run: true,
                ..opts(dir.path())
            };
            run(&seal(p), &dry).unwrap().costs.swap_remove(1)
        };
        // A micro-batch of one row bounds the activations and logits alive at once.
        let mrl = &rl_cost(&|s| s.train.micro_batch = Some(1));
        assert!(mrl.activation_bytes < rl.activation_bytes, "{mrl:?}");
        assert!(mrl.logits_bytes < rl.logits_bytes, "{mrl:?}");
        assert_eq!(mrl.weight_bytes, rl.weight_bytes);
        // With every source in each step, the SFT objective's gradients wait for the step's
        // lambdas while the GRPO objective's pass runs: one more set than one source's step.
        // (One chunk of the whole batch, so that neither counts a set per core.)
        let gradient_bytes = |mix: &Mix| {
            rl_cost(&|s| {
                s.mix = mix.clone();
                s.train.micro_batch = Some(1000);
            })
            .gradient_bytes
        };
        assert_eq!(gradient_bytes(&plan.stages[1].mix), rl.weight_bytes);
        assert_eq!(gradient_bytes(&Mix::All), 2 * rl.weight_bytes);
        // The dry step ran on two prompts: 2 x 8 completions.
        assert!(s.metrics[1]["generated_tokens"].as_u64().unwrap() <= 2 * 8 * 4);
        assert!(!s.graph_order.is_empty());
    }

    /// Gradient accumulation over micro-batches gives the loss and gradient of the whole batch,
    /// for token-mean and for the sequence-mean aggregation.
    #[test]
    fn engine_micro_batches_match_the_whole_batch() {
        for agg in [
            LossAggregation::TokenMean,
            LossAggregation::SeqMeanTokenMean,
        ] {
            let mut whole = format_plan(1, 4);
            if let ObjectiveSpec::Grpo { loss, .. } = &mut whole.stages[0].objectives[0].spec {
                *loss = agg;
            }
            // Without micro_batch the CPU splits the batch into one chunk per core; a micro
            // batch of 5 gives uneven chunks and one of 1000 a single chunk: all must agree.
            let a = tempfile::tempdir().unwrap();
            let ra = run(&seal(whole.clone()), &opts(a.path())).unwrap();
            for size in [5, 1000] {
                let mut micro = whole.clone();
                micro.stages[0].train.micro_batch = Some(size);
                let b = tempfile::tempdir().unwrap();
                let rb = run(&seal(micro), &opts(b.path())).unwrap();
                for (x, y) in ra.metrics.iter().zip(&rb.metrics) {
                    for k in ["loss", "grad_norm", "reward_mean"] {
                        let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                            "{agg:?} micro {size} {k}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    /// SFT objectives split into micro-batches give the whole batch's loss, NLL and gradient.
    #[test]
    fn engine_sft_micro_batches_match_the_whole_batch() {
        let plan_with = |micro: Option<u64>| {
            let mut plan = base_plan(tiny_model("policy", 32, 1, 64, 3));
            plan.sources = vec![copying("copy", 16, 2, 1)];
            let mut t = train(2, 6, 1e-3, 1, "unused");
            t.micro_batch = micro;
            plan.stages = vec![Stage {
                name: "main".into(),
                rollouts: vec![],
                objectives: vec![sft("recall", "copy", 8)],
                reweight: Reweight::Uniform,
                mix: Mix::RoundRobin,
                train: t,
                evals: vec![],
            }];
            seal(plan)
        };
        let a = tempfile::tempdir().unwrap();
        let whole = run(&plan_with(Some(1000)), &opts(a.path())).unwrap();
        for micro in [None, Some(1), Some(4)] {
            let b = tempfile::tempdir().unwrap();
            let split = run(&plan_with(micro), &opts(b.path())).unwrap();
            for (x, y) in whole.metrics.iter().zip(&split.metrics) {
                for k in ["loss", "sft_nll", "grad_norm"] {
                    let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                        "micro {micro:?} {k}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn engine_no_reference_without_kl_and_lambda_weights_sft() {
        // Static weights: the SFT loss is lambda * nll.
        let mut plan = base_plan(tiny_model("policy", 32, 1, 64, 3));
        plan.sources = vec![copying("copy", 16, 2, 1)];
        plan.stages = vec![Stage {
            name: "main".into(),
            rollouts: vec![],
            objectives: vec![sft("recall", "copy", 8)],
            reweight: Reweight::Static {
                weights: [("recall".into(), 0.5)].into(),
            },
            mix: Mix::RoundRobin,
            train: train(1, 4, 1e-3, 1, "unused"),
            evals: vec![],
        }];
        let dir = tempfile::tempdir().unwrap();
        let s = run(&seal(plan), &opts(dir.path())).unwrap();
        let m = &s.metrics[0];
        let nll = m["sft_nll"].as_f64().unwrap();
        let loss = m["loss"].as_f64().unwrap();
        assert!((loss - 0.5 * nll).abs() < 1e-4, "loss {loss} nll {nll}");
        assert_eq!(m["keys"]["copy"]["lambda"].as_f64(), Some(0.5));
        assert!(!dir.path().join("checkpoints").exists());
    }

    /// A run that does not keep its records in memory (`recapc run`'s setting) still writes
    /// every one to `metrics.jsonl`, and they are the records a run that keeps them returns.
    #[test]
    fn records_left_out_of_the_summary_are_still_written() {
        let (kept, dropped) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let full = run(&seal(format_plan(3, 7)), &opts(kept.path())).unwrap();
        let lean = RunOptions {
            keep_records: false,
            ..opts(dropped.path())
        };
        let s = run(&seal(format_plan(3, 7)), &lean).unwrap();
        assert_eq!((s.steps, s.metrics.len(), full.metrics.len()), (3, 0, 3));
        let returned: Vec<serde_json::Value> =
            full.metrics.iter().cloned().map(without_timing).collect();
        assert_eq!(metrics_without_timing(dropped.path()), returned);
        assert_eq!(metrics_without_timing(kept.path()), returned);
    }

    /// RECAP's lambdas for keys with these histories (RECAP.md's formulas, loss keys): c is
    /// sum(new) / sum(old), i the population std over the mean, and lambda
    /// `K * (alpha * softmax(c / T) + (1 - alpha) * softmax(i / T))`.
    fn recap_sft_lambdas(histories: &[Vec<f64>], temperature: f64, alpha: f64) -> Vec<f64> {
        let eps = 1e-15;
        let ci: Vec<(f64, f64)> = histories
            .iter()
            .map(|h| {
                let m = h.len() / 2;
                if m == 0 {
                    return (1.0, 0.0);
                }
                let used = &h[h.len() - 2 * m..];
                let (old, new) = used.split_at(m);
                let c = new.iter().sum::<f64>() / (old.iter().sum::<f64>() + eps);
                let mean = used.iter().sum::<f64>() / used.len() as f64;
                let var = used.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / used.len() as f64;
                (c, var.sqrt() / (mean + eps))
            })
            .collect();
        let softmax = |x: Vec<f64>| {
            let e: Vec<f64> = x.iter().map(|v| (v / temperature).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        let sc = softmax(ci.iter().map(|p| p.0).collect());
        let si = softmax(ci.iter().map(|p| p.1).collect());
        let k = histories.len() as f64;
        sc.iter()
            .zip(&si)
            .map(|(a, b)| k * (alpha * a + (1.0 - alpha) * b))
            .collect()
    }

    /// The lambda a step applies is the one computed from histories that include that step's
    /// scalars: two SFT keys drawn together, and each step's loss is the sum of the lambdas
    /// computed by hand from the NLLs so far times this step's NLLs.
    #[test]
    fn engine_recap_applies_the_lambda_of_the_current_step() {
        let mut plan = base_plan(tiny_model("policy", 32, 1, 64, 3));
        plan.sources = vec![copying("a", 16, 2, 1), copying("b", 16, 4, 2)];
        let (temperature, alpha) = (0.05, 0.5);
        plan.stages = vec![Stage {
            name: "main".into(),
            rollouts: vec![],
            objectives: vec![sft("ra", "a", 8), sft("rb", "b", 8)],
            reweight: Reweight::Recap {
                window: 10,
                temperature,
                alpha,
                combine: RecapCombine::Mixture,
                direction: RecapDirection::Regress,
                warmup: false,
            },
            mix: Mix::All,
            train: train(4, 4, 3e-2, 1, "unused"),
            evals: vec![],
        }];
        let dir = tempfile::tempdir().unwrap();
        let s = run(&seal(plan), &opts(dir.path())).unwrap();
        let mut histories = vec![Vec::new(), Vec::new()];
        for m in &s.metrics {
            let keys = &m["keys"];
            for (h, k) in histories.iter_mut().zip(["a", "b"]) {
                h.push(keys[k]["signal"].as_f64().unwrap());
            }
            let expected = recap_sft_lambdas(&histories, temperature, alpha);
            let mut loss = 0.0;
            for ((k, lambda), h) in ["a", "b"].iter().zip(&expected).zip(&histories) {
                let logged = keys[k]["lambda"].as_f64().unwrap();
                assert!(
                    (logged - lambda).abs() < 1e-9,
                    "step {}: {logged} vs {lambda}",
                    m["step"]
                );
                loss += lambda * h.last().unwrap();
            }
            let got = m["loss"].as_f64().unwrap();
            assert!(
                (got - loss).abs() < 1e-4 * (1.0 + loss.abs()),
                "step {}: loss {got}, lambda-weighted NLLs {loss}",
                m["step"]
            );
        }
        // The weights must move for the test to pin anything.
        let last = &s.metrics.last().unwrap()["keys"];
        assert!((last["a"]["lambda"].as_f64().unwrap() - 1.0).abs() > 1e-3);
    }

    /// `drop_equal_groups` under `token_mean`: the dropped groups' tokens leave the
    /// normaliser, so on the first step (same rollouts either way) a batch with some but not
    /// all groups of equal rewards gets a larger gradient with it on than off.
    #[test]
    fn engine_drop_equal_groups_leaves_the_token_normaliser() {
        let first_step = |seed: u64, drop: bool| {
            let mut plan = format_plan(1, seed);
            for o in &mut plan.stages[0].objectives {
                if let ObjectiveSpec::Grpo {
                    drop_equal_groups,
                    loss,
                    ..
                } = &mut o.spec
                {
                    *drop_equal_groups = drop;
                    *loss = LossAggregation::TokenMean;
                }
            }
            let dir = tempfile::tempdir().unwrap();
            run(&seal(plan), &opts(dir.path())).unwrap().metrics[0].clone()
        };
        let mut checked = false;
        for seed in 1..40 {
            let off = first_step(seed, false);
            let zero = off["zero_variance_groups"].as_u64().unwrap();
            if zero == 0 || zero == 4 {
                continue;
            }
            let on = first_step(seed, true);
            let (g_off, g_on) = (
                off["grad_norm"].as_f64().unwrap(),
                on["grad_norm"].as_f64().unwrap(),
            );
            assert!(
                g_on > g_off * (1.0 + 1e-4),
                "seed {seed}: {g_on} vs {g_off}"
            );
            checked = true;
            break;
        }
        assert!(
            checked,
            "no seed gave a batch with some equal-reward groups"
        );
    }
}
