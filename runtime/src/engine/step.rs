//! One training step of a stage, probes and the dry-run cost estimate: takes the stage's
//! run-time state and the models; gives the updated weights and state and one metrics record.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use recap_plan::{
    Eval, LossAggregation, Objective, ObjectiveSpec, Plan, RewardTerm, Rollout as PlanRollout,
    Stage,
};
use serde_json::{json, Map, Value};

use super::data::{Dataset, Row};
use super::optim::StepInfo;
use super::progress::{Progress, RunFiles};
use super::rewards::{score_terms, Judged};
use super::{num, objective_source, CostEstimate, Models, RunOptions, StageRt};
use crate::dist::Collective;
use crate::generate::{generate, Rollout, SamplingConfig};
use crate::model::fast;
use crate::model::logprob::{reference_logprobs, GraphPass, PassOptions, SequenceBatch};
use crate::model::Model;
use crate::train::grpo::{
    combine_rewards, group_advantages_sharded, grpo_loss, sft_loss, Advantages, CombinedRewards,
    GrpoBatch, GrpoConfig,
};
use crate::train::parallel::{fold_chunks, parts, row_chunks};
use crate::train::reweight::WeightSnapshot;
use crate::train::rng::HostRng;

/// The engine's state shared by all stages.
pub(crate) struct Ctx<'a> {
    pub plan: &'a Plan,
    pub opts: &'a RunOptions,
    pub device: Device,
    pub datasets: BTreeMap<String, Dataset>,
    pub verifiers: BTreeMap<String, super::rewards::Built>,
    /// Seeds of the rollouts, drawn one per rollout.
    pub run_rng: HostRng,
    pub out: Option<RunFiles>,
    pub global_step: u64,
    pub total_steps: u64,
    /// Dry runs: prompts per step.
    pub dry_prompts: Option<usize>,
    pub progress: Option<Progress>,
    /// Steps in a row whose GRPO groups all had equal rewards (see [`super::warnings`]).
    pub flat_steps: u64,
    /// This rank's collectives: every sum that spans the global batch goes through them.
    pub comm: &'a mut dyn Collective,
    /// Shards of every step's batch (see [`super::dp`]); a multiple of the world size.
    pub shards: usize,
}

/// Seconds spent per kind of work in one step.
#[derive(Default)]
struct Timing {
    rollout: f64,
    verify: f64,
    tensor: f64,
    optim: f64,
    probe: f64,
}

/// What the phases of one step gather for its update and record.
struct StepState {
    /// The policy's trainable variables (whose gradients the losses add up), their total size
    /// and the model's width and depth (which size the chunks).
    vars: Vec<candle_core::Var>,
    params: usize,
    hidden: usize,
    layers: usize,
    /// The sum of the losses' gradients, one per shard this rank holds, summed shard by shard
    /// only at the update so that the order of the additions does not depend on the ranks.
    grads: Vec<Option<GradStore>>,
    /// The shards of the step's batch this rank holds.
    local: std::ops::Range<usize>,
    tm: Timing,
    /// The record's per-objective fields.
    rec: Map<String, Value>,
    /// The reweighter's scalars: (key, value) of the keys this step fed.
    scalars: Vec<(String, f64)>,
    /// Mean reward per (source, term) key.
    rewards: Map<String, Value>,
    /// The loss of each shard this rank holds.
    loss: Vec<f64>,
    gen_tokens: usize,
    /// Sample completions to write, when this step writes samples.
    samples: Vec<Value>,
    write_samples: bool,
    /// GRPO groups this step, and those whose rewards were all equal.
    groups: usize,
    flat_groups: usize,
}

impl StepState {
    fn new(models: &Models, write_samples: bool, local: std::ops::Range<usize>) -> StepState {
        let vars = models.policy.trainable_vars();
        let params = vars.iter().map(|v| v.elem_count()).sum();
        let c = models.policy.config();
        StepState {
            vars,
            params,
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            grads: local.clone().map(|_| None).collect(),
            loss: vec![0.0; local.len()],
            local,
            tm: Timing::default(),
            rec: Map::new(),
            scalars: Vec::new(),
            rewards: Map::new(),
            gen_tokens: 0,
            samples: Vec::new(),
            write_samples,
            groups: 0,
            flat_groups: 0,
        }
    }
}

/// A GRPO batch after judging: every completion's outcome per reward term (one table per
/// shard this rank holds) and how many verifier calls failed across the job.
struct Judgement {
    tables: Vec<Vec<Vec<crate::train::verifiers::Outcome>>>,
    failures: usize,
}

/// A GRPO batch after scoring: the combined rewards and the advantages of each shard this rank
/// holds, and how many verifier calls failed.
struct Scored {
    combined: Vec<CombinedRewards>,
    adv: Vec<Advantages>,
    failures: usize,
}

/// An SFT objective's NLL share and gradients of each shard this rank holds, before its
/// lambda scales them (the shares add up to the whole batch's NLL).
struct SftOut {
    loss: Vec<f64>,
    grads: Vec<Option<GradStore>>,
}

/// An objective whose scalars the step has, waiting for the step's lambdas.
enum Pending<'p> {
    Grpo {
        o: &'p Objective,
        ro: &'p PlanRollout,
        src: String,
        rows: Vec<Vec<Row>>,
        rolls: Vec<Rollout>,
        judged: Judgement,
    },
    Sft {
        src: String,
        sft: SftOut,
    },
}

/// What one chunk of a GRPO batch gives back: its loss (already scaled to its share of the
/// batch), its gradients and the statistics the step's record sums over chunks.
struct ChunkOut {
    loss: f64,
    grads: GradStore,
    kl: Option<f64>,
    tokens: usize,
    clip_fraction: f64,
}

/// The policy's pass over a batch, kept for the backward of the loss.
enum PolicyPass<'m> {
    /// The hand-written CPU f32 pass (`model::fast`).
    Fast(Box<fast::FastForward<'m>>),
    /// Candle's autograd, with chunked logits (`model::logprob::GraphPass`).
    Graph(GraphPass<'m>),
}

/// The policy's log-probabilities of a batch for the loss, with `opts` bounding the pass's
/// memory. With `host` weights (the fast path, see [`fast_weights`]) the hand-written pass
/// computes them; otherwise candle's autograd path does. Either way the log-probs are a leaf
/// `Var` of a small candle graph (the loss) whose gradient [`backward`] hands to the pass's own
/// backward.
fn policy_logprobs<'m>(
    policy: &'m Model,
    host: Option<&'m fast::HostWeights<'m>>,
    batch: &SequenceBatch,
    opts: PassOptions,
) -> Result<(PolicyPass<'m>, Tensor)> {
    let (pass, values) = if let Some(w) = host {
        let ff = fast::forward_with(policy, w, batch, opts)?;
        let values = ff.logp_tensor()?;
        (PolicyPass::Fast(Box::new(ff)), values)
    } else {
        let gp = GraphPass::forward(policy, batch, opts)?;
        let values = gp.logp().clone();
        (PolicyPass::Graph(gp), values)
    };
    let var = candle_core::Var::from_tensor(&values)?;
    Ok((pass, var.as_tensor().clone()))
}

/// `model`'s weights read in place when the fast path applies to it (CPU, f32) and the run
/// options do not ask for candle's `autograd`, made once per objective and step for all its
/// chunks.
fn fast_weights(model: &Model, autograd: bool) -> Result<Option<fast::HostWeights<'_>>> {
    Ok(if !autograd && fast::supported(model) {
        Some(fast::HostWeights::new(model)?)
    } else {
        None
    })
}

/// The reference model's log-probabilities, by the fast no-save pass where it applies.
fn ref_logprobs(
    reference: &Model,
    host: Option<&fast::HostWeights<'_>>,
    batch: &SequenceBatch,
) -> Result<Tensor> {
    if let Some(w) = host {
        Ok(fast::logprobs_tensor_with(reference, w, batch)?)
    } else {
        Ok(reference_logprobs(reference, batch)?)
    }
}

/// The gradients of `loss` through the policy's pass that gave the log-probs `logp`.
fn backward(loss: &Tensor, pass: &PolicyPass<'_>, logp: &Tensor) -> Result<GradStore> {
    Ok(match pass {
        PolicyPass::Fast(ff) => ff.loss_backward(loss, logp)?,
        PolicyPass::Graph(gp) => gp.loss_backward(loss, logp)?,
    })
}

/// `grads` times `factor` (a key's lambda, a constant for autograd).
fn scale_grads(mut grads: GradStore, factor: f64, vars: &[candle_core::Var]) -> Result<GradStore> {
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let scaled = (g * factor)?;
            grads.insert(v.as_tensor(), scaled);
        }
    }
    Ok(grads)
}

/// Adds one backward pass's gradients to the running sum.
fn accumulate(
    acc: &mut Option<GradStore>,
    new: GradStore,
    vars: &[candle_core::Var],
) -> Result<()> {
    match acc {
        None => *acc = Some(new),
        Some(a) => {
            for v in vars {
                if let Some(g) = new.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

fn sampling(r: &PlanRollout, seed: u64) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens: r.max_tokens as usize,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k.unwrap_or(0) as usize,
        greedy: false,
        stop_strings: Vec::new(),
        eos_token_ids: Vec::new(),
        ignore_eos: r.ignore_eos,
        seed,
    }
}

/// The sum and the count of the applicable outcomes of each term, interleaved.
fn term_sums(table: &[Vec<crate::train::verifiers::Outcome>], terms: usize) -> Vec<f64> {
    (0..terms)
        .flat_map(|t| {
            let xs: Vec<f64> = table.iter().filter_map(|r| r[t].score()).collect();
            [xs.iter().sum::<f64>(), xs.len() as f64]
        })
        .collect()
}

/// The SFT target of a row: its `target` field, else its `answer`.
fn target_of(row: &Row) -> Result<String> {
    for k in ["target", "answer"] {
        if let Some(v) = row.fields.get(k) {
            return Ok(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
    }
    bail!(
        "row {}: an SFT objective needs a `target` (or `answer`) field",
        row.id
    )
}

impl Ctx<'_> {
    pub(crate) fn warn(&self, msg: &str) {
        // Every rank meets the same warnings; the leader alone shows them.
        if !self.comm.is_leader() {
            return;
        }
        match &self.progress {
            Some(p) => p.warn(msg),
            None => eprintln!("warning: {msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }

    /// One step of stage `rt`; gives its metrics record (also written to `metrics.jsonl`). The
    /// phases are TRL's: for each objective on a drawn source, GRPO's [`Ctx::rollout`],
    /// [`Ctx::score`] and [`Ctx::grpo_loss`], or [`Ctx::sft_loss`]; then [`Ctx::update`] and
    /// [`Ctx::record`].
    pub fn step(&mut self, rt: &mut StageRt, models: &mut Models) -> Result<Value> {
        let t0 = Instant::now();
        let plan = self.plan;
        let stage = &plan.stages[rt.index];
        let drawn = rt.mixer.next_draw();
        let drawn_names: Vec<String> = drawn.iter().map(|&i| rt.sources[i].clone()).collect();
        let lr = rt.optim.base_lr()
            * super::optim::lr_factor(&stage.train.schedule, rt.step, stage.train.steps);
        let write_samples = self.out.is_some()
            && self.opts.samples_every > 0
            && (self.global_step + 1).is_multiple_of(self.opts.samples_every);
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let mut st = StepState::new(
            models,
            write_samples,
            super::dp::local_shards(rank, world, self.shards),
        );

        // The tracked scalars of every key the step feeds come first (the rollouts' rewards,
        // the SFT forward passes); the reweighter then computes this step's lambdas from
        // histories that include them, and those lambdas weight this same batch (RECAP.md,
        // "Where the weights act").
        let mut pending = Vec::new();
        for &si in &drawn {
            let src = rt.sources[si].clone();
            let n_prompts = self
                .dry_prompts
                .unwrap_or(stage.train.prompts_per_step as usize);
            // Every rank draws the whole batch and keeps its shards of it.
            let idx = rt.readers[si].next_batch(n_prompts);
            let rows: Vec<Vec<Row>> = st
                .local
                .clone()
                .map(|s| {
                    idx[super::dp::shard_range(idx.len(), self.shards, s)]
                        .iter()
                        .map(|&i| self.datasets[&src].rows[i].clone())
                        .collect()
                })
                .collect();
            for o in stage
                .objectives
                .iter()
                .filter(|o| objective_source(&o.spec) == src)
            {
                match &o.spec {
                    ObjectiveSpec::Grpo { rollout, .. } => {
                        let ro =
                            stage
                                .rollouts
                                .iter()
                                .find(|r| r.id == rollout)
                                .ok_or_else(|| {
                                    anyhow!(
                                        "objective `{}` reads unknown rollout `{rollout}`",
                                        o.name
                                    )
                                })?;
                        let rolls = self.rollout(ro, &rows, models, &mut st)?;
                        let judged = self.judge(&src, &o.spec, ro, &rows, &rolls, &mut st)?;
                        pending.push(Pending::Grpo {
                            o,
                            ro,
                            src: src.clone(),
                            rows: rows.clone(),
                            rolls,
                            judged,
                        });
                    }
                    ObjectiveSpec::Sft { max_tokens, .. } => {
                        let sft =
                            self.sft_loss(stage, o, &src, &rows, *max_tokens, models, &mut st)?;
                        pending.push(Pending::Sft {
                            src: src.clone(),
                            sft,
                        });
                    }
                }
            }
        }

        let snap = self.reweight(rt, stage, &drawn_names, &st)?;
        for p in pending {
            match p {
                Pending::Grpo {
                    o,
                    ro,
                    src,
                    rows,
                    rolls,
                    judged,
                } => {
                    let scored = self.score(rt, &src, &o.spec, ro, judged)?;
                    self.grpo_loss(stage, o, ro, &rolls, &scored, models, &mut st)?;
                    self.record_grpo(stage, &src, ro, &rows, &rolls, scored, &mut st);
                }
                Pending::Sft { src, sft } => {
                    let lambda = key_lambda(rt, &src);
                    for (k, (loss, grads)) in sft.loss.into_iter().zip(sft.grads).enumerate() {
                        st.loss[k] += lambda * loss;
                        let Some(grads) = grads else { continue };
                        let grads = if lambda == 1.0 {
                            grads
                        } else {
                            scale_grads(grads, lambda, &st.vars)?
                        };
                        accumulate(&mut st.grads[k], grads, &st.vars)?;
                    }
                }
            }
        }

        let info = self.update(rt, stage, lr, &mut st)?;
        self.record(rt, stage, models, t0, lr, &drawn_names, &info, &snap, st)
    }

    /// Rollout: samples the rollout's group of completions for each prompt of `rows`, one
    /// generation per shard this rank holds, each with its shard's seed.
    fn rollout(
        &mut self,
        ro: &PlanRollout,
        rows: &[Vec<Row>],
        models: &Models,
        st: &mut StepState,
    ) -> Result<Vec<Rollout>> {
        // Every rank draws the step's seed, so the generators stay in step.
        let seed = self.run_rng.next_u64();
        let mut rolls = Vec::with_capacity(rows.len());
        for (s, rows) in st.local.clone().zip(rows) {
            let prompts: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| models.tok.encode_chat(&r.context, &r.prompt))
                .collect::<std::result::Result<_, _>>()?;
            let t = Instant::now();
            let roll = generate(
                &models.policy,
                Some(&models.tok),
                &prompts,
                ro.group as usize,
                &sampling(ro, super::dp::shard_seed(seed, s)),
            )
            .with_context(|| format!("rollout `{}`", ro.id))?;
            st.tm.rollout += t.elapsed().as_secs_f64();
            st.gen_tokens += roll.num_tokens();
            rolls.push(roll);
        }
        Ok(rolls)
    }

    /// Judge: the verifiers' outcomes of every completion and each term's mean, which is the
    /// tracked scalar of the (source, term) key.
    fn judge(
        &mut self,
        src: &str,
        spec: &ObjectiveSpec,
        ro: &PlanRollout,
        rows: &[Vec<Row>],
        rolls: &[Rollout],
        st: &mut StepState,
    ) -> Result<Judgement> {
        let ObjectiveSpec::Grpo { rewards: terms, .. } = spec else {
            bail!("only a GRPO objective is scored");
        };
        let group = ro.group as usize;
        let t = Instant::now();
        let mut tables = Vec::with_capacity(rolls.len());
        let mut failures = Vec::new();
        // Per shard: each term's sum and count of applicable outcomes, then its failures.
        let mut parts = Vec::with_capacity(rolls.len());
        for (rows, roll) in rows.iter().zip(rolls) {
            let items: Vec<Judged> = (0..roll.texts.len())
                .map(|r| judged(&rows[r / group], roll, r))
                .collect();
            let (table, f) = score_terms(&self.verifiers, terms, &items)?;
            let mut part = term_sums(&table, terms.len());
            part.push(f.len() as f64);
            parts.push(part);
            tables.push(table);
            failures.extend(f);
        }
        // Each rank shows and records the failures of its own completions.
        for f in &failures {
            if let Some(p) = &self.progress {
                p.warn(f);
            } else {
                eprintln!("warning: {f}");
            }
        }
        // The reasons go to the step's record as well, where they outlast the terminal.
        if !failures.is_empty() {
            let errors = st.rec.entry("verifier_errors").or_insert_with(|| json!([]));
            if let Value::Array(list) = errors {
                list.extend(failures.iter().map(|f| json!(f)));
            }
        }
        // Each term's mean over the applicable outcomes of the whole batch.
        let sums = super::dp::sum_shards(&mut *self.comm, &parts, 2 * terms.len() + 1)?;
        let means: Vec<Option<f64>> = (0..terms.len())
            .map(|t| (sums[2 * t + 1] > 0.0).then(|| sums[2 * t] / sums[2 * t + 1]))
            .collect();
        for (term, m) in terms.iter().zip(&means) {
            let key = format!("{src}.{}", term.name);
            st.rewards.insert(key.clone(), m.map_or(Value::Null, num));
            if let Some(m) = m {
                st.scalars.push((key, *m));
            }
        }
        st.tm.verify += t.elapsed().as_secs_f64();
        Ok(Judgement {
            tables,
            failures: sums[2 * terms.len()] as usize,
        })
    }

    /// Score: the reward terms combined with this step's lambdas, and the group advantages.
    fn score(
        &mut self,
        rt: &StageRt,
        src: &str,
        spec: &ObjectiveSpec,
        ro: &PlanRollout,
        judgement: Judgement,
    ) -> Result<Scored> {
        let ObjectiveSpec::Grpo {
            rewards: terms,
            scale,
            drop_equal_groups,
            ..
        } = spec
        else {
            bail!("only a GRPO objective is scored");
        };
        let weights: Vec<f64> = terms
            .iter()
            .map(|t| key_lambda(rt, &format!("{src}.{}", t.name)))
            .collect();
        let combined = judgement
            .tables
            .iter()
            .map(|table| combine_rewards(table, &weights))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let shards: Vec<(&[f64], &[bool])> = combined
            .iter()
            .map(|c| (c.total.as_slice(), c.applies.as_slice()))
            .collect();
        // Group advantages are the shard's own; what spans the batch (a batch std, the
        // statistics) is summed across the ranks.
        let comm = &mut *self.comm;
        let adv = group_advantages_sharded(
            &shards,
            ro.group as usize,
            *scale,
            *drop_equal_groups,
            &mut |v| {
                comm.all_reduce_f64(v)
                    .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
            },
        )?;
        Ok(Scored {
            combined,
            adv,
            failures: judgement.failures,
        })
    }

    /// Loss of a GRPO objective: the clipped-ratio loss (with its KL term) of each chunk of the
    /// batch, forward and backward, the gradients added to the step's.
    #[allow(clippy::too_many_arguments)]
    fn grpo_loss(
        &mut self,
        stage: &Stage,
        o: &Objective,
        ro: &PlanRollout,
        rolls: &[Rollout],
        scored: &Scored,
        models: &Models,
        st: &mut StepState,
    ) -> Result<()> {
        let ObjectiveSpec::Grpo {
            clip_low,
            clip_high,
            loss,
            scale,
            kl,
            drop_equal_groups,
            ..
        } = &o.spec
        else {
            bail!("objective `{}` is not a GRPO objective", o.name);
        };
        let t = Instant::now();
        let beta = kl.as_ref().map_or(0.0, |k| k.coef);
        let cfg = GrpoConfig {
            group: ro.group as usize,
            max_tokens: ro.max_tokens as usize,
            scale: *scale,
            eps_low: *clip_low,
            eps_high: *clip_high,
            beta,
            aggregation: *loss,
            drop_zero_variance: *drop_equal_groups,
        };
        let micro = stage.train.micro_batch.map(|m| m as usize);
        // The token-mean normaliser counts the tokens of the rows in the loss: a dropped
        // group's tokens are out of it, as they are out of the sum. Both normalisers are the
        // global batch's, so that the ranks' gradients add up to the single-process gradient.
        let counts: Vec<Vec<f64>> = rolls
            .iter()
            .zip(&scored.adv)
            .map(|(roll, adv)| {
                let kept = roll
                    .completion_ids
                    .iter()
                    .zip(&adv.keep)
                    .filter(|(_, &k)| k);
                vec![
                    kept.clone().map(|(c, _)| c.len()).sum::<usize>() as f64,
                    kept.count() as f64,
                ]
            })
            .collect();
        let totals = super::dp::sum_shards(&mut *self.comm, &counts, 2)?;
        let (total_tokens, kept_rows) = (totals[0] as usize, (totals[1] as usize).max(1));
        let policy = &models.policy;
        let reference = models.reference.as_ref();
        let (pad_id, device) = (models.tok.pad_id, &self.device);
        // The fast path's views of the weights, read in place by all chunks.
        let autograd = self.opts.autograd;
        let policy_host = fast_weights(policy, autograd)?;
        let opts = PassOptions::of(policy).with_checkpointing(stage.train.checkpointing);
        let reference_host = match (reference, beta > 0.0) {
            (Some(r), true) => fast_weights(r, autograd)?,
            _ => None,
        };
        // Each chunk's forward and backward pass: the chunks run side by side on the CPU
        // (train::parallel), each giving its loss, gradients and stats.
        let mut stats = Vec::with_capacity(rolls.len());
        for (k, (roll, adv)) in rolls.iter().zip(&scored.adv).enumerate() {
            let n = roll.completion_ids.len();
            let chunk = |range: std::ops::Range<usize>| -> Result<ChunkOut> {
                let prompts_c: Vec<&[u32]> = range.clone().map(|r| roll.prompt_of(r)).collect();
                let comps_c: Vec<&[u32]> = roll.completion_ids[range.clone()]
                    .iter()
                    .map(Vec::as_slice)
                    .collect();
                let batch = SequenceBatch::new(&prompts_c, &comps_c, pad_id, device)?
                    .with_temperature(ro.temperature)?;
                let sub = Advantages {
                    values: adv.values[range.clone()].to_vec(),
                    keep: adv.keep[range].to_vec(),
                    stats: adv.stats.clone(),
                };
                // On the CPU in f32 the hand-written pass (model::fast) replaces candle's autograd
                // for the model; the loss stays candle code built on its log-probs held in a Var
                // (see `policy_logprobs`).
                let (pass, logp) = policy_logprobs(policy, policy_host.as_ref(), &batch, opts)?;
                let ref_lp = match (reference, beta > 0.0) {
                    (Some(r), true) => Some(ref_logprobs(r, reference_host.as_ref(), &batch)?),
                    (None, true) => bail!(
                        "objective `{}` has a KL term but no reference model was loaded",
                        o.name
                    ),
                    _ => None,
                };
                let out = grpo_loss(
                    &cfg,
                    &GrpoBatch {
                        logp: &logp,
                        old_logp: None,
                        ref_logp: ref_lp.as_ref(),
                        mask: &batch.completion_mask,
                        advantages: &sub,
                        token_normaliser: Some(total_tokens.max(1) as f64),
                    },
                )?;
                // Sequence-mean losses are means over the chunk's rows: weight each chunk by its
                // share of the batch so the sum is the batch's loss.
                let share = match cfg.aggregation {
                    LossAggregation::TokenMean => 1.0,
                    _ => {
                        let k = sub.keep.iter().filter(|&&k| k).count();
                        k as f64 / kept_rows as f64
                    }
                };
                let l = if share == 1.0 {
                    out.loss
                } else {
                    (out.loss * share)?
                };
                Ok(ChunkOut {
                    loss: l.to_scalar::<f32>()? as f64,
                    grads: backward(&l, &pass, &logp)?,
                    kl: out.stats.kl,
                    tokens: out.stats.tokens,
                    clip_fraction: out.stats.clip_fraction,
                })
            };
            let tokens: usize = (0..n)
                .map(|r| roll.prompt_of(r).len() + roll.completion_ids[r].len())
                .sum();
            let parts = parts(&self.device, tokens, st.hidden, st.layers, st.params);
            let chunks = row_chunks(n, micro, parts);
            let (mut kl_sum, mut kl_tok, mut clip_sum) = (0.0, 0usize, 0.0);
            fold_chunks(&chunks, parts, chunk, |c| {
                st.loss[k] += c.loss;
                accumulate(&mut st.grads[k], c.grads, &st.vars)?;
                if let Some(kl) = c.kl {
                    kl_sum += kl * c.tokens as f64;
                }
                kl_tok += c.tokens;
                clip_sum += c.clip_fraction * c.tokens as f64;
                Ok(())
            })?;
            stats.push(vec![kl_sum, kl_tok as f64, clip_sum]);
        }
        let sums = super::dp::sum_shards(&mut *self.comm, &stats, 3)?;
        let (kl_sum, kl_tok, clip_sum) = (sums[0], sums[1].max(1.0), sums[2]);
        st.tm.tensor += t.elapsed().as_secs_f64();
        st.rec.insert(
            "kl".into(),
            if beta > 0.0 {
                num(kl_sum / kl_tok)
            } else {
                Value::Null
            },
        );
        st.rec
            .insert("clip_fraction".into(), num(clip_sum / kl_tok));
        Ok(())
    }

    /// The record's part of a GRPO objective: the reward and advantage statistics, and sample
    /// completions when due.
    #[allow(clippy::too_many_arguments)]
    fn record_grpo(
        &self,
        stage: &Stage,
        src: &str,
        ro: &PlanRollout,
        rows: &[Vec<Row>],
        rolls: &[Rollout],
        scored: Scored,
        st: &mut StepState,
    ) {
        let Scored {
            combined,
            adv,
            failures,
        } = scored;
        let Some(stats) = adv.first().map(|a| a.stats.clone()) else {
            return;
        };
        let rec = &mut st.rec;
        rec.insert("reward_mean".into(), num(stats.reward_mean));
        rec.insert("reward_std".into(), num(stats.reward_std));
        rec.insert("advantage_std".into(), num(stats.advantage_std));
        rec.insert(
            "zero_variance_groups".into(),
            json!(stats.zero_variance_groups),
        );
        rec.insert("verifier_failures".into(), json!(failures));
        // The whole batch's groups, one per prompt.
        st.groups += self
            .dry_prompts
            .unwrap_or(stage.train.prompts_per_step as usize);
        st.flat_groups += stats.zero_variance_groups;
        // The samples are the batch's first completions, those of shard 0 (the leader's).
        if st.write_samples && st.local.start == 0 {
            let (rows, roll, combined, adv) = (&rows[0], &rolls[0], &combined[0], &adv[0]);
            let group = ro.group as usize;
            for r in 0..roll.completion_ids.len().min(2 * group) {
                st.samples.push(json!({
                    "step": self.global_step + 1,
                    "stage": stage.name,
                    "source": src,
                    "id": rows[r / group].id,
                    "prompt": rows[r / group].prompt,
                    "completion": roll.texts[r],
                    "reward": num(combined.total[r]),
                    "advantage": num(adv.values[r]),
                }));
            }
        }
    }

    /// Loss of an SFT objective: the NLL of the rows' targets, chunk by chunk, forward and
    /// backward, with the gradients kept apart: the NLL is the key's scalar, so the lambda that
    /// scales them (`lambda * nll`) is known only once every key of the step has its scalar.
    #[allow(clippy::too_many_arguments)]
    fn sft_loss(
        &mut self,
        stage: &Stage,
        o: &Objective,
        src: &str,
        rows: &[Vec<Row>],
        max_tokens: u64,
        models: &Models,
        st: &mut StepState,
    ) -> Result<SftOut> {
        let t = Instant::now();
        let mut shards = Vec::with_capacity(rows.len());
        for rows in rows {
            let mut prompts = Vec::with_capacity(rows.len());
            let mut targets = Vec::with_capacity(rows.len());
            for r in rows {
                prompts.push(models.tok.encode_chat(&r.context, &r.prompt)?);
                let mut ids = models.tok.encode(&target_of(r)?, false)?;
                // The target ends with EOS so the model learns where to stop.
                if let Some(&e) = models.tok.eos_ids.first() {
                    ids.push(e);
                }
                ids.truncate(max_tokens as usize);
                targets.push(ids);
            }
            shards.push((prompts, targets));
        }
        // The NLL is a mean over all target tokens of the global batch: each chunk's mean is
        // weighted by its share of those tokens, so the chunks' losses and gradients add up to
        // the whole batch's, across shards and ranks.
        let counts: Vec<Vec<f64>> = shards
            .iter()
            .map(|(_, targets)| vec![targets.iter().map(Vec::len).sum::<usize>() as f64])
            .collect();
        let total = super::dp::sum_shards(&mut *self.comm, &counts, 1)?[0] as usize;
        if total == 0 {
            bail!("objective `{}`: the batch has no target tokens", o.name);
        }
        let (policy, pad_id, device) = (&models.policy, models.tok.pad_id, &self.device);
        let policy_host = fast_weights(policy, self.opts.autograd)?;
        let opts = PassOptions::of(policy).with_checkpointing(stage.train.checkpointing);
        let micro = stage.train.micro_batch.map(|m| m as usize);
        let (mut losses, mut all_grads) = (Vec::new(), Vec::new());
        for (prompts, targets) in &shards {
            let chunk = |range: std::ops::Range<usize>| -> Result<Option<(f64, GradStore)>> {
                let tokens: usize = targets[range.clone()].iter().map(Vec::len).sum();
                if tokens == 0 {
                    return Ok(None);
                }
                let p: Vec<&[u32]> = prompts[range.clone()].iter().map(Vec::as_slice).collect();
                let c: Vec<&[u32]> = targets[range].iter().map(Vec::as_slice).collect();
                let batch = SequenceBatch::new(&p, &c, pad_id, device)?;
                let (pass, logp) = policy_logprobs(policy, policy_host.as_ref(), &batch, opts)?;
                let out = sft_loss(&logp, &batch.completion_mask, 1.0)?;
                let share = tokens as f64 / total as f64;
                let l = (out.loss * share)?;
                let g = backward(&l, &pass, &logp)?;
                Ok(Some((l.to_scalar::<f32>()? as f64, g)))
            };
            let mine: usize = targets.iter().map(Vec::len).sum();
            let tokens: usize = prompts.iter().map(Vec::len).sum::<usize>() + mine;
            let parts = parts(&self.device, tokens, st.hidden, st.layers, st.params);
            let chunks = row_chunks(prompts.len(), micro, parts);
            let (mut nll, mut grads) = (0.0, None);
            fold_chunks(&chunks, parts, chunk, |out| {
                if let Some((part, g)) = out {
                    nll += part;
                    accumulate(&mut grads, g, &st.vars)?;
                }
                Ok(())
            })?;
            losses.push(vec![nll]);
            all_grads.push(grads);
        }
        let nll = super::dp::sum_shards(&mut *self.comm, &losses, 1)?[0];
        st.tm.tensor += t.elapsed().as_secs_f64();
        st.scalars.push((src.to_string(), nll));
        st.rec.insert("sft_nll".into(), num(nll));
        Ok(SftOut {
            loss: losses.into_iter().map(|l| l[0]).collect(),
            grads: all_grads,
        })
    }

    /// Reweight: the reweighter's update with the step's scalars, which gives the lambdas this
    /// same step applies.
    fn reweight(
        &self,
        rt: &mut StageRt,
        stage: &Stage,
        drawn_names: &[String],
        st: &StepState,
    ) -> Result<WeightSnapshot> {
        let drawn_refs: Vec<&str> = drawn_names.iter().map(String::as_str).collect();
        let scalar_refs: Vec<(&str, f64)> =
            st.scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let snap = rt
            .reweighter
            .update(&drawn_refs, &scalar_refs)
            .with_context(|| format!("stage `{}`", stage.name))?;
        rt.lambdas = snap.keys.iter().map(|k| k.lambda).collect();
        Ok(snap)
    }

    /// Update: the optimiser step at learning rate `lr` with the step's summed gradients. Gives
    /// the optimiser's report.
    fn update(
        &mut self,
        rt: &mut StageRt,
        stage: &Stage,
        lr: f64,
        st: &mut StepState,
    ) -> Result<StepInfo> {
        // This rank's shards' gradients, added in shard order; the optimiser adds the ranks'.
        let mut grads = None;
        for g in std::mem::take(&mut st.grads).into_iter().flatten() {
            accumulate(&mut grads, g, &st.vars)?;
        }
        let grads = grads.ok_or_else(|| {
            anyhow!(
                "step {}: no objective produced a loss",
                self.global_step + 1
            )
        })?;
        let t = Instant::now();
        let info = rt
            .optim
            .step(grads, lr, stage.train.grad_clip, &mut *self.comm)?;
        st.tm.optim += t.elapsed().as_secs_f64();
        rt.step += 1;
        self.global_step += 1;
        Ok(info)
    }

    /// Record: the stage's probes when due, then the step's metrics record, written with the
    /// step's samples and shown on the progress display.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        rt: &StageRt,
        stage: &Stage,
        models: &Models,
        t0: Instant,
        lr: f64,
        drawn_names: &[String],
        info: &StepInfo,
        snap: &WeightSnapshot,
        st: StepState,
    ) -> Result<Value> {
        let StepState {
            mut tm,
            mut rec,
            rewards,
            loss,
            gen_tokens,
            samples,
            groups,
            flat_groups,
            ..
        } = st;
        let mut evals = Map::new();
        for e in &stage.evals {
            if self.dry_prompts.is_some() || (e.every > 0 && rt.step.is_multiple_of(e.every)) {
                let t = Instant::now();
                evals.insert(
                    e.name.to_string(),
                    Value::Object(self.shared_probe(e, models)?),
                );
                tm.probe += t.elapsed().as_secs_f64();
            }
        }
        let loss_parts: Vec<Vec<f64>> = loss.iter().map(|&l| vec![l]).collect();
        let loss_sum = super::dp::sum_shards(&mut *self.comm, &loss_parts, 1)?[0];
        let mut generated = [gen_tokens as f64];
        self.comm.all_reduce_f64(&mut generated)?;
        let gen_tokens = generated[0] as usize;

        let mut keys = Map::new();
        for k in &snap.keys {
            keys.insert(
                k.key.clone(),
                json!({
                    "signal": k.signal.map_or(Value::Null, num),
                    "c": num(k.c),
                    "i": num(k.i),
                    "lambda": num(k.lambda),
                }),
            );
        }
        let seconds = t0.elapsed().as_secs_f64();
        let work = tm.rollout + tm.verify + tm.tensor + tm.optim + tm.probe;
        rec.insert("step".into(), json!(self.global_step));
        rec.insert("stage".into(), json!(stage.name));
        rec.insert("stage_step".into(), json!(rt.step));
        rec.insert(
            "source".into(),
            if drawn_names.len() == 1 {
                json!(drawn_names[0])
            } else {
                json!(drawn_names)
            },
        );
        rec.insert("keys".into(), Value::Object(keys));
        rec.insert("rewards".into(), Value::Object(rewards));
        rec.insert("loss".into(), num(loss_sum));
        rec.insert("grad_norm".into(), num(info.grad_norm));
        rec.insert("lr".into(), num(lr));
        rec.insert("generated_tokens".into(), json!(gen_tokens));
        rec.insert(
            "tokens_per_s".into(),
            num(gen_tokens as f64 / seconds.max(1e-9)),
        );
        rec.insert("seconds".into(), num(seconds));
        rec.insert(
            "time".into(),
            json!({
                "rollout": tm.rollout, "verify": tm.verify, "tensor": tm.tensor,
                "optimizer": tm.optim, "probe": tm.probe,
                "overhead": (seconds - work).max(0.0),
            }),
        );
        if !evals.is_empty() {
            rec.insert("eval".into(), Value::Object(evals));
        }
        if let Some(w) = super::warnings::no_signal(&mut self.flat_steps, groups, flat_groups) {
            self.warn(&w);
            rec.insert("warnings".into(), json!([w]));
        }
        let rec = Value::Object(rec);
        if let Some(out) = &mut self.out {
            out.metric(&rec)?;
            for s in &samples {
                out.sample(s)?;
            }
        }
        if let Some(p) = &self.progress {
            p.step(self.global_step, &rec);
        }
        Ok(rec)
    }

    /// [`Ctx::probe`] in a data-parallel job: the leader runs the probe and every rank gets its
    /// scores through one sum (the others add zeros), so every rank's record is the same while
    /// the probe's greedy decoding runs once, as in a single process.
    fn shared_probe(&mut self, e: &Eval, models: &Models) -> Result<Map<String, Value>> {
        if self.comm.world() == 1 {
            return self.probe(e, models);
        }
        // Per reward term: its score and whether it has one.
        let mut values = vec![0.0; 2 * e.rewards.len()];
        if self.comm.is_leader() {
            let scores = self.probe(e, models)?;
            for (i, t) in e.rewards.iter().enumerate() {
                if let Some(x) = scores.get(t.name.as_str()).and_then(Value::as_f64) {
                    values[2 * i] = x;
                    values[2 * i + 1] = 1.0;
                }
            }
        }
        self.comm.all_reduce_f64(&mut values)?;
        Ok(e.rewards
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let v = if values[2 * i + 1] > 0.0 {
                    num(values[2 * i])
                } else {
                    Value::Null
                };
                (t.name.to_string(), v)
            })
            .collect())
    }

    /// Greedy accuracy of a probe's reward terms on the first rows of its source.
    pub(crate) fn probe(&self, e: &Eval, models: &Models) -> Result<Map<String, Value>> {
        let ds = self
            .datasets
            .get(e.source.as_str())
            .ok_or_else(|| anyhow!("probe `{}` reads unknown source `{}`", e.name, e.source))?;
        let mut n = e
            .limit
            .map_or(ds.rows.len(), |l| l as usize)
            .min(ds.rows.len());
        if let Some(d) = self.dry_prompts {
            n = n.min(d);
        }
        let rows = &ds.rows[..n];
        let cfg = SamplingConfig {
            max_new_tokens: e.max_tokens as usize,
            greedy: e.greedy,
            temperature: if e.greedy { 0.0 } else { 1.0 },
            seed: 0,
            ..SamplingConfig::default()
        };
        let mut sums = vec![(0.0, 0usize); e.rewards.len()];
        for chunk in rows.chunks(64) {
            let prompts: Vec<Vec<u32>> = chunk
                .iter()
                .map(|r| models.tok.encode_chat(&r.context, &r.prompt))
                .collect::<std::result::Result<_, _>>()?;
            let roll = generate(&models.policy, Some(&models.tok), &prompts, 1, &cfg)?;
            let items: Vec<Judged> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| judged(r, &roll, i))
                .collect();
            let (table, failures) = score_terms(&self.verifiers, &e.rewards, &items)?;
            for f in &failures {
                self.warn(f);
            }
            for row in &table {
                for (t, o) in row.iter().enumerate() {
                    if let Some(s) = o.score() {
                        sums[t].0 += s;
                        sums[t].1 += 1;
                    }
                }
            }
        }
        Ok(e.rewards
            .iter()
            .zip(sums)
            .map(|(t, (s, c)): (&RewardTerm, _)| {
                (
                    t.name.to_string(),
                    if c > 0 {
                        num(s / c as f64)
                    } else {
                        Value::Null
                    },
                )
            })
            .collect())
    }
}

/// The weight key `name` has this step (1 when the stage has no such key).
fn key_lambda(rt: &StageRt, name: &str) -> f64 {
    rt.keys
        .iter()
        .position(|k| k.name == name)
        .map_or(1.0, |i| rt.lambdas[i])
}

/// The work one source's objectives give a step, for the estimate.
#[derive(Clone, Copy, Default)]
struct SourceWork {
    /// Tokens generated by the rollouts.
    generated: usize,
    /// Tokens through the policy's training pass (forward and backward).
    pass_tokens: usize,
    /// Tokens through the frozen reference (GRPO with KL).
    reference_tokens: usize,
    /// The longest sequence, prompt and completion.
    longest: usize,
    /// Rows the rollouts generate.
    rollout_rows: usize,
    /// Rows the training pass takes.
    train_rows: usize,
    /// Completion positions scored (GRPO completions, SFT targets).
    positions: usize,
    /// SFT objectives.
    sft: usize,
    /// GRPO objectives.
    grpo: usize,
}

impl SourceWork {
    /// The work of two sources in one step (`mix all`): every part adds up except the longest
    /// sequence, their maximum.
    fn and(self, o: &SourceWork) -> SourceWork {
        SourceWork {
            generated: self.generated + o.generated,
            pass_tokens: self.pass_tokens + o.pass_tokens,
            reference_tokens: self.reference_tokens + o.reference_tokens,
            longest: self.longest.max(o.longest),
            rollout_rows: self.rollout_rows + o.rollout_rows,
            train_rows: self.train_rows + o.train_rows,
            positions: self.positions + o.positions,
            sft: self.sft + o.sft,
            grpo: self.grpo + o.grpo,
        }
    }
}

/// The per-step cost of stage `index` with `prompts` prompts per step, from the plan's shapes
/// and the model's configuration alone: nothing runs, so a dry run can print it for a model
/// whose step would not fit in memory.
pub(crate) fn estimate(
    plan: &Plan,
    index: usize,
    datasets: &BTreeMap<String, Dataset>,
    models: &Models,
    rt: &StageRt,
    prompts: usize,
    ranks: usize,
) -> Result<CostEstimate> {
    let stage = &plan.stages[index];
    let c = models.policy.config();
    let p = prompts;
    let mean_len = |src: &str, f: &dyn Fn(&Row) -> Result<usize>| -> Result<usize> {
        let ds = &datasets[src];
        let rows = &ds.rows[..ds.rows.len().min(64)];
        let total: usize = rows.iter().map(f).sum::<Result<usize>>()?;
        Ok(total.div_ceil(rows.len().max(1)))
    };
    let mut per_source: BTreeMap<String, SourceWork> = BTreeMap::new();
    for o in &stage.objectives {
        let src = objective_source(&o.spec).to_string();
        let plen = mean_len(&src, &|r| {
            Ok(models.tok.encode_chat(&r.context, &r.prompt)?.len())
        })?;
        let e = per_source.entry(src.clone()).or_default();
        match &o.spec {
            ObjectiveSpec::Grpo { rollout, kl, .. } => {
                let ro = stage
                    .rollouts
                    .iter()
                    .find(|r| r.id == rollout)
                    .ok_or_else(|| anyhow!("unknown rollout `{rollout}`"))?;
                let rows = p * ro.group as usize;
                let seq = plen + ro.max_tokens as usize;
                e.generated += rows * ro.max_tokens as usize;
                e.pass_tokens += rows * seq;
                if kl.as_ref().is_some_and(|k| k.coef > 0.0) {
                    e.reference_tokens += rows * seq;
                }
                e.longest = e.longest.max(seq);
                e.rollout_rows += rows;
                e.train_rows += rows;
                e.positions += rows * ro.max_tokens as usize;
                e.grpo += 1;
            }
            ObjectiveSpec::Sft { max_tokens, .. } => {
                let tlen = mean_len(&src, &|r| {
                    Ok(models.tok.encode(&target_of(r)?, false)?.len() + 1)
                })?;
                let seq = plen + tlen.min(*max_tokens as usize);
                e.pass_tokens += p * seq;
                e.longest = e.longest.max(seq);
                e.train_rows += p;
                e.positions += p * tlen.min(*max_tokens as usize);
                e.sft += 1;
            }
        }
    }
    // One source per step unless `mix all`: the estimate is the most expensive source.
    let work = if matches!(stage.mix, recap_plan::Mix::All) {
        per_source
            .values()
            .fold(SourceWork::default(), |a, b| a.and(b))
    } else {
        per_source
            .values()
            .copied()
            .max_by_key(|w| w.pass_tokens)
            .unwrap_or_default()
    };
    let SourceWork {
        generated: gen,
        pass_tokens: fb,
        reference_tokens: reft,
        longest: seq,
        rollout_rows: gen_rows,
        train_rows,
        positions,
        sft,
        grpo,
    } = work;
    let params: usize = models
        .policy
        .trainable_vars()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    // The chunks the training pass runs, as the step splits them (`row_chunks`): the rows of
    // one chunk are alive at once, and `parts` chunks run side by side.
    let device = models.policy.device();
    let micro = stage.train.micro_batch.map(|m| m as usize);
    let parts = parts(device, fb, c.hidden_size, c.num_hidden_layers, params);
    let chunks = row_chunks(train_rows, micro, parts);
    let chunk_rows = chunks.iter().map(|r| r.len()).max().unwrap_or(0);
    let in_flight = parts.min(chunks.len().max(1));
    let share = |total: usize| total * chunk_rows / train_rows.max(1);
    let policy = &models.policy;
    // A LoRA policy's trainable variables are its adapters; its base is frozen.
    let frozen_params = match models.policy.lora_spec() {
        Some(_) => crate::model::weight_shapes(c)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum(),
        None => 0,
    };
    let var_bytes = models
        .policy
        .trainable_vars()
        .first()
        .map_or(4, |v| v.dtype().size_in_bytes());
    let mem = memory(&MemoryShape {
        params,
        var_bytes,
        frozen_params,
        optimizer_bytes: rt.optim.state_bytes(ranks),
        update_bytes: rt.optim.update_bytes(ranks),
        reference: reft > 0,
        dtype_bytes: policy.compute_dtype().size_in_bytes(),
        compute_copies: policy.compute_dtype() != policy.dtype(),
        chunk_tokens: share(fb),
        chunk_positions: share(positions),
        chunks: chunks.len(),
        in_flight,
        // An SFT objective's gradients wait for the step's lambdas while the passes after it run
        // (every GRPO pass comes after all SFT passes).
        held_sets: if grpo > 0 { sft } else { sft.saturating_sub(1) },
        logit_rows: PassOptions::of(policy).logit_rows,
        checkpointing: stage.train.checkpointing,
        fast: fast::supported(policy),
        gen_rows,
        seq,
        ..MemoryShape::of_model(c)
    });
    Ok(CostEstimate {
        stage: stage.name.to_string(),
        prompts,
        generated_tokens: gen,
        forward_backward_tokens: fb,
        reference_tokens: reft,
        weight_bytes: mem.weights,
        gradient_bytes: mem.gradients,
        optimizer_bytes: mem.optimizer,
        reference_bytes: mem.reference,
        kv_cache_bytes: mem.kv_cache,
        activation_bytes: mem.activations,
        logits_bytes: mem.logits,
        update_bytes: mem.update,
        dry_step_seconds: None,
        dry_step_skipped: None,
        ranks,
        process_bytes: 0,
    })
}

/// What the memory estimate needs to know of a stage's step and its model.
pub(crate) struct MemoryShape {
    /// Trainable parameters.
    pub params: usize,
    /// Bytes per element of the trainable variables, and so of their gradients and of a frozen
    /// copy of them: 4 for f32, 2 for a policy that trains in bf16 (`Model::train_in`, whose
    /// f32 masters the optimizer holds and `optimizer_bytes` counts).
    pub var_bytes: usize,
    /// The frozen weights of a LoRA policy's base (0 without LoRA), held in the compute
    /// dtype with no gradient or moments; its reference shares them.
    pub frozen_params: usize,
    pub optimizer_bytes: usize,
    /// What the update holds for a moment beyond the gradients and the optimizer's state
    /// (`Optim::update_bytes`).
    pub update_bytes: usize,
    /// Whether the step runs a frozen reference (an f32 copy of the policy).
    pub reference: bool,
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Bytes per element of the compute dtype (activations, KV cache).
    pub dtype_bytes: usize,
    /// Whether the compute dtype differs from the master weights' (the autograd pass then holds
    /// a copy of every weight it reads in the compute dtype).
    pub compute_copies: bool,
    /// Tokens (prompt and completion) of the largest chunk of the training pass.
    pub chunk_tokens: usize,
    /// Completion positions of that chunk: the positions projected onto the vocabulary.
    pub chunk_positions: usize,
    /// Chunks of the training pass, and how many of them run at once.
    pub chunks: usize,
    pub in_flight: usize,
    /// Full gradient sets held beside the running pass: those of the step's earlier SFT
    /// objectives, which wait for the step's lambdas.
    pub held_sets: usize,
    /// Positions whose logits are made at once (`PassOptions::logit_rows`).
    pub logit_rows: usize,
    /// `train { checkpointing }`.
    pub checkpointing: bool,
    /// Whether the hand-written CPU pass (`model::fast`) runs, rather than candle's autograd.
    pub fast: bool,
    /// Rows the rollout generates at once (prompts x group).
    pub gen_rows: usize,
    /// The longest sequence, prompt plus new tokens.
    pub seq: usize,
}

impl MemoryShape {
    /// The dimensions of `c`'s model, with no step: no parameters, rows or chunks, and every
    /// option off. The estimate's callers fill in the step over it.
    pub(crate) fn of_model(c: &crate::model::ModelConfig) -> MemoryShape {
        MemoryShape {
            params: 0,
            var_bytes: 4,
            frozen_params: 0,
            optimizer_bytes: 0,
            update_bytes: 0,
            reference: false,
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab: c.vocab_size,
            dtype_bytes: 0,
            compute_copies: false,
            chunk_tokens: 0,
            chunk_positions: 0,
            chunks: 0,
            in_flight: 0,
            held_sets: 0,
            logit_rows: 0,
            checkpointing: false,
            fast: false,
            gen_rows: 0,
            seq: 0,
        }
    }
}

/// The bytes of one step, by part, all resident at the step's peak except the KV cache, which
/// the rollout frees before the training pass begins.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Memory {
    pub weights: usize,
    pub gradients: usize,
    pub optimizer: usize,
    pub reference: usize,
    pub kv_cache: usize,
    pub activations: usize,
    pub logits: usize,
    /// What the update holds for a moment beyond the gradients and the optimizer's state
    /// (f32 copies of gradients, the all-reduce's buckets), after the training pass has freed
    /// its activations.
    pub update: usize,
}

/// The analytical memory of one step, at the end of the training pass's backward, where the
/// step peaks: f32 weights, the optimizer's moments, the reference's f32 copy, and per chunk
/// in flight its saved activations, its logits chunk and its full set of f32 weight gradients
/// (plus the running sum when the chunks do not all run at once, and the gradients of the
/// step's earlier SFT objectives, which wait for the step's lambdas). The rollout's KV cache
/// (keys and values of every layer for every row at the longest sequence) is gone by then.
///
/// Saved activations per token and layer, as the passes keep them: the hand-written CPU pass
/// keeps the block input, both norms' outputs and the residual after attention (4 x hidden),
/// the rotated queries and the attention output (2 x q width), keys and values (2 x kv width),
/// gate, up and their SwiGLU product (3 x intermediate), and the attention probabilities of
/// every head over the sequence. Candle's graph holds about twice the projections (each
/// reshape to heads and back, and each rotation, is a new tensor: 6 x hidden, 4 x q and kv
/// width) and, in the reference attention composition, scores and probabilities. One more
/// block's worth is counted for the backward's temporaries. With checkpointing a block keeps
/// only its input (hidden), and one block is made again at a time.
/// A LoRA policy trains its adapters only: its frozen base is held in the compute dtype with
/// no gradient or moments, and its reference is the base with the adapters off (no copy).
pub(crate) fn memory(s: &MemoryShape) -> Memory {
    let (h, qd, kvd, i) = (
        s.hidden,
        s.heads * s.head_dim,
        s.kv_heads * s.head_dim,
        s.intermediate,
    );
    let per_layer = if s.fast {
        4 * h + 2 * qd + 2 * kvd + 3 * i + s.heads * s.seq
    } else {
        6 * h + 4 * qd + 4 * kvd + 3 * i + 2 * s.heads * s.seq
    };
    let kept_layers = if s.checkpointing {
        s.layers * h + 2 * per_layer
    } else {
        (s.layers + 1) * per_layer
    };
    let layer_params = s.params / s.layers.max(1);
    // Weights converted to the compute dtype live in the graph as long as it does.
    let copies = match (s.compute_copies, s.checkpointing) {
        (false, _) => 0,
        (true, false) => s.params * s.dtype_bytes,
        (true, true) => (layer_params + s.vocab * h) * s.dtype_bytes,
    };
    let per_chunk = s.chunk_tokens * kept_layers * s.dtype_bytes + copies;
    // The logits of one chunk of positions (f32): the fast pass's buffer; on candle's path also
    // the log-softmax's gradient and the temperature's scaled copy.
    let logit_buffers = if s.fast { 1 } else { 3 };
    let logits = s.logit_rows.min(s.chunk_positions) * s.vocab * 4 * logit_buffers;
    // Each chunk's full gradients, the running sum once a later group of chunks runs, and the
    // sets that wait for the step's lambdas.
    let sets = (s.in_flight + usize::from(s.chunks > s.in_flight)).max(1) + s.held_sets;
    Memory {
        weights: s.params * s.var_bytes + s.frozen_params * s.dtype_bytes,
        gradients: s.params * s.var_bytes * sets,
        optimizer: s.optimizer_bytes,
        // The reference is a frozen copy of the policy's variables, in their dtype.
        reference: if s.reference && s.frozen_params == 0 {
            s.params * s.var_bytes
        } else {
            0
        },
        kv_cache: s.gen_rows * s.layers * 2 * kvd * s.seq * s.dtype_bytes,
        activations: per_chunk * s.in_flight,
        logits: logits * s.in_flight,
        update: s.update_bytes,
    }
}

/// Bytes the operating system can still give this process (`MemAvailable` of
/// `/proc/meminfo`), or `None` where that file is missing or unreadable.
pub(crate) fn mem_available() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available_of(&text)
}

/// This process's resident memory (`VmRSS`), where the system reports it.
pub(crate) fn resident_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    resident_of(&text)
}

fn resident_of(status: &str) -> Option<usize> {
    kib_field(status, "VmRSS:")
}

fn mem_available_of(meminfo: &str) -> Option<usize> {
    kib_field(meminfo, "MemAvailable:")
}

/// The bytes of the `key` line of a /proc file whose values are in kB (`VmRSS:  4096 kB`).
fn kib_field(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The cost estimate as the lines `--dry-run` prints.
pub(crate) fn describe_cost(c: &CostEstimate) -> String {
    let step = match (&c.dry_step_seconds, &c.dry_step_skipped) {
        (Some(s), _) => format!("dry-run step on 2 prompts: {s:.3} s"),
        (None, Some(why)) => format!("dry-run step skipped: {why}"),
        (None, None) => "dry-run step not run".to_string(),
    };
    // A job of several ranks: the figures are one rank's, its gradient sum and optimiser state
    // ZeRO-2 shards.
    let who = if c.ranks > 1 {
        format!(
            " per rank of {} (ZeRO-2 gradient and optimizer shards)",
            c.ranks
        )
    } else {
        String::new()
    };
    // The process's own memory is measured on the CPU only.
    let process = match c.process_bytes {
        0 => String::new(),
        b => format!("process {}, ", mib(b)),
    };
    format!(
        "stage {}: per step at most {} generated tokens, {} forward/backward tokens, {} reference tokens\n  memory{who}: {process}weights {}, gradients {}, optimizer {}, reference {}, KV cache {}, activations ~{}, logits ~{}, update ~{} (peak ~{})\n  {step}",
        c.stage,
        c.generated_tokens,
        c.forward_backward_tokens,
        c.reference_tokens,
        mib(c.weight_bytes),
        mib(c.gradient_bytes),
        mib(c.optimizer_bytes),
        mib(c.reference_bytes),
        mib(c.kv_cache_bytes),
        mib(c.activation_bytes),
        mib(c.logits_bytes),
        mib(c.update_bytes),
        mib(c.peak_bytes()),
    )
}

/// Completion `r` of a rollout, sampled from `row`, as the reward terms see it.
fn judged<'a>(row: &'a Row, roll: &'a Rollout, r: usize) -> Judged<'a> {
    Judged {
        id: &row.id,
        prompt: &row.prompt,
        completion: &roll.texts[r],
        fields: &row.fields,
        tokens: roll.completion_ids[r].len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate of `prompts` with memory `m` and (generated, forward/backward, reference)
    /// tokens.
    fn cost_of(m: &Memory, prompts: usize, [gen, fb, reft]: [usize; 3]) -> CostEstimate {
        CostEstimate {
            stage: "s".into(),
            prompts,
            generated_tokens: gen,
            forward_backward_tokens: fb,
            reference_tokens: reft,
            weight_bytes: m.weights,
            gradient_bytes: m.gradients,
            optimizer_bytes: m.optimizer,
            reference_bytes: m.reference,
            kv_cache_bytes: m.kv_cache,
            activation_bytes: m.activations,
            logits_bytes: m.logits,
            update_bytes: m.update,
            dry_step_seconds: None,
            dry_step_skipped: None,
            ranks: 1,
            process_bytes: 0,
        }
    }

    /// The parts of an estimate in GiB, for the tests' reports.
    fn parts_gib(m: &Memory) -> String {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        format!(
            "weights {:.2}, gradients {:.2}, optimizer {:.2}, reference {:.2}, activations {:.2}, logits {:.2}, update {:.2} GiB",
            gib(m.weights),
            gib(m.gradients),
            gib(m.optimizer),
            gib(m.reference),
            gib(m.activations),
            gib(m.logits),
            gib(m.update),
        )
    }

    /// The estimate of a small known shape, part by part, against the arithmetic done by hand.
    #[test]
    fn memory_matches_hand_arithmetic() {
        let shape = MemoryShape {
            params: 1000,
            var_bytes: 4,
            frozen_params: 0,
            optimizer_bytes: 8000,
            update_bytes: 0,
            reference: true,
            layers: 2,
            hidden: 4,
            intermediate: 8,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            vocab: 10,
            dtype_bytes: 2,
            compute_copies: false,
            chunk_tokens: 6,
            chunk_positions: 3,
            chunks: 1,
            in_flight: 1,
            held_sets: 0,
            logit_rows: 2,
            checkpointing: false,
            fast: true,
            gen_rows: 2,
            seq: 3,
        };
        let m = memory(&shape);
        assert_eq!(
            m,
            Memory {
                weights: 4000,
                gradients: 4000,
                optimizer: 8000,
                reference: 4000,
                // 2 rows x 2 layers x (keys, values) x 1 head x 2 dims x 3 positions x 2 bytes.
                kv_cache: 96,
                // 6 tokens x (2 layers + 1) x (4*4 + 2*4 + 2*2 + 3*8 + 2*3 = 58) x 2 bytes.
                activations: 2088,
                // One chunk of 2 positions x 10 entries x 4 bytes.
                logits: 80,
                update: 0,
            }
        );
        // Variables stored in bf16: weights, gradients and the reference at 2 bytes; the
        // update's temporaries are the optimizer's to say.
        let half = memory(&MemoryShape {
            var_bytes: 2,
            update_bytes: 600,
            ..shape
        });
        assert_eq!(
            (half.weights, half.gradients, half.reference, half.update),
            (2000, 2000, 2000, 600)
        );
        // Checkpointing: 6 tokens x (2 layers x 4 + 2 x 58) x 2 bytes.
        let ckpt = memory(&MemoryShape {
            checkpointing: true,
            ..shape
        });
        assert_eq!(ckpt.activations, 1488);
        // Candle's graph in a half-precision compute dtype, 4 chunks run one at a time: per
        // layer 6*4 + 4*4 + 4*2 + 3*8 + 2*2*3 = 84, a copy of the weights in the compute dtype,
        // three logits buffers, and the running sum beside the chunk's gradients.
        let graph = memory(&MemoryShape {
            fast: false,
            compute_copies: true,
            chunks: 4,
            ..shape
        });
        assert_eq!(graph.activations, 6 * 3 * 84 * 2 + 1000 * 2);
        assert_eq!(graph.logits, 240);
        assert_eq!(graph.gradients, 8000);
        // Two chunks side by side on the CPU: two of everything a chunk holds.
        let two = memory(&MemoryShape {
            chunks: 2,
            in_flight: 2,
            ..shape
        });
        assert_eq!(
            (two.activations, two.logits, two.gradients),
            (4176, 160, 8000)
        );
        let no_ref = memory(&MemoryShape {
            reference: false,
            ..shape
        });
        assert_eq!(no_ref.reference, 0);
        // LoRA: 1000 adapter parameters on a frozen base of 50000 held in 2-byte elements,
        // whose reference shares the base.
        let lora = memory(&MemoryShape {
            frozen_params: 50_000,
            ..shape
        });
        assert_eq!(
            (lora.weights, lora.gradients, lora.reference),
            (4000 + 100_000, 4000, 0)
        );
        let cost = CostEstimate {
            dry_step_skipped: Some("too big".into()),
            ..cost_of(&m, 1, [0, 6, 6])
        };
        // The KV cache is gone by the training pass: the peak holds the larger of the two.
        assert_eq!(cost.peak_bytes(), 4000 + 4000 + 8000 + 4000 + 2088 + 80);
        assert!(describe_cost(&cost).contains("dry-run step skipped: too big"));
    }

    /// The GPU benchmark pipelines (pipelines/bench/gpu-qwen2.5-*.recap: 128 rows of 129 + 256
    /// tokens, a bf16 policy whose f32 masters and AdamW moments the optimizer holds, a
    /// reference, candle's pass with one chunk in flight) fit one 80 GB card at their
    /// `micro_batch`, and would not without it.
    #[test]
    fn gpu_benchmarks_fit_one_card() {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        // (params, layers, hidden, intermediate, heads, kv heads, micro_batch) of Qwen2.5-0.5B
        // and -1.5B (configs/qwen2.5-*.json; head_dim 64 and 128, vocabulary 151,936).
        for (params, layers, hidden, inter, heads, kv, micro, want) in [
            (494_032_768, 24, 896, 4864, 14, 2, 16, 19.2),
            (1_543_714_304, 28, 1536, 8960, 12, 2, 8, 37.5),
        ] {
            let (rows, seq, new) = (128, 385, 256);
            let shape = |micro: usize| MemoryShape {
                params,
                frozen_params: 0,
                var_bytes: 2,
                optimizer_bytes: params * 12,
                // The largest parameter is the (tied) embedding.
                update_bytes: crate::train::optim::update_bytes(&[151_936 * hidden], 2, 1, 3),
                reference: true,
                layers,
                hidden,
                intermediate: inter,
                heads,
                kv_heads: kv,
                head_dim: hidden / heads,
                vocab: 151_936,
                dtype_bytes: 2,
                compute_copies: false,
                chunk_tokens: micro * seq,
                chunk_positions: micro * new,
                chunks: rows / micro,
                in_flight: 1,
                held_sets: 0,
                logit_rows: PassOptions::for_vocab(151_936).logit_rows,
                checkpointing: false,
                fast: false,
                gen_rows: rows,
                seq,
            };
            let peak = |m: Memory| {
                m.weights
                    + m.gradients
                    + m.optimizer
                    + m.reference
                    + m.kv_cache.max(m.activations + m.logits).max(m.update)
            };
            let at_micro = gib(peak(memory(&shape(micro))));
            let m = memory(&shape(micro));
            let ckpt = memory(&MemoryShape {
                checkpointing: true,
                ..shape(micro)
            });
            eprintln!(
                "{params}: {at_micro:.1} GiB at micro_batch {micro} ({}); whole batch {:.1}; checkpointing {:.1}",
                parts_gib(&m),
                gib(peak(memory(&shape(rows)))),
                gib(peak(ckpt)),
            );
            assert!((at_micro - want).abs() < 0.1, "{params}: {at_micro:.1} GiB");
            assert!(at_micro < 74.0, "{params}: {at_micro:.1} GiB");
            assert!(gib(peak(memory(&shape(rows)))) > 80.0);
        }
    }

    /// The estimate of `pipelines/bench/gpu-qwen2.5-7b-lora.recap` (rank-16 adapters on every
    /// linear of Qwen2.5-7B, bf16, 16 x 8 rows of 128 + 256 tokens, `micro_batch = 4` on one
    /// GPU) fits an 80 GB card. The dry run itself cannot load 7B's f32 weights on a small host
    /// (the load bound refuses), so the shape is taken from the config's sizes here.
    /// A full fine-tune of Qwen2.5-7B in bf16 with a KL reference on eight 80 GB cards
    /// (`pipelines/bench/gpu-qwen2.5-7b-full.recap`): each rank holds whole bf16 weights,
    /// gradients and reference, a ZeRO shard of the optimizer state (AdamW's moments and the
    /// f32 masters) and of the summed f32 gradient, and runs its 16 of the batch's 128 rows
    /// with checkpointing. Without ZeRO-2 the update held an f32 copy of the whole gradient.
    #[test]
    fn the_7b_full_finetune_fits_eight_80_gb_cards() {
        use crate::model::weight_shapes;
        use crate::train::optim::{largest_shard_of, update_bytes};
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/qwen2.5-7b.json");
        let c = crate::model::ModelConfig::sizes_from_file(std::path::Path::new(path)).unwrap();
        let lens: Vec<usize> = weight_shapes(&c)
            .iter()
            .map(|(_, s)| s.iter().product())
            .collect();
        let params: usize = lens.iter().sum();
        assert_eq!(params, 7_615_616_512);
        let ranks = 8;
        let shard = largest_shard_of(&lens, ranks);
        // Rows per rank, the longest sequence, completion tokens.
        let (rows, seq, new) = (16 * 8 / ranks, 128 + 256, 256);
        let shape = MemoryShape {
            params,
            var_bytes: 2,
            // AdamW's two moments and the f32 masters of the rank's shard.
            optimizer_bytes: shard * 12,
            // NCCL's copies of a bucket (`dist::staging_buckets` on a GPU).
            update_bytes: update_bytes(&lens, 2, ranks, 3),
            reference: true,
            dtype_bytes: 2,
            chunk_tokens: rows * seq,
            chunk_positions: rows * new,
            chunks: 1,
            in_flight: 1,
            logit_rows: PassOptions::for_vocab(c.vocab_size).logit_rows,
            checkpointing: true,
            gen_rows: rows,
            seq,
            ..MemoryShape::of_model(&c)
        };
        let m = memory(&shape);
        let cost = cost_of(&m, 16 / ranks, [rows * new, rows * seq, rows * seq]);
        eprintln!("{}", describe_cost(&cost));
        eprintln!("{}; peak {:.1} GiB", parts_gib(&m), gib(cost.peak_bytes()));
        assert!(cost.peak_bytes() < 80_000_000_000, "{}", cost.peak_bytes());
        // ZeRO-1 alone: the update converted the whole gradient to f32.
        let zero1 = memory(&MemoryShape {
            update_bytes: params * 4,
            ..shape
        });
        let zero1 = cost_of(&zero1, 16 / ranks, [rows * new, rows * seq, rows * seq]);
        assert!(
            zero1.peak_bytes() > 80_000_000_000,
            "{}",
            zero1.peak_bytes()
        );
    }

    #[test]
    fn the_7b_lora_benchmark_fits_80_gb() {
        use crate::model::{adapter_parameters, weight_shapes, LoraSpec, LoraTarget};
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/qwen2.5-7b.json");
        let c = crate::model::ModelConfig::sizes_from_file(std::path::Path::new(path)).unwrap();
        let spec = LoraSpec {
            rank: 16,
            alpha: 32.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 1,
        };
        let params = adapter_parameters(&c, &spec);
        assert_eq!(params, 40_370_176);
        let frozen_params = weight_shapes(&c)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let (rows, seq, micro) = (16 * 8, 128 + 256, 4);
        let m = memory(&MemoryShape {
            params,
            frozen_params,
            optimizer_bytes: params * 8,
            reference: true,
            dtype_bytes: 2,
            compute_copies: true,
            chunk_tokens: micro * seq,
            chunk_positions: micro * 256,
            chunks: rows / micro,
            in_flight: 1,
            logit_rows: PassOptions::for_vocab(c.vocab_size).logit_rows,
            gen_rows: rows,
            seq,
            ..MemoryShape::of_model(&c)
        });
        let cost = cost_of(&m, 16, [rows * 256, rows * seq, rows * seq]);
        eprintln!("{}", describe_cost(&cost));
        assert_eq!(m.reference, 0, "the reference shares the base");
        assert!(cost.peak_bytes() < 80_000_000_000, "{}", cost.peak_bytes());
    }

    #[test]
    fn resident_bytes_reads_the_status() {
        let text = "Name:\trecapc\nVmHWM:\t  9000 kB\nVmRSS:\t  4096 kB\nThreads:\t3\n";
        assert_eq!(resident_of(text), Some(4096 * 1024));
        assert_eq!(resident_of("Name:\trecapc\n"), None);
        // Only Linux has /proc/self/status; elsewhere the process's memory is left out (0).
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn mem_available_reads_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available_of(text), Some(2048 * 1024));
        assert_eq!(mem_available_of("MemTotal: 5 kB\n"), None);
    }
}
