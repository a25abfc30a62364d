//! GRPO and SFT losses: take rewards (host values from the verifiers) and per-token
//! log-probabilities (candle tensors on the autograd graph); give group advantages, the
//! clipped-surrogate GRPO loss with an optional k3 KL term, the masked SFT loss, and the
//! statistics the metrics record logs.
//!
//! Semantics follow TRL 1.x's `GRPOTrainer` so results compare with the peer:
//! - Rewards: `R_i = sum_f w_f * r_f`. A term that is not applicable to a sample contributes
//!   nothing (TRL's `nansum` over `None` rewards); the count is reported, never hidden. A
//!   completion no term applies to has no reward at all: it is left out of its group's mean and
//!   std and gets advantage 0 ([`group_advantages_of`]).
//! - Advantages: `A_i = (R_i - mean_group(R)) / (std(R) + 1e-4)`. The mean is always the group
//!   mean; `scale = group` divides by the group's std, `batch` by the std of all rewards of the
//!   batch, `none` does not divide. The std is torch's default, the unbiased one (ddof 1), as
//!   TRL calls `tensor.std()`; a group therefore needs at least two completions.
//! - Token loss: `-min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) + beta*k3` with
//!   `rho = exp(logp - logp_old)` and `k3 = exp(ref - logp) - (ref - logp) - 1`.
//! - Aggregation: `token_mean` (TRL's "dapo"/"bnpo": sum over all completion tokens of the batch
//!   divided by their count), `seq_mean_token_mean` (original GRPO: mean per sequence, then mean
//!   over sequences), `seq_mean_token_sum_norm` (Dr. GRPO: sum over tokens divided by
//!   `sequences * max_tokens`).
//!
//! Advantages are computed on the host in f64: rewards come from host-side verifiers, a batch
//! holds tens of values, and f64 keeps the hand-checkable formulas exact.

use candle_core::{bail, DType, Result, Tensor, D};
use recap_plan::{AdvantageScale, LossAggregation};
use serde::{Deserialize, Serialize};

use super::verifiers::Outcome;

/// The std floor TRL adds before dividing.
pub const ADVANTAGE_EPS: f64 = 1e-4;

/// The GRPO loss's options: the plan's objective (`scale`, `clip_low`/`clip_high`, the KL
/// coefficient, `loss`, `drop_equal_groups`) with its rollout's group and token limit. The
/// stdlib's `grpo` gives their defaults (TRL 1.x's); this is not a second home for them.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoConfig {
    /// Completions per prompt (G).
    pub group: usize,
    /// Maximum new tokens per completion; the Dr. GRPO normaliser.
    pub max_tokens: usize,
    pub scale: AdvantageScale,
    pub eps_low: f64,
    pub eps_high: f64,
    /// KL coefficient; 0 means no reference model is needed.
    pub beta: f64,
    pub aggregation: LossAggregation,
    /// Leave groups whose rewards are all equal out of the loss (in the plan
    /// `drop_equal_groups`; off, they run with advantage 0, as in TRL).
    pub drop_zero_variance: bool,
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.group < 2 {
            bail!(
                "grpo: group must be >= 2 (the unbiased std needs two completions), got {}",
                self.group
            );
        }
        if self.max_tokens == 0 {
            bail!("grpo: max_tokens must be >= 1");
        }
        if !(self.eps_low >= 0.0
            && self.eps_low < 1.0
            && self.eps_high >= 0.0
            && self.eps_high.is_finite())
        {
            bail!(
                "grpo: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low = {}, eps_high = {}",
                self.eps_low,
                self.eps_high
            );
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            bail!("grpo: beta must be finite and >= 0, got {}", self.beta);
        }
        Ok(())
    }
}

/// Rewards of a batch after combining the terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedRewards {
    /// `R_i` per completion.
    pub total: Vec<f64>,
    /// The unweighted mean of each term over the completions it applied to (RECAP's tracked
    /// scalar of an RL key); `None` when it applied to none.
    pub term_means: Vec<Option<f64>>,
    /// How many completions each term was not applicable to.
    pub not_applicable: Vec<usize>,
    /// Completions no term applied to (their `R` is 0).
    pub all_not_applicable: usize,
    /// Per completion, whether any term applied to it.
    pub applies: Vec<bool>,
}

/// `R_i = sum_f weights[f] * r_f(i)` over `outcomes[i][f]`.
pub fn combine_rewards(outcomes: &[Vec<Outcome>], weights: &[f64]) -> Result<CombinedRewards> {
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        bail!("reward weights must be finite, got {w}");
    }
    let terms = weights.len();
    let mut sums = vec![0.0; terms];
    let mut counts = vec![0usize; terms];
    let mut total = Vec::with_capacity(outcomes.len());
    let mut all_na = 0;
    let mut applies = Vec::with_capacity(outcomes.len());
    for (i, row) in outcomes.iter().enumerate() {
        if row.len() != terms {
            bail!(
                "completion {i} has {} reward terms, expected {terms}",
                row.len()
            );
        }
        let mut r = 0.0;
        let mut any = false;
        for (f, outcome) in row.iter().enumerate() {
            if let Outcome::Score(s) = outcome {
                if !s.is_finite() {
                    bail!("completion {i}: reward term {f} is not finite ({s})");
                }
                r += weights[f] * s;
                sums[f] += s;
                counts[f] += 1;
                any = true;
            }
        }
        if !any && terms > 0 {
            all_na += 1;
        }
        applies.push(any || terms == 0);
        total.push(r);
    }
    Ok(CombinedRewards {
        total,
        term_means: sums
            .iter()
            .zip(&counts)
            .map(|(s, &c)| (c > 0).then(|| s / c as f64))
            .collect(),
        not_applicable: counts.iter().map(|c| outcomes.len() - c).collect(),
        all_not_applicable: all_na,
        applies,
    })
}

/// Advantages of a batch laid out as consecutive groups of `group` completions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advantages {
    pub values: Vec<f64>,
    /// False for completions of a dropped zero-variance group.
    pub keep: Vec<bool>,
    pub stats: AdvantageStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvantageStats {
    pub reward_mean: f64,
    /// Mean over groups of the group's unbiased reward std (TRL's `reward_std`).
    pub reward_std: f64,
    /// Unbiased std of the kept advantages.
    pub advantage_std: f64,
    /// Groups whose rewards are all equal (TRL's `frac_reward_zero_std` times the group count).
    pub zero_variance_groups: usize,
    pub dropped_groups: usize,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// torch's default std: unbiased (ddof 1); 0 for fewer than two values.
fn std_unbiased(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Group-relative advantages (see the module doc for the exact semantics).
pub fn group_advantages(
    rewards: &[f64],
    group: usize,
    scale: AdvantageScale,
    drop_zero_variance: bool,
) -> Result<Advantages> {
    let applies = vec![true; rewards.len()];
    group_advantages_of(rewards, &applies, group, scale, drop_zero_variance)
}

/// [`group_advantages`] where only the completions with `applies[i]` have a reward: the others
/// are left out of the group's (and the batch's) mean and std and get advantage 0, as TRL does
/// with completions every reward function returned `None` for.
pub fn group_advantages_of(
    rewards: &[f64],
    applies: &[bool],
    group: usize,
    scale: AdvantageScale,
    drop_zero_variance: bool,
) -> Result<Advantages> {
    let mut out = group_advantages_sharded(
        &[(rewards, applies)],
        group,
        scale,
        drop_zero_variance,
        &mut |_| Ok(()),
    )?;
    Ok(out.remove(0))
}

/// Sums `f` of each shard into one vector, shard by shard in order, then hands it to `reduce`
/// (the sum across data-parallel ranks). The order is fixed so that a process holding shards
/// `0..S` and `S` ranks holding one shard each add the same numbers in the same order.
fn shard_sums<T>(
    shards: &[T],
    width: usize,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    f: impl Fn(&T) -> Vec<f64>,
) -> Result<Vec<f64>> {
    let mut total = vec![0.0; width];
    for s in shards {
        for (t, x) in total.iter_mut().zip(f(s)) {
            *t += x;
        }
    }
    reduce(&mut total)?;
    Ok(total)
}

/// The unbiased std of the values `xs` of every shard (and of every rank through `reduce`),
/// two-pass as [`std_unbiased`]: the mean first, then the squared deviations from it, so that
/// one shard gives exactly what `std_unbiased` gives.
fn sharded_std(
    shards: &[Vec<f64>],
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<f64> {
    let n = shard_sums(shards, 2, reduce, |xs| {
        vec![xs.iter().sum::<f64>(), xs.len() as f64]
    })?;
    if n[1] < 2.0 {
        return Ok(0.0);
    }
    let m = n[0] / n[1];
    let sq = shard_sums(shards, 1, reduce, |xs| {
        vec![xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>()]
    })?;
    Ok((sq[0] / (n[1] - 1.0)).sqrt())
}

/// [`group_advantages_of`] over a batch cut into shards of whole groups (a data-parallel rank's
/// share of the step's prompts, or several such shares in one process). Group means and stds
/// need nothing from other shards; what spans the batch (the batch std of `scale = batch`, the
/// statistics) is summed over the shards and then through `reduce`, which sums a vector across
/// ranks (the identity in one process). Gives each shard's advantages; every shard's `stats`
/// are the whole batch's.
pub fn group_advantages_sharded(
    shards: &[(&[f64], &[bool])],
    group: usize,
    scale: AdvantageScale,
    drop_zero_variance: bool,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<Vec<Advantages>> {
    if group < 2 {
        bail!("advantages: group must be >= 2, got {group}");
    }
    for (rewards, applies) in shards {
        if applies.len() != rewards.len() {
            bail!(
                "advantages: {} applicability flags for {} rewards",
                applies.len(),
                rewards.len()
            );
        }
        if !rewards.chunks_exact(group).remainder().is_empty() {
            bail!(
                "advantages: {} rewards do not split into groups of {group}",
                rewards.len()
            );
        }
        if let Some(r) = rewards.iter().find(|r| !r.is_finite()) {
            bail!("advantages: reward {r} is not finite");
        }
    }
    let scored = |xs: &[f64], on: &[bool]| -> Vec<f64> {
        xs.iter()
            .zip(on)
            .filter(|(_, &a)| a)
            .map(|(r, _)| *r)
            .collect()
    };
    let all: Vec<Vec<f64>> = shards.iter().map(|(r, a)| scored(r, a)).collect();
    let rewards_total = shard_sums(shards, 1, reduce, |(r, _)| vec![r.len() as f64])?;
    if rewards_total[0] == 0.0 {
        bail!("advantages: 0 rewards do not split into groups of {group}");
    }
    let batch_std = match scale {
        AdvantageScale::Batch => sharded_std(&all, reduce)?,
        _ => 0.0,
    };
    let mut out = Vec::with_capacity(shards.len());
    // Per shard: the sum of its groups' stds, and its groups, zero-variance and dropped groups.
    let mut counts = Vec::with_capacity(shards.len());
    for (rewards, applies) in shards {
        let mut values = Vec::with_capacity(rewards.len());
        let mut keep = Vec::with_capacity(rewards.len());
        let (mut std_sum, mut groups, mut zero, mut dropped) = (0.0, 0usize, 0usize, 0usize);
        for (g, on) in rewards.chunks(group).zip(applies.chunks(group)) {
            let rewarded = scored(g, on);
            let m = mean(&rewarded);
            let s = std_unbiased(&rewarded);
            std_sum += s;
            groups += 1;
            // torch.isclose(std, 0) in TRL: absolute tolerance 1e-8.
            let zero_var = s <= 1e-8;
            zero += zero_var as usize;
            let drop = zero_var && drop_zero_variance;
            dropped += drop as usize;
            let denom = match scale {
                AdvantageScale::Group => s + ADVANTAGE_EPS,
                AdvantageScale::Batch => batch_std + ADVANTAGE_EPS,
                AdvantageScale::None => 1.0,
            };
            for (&r, &a) in g.iter().zip(on) {
                values.push(if a { (r - m) / denom } else { 0.0 });
                keep.push(!drop);
            }
        }
        counts.push([std_sum, groups as f64, zero as f64, dropped as f64]);
        out.push((values, keep));
    }
    let c = shard_sums(&counts, 4, reduce, |c| c.to_vec())?;
    let reward_sums = shard_sums(&all, 2, reduce, |xs| {
        vec![xs.iter().sum::<f64>(), xs.len() as f64]
    })?;
    let kept: Vec<Vec<f64>> = out
        .iter()
        .map(|(values, keep)| {
            values
                .iter()
                .zip(keep)
                .filter(|(_, &k)| k)
                .map(|(v, _)| *v)
                .collect()
        })
        .collect();
    let stats = AdvantageStats {
        reward_mean: if reward_sums[1] > 0.0 {
            reward_sums[0] / reward_sums[1]
        } else {
            0.0
        },
        reward_std: if c[1] > 0.0 { c[0] / c[1] } else { 0.0 },
        advantage_std: sharded_std(&kept, reduce)?,
        zero_variance_groups: c[2] as usize,
        dropped_groups: c[3] as usize,
    };
    Ok(out
        .into_iter()
        .map(|(values, keep)| Advantages {
            values,
            keep,
            stats: stats.clone(),
        })
        .collect())
}

/// The tensors of one GRPO update. All `(batch, tokens)`; log-probabilities are of the
/// completion tokens actually sampled.
pub struct GrpoBatch<'a> {
    /// Current policy log-probabilities, on the autograd graph.
    pub logp: &'a Tensor,
    /// Log-probabilities when the completions were sampled; `None` means one update per batch,
    /// so `logp_old = logp.detach()` and `rho = 1`.
    pub old_logp: Option<&'a Tensor>,
    /// Frozen reference log-probabilities; required when `beta > 0`.
    pub ref_logp: Option<&'a Tensor>,
    /// 1 for completion tokens, 0 for padding.
    pub mask: &'a Tensor,
    pub advantages: &'a Advantages,
    /// Overrides the `token-mean` denominator (e.g. the token count over all accumulation
    /// micro-batches of one optimiser step, as TRL's `num_items_in_batch`).
    pub token_normaliser: Option<f64>,
}

/// Logged statistics of one GRPO loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoStats {
    /// Mean k3 over kept completion tokens; `None` without a KL term.
    pub kl: Option<f64>,
    /// Fraction of kept tokens where the low / high clip is active (TRL's clip ratios).
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_fraction: f64,
    pub tokens: usize,
    pub advantage_std: f64,
}

pub struct GrpoLoss {
    pub loss: Tensor,
    pub stats: GrpoStats,
}

fn check_shape(name: &str, t: &Tensor, dims: (usize, usize)) -> Result<()> {
    if t.dims() != [dims.0, dims.1] {
        bail!(
            "grpo: `{name}` has shape {:?}, expected {:?}",
            t.dims(),
            [dims.0, dims.1]
        );
    }
    Ok(())
}

/// The GRPO loss of one batch and its statistics.
pub fn grpo_loss(config: &GrpoConfig, batch: &GrpoBatch) -> Result<GrpoLoss> {
    config.validate()?;
    let (b, t) = batch.logp.dims2()?;
    let adv = batch.advantages;
    if adv.values.len() != b || adv.keep.len() != b {
        bail!(
            "grpo: {} advantages for a batch of {b} completions",
            adv.values.len()
        );
    }
    check_shape("mask", batch.mask, (b, t))?;
    let dev = batch.logp.device();
    let logp = batch.logp.to_dtype(DType::F32)?;
    let old = match batch.old_logp {
        Some(o) => {
            check_shape("old_logp", o, (b, t))?;
            o.to_dtype(DType::F32)?.detach()
        }
        None => logp.detach(),
    };
    // Dropped groups leave the loss by having their rows masked out.
    let keep: Vec<f32> = adv.keep.iter().map(|&k| k as u8 as f32).collect();
    let keep = Tensor::from_vec(keep, (b, 1), dev)?;
    let mask = batch
        .mask
        .to_dtype(DType::F32)?
        .detach()
        .broadcast_mul(&keep)?;
    let a: Vec<f32> = adv.values.iter().map(|&v| v as f32).collect();
    let a = Tensor::from_vec(a, (b, 1), dev)?;

    let rho = (&logp - &old)?.exp()?;
    let lo = 1.0 - config.eps_low;
    let hi = 1.0 + config.eps_high;
    let unclipped = rho.broadcast_mul(&a)?;
    let clipped = rho.detach().clamp(lo, hi)?.broadcast_mul(&a)?;
    // min(unclipped, clipped): where the clipped branch is strictly smaller the clamp is active,
    // so its gradient is zero and the detached value is exact; ties (rho inside the range) take
    // the unclipped branch, whose gradient equals torch's min-with-clamp gradient there.
    let take_unclipped = unclipped.detach().le(&clipped)?.to_dtype(DType::F32)?;
    let surrogate =
        ((&take_unclipped * &unclipped)? + (take_unclipped.affine(-1.0, 1.0)? * &clipped)?)?;
    let mut per_token = surrogate.neg()?;
    let mut kl_tensor = None;
    if config.beta > 0.0 {
        let Some(r) = batch.ref_logp else {
            bail!(
                "grpo: beta = {} needs reference log-probabilities",
                config.beta
            );
        };
        check_shape("ref_logp", r, (b, t))?;
        let d = (r.to_dtype(DType::F32)?.detach() - &logp)?;
        let k3 = ((d.exp()? - &d)? - 1.0)?;
        per_token = (per_token + (&k3 * config.beta)?)?;
        kl_tensor = Some(k3);
    }
    let masked = (&per_token * &mask)?;
    let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
    let kept_rows = adv.keep.iter().filter(|&&k| k).count();
    let loss = match config.aggregation {
        LossAggregation::TokenMean => {
            let n = batch.token_normaliser.unwrap_or(tokens).max(1.0);
            (masked.sum_all()? / n)?
        }
        LossAggregation::SeqMeanTokenMean => {
            // Per-row token counts clamp at 1 (as TRL), so an empty row contributes 0.
            let per_row = masked
                .sum(D::Minus1)?
                .div(&mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?)?;
            (per_row.sum_all()? / kept_rows.max(1) as f64)?
        }
        LossAggregation::SeqMeanTokenSumNorm => {
            (masked.sum_all()? / (kept_rows.max(1) * config.max_tokens) as f64)?
        }
    };

    let denom = tokens.max(1.0);
    let kl = match &kl_tensor {
        Some(k3) => Some((k3.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? as f64 / denom),
        None => None,
    };
    let rho_d = rho.detach();
    let a_neg = a.lt(0.0)?.to_dtype(DType::F32)?;
    let a_pos = a.gt(0.0)?.to_dtype(DType::F32)?;
    let low = rho_d.lt(lo)?.to_dtype(DType::F32)?.broadcast_mul(&a_neg)?;
    let high = rho_d.gt(hi)?.to_dtype(DType::F32)?.broadcast_mul(&a_pos)?;
    let frac = |x: &Tensor| -> Result<f64> {
        Ok((x * &mask)?.sum_all()?.to_scalar::<f32>()? as f64 / denom)
    };
    let (clip_low, clip_high) = (frac(&low)?, frac(&high)?);
    Ok(GrpoLoss {
        loss,
        stats: GrpoStats {
            kl,
            clip_low,
            clip_high,
            clip_fraction: clip_low + clip_high,
            tokens: tokens as usize,
            advantage_std: adv.stats.advantage_std,
        },
    })
}

/// The SFT loss of one batch.
pub struct SftLoss {
    /// `lambda * nll`, on the graph.
    pub loss: Tensor,
    /// The unscaled mean NLL (RECAP's tracked scalar of an SFT key).
    pub nll: f64,
    pub tokens: usize,
}

/// Token NLL of the target given the prompt: `lambda * (-sum(logp * mask) / sum(mask))`, where
/// `target_logp` holds the log-probabilities of the target tokens `(batch, tokens)` and `mask`
/// is 1 on target tokens and 0 on prompt and padding positions.
pub fn sft_loss(target_logp: &Tensor, mask: &Tensor, lambda: f64) -> Result<SftLoss> {
    if !lambda.is_finite() {
        bail!("sft: lambda must be finite, got {lambda}");
    }
    if target_logp.dims() != mask.dims() || target_logp.rank() != 2 {
        bail!(
            "sft: log-probabilities {:?} and mask {:?} must be the same (batch, tokens) shape",
            target_logp.dims(),
            mask.dims()
        );
    }
    let logp = target_logp.to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?.detach();
    let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
    if tokens < 0.5 {
        bail!("sft: the batch has no target tokens (every mask entry is 0)");
    }
    let nll = ((&logp * &mask)?.sum_all()?.neg()? / tokens)?;
    let nll_value = nll.to_scalar::<f32>()? as f64;
    Ok(SftLoss {
        loss: (nll * lambda)?,
        nll: nll_value,
        tokens: tokens as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(rows: &[&[f32]]) -> Tensor {
        let b = rows.len();
        let t = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
    }

    fn config(aggregation: LossAggregation, beta: f64) -> GrpoConfig {
        GrpoConfig {
            group: 2,
            max_tokens: 4,
            scale: AdvantageScale::Group,
            eps_low: 0.2,
            eps_high: 0.2,
            beta,
            aggregation,
            drop_zero_variance: false,
        }
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    /// A completion no term applies to is left out of its group's mean and std and gets
    /// advantage 0; counted as a 0 reward it would shift the baseline and get an advantage.
    #[test]
    fn completions_without_any_reward_get_advantage_zero() {
        let s = |v: f64| Outcome::Score(v);
        let na = Outcome::NotApplicable("no answer".into());
        let outcomes = vec![vec![s(1.0)], vec![s(0.0)], vec![na], vec![s(2.0)]];
        let c = combine_rewards(&outcomes, &[1.0]).unwrap();
        assert_eq!(c.applies, vec![true, true, false, true]);
        let a = group_advantages_of(&c.total, &c.applies, 4, AdvantageScale::Group, false).unwrap();
        // Mean of [1, 0, 2] is 1 and its unbiased std is 1.
        let d = 1.0 + ADVANTAGE_EPS;
        let want = [0.0, -1.0 / d, 0.0, 1.0 / d];
        for (x, w) in a.values.iter().zip(want) {
            close(*x, w, 1e-12);
        }
        close(a.stats.reward_mean, 1.0, 1e-12);
        let plain = group_advantages(&c.total, 4, AdvantageScale::Group, false).unwrap();
        assert_ne!(plain.values, a.values);
        // A group with a single rewarded completion has nothing to compare it with.
        let lone = group_advantages_of(&[3.0, 0.0], &[true, false], 2, AdvantageScale::Group, true)
            .unwrap();
        assert_eq!(lone.values, vec![0.0, 0.0]);
        assert_eq!(lone.stats.dropped_groups, 1);
        assert!(
            group_advantages_of(&[1.0, 2.0], &[true], 2, AdvantageScale::Group, false).is_err()
        );
    }

    #[test]
    fn rewards_combine_with_weights_and_not_applicable_terms_are_counted() {
        let s = Outcome::Score;
        let na = || Outcome::NotApplicable("no field".into());
        let outcomes = vec![
            vec![s(1.0), s(1.0)],
            vec![s(0.0), s(1.0)],
            vec![na(), s(0.0)],
            vec![na(), na()],
        ];
        let c = combine_rewards(&outcomes, &[2.0, 0.1]).unwrap();
        assert_eq!(c.total, vec![2.1, 0.1, 0.0, 0.0]);
        assert_eq!(c.term_means, vec![Some(0.5), Some(2.0 / 3.0)]);
        assert_eq!(c.not_applicable, vec![2, 1]);
        assert_eq!(c.all_not_applicable, 1);
        assert!(combine_rewards(&outcomes, &[1.0]).is_err());
        assert!(combine_rewards(&outcomes, &[f64::NAN, 1.0]).is_err());
    }

    #[test]
    fn advantages_by_hand() {
        // Group [1, 0]: mean 0.5, unbiased std sqrt(0.5); group [2, 2, ...] has std 0.
        let a = group_advantages(&[1.0, 0.0, 3.0, 3.0], 2, AdvantageScale::Group, false).unwrap();
        let s = 0.5f64.sqrt();
        let want = 0.5 / (s + 1e-4);
        assert_eq!(a.values.len(), 4);
        close(a.values[0], want, 1e-12);
        close(a.values[1], -want, 1e-12);
        assert_eq!(&a.values[2..], &[0.0, 0.0]);
        assert_eq!(a.keep, vec![true; 4]);
        assert_eq!(a.stats.zero_variance_groups, 1);
        close(a.stats.reward_mean, 7.0 / 4.0, 1e-12);
        close(a.stats.reward_std, s / 2.0, 1e-12);

        // Batch scale: group means, batch std. Rewards [1,0,3,3] have mean 1.75 and unbiased
        // variance (0.5625 + 3.0625 + 1.5625 * 2) / 3 = 2.25, std 1.5.
        let b = group_advantages(&[1.0, 0.0, 3.0, 3.0], 2, AdvantageScale::Batch, false).unwrap();
        close(b.values[0], 0.5 / (1.5 + 1e-4), 1e-12);
        close(b.values[1], -0.5 / (1.5 + 1e-4), 1e-12);
        let n = group_advantages(&[1.0, 0.0, 3.0, 3.0], 2, AdvantageScale::None, false).unwrap();
        assert_eq!(n.values, vec![0.5, -0.5, 0.0, 0.0]);

        // Three per group: [0, 1, 2] has mean 1, std 1.
        let g3 = group_advantages(&[0.0, 1.0, 2.0], 3, AdvantageScale::Group, false).unwrap();
        close(g3.values[0], -1.0 / 1.0001, 1e-12);
        close(g3.values[2], 1.0 / 1.0001, 1e-12);

        let d = group_advantages(&[1.0, 0.0, 3.0, 3.0], 2, AdvantageScale::Group, true).unwrap();
        assert_eq!(d.keep, vec![true, true, false, false]);
        assert_eq!(d.stats.dropped_groups, 1);
        // The kept advantages are [w, -w]: unbiased std w * sqrt(2).
        close(d.stats.advantage_std, want * 2f64.sqrt(), 1e-12);

        assert!(group_advantages(&[1.0, 2.0, 3.0], 2, AdvantageScale::Group, false).is_err());
        assert!(group_advantages(&[1.0], 1, AdvantageScale::Group, false).is_err());
        assert!(group_advantages(&[1.0, f64::NAN], 2, AdvantageScale::Group, false).is_err());
    }

    /// The loss of one update per batch (rho = 1): every token's loss is `-A`, plus `beta*k3`.
    #[test]
    fn loss_values_by_hand_for_each_aggregation() {
        let adv = Advantages {
            values: vec![1.0, -0.5],
            keep: vec![true, true],
            stats: AdvantageStats {
                reward_mean: 0.0,
                reward_std: 0.0,
                advantage_std: 1.0,
                zero_variance_groups: 0,
                dropped_groups: 0,
            },
        };
        let logp = t2(&[&[-1.0, -2.0, -0.5, -9.0], &[-1.0, -1.0, -9.0, -9.0]]);
        let mask = t2(&[&[1.0, 1.0, 1.0, 0.0], &[1.0, 1.0, 0.0, 0.0]]);
        let run = |agg, beta: f64, r: Option<&Tensor>| {
            let out = grpo_loss(
                &config(agg, beta),
                &GrpoBatch {
                    logp: &logp,
                    old_logp: None,
                    ref_logp: r,
                    mask: &mask,
                    advantages: &adv,
                    token_normaliser: None,
                },
            )
            .unwrap();
            (out.loss.to_scalar::<f32>().unwrap() as f64, out.stats)
        };
        // Row 0: three tokens of -1; row 1: two tokens of +0.5.
        let (tm, stats) = run(LossAggregation::TokenMean, 0.0, None);
        close(tm, (-3.0 + 1.0) / 5.0, 1e-6);
        assert_eq!(stats.tokens, 5);
        assert_eq!(stats.kl, None);
        assert_eq!(stats.clip_fraction, 0.0);
        let (sm, _) = run(LossAggregation::SeqMeanTokenMean, 0.0, None);
        close(sm, (-1.0 + 0.5) / 2.0, 1e-6);
        let (dr, _) = run(LossAggregation::SeqMeanTokenSumNorm, 0.0, None);
        close(dr, (-3.0 + 1.0) / (2.0 * 4.0), 1e-6);

        // k3 with ref - logp = d: exp(d) - d - 1. Take d = ln 2 on every token of row 0 and
        // d = 0 on row 1: k3 = 2 - ln 2 - 1 = 1 - ln 2 and 0.
        let ln2 = 2f32.ln();
        let r = t2(&[
            &[-1.0 + ln2, -2.0 + ln2, -0.5 + ln2, 0.0],
            &[-1.0, -1.0, 0.0, 0.0],
        ]);
        let k3 = 1.0 - 2f64.ln();
        let (tm_kl, stats) = run(LossAggregation::TokenMean, 0.5, Some(&r));
        close(tm_kl, (-3.0 + 1.0 + 0.5 * 3.0 * k3) / 5.0, 1e-6);
        close(stats.kl.unwrap(), 3.0 * k3 / 5.0, 1e-6);
    }

    /// With `old_logp` given, rho differs from 1 and the clip decides the branch.
    #[test]
    fn clipping_cases_by_hand() {
        let adv = Advantages {
            values: vec![2.0, -1.0],
            keep: vec![true, true],
            stats: AdvantageStats {
                reward_mean: 0.0,
                reward_std: 0.0,
                advantage_std: 0.0,
                zero_variance_groups: 0,
                dropped_groups: 0,
            },
        };
        // Token rhos: row 0 (A = 2): 1.5 (high clip active), 0.5 (below range, unclipped
        // branch is smaller), 1.1 (inside). Row 1 (A = -1): 1.5 (unclipped smaller: -1.5 < -1.2),
        // 0.5 (low clip active: -0.8 < -0.5), 1.0.
        let rhos = [[1.5f32, 0.5, 1.1], [1.5, 0.5, 1.0]];
        let old = t2(&[&[-1.0, -1.0, -1.0], &[-2.0, -2.0, -2.0]]);
        let logp_rows: Vec<Vec<f32>> = rhos
            .iter()
            .zip([-1.0f32, -2.0])
            .map(|(r, o)| r.iter().map(|x| o + x.ln()).collect())
            .collect();
        let logp = Var::from_tensor(&t2(&[&logp_rows[0], &logp_rows[1]])).unwrap();
        let mask = t2(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 1.0]]);
        let out = grpo_loss(
            &config(LossAggregation::TokenMean, 0.0),
            &GrpoBatch {
                logp: logp.as_tensor(),
                old_logp: Some(&old),
                ref_logp: None,
                mask: &mask,
                advantages: &adv,
                token_normaliser: None,
            },
        )
        .unwrap();
        // Per-token -min(rho*A, clip(rho)*A):
        // row 0: -min(3, 2.4) = -2.4; -min(1, 1.6) = -1; -min(2.2, 2.2) = -2.2
        // row 1: -min(-1.5, -1.2) = 1.5; -min(-0.5, -0.8) = 0.8; -min(-1, -1) = 1
        let want = (-2.4 - 1.0 - 2.2 + 1.5 + 0.8 + 1.0) / 6.0;
        close(out.loss.to_scalar::<f32>().unwrap() as f64, want, 1e-5);
        // Clipped tokens: high clip on (0,0) (rho > 1.2, A > 0); low clip on (1,1).
        close(out.stats.clip_high, 1.0 / 6.0, 1e-9);
        close(out.stats.clip_low, 1.0 / 6.0, 1e-9);
        close(out.stats.clip_fraction, 2.0 / 6.0, 1e-9);
        // Gradient wrt logp: d(-rho*A)/dlogp = -rho*A where the unclipped branch is taken,
        // 0 where the clip is active; divided by the 6 tokens.
        let grads = out.loss.backward().unwrap();
        let g = grads
            .get(logp.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want_g = [[0.0, -0.5 * 2.0, -1.1 * 2.0], [1.5, 0.0, 1.0]];
        for (gr, wr) in g.iter().zip(want_g) {
            for (x, w) in gr.iter().zip(wr) {
                close(*x as f64, w / 6.0, 1e-5);
            }
        }
    }

    /// The gradient of the one-update-per-batch loss with k3, against the hand derivation
    /// `dL/dlogp = mask/N * (-A + beta * (1 - exp(ref - logp)))`, for every aggregation.
    #[test]
    fn gradient_matches_hand_derivation() {
        let adv =
            group_advantages(&[1.0, 0.0, 0.5, 0.25], 2, AdvantageScale::Group, false).unwrap();
        let lp = [
            [-0.3f32, -1.2, -2.0],
            [-0.7, -0.1, -3.0],
            [-1.5, -0.2, -0.9],
            [-0.4, -0.8, -1.1],
        ];
        let rf = [
            [-0.5f32, -1.0, -2.5],
            [-0.2, -0.6, -1.0],
            [-1.0, -0.3, -0.9],
            [-0.9, -0.4, -1.6],
        ];
        let mk = [
            [1.0f32, 1.0, 1.0],
            [1.0, 1.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
        ];
        let rows = |m: &[[f32; 3]; 4]| t2(&[&m[0], &m[1], &m[2], &m[3]]);
        let beta = 0.04;
        for agg in [
            LossAggregation::TokenMean,
            LossAggregation::SeqMeanTokenMean,
            LossAggregation::SeqMeanTokenSumNorm,
        ] {
            let logp = Var::from_tensor(&rows(&lp)).unwrap();
            let out = grpo_loss(
                &config(agg, beta),
                &GrpoBatch {
                    logp: logp.as_tensor(),
                    old_logp: None,
                    ref_logp: Some(&rows(&rf)),
                    mask: &rows(&mk),
                    advantages: &adv,
                    token_normaliser: None,
                },
            )
            .unwrap();
            let g = out.loss.backward().unwrap();
            let g = g.get(logp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            let total: f64 = mk.iter().flatten().map(|&m| m as f64).sum();
            for i in 0..4 {
                let row_tokens: f64 = mk[i].iter().map(|&m| m as f64).sum();
                let weight = match agg {
                    LossAggregation::TokenMean => 1.0 / total,
                    LossAggregation::SeqMeanTokenMean => 1.0 / (row_tokens * 4.0),
                    LossAggregation::SeqMeanTokenSumNorm => 1.0 / (4.0 * 4.0),
                };
                for j in 0..3 {
                    let d = (rf[i][j] - lp[i][j]) as f64;
                    let want = mk[i][j] as f64 * weight * (-adv.values[i] + beta * (1.0 - d.exp()));
                    close(g[i][j] as f64, want, 1e-6);
                }
            }
        }
    }

    /// A batch cut into shards of whole groups gives each shard the advantages the whole
    /// batch gives its rows, batch std and statistics included; two ranks holding one shard
    /// each (threads summing through `ThreadGroup`) give bit for bit what one process holding
    /// both shards gives.
    #[test]
    fn sharded_advantages_equal_the_whole_batch() {
        use crate::dist::{Collective, ThreadGroup};
        let rewards = [1.0, 0.0, 3.0, 3.0, 2.0, 0.5, 0.3, 0.9];
        let applies = [true, true, true, true, true, false, true, true];
        let cut = |k: usize| -> Vec<(&[f64], &[bool])> {
            vec![
                (&rewards[..k], &applies[..k]),
                (&rewards[k..], &applies[k..]),
            ]
        };
        for scale in [AdvantageScale::Batch, AdvantageScale::Group] {
            let whole = group_advantages_of(&rewards, &applies, 2, scale, true).unwrap();
            let parts = group_advantages_sharded(&cut(2), 2, scale, true, &mut |_| Ok(())).unwrap();
            let values: Vec<f64> = parts.iter().flat_map(|a| a.values.clone()).collect();
            let keep: Vec<bool> = parts.iter().flat_map(|a| a.keep.clone()).collect();
            assert_eq!(keep, whole.keep);
            for (a, b) in values.iter().zip(&whole.values) {
                assert!((a - b).abs() < 1e-12, "{values:?} vs {:?}", whole.values);
            }
            let (p, w) = (&parts[1].stats, &whole.stats);
            assert_eq!(p.zero_variance_groups, w.zero_variance_groups);
            assert_eq!(p.dropped_groups, w.dropped_groups);
            assert!((p.advantage_std - w.advantage_std).abs() < 1e-12);
            assert!((p.reward_mean - w.reward_mean).abs() < 1e-12);
            assert!((p.reward_std - w.reward_std).abs() < 1e-12);
            let ranks: Vec<Advantages> = std::thread::scope(|scope| {
                let handles: Vec<_> = ThreadGroup::new(2)
                    .into_iter()
                    .map(|mut g| {
                        let shard = cut(2)[g.rank()];
                        scope.spawn(move || {
                            let mut reduce = |v: &mut [f64]| {
                                g.all_reduce_f64(v)
                                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
                            };
                            group_advantages_sharded(&[shard], 2, scale, true, &mut reduce)
                                .unwrap()
                                .remove(0)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(ranks, parts, "{scale:?}");
        }
        assert!(
            group_advantages_sharded(&cut(3), 2, AdvantageScale::Group, false, &mut |_| {
                Ok(())
            })
            .is_err()
        );
    }

    #[test]
    fn dropped_groups_and_normaliser_override_and_errors() {
        let adv = group_advantages(&[1.0, 0.0, 1.0, 1.0], 2, AdvantageScale::None, true).unwrap();
        let logp = t2(&[&[-1.0, -1.0], &[-1.0, -1.0], &[-1.0, -1.0], &[-1.0, -1.0]]);
        let mask = t2(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]);
        let batch = |n| GrpoBatch {
            logp: &logp,
            old_logp: None,
            ref_logp: None,
            mask: &mask,
            advantages: &adv,
            token_normaliser: n,
        };
        let out = grpo_loss(&config(LossAggregation::TokenMean, 0.0), &batch(None)).unwrap();
        // Only the first group's 4 tokens count; its advantages +0.5 and -0.5 cancel.
        assert_eq!(out.stats.tokens, 4);
        close(out.loss.to_scalar::<f32>().unwrap() as f64, 0.0, 1e-7);
        let seq = grpo_loss(
            &config(LossAggregation::SeqMeanTokenSumNorm, 0.0),
            &batch(Some(8.0)),
        )
        .unwrap();
        close(seq.loss.to_scalar::<f32>().unwrap() as f64, 0.0, 1e-7);

        let adv2 = group_advantages(&[1.0, 0.0], 2, AdvantageScale::None, false).unwrap();
        let lp2 = t2(&[&[-1.0, -1.0], &[-1.0, -1.0]]);
        let m2 = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
        let b2 = |n| GrpoBatch {
            logp: &lp2,
            old_logp: None,
            ref_logp: None,
            mask: &m2,
            advantages: &adv2,
            token_normaliser: n,
        };
        // Token sum: 2 * -0.5 + 1 * 0.5 = -0.5; over 3 tokens, or over an override of 10.
        let own = grpo_loss(&config(LossAggregation::TokenMean, 0.0), &b2(None)).unwrap();
        close(
            own.loss.to_scalar::<f32>().unwrap() as f64,
            -0.5 / 3.0,
            1e-6,
        );
        let over = grpo_loss(&config(LossAggregation::TokenMean, 0.0), &b2(Some(10.0))).unwrap();
        close(over.loss.to_scalar::<f32>().unwrap() as f64, -0.05, 1e-6);

        assert!(grpo_loss(&config(LossAggregation::TokenMean, 0.1), &b2(None)).is_err());
        let mut bad = config(LossAggregation::TokenMean, 0.0);
        bad.group = 1;
        assert!(grpo_loss(&bad, &b2(None)).is_err());
        let wrong_mask = t2(&[&[1.0, 1.0, 1.0]]);
        let err = grpo_loss(
            &config(LossAggregation::TokenMean, 0.0),
            &GrpoBatch {
                mask: &wrong_mask,
                ..b2(None)
            },
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("`mask`"), "{err}");
    }

    #[test]
    fn sft_loss_is_masked_mean_nll_scaled_by_lambda() {
        let logp = Var::from_tensor(&t2(&[&[-9.0, -1.0, -2.0], &[-9.0, -3.0, -7.0]])).unwrap();
        // The first position is prompt; the last of row 1 is padding.
        let mask = t2(&[&[0.0, 1.0, 1.0], &[0.0, 1.0, 0.0]]);
        let out = sft_loss(logp.as_tensor(), &mask, 0.5).unwrap();
        close(out.nll, 2.0, 1e-6);
        assert_eq!(out.tokens, 3);
        close(out.loss.to_scalar::<f32>().unwrap() as f64, 1.0, 1e-6);
        let g = out.loss.backward().unwrap();
        let g = g.get(logp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // d(-lambda * sum(logp * mask) / N)/dlogp = -lambda * mask / N.
        assert_eq!(
            g,
            vec![
                vec![0.0, -0.5 / 3.0, -0.5 / 3.0],
                vec![0.0, -0.5 / 3.0, 0.0]
            ]
        );
        assert!(sft_loss(logp.as_tensor(), &t2(&[&[0.0; 3], &[0.0; 3]]), 1.0).is_err());
        assert!(sft_loss(logp.as_tensor(), &t2(&[&[1.0; 3]]), 1.0).is_err());
    }
}
