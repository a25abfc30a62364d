//! Lower's settings: a stage's reweighter, mixer and `train` block.

use super::L;
use crate::diagnostic::Diagnostic;
use crate::typecheck::{CallVal, Value};
use recap_plan as p;
use std::collections::BTreeMap;

impl L<'_, '_> {
    fn weights(c: &CallVal) -> BTreeMap<p::Name, f64> {
        c.extra
            .iter()
            .map(|(k, _, v)| {
                let w = match v.v {
                    Value::Float(f) => f,
                    Value::Int(i) => i as f64,
                    _ => 1.0,
                };
                (k.as_str().into(), w)
            })
            .collect()
    }

    pub(super) fn reweight(&self, c: &CallVal) -> Result<p::Reweight, Diagnostic> {
        Ok(match c.name() {
            "recap" => p::Reweight::Recap {
                window: self.u(c, "window")?,
                temperature: self.f(c, "temperature")?,
                alpha: self.f(c, "alpha")?,
                combine: match c.enum_("combine") {
                    Some("sum") => p::RecapCombine::Sum,
                    _ => p::RecapCombine::Mixture,
                },
                direction: match c.enum_("direction") {
                    Some("paper") => p::RecapDirection::Paper,
                    _ => p::RecapDirection::Regress,
                },
                warmup: self.b(c, "warmup")?,
            },
            "uniform" => p::Reweight::Uniform,
            "static" => p::Reweight::Static {
                weights: Self::weights(c),
            },
            "dwa" => p::Reweight::Dwa {
                temperature: self.f(c, "temperature")?,
            },
            "rlw" => p::Reweight::Rlw {
                seed: self.u(c, "seed")?,
            },
            other => return Err(self.bug(&format!("unknown reweighter {other}"), c.span)),
        })
    }

    pub(super) fn mix(&self, c: &CallVal, seed: u64) -> Result<p::Mix, Diagnostic> {
        Ok(match c.name() {
            "round_robin" => p::Mix::RoundRobin,
            "uniform" => p::Mix::Uniform {
                seed: self.ou(c, "seed").unwrap_or(seed),
            },
            "proportional" => p::Mix::Proportional,
            "weights" => p::Mix::Weights {
                weights: Self::weights(c),
            },
            "coreset" => {
                let base = match c.call("base") {
                    Some(b) => self.mix(b, seed)?,
                    None => p::Mix::Uniform { seed },
                };
                p::Mix::Coreset {
                    cap: self.f(c, "cap")?,
                    base: Box::new(base),
                }
            }
            "all" => p::Mix::All,
            other => return Err(self.bug(&format!("unknown mixer {other}"), c.span)),
        })
    }

    pub(super) fn train(&self, c: &CallVal, default_out: &str) -> Result<p::Train, Diagnostic> {
        let steps = self.u(c, "steps")?;
        let opt = c
            .call("optimizer")
            .ok_or_else(|| self.bug("train without optimizer", c.span))?;
        let optimizer = match opt.name() {
            "adamw" => p::Optimizer::Adamw {
                lr: self.f(opt, "lr")?,
                beta1: self.f(opt, "beta1")?,
                beta2: self.f(opt, "beta2")?,
                eps: self.f(opt, "eps")?,
                weight_decay: self.f(opt, "weight_decay")?,
            },
            "sgd" => p::Optimizer::Sgd {
                lr: self.f(opt, "lr")?,
                momentum: self.f(opt, "momentum")?,
            },
            other => return Err(self.bug(&format!("unknown optimizer {other}"), opt.span)),
        };
        let sc = c
            .call("schedule")
            .ok_or_else(|| self.bug("train without schedule", c.span))?;
        let warmup_steps = match sc.get("warmup").map(|v| &v.v) {
            Some(Value::Int(i)) => (*i).max(0) as u64,
            Some(Value::Percent(pct)) => ((steps as f64) * pct / 100.0).round() as u64,
            _ => 0,
        };
        let schedule = p::Schedule {
            kind: match sc.name() {
                "linear" => p::ScheduleKind::Linear,
                "cosine" => p::ScheduleKind::Cosine,
                _ => p::ScheduleKind::Constant,
            },
            warmup_steps,
            final_fraction: sc.float("final").unwrap_or(1.0),
        };
        let checkpoint = match c.call("checkpoint") {
            Some(cp) => Some(p::Checkpoint {
                every: self.u(cp, "steps")?,
                keep: self.ou(cp, "keep"),
            }),
            None => None,
        };
        Ok(p::Train {
            steps,
            prompts_per_step: self.u(c, "prompts_per_step")?,
            micro_batch: self.ou(c, "micro_batch"),
            optimizer,
            schedule,
            grad_clip: self.f(c, "grad_clip")?,
            seed: self.u(c, "seed")?,
            checkpoint,
            out: c
                .str("out")
                .map(|s| s.to_string())
                .unwrap_or_else(|| default_out.to_string()),
        })
    }
}
