//! Lower's stages: each stage of the checked program becomes a plan stage, with its
//! rollouts (one per source and sampling configuration, shared by the objectives that use
//! it), objectives, probes, reweighter, mixer and `train` settings.

use super::L;
use crate::ast::DeclKind;
use crate::diagnostic::Diagnostic;
use crate::resolve::{EntityKind, StageScope};
use crate::typecheck::{Typed, Val, Value};
use compact_str::{format_compact, CompactString};
use recap_plan as p;

/// Every member of the stdlib's `Loss` enum, with its plan value.
const LOSSES: &[(&str, p::LossAggregation)] = &[
    ("token_mean", p::LossAggregation::TokenMean),
    ("seq_mean_token_mean", p::LossAggregation::SeqMeanTokenMean),
    (
        "seq_mean_token_sum_norm",
        p::LossAggregation::SeqMeanTokenSumNorm,
    ),
];

/// Every member of the stdlib's `Scale` enum, with its plan value.
const SCALES: &[(&str, p::AdvantageScale)] = &[
    ("group", p::AdvantageScale::Group),
    ("batch", p::AdvantageScale::Batch),
    ("none", p::AdvantageScale::None),
];

impl L<'_, '_> {
    /// The plan stage of the program's stage `i`; `default_out` is the job's output directory.
    pub(super) fn stage(
        &mut self,
        typed: &Typed,
        i: usize,
        st: &StageScope,
        default_out: &str,
    ) -> Result<p::Stage, Diagnostic> {
        let name = st
            .name
            .map(|n| n.name.clone())
            .unwrap_or_else(|| CompactString::const_new("main"));
        let sv = typed
            .stages
            .get(i)
            .ok_or_else(|| self.bug("a stage without values", st.span))?;
        let train_call = match &sv.train {
            Some(Val {
                v: Value::Call(c), ..
            }) => c.as_ref(),
            _ => return Err(self.bug("a stage without train", st.span)),
        };
        let out = if self.res.stages.len() > 1 {
            format!("{default_out}/{name}")
        } else {
            default_out.to_string()
        };
        let train = self.train(train_call, &out)?;
        let mut rollouts: Vec<p::Rollout> = Vec::with_capacity(st.members.len());
        // Rollout ids by sampling configuration, and how many configurations each source has.
        let mut rollout_ids: foldhash::HashMap<RolloutKey, p::Name> = Default::default();
        let mut per_source: foldhash::HashMap<p::Name, usize> = Default::default();
        let mut objectives = Vec::with_capacity(st.members.len());
        let mut evals = Vec::new();
        for &m in &st.members {
            let e = self
                .res
                .entities
                .get(m)
                .ok_or_else(|| self.bug("a stage member", st.span))?;
            let c = typed
                .call(m)
                .ok_or_else(|| self.bug("a member without value", e.name.span))?;
            let oname = e.name.name.clone();
            match (e.kind, c.name()) {
                (EntityKind::Decl(DeclKind::Objective), "grpo") => {
                    let source = self.source_ref(&oname, c.get("source"))?;
                    let rollout = p::Rollout {
                        id: p::Name::default(),
                        source: source.clone(),
                        group: self.u(c, "group")?,
                        max_tokens: self.u(c, "max_tokens")?,
                        temperature: self.f(c, "temperature")?,
                        top_p: self.f(c, "top_p")?,
                        top_k: self.ou(c, "top_k"),
                        ignore_eos: self.b(c, "ignore_eos")?,
                    };
                    let key = RolloutKey::of(&rollout);
                    let rid = match rollout_ids.get(&key) {
                        Some(id) => id.clone(),
                        None => {
                            let n = per_source.entry(source.clone()).or_insert(0);
                            *n += 1;
                            let id = if *n == 1 {
                                source.clone()
                            } else {
                                format_compact!("{source}.{n}")
                            };
                            rollout_ids.insert(key, id.clone());
                            rollouts.push(p::Rollout {
                                id: id.clone(),
                                ..rollout
                            });
                            id
                        }
                    };
                    let kl = match c.get("kl") {
                        Some(v) => Some(self.kl(v)?),
                        None => None,
                    };
                    objectives.push(p::Objective {
                        name: oname.clone(),
                        spec: p::ObjectiveSpec::Grpo {
                            source,
                            rollout: rid,
                            rewards: self.rewards(&oname, c.get("rewards"))?,
                            clip_low: self.f(c, "clip_low")?,
                            clip_high: self.f(c, "clip_high")?,
                            loss: self.member(c, "loss", LOSSES)?,
                            scale: self.member(c, "scale", SCALES)?,
                            kl,
                            drop_equal_groups: self.b(c, "drop_equal_groups")?,
                        },
                    });
                }
                (EntityKind::Decl(DeclKind::Objective), "sft") => {
                    objectives.push(p::Objective {
                        name: oname.clone(),
                        spec: p::ObjectiveSpec::Sft {
                            source: self.source_ref(&oname, c.get("source"))?,
                            max_tokens: self.u(c, "max_tokens")?,
                        },
                    });
                }
                (EntityKind::Decl(DeclKind::Eval), "probe") => {
                    evals.push(p::Eval {
                        name: oname.clone(),
                        source: self.source_ref(&oname, c.get("source"))?,
                        every: self.u(c, "every")?,
                        rewards: self.rewards(&oname, c.get("rewards"))?,
                        limit: self.ou(c, "limit"),
                        greedy: self.b(c, "greedy")?,
                        max_tokens: self.u(c, "max_tokens")?,
                    });
                }
                _ => return Err(self.bug("a stage member of an unknown kind", e.name.span)),
            }
        }
        let reweight = match &sv.reweight {
            Some(Val {
                v: Value::Call(c), ..
            }) => self.reweight(c)?,
            // A stage without a `reweight` setting leaves every weight at 1, which is what the
            // uniform reweighter does; a setting that is not a call is a bug.
            None => p::Reweight::Uniform,
            Some(v) => return Err(self.bug("a reweight setting that is no call", v.span)),
        };
        let mix = match &sv.mix {
            Some(Val {
                v: Value::Call(c), ..
            }) => self.mix(c, train.seed)?,
            // A stage without a `mix` setting draws its sources uniformly with the train seed;
            // a setting that is not a call is a bug.
            None => p::Mix::Uniform { seed: train.seed },
            Some(v) => return Err(self.bug("a mix setting that is no call", v.span)),
        };
        Ok(p::Stage {
            name,
            rollouts,
            objectives,
            reweight,
            mix,
            train,
            evals,
        })
    }
}

/// A rollout's sampling configuration, hashable (floats by their bits).
#[derive(PartialEq, Eq, Hash)]
struct RolloutKey(p::Name, u64, u64, u64, u64, Option<u64>, bool);

impl RolloutKey {
    fn of(r: &p::Rollout) -> Self {
        RolloutKey(
            r.source.clone(),
            r.group,
            r.max_tokens,
            r.temperature.to_bits(),
            r.top_p.to_bits(),
            r.top_k,
            r.ignore_eos,
        )
    }
}
