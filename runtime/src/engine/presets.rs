//! Ready-made plans, built in code: takes a few knobs, gives a sealed `recap_plan::Plan`. They
//! are what the engine's tests and the quickstart example run, and they mirror
//! `pipelines/quickstart.recap`, so the runtime can be exercised without the compiler. (The
//! TRL-parity benchmark compiles `pipelines/bench/trl-parity.recap` instead, so that workload
//! has one definition.) Their graphs come from the plan crate's graph builder, the compiler's.

use std::collections::BTreeMap;

use recap_plan::*;

/// An extractor over a row field.
pub fn field(name: &str) -> Extractor {
    Extractor {
        steps: vec![ExtractStep::Field { name: name.into() }],
    }
}

/// An extractor with no steps (the whole completion).
pub fn whole() -> Extractor {
    Extractor { steps: vec![] }
}

pub fn regex_verifier(name: &str, pattern: &str) -> Verifier {
    Verifier {
        name: name.into(),
        spec: VerifierSpec::Regex {
            pattern: pattern.into(),
            extract: whole(),
        },
    }
}

/// 1 when the completion's first number equals the row's `answer`.
pub fn first_number_verifier(name: &str) -> Verifier {
    Verifier {
        name: name.into(),
        spec: VerifierSpec::Numeric {
            expected: Expected {
                field: "answer".into(),
            },
            extract: Extractor {
                steps: vec![ExtractStep::FirstNumber],
            },
            tolerance: 1e-6,
        },
    }
}

/// A reward term that is one verifier with weight `w`.
pub fn term(name: &str, w: f64) -> RewardTerm {
    RewardTerm {
        name: name.into(),
        parts: vec![WeightedVerifier {
            weight: w,
            verifier: name.into(),
        }],
    }
}

/// A tiny Qwen2-shaped model with the char-level arithmetic tokenizer.
pub fn tiny_model(name: &str, hidden: u64, layers: u64, intermediate: u64, seed: u64) -> Model {
    Model {
        name: name.into(),
        spec: ModelSpec::Tiny {
            vocab: 64,
            hidden,
            layers,
            heads: 4,
            kv_heads: 2,
            intermediate,
            seed,
            tokenizer: None,
        },
    }
}

pub fn adamw(lr: f64) -> Optimizer {
    Optimizer::Adamw {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

pub fn constant() -> Schedule {
    Schedule {
        kind: ScheduleKind::Constant,
        warmup_steps: 0,
        final_fraction: 1.0,
    }
}

/// The train settings of a stage.
pub fn train(steps: u64, prompts: u64, lr: f64, seed: u64, out: &str) -> Train {
    Train {
        steps,
        prompts_per_step: prompts,
        micro_batch: None,
        checkpointing: false,
        optimizer: adamw(lr),
        schedule: constant(),
        grad_clip: 1.0,
        bad_steps: None,
        seed,
        checkpoint: None,
        out: out.into(),
        log: Vec::new(),
    }
}

pub fn rollout(source: &str, group: u64, max_tokens: u64) -> Rollout {
    Rollout {
        id: format!("rollout.{source}").into(),
        source: source.into(),
        group,
        max_tokens,
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        ignore_eos: false,
    }
}

/// A GRPO objective with TRL's defaults (eps 0.2, token-mean, group scaling).
pub fn grpo(name: &str, source: &str, rewards: Vec<RewardTerm>, kl: Option<Kl>) -> Objective {
    Objective {
        name: name.into(),
        spec: ObjectiveSpec::Grpo {
            source: source.into(),
            rollout: format!("rollout.{source}").into(),
            rewards,
            clip_low: 0.2,
            clip_high: 0.2,
            loss: LossAggregation::TokenMean,
            scale: AdvantageScale::Group,
            kl,
            drop_equal_groups: false,
        },
    }
}

pub fn sft(name: &str, source: &str, max_tokens: u64) -> Objective {
    Objective {
        name: name.into(),
        spec: ObjectiveSpec::Sft {
            source: source.into(),
            max_tokens,
        },
    }
}

fn generated(name: &str, spec: SourceSpec) -> Source {
    Source {
        name: name.into(),
        spec,
        fields: Fields::new(),
    }
}

pub fn arithmetic(name: &str, count: u64, digits: u64, seed: u64) -> Source {
    generated(
        name,
        SourceSpec::Arithmetic {
            count,
            digits,
            ops: "+".into(),
            seed,
        },
    )
}

pub fn copying(name: &str, count: u64, length: u64, seed: u64) -> Source {
    generated(
        name,
        SourceSpec::Copying {
            count,
            length,
            seed,
        },
    )
}

/// The plan with its dataflow graph, built as the compiler builds every plan's
/// (`recap_plan::graph`), sealed with its hash.
pub fn seal(mut plan: Plan) -> Plan {
    // The builder only adds edges that run forward through a step, so it finds no cycle in
    // any plan these presets make; one would be a bug in the builder.
    plan.graph = graph::build(&plan)
        .unwrap_or_else(|c| panic!("the graph builder made a cycle through `{}`", c.through));
    plan.with_hash()
}

/// An empty plan around a policy; callers fill sources, verifiers and stages, then [`seal`].
pub fn base_plan(policy: Model) -> Plan {
    Plan {
        version: PLAN_VERSION,
        source_file: "<built in code>".into(),
        content_hash: String::new(),
        params: BTreeMap::new(),
        policy: policy.name.clone(),
        models: vec![policy],
        sources: vec![],
        verifiers: vec![],
        stages: vec![],
        graph: Graph {
            nodes: vec![],
            edges: vec![],
        },
    }
}

/// The quickstart job: an SFT warm-up on two generated skills (one-digit addition and copying
/// three letters), then GRPO on addition (accuracy + 0.1 format) with SFT replay of copying,
/// weighted by RECAP, with a greedy probe of both skills. A ~100k-parameter model; a few
/// minutes on 2 CPU cores.
pub fn quickstart(out: &str, warmup_steps: u64, rl_steps: u64) -> Plan {
    let mut plan = base_plan(tiny_model("policy", 64, 2, 128, 7));
    plan.models.push(Model {
        name: "base".into(),
        spec: ModelSpec::Frozen {
            of: "policy".into(),
        },
    });
    plan.sources = vec![
        arithmetic("math", 400, 1, 1),
        copying("copy", 400, 3, 2),
        arithmetic("math_test", 64, 1, 99),
        copying("copy_test", 64, 3, 98),
    ];
    plan.verifiers = vec![
        first_number_verifier("accuracy"),
        regex_verifier("format", r"^\s*-?[0-9]+\s*$"),
        Verifier {
            name: "copied".into(),
            spec: VerifierSpec::Exact {
                expected: Expected {
                    field: "target".into(),
                },
                extract: whole(),
                ignore_case: false,
            },
        },
    ];
    let probes = vec![
        Eval {
            name: "math_probe".into(),
            source: "math_test".into(),
            every: 10,
            rewards: vec![term("accuracy", 1.0)],
            limit: Some(64),
            greedy: true,
            max_tokens: 4,
        },
        Eval {
            name: "copy_probe".into(),
            source: "copy_test".into(),
            every: 10,
            rewards: vec![term("copied", 1.0)],
            limit: Some(64),
            greedy: true,
            max_tokens: 5,
        },
    ];
    plan.stages = vec![
        Stage {
            name: "warmup".into(),
            rollouts: vec![],
            objectives: vec![sft("add", "math", 8), sft("recall", "copy", 8)],
            reweight: Reweight::Uniform,
            mix: Mix::RoundRobin,
            train: train(warmup_steps, 16, 3e-3, 42, out),
            evals: probes.clone(),
        },
        Stage {
            name: "rl".into(),
            rollouts: vec![rollout("math", 8, 4)],
            objectives: vec![
                grpo(
                    "reasoning",
                    "math",
                    vec![term("accuracy", 1.0), term("format", 0.1)],
                    Some(Kl {
                        reference: "base".into(),
                        coef: 0.01,
                        estimator: KlEstimator::K3,
                    }),
                ),
                sft("recall", "copy", 8),
            ],
            reweight: Reweight::Recap {
                window: 10,
                temperature: 5.0,
                alpha: 0.5,
                combine: RecapCombine::Mixture,
                direction: RecapDirection::Regress,
                warmup: false,
            },
            mix: Mix::Uniform { seed: 42 },
            train: Train {
                checkpoint: Some(Checkpoint {
                    every: 20,
                    keep: Some(2),
                }),
                ..train(rl_steps, 8, 1e-3, 42, out)
            },
            evals: probes,
        },
    ];
    seal(plan)
}
