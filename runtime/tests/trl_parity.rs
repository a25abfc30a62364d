//! The CPU parity pipeline against the peer of DESIGN.md §8 (TRL 1.16 GRPO): the workload's
//! settings, and its rewards scored side by side with the peer's reward functions written out
//! here, so that the pipeline (which the `trl_parity` example runs) cannot drift from the peer.

use std::path::PathBuf;

use recap_compiler::{check, CheckOptions, Host};
use recap_plan::{KlEstimator, ObjectiveSpec, Optimizer, Plan, ScheduleKind, VerifierSpec};
use recap_runtime::engine::rewards::{build_verifiers, score_terms, Judged};
use regex::Regex;
use serde_json::{Map, Value};

struct Fs(PathBuf);

impl Host for Fs {
    fn file_exists(&self, path: &str) -> bool {
        self.0.join(path).exists()
    }
}

fn plan() -> Plan {
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipelines/bench/trl-parity.recap");
    let source = std::fs::read_to_string(&file).unwrap();
    // The fixture is not needed to compile: missing files are warnings here.
    let out = check(
        "trl-parity.recap",
        &source,
        &CheckOptions::default(),
        &Fs(file.parent().unwrap().to_path_buf()),
    );
    out.plan
        .unwrap_or_else(|| panic!("does not compile: {:?}", out.diagnostics))
}

/// The peer's reward, as its script computes it: accuracy 1.0 when the leading integer equals
/// the answer, plus 0.1 when the completion starts with an integer.
fn peer_reward(completion: &str, answer: &str) -> f64 {
    let lead = Regex::new(r"^\s*-?[0-9]+").unwrap();
    match lead.find(completion) {
        Some(m) => {
            let n: i64 = m.as_str().trim().parse().unwrap();
            let accuracy = if n == answer.parse::<i64>().unwrap() {
                1.0
            } else {
                0.0
            };
            accuracy + 0.1
        }
        None => 0.0,
    }
}

#[test]
fn the_pipeline_rewards_exactly_what_the_peer_rewards() {
    let plan = plan();
    let (verifiers, _) = build_verifiers(&plan, std::path::Path::new("."), false).unwrap();
    let stage = &plan.stages[0];
    let ObjectiveSpec::Grpo { rewards, .. } = &stage.objectives[0].spec else {
        panic!("the parity objective is GRPO");
    };
    let cases = [
        ("122", "122"),
        (" 122 is it", "122"),
        ("\n-7", "-7"),
        ("-7", "7"),
        ("12.5", "12"),
        ("007", "7"),
        ("the answer is 122", "122"),
        ("x122", "122"),
        ("1 22", "122"),
        ("", "3"),
        ("+3", "3"),
        ("99999999999", "99999999999"),
    ];
    for (completion, answer) in cases {
        let mut fields = Map::new();
        fields.insert("answer".into(), Value::String(answer.into()));
        let item = Judged {
            id: "sums:0",
            prompt: "59+63=",
            completion,
            fields: &fields,
            tokens: completion.len(),
        };
        let (table, failures) = score_terms(&verifiers, rewards, &[item]).unwrap();
        assert!(failures.is_empty());
        let ours: f64 = table[0].iter().filter_map(|o| o.score()).sum();
        let peer = peer_reward(completion, answer);
        assert!(
            (ours - peer).abs() < 1e-12,
            "{completion:?} (answer {answer}): recap {ours}, peer {peer}"
        );
    }
    let format = plan
        .verifiers
        .iter()
        .find_map(|v| match &v.spec {
            VerifierSpec::Regex { pattern, .. } => Some(pattern.to_string()),
            _ => None,
        })
        .unwrap();
    assert_eq!(format, r"^\s*-?[0-9]+");
}

#[test]
fn the_pipeline_has_the_peer_settings() {
    let plan = plan();
    assert_eq!(plan.stages.len(), 1);
    let stage = &plan.stages[0];
    let r = &stage.rollouts[0];
    assert_eq!(
        (
            r.group,
            r.max_tokens,
            r.temperature,
            r.top_p,
            r.top_k,
            r.ignore_eos
        ),
        (8, 16, 1.0, 1.0, None, false)
    );
    assert_eq!(stage.train.prompts_per_step, 8);
    assert_eq!(stage.train.grad_clip, 1.0);
    let ObjectiveSpec::Grpo {
        clip_low,
        clip_high,
        kl,
        ..
    } = &stage.objectives[0].spec
    else {
        panic!("GRPO");
    };
    assert_eq!((*clip_low, *clip_high), (0.2, 0.2));
    let kl = kl.as_ref().unwrap();
    assert_eq!((kl.coef, kl.estimator), (0.04, KlEstimator::K3));
    let Optimizer::Adamw { lr, .. } = stage.train.optimizer else {
        panic!("AdamW");
    };
    assert_eq!(lr, 1e-4);
    assert_eq!(stage.train.schedule.kind, ScheduleKind::Constant);
}
