//! Resuming with a changed pipeline: takes the plan a checkpoint was written under, the plan
//! given now and the checkpoint's position; gives the list of differences to show, or a
//! [`RunDirError`] when a difference would alter the steps already taken.
//!
//! What only steers the steps still to come may change: a stage's `steps` (not below the step
//! the checkpoint holds), its schedule and `micro_batch`, probes, logging, checkpoint and
//! `bad_steps` settings, and anything of the stages not yet begun (including new ones).
//! Everything the finished steps were trained with stays: models and the policy, sources,
//! verifiers, and the objectives, rollouts, reweighter, mixer, optimiser, batch size, seed and
//! name of every stage begun, and the `steps` of those already ended.

use recap_plan::Plan;
use serde_json::Value;

use super::rundir::RunDirError;

/// Where a checkpoint stands in its plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    pub global_step: u64,
    pub stage_index: usize,
    pub stage_step: u64,
}

/// One difference between two plans: where, and the old and new values as compact JSON.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    path: String,
    old: String,
    new: String,
}

/// Compact JSON of a value, cut to a line's worth.
fn shown(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => "none".to_string(),
        Some(v) => v.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// The leaves where `a` and `b` differ, objects compared key by key and anything else whole.
fn diff(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(&p, x.get(k), y.get(k), out);
            }
        }
        _ if a == b => {}
        // A missing optional field reads as none on both sides.
        (None | Some(Value::Null), None | Some(Value::Null)) => {}
        _ => out.push(Change {
            path: path.to_string(),
            old: shown(a),
            new: shown(b),
        }),
    }
}

/// The fields of a stage that may change once the stage has begun, and once it has ended.
const OPEN_WHILE_RUNNING: &[&str] = &[
    "train.steps",
    "train.schedule",
    "train.micro_batch",
    "train.bad_steps",
    "train.checkpoint",
    "train.log",
    "train.out",
    "evals",
];
const OPEN_WHEN_ENDED: &[&str] = &[
    "train.bad_steps",
    "train.checkpoint",
    "train.log",
    "train.out",
    "evals",
];

fn under(path: &str, prefixes: &[&str]) -> bool {
    prefixes
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}.")))
}

/// What the difference between `old` (the plan of the checkpoint `state`) and `new` is, as
/// lines to show; an error naming each difference that alters the finished steps.
pub(crate) fn check(old: &Plan, new: &Plan, state: Position) -> anyhow::Result<Vec<String>> {
    let to_value = |p: &Plan| serde_json::to_value(p).unwrap_or(Value::Null);
    let (a, b) = (to_value(old), to_value(new));
    let mut shown_changes = Vec::new();
    let mut refused = Vec::new();
    // What the run was built from: none of it may change.
    for key in ["models", "policy", "sources", "verifiers"] {
        let mut changes = Vec::new();
        diff(key, a.get(key), b.get(key), &mut changes);
        refused.extend(changes);
    }
    let stages = |v: &Value| v["stages"].as_array().cloned().unwrap_or_default();
    let (sa, sb) = (stages(&a), stages(&b));
    for i in 0..sa.len().max(sb.len()) {
        let name = sa
            .get(i)
            .or(sb.get(i))
            .and_then(|s| s["name"].as_str())
            .unwrap_or("?")
            .to_string();
        let mut changes = Vec::new();
        diff("", sa.get(i), sb.get(i), &mut changes);
        for mut c in changes {
            let open = match i.cmp(&state.stage_index) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => {
                    let below = c.path == "train.steps"
                        && sb
                            .get(i)
                            .and_then(|s| s["train"]["steps"].as_u64())
                            .is_some_and(|n| n < state.stage_step);
                    under(&c.path, OPEN_WHILE_RUNNING) && !below
                }
                std::cmp::Ordering::Less => under(&c.path, OPEN_WHEN_ENDED),
            };
            c.path = if c.path.is_empty() {
                format!("stage `{name}`")
            } else {
                format!("stage `{name}`: {}", c.path)
            };
            if open {
                shown_changes.push(c);
            } else {
                refused.push(c);
            }
        }
    }
    let line = |c: &Change| format!("  {} {} -> {}", c.path, c.old, c.new);
    if !refused.is_empty() {
        let lines: Vec<String> = refused.iter().map(line).collect();
        return Err(RunDirError(format!(
            "the pipeline changed what the run's {} finished steps were trained with:\n{}\n\
             A resumed run may change only what steers the steps to come (a stage's `steps`, \
             schedule and `micro_batch`, probes, `log`, `checkpoint`, `bad_steps`, and the \
             stages not yet begun); start a new run with `--out DIR` for the rest",
            state.global_step,
            lines.join("\n")
        ))
        .into());
    }
    Ok(shown_changes.iter().map(line).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::presets;

    fn state(stage_index: usize, stage_step: u64) -> Position {
        Position {
            global_step: 15,
            stage_index,
            stage_step,
        }
    }

    #[test]
    fn steps_and_probes_may_change_but_not_what_the_past_was_trained_with() {
        let old = presets::quickstart("x", 5, 10);
        let mut new = old.clone();
        new.stages[1].train.steps = 20;
        new.stages[1].train.log = vec![recap_plan::LogFormat::Csv];
        let st = state(1, 10);
        let lines = check(&old, &new, st).unwrap();
        assert_eq!(
            lines,
            [
                "  stage `rl`: train.log none -> [\"csv\"]",
                "  stage `rl`: train.steps 10 -> 20"
            ]
        );
        // Fewer steps than the checkpoint holds would undo steps taken.
        new.stages[1].train.steps = 9;
        assert!(check(&old, &new, st).is_err());
        // The ended stage's steps, a seed, and the data are the past.
        let mut new = old.clone();
        new.stages[0].train.steps = 6;
        new.stages[1].train.seed = 1;
        new.sources[0].name = "other".into();
        let msg = check(&old, &new, st).unwrap_err().to_string();
        assert!(msg.contains("stage `warmup`: train.steps 5 -> 6"), "{msg}");
        assert!(msg.contains("stage `rl`: train.seed 42 -> 1"), "{msg}");
        assert!(msg.contains("sources"), "{msg}");
    }
}
