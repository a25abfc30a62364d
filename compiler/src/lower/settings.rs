//! Lower's settings: a stage's reweighter, mixer and `train` block.

use super::L;
use crate::diagnostic::Diagnostic;
use crate::typecheck::{CallVal, Value};
use recap_plan as p;
use std::collections::BTreeMap;

impl L<'_, '_> {
    /// The weights of `static(...)` or `weights(...)` by name: numbers, as the stdlib types
    /// them.
    fn weights(&self, c: &CallVal) -> Result<BTreeMap<p::Name, f64>, Diagnostic> {
        c.extra
            .iter()
            .map(|(k, span, v)| {
                let w = match v.v {
                    Value::Float(f) => f,
                    Value::Int(i) => i as f64,
                    _ => return Err(self.bug(&format!("the weight `{k}` is no number"), *span)),
                };
                Ok((k.as_str().into(), w))
            })
            .collect()
    }

    pub(super) fn reweight(&self, c: &CallVal) -> Result<p::Reweight, Diagnostic> {
        Ok(match c.name() {
            "recap" => p::Reweight::Recap {
                window: self.u(c, "window")?,
                temperature: self.f(c, "temperature")?,
                alpha: self.f(c, "alpha")?,
                combine: self.member(
                    c,
                    "combine",
                    &[
                        ("mixture", p::RecapCombine::Mixture),
                        ("sum", p::RecapCombine::Sum),
                    ],
                )?,
                direction: self.member(
                    c,
                    "direction",
                    &[
                        ("regress", p::RecapDirection::Regress),
                        ("paper", p::RecapDirection::Paper),
                    ],
                )?,
                warmup: self.b(c, "warmup")?,
            },
            "uniform" => p::Reweight::Uniform,
            "static" => p::Reweight::Static {
                weights: self.weights(c)?,
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
                weights: self.weights(c)?,
            },
            "coreset" => {
                // `base` defaults to `uniform` in the stdlib, so it is always a call.
                let base = match c.call("base") {
                    Some(b) => self.mix(b, seed)?,
                    None => return Err(self.bug("coreset without base", c.span)),
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
        // Every schedule's `warmup` defaults to 0 in the stdlib, so it is always given.
        let warmup_steps = match sc.get("warmup").map(|v| &v.v) {
            Some(Value::Int(i)) => (*i).max(0) as u64,
            Some(Value::Percent(pct)) => ((steps as f64) * pct / 100.0).round() as u64,
            _ => return Err(self.bug("a schedule without warmup", sc.span)),
        };
        // A constant rate ends where it starts, at the full rate: 1 is what `constant` means,
        // not a default.
        let (kind, final_fraction) = match sc.name() {
            "constant" => (p::ScheduleKind::Constant, 1.0),
            "linear" => (p::ScheduleKind::Linear, self.f(sc, "final")?),
            "cosine" => (p::ScheduleKind::Cosine, self.f(sc, "final")?),
            other => return Err(self.bug(&format!("unknown schedule {other}"), sc.span)),
        };
        let schedule = p::Schedule {
            kind,
            warmup_steps,
            final_fraction,
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
            checkpointing: self.b(c, "checkpointing")?,
            optimizer,
            schedule,
            grad_clip: self.f(c, "grad_clip")?,
            bad_steps: self.ou(c, "bad_steps"),
            seed: self.u(c, "seed")?,
            checkpoint,
            out: c
                .str("out")
                .map(|s| s.to_string())
                .unwrap_or_else(|| default_out.to_string()),
            log: self.log_formats(c)?,
        })
    }

    /// The formats `train { log }` names, each once, in the order given. The stdlib types the
    /// list and gives its default, so anything but a list of its enum's members is a bug.
    fn log_formats(&self, c: &CallVal) -> Result<Vec<p::LogFormat>, Diagnostic> {
        let Some(Value::List(items)) = c.get("log").map(|v| &v.v) else {
            return Err(self.bug("train without a log list", c.span));
        };
        let mut formats = Vec::new();
        for item in items {
            let format = match item.v {
                Value::Enum("tensorboard") => p::LogFormat::Tensorboard,
                Value::Enum("csv") => p::LogFormat::Csv,
                _ => return Err(self.bug("a log format the plan does not know", item.span)),
            };
            if !formats.contains(&format) {
                formats.push(format);
            }
        }
        Ok(formats)
    }
}
