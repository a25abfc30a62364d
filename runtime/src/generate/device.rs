//! Sampling on the device: takes a (rows, vocab) tensor of raw logits wherever it lives and the
//! [`SamplingConfig`], gives each row's token and raw log-probability, so only 2 * rows numbers
//! cross to the host per decode step instead of the whole logits matrix. Written with candle
//! tensor ops, so the same code runs on CUDA and is tested on the CPU against the host
//! [`Sampler`](super::Sampler).
//!
//! Sorting a 150k-token vocabulary per row is what a device cannot do cheaply (candle's CUDA
//! sort holds a whole row in shared memory), so every step that the host does by sorting is a
//! bisection here, each probe one masked reduction over the rows:
//! - top-k keeps the tokens whose logit is at least the k-th largest, found by bisecting on the
//!   value (ties at the k-th value are all kept, where the host keeps the lowest ids);
//! - top-p keeps the tokens whose weight is at least the smallest weight of the host's nucleus,
//!   found by bisecting on the weight;
//! - the draw takes one uniform per row from the host's seeded `StdRng` (drawn exactly as the
//!   host sampler draws them) and finds the first token, in id order, whose cumulative weight
//!   passes `u * total` by bisecting on the id. Without top-k and top-p this is the host's own
//!   draw, so both pick the same token for the same seed up to the rounding of the sums; with
//!   them the host walks the kept tokens by probability instead, which is the same
//!   distribution but not the same token for a given `u`.

use candle_core::{DType, Result, Tensor, D};
use rand::Rng;

use super::{Sampler, SamplingConfig};

/// Probes of the bisections on a value: enough to narrow any f32 range to below its spacing.
const VALUE_PROBES: usize = 48;

/// Picks one token per row of `logits` (rows, vocab), sampling row `r` only where `active[r]`
/// (inactive rows still get an entry, never used, and draw no random number). Gives the
/// tokens and their raw log-probabilities (temperature 1, before top-k and top-p).
pub(crate) fn sample_rows(
    logits: &Tensor,
    active: &[bool],
    cfg: &SamplingConfig,
    sampler: &mut Sampler,
) -> Result<(Vec<u32>, Vec<f32>)> {
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let (rows, vocab) = logits.dims2()?;
    if active.len() != rows {
        candle_core::bail!(
            "sample_rows: {} activity flags for {rows} rows",
            active.len()
        );
    }
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let tokens = if cfg.greedy || cfg.temperature <= 0.0 {
        logits.argmax(D::Minus1)?.to_dtype(DType::U32)?
    } else {
        let weights = (&shifted / cfg.temperature)?.exp()?;
        let weights = filtered(&logits, weights, cfg, vocab)?;
        // One uniform per active row, in row order, as the host sampler draws them.
        let u: Vec<f32> = active
            .iter()
            .map(|&a| {
                if a {
                    sampler.rng.random::<f64>() as f32
                } else {
                    0.0
                }
            })
            .collect();
        let u = Tensor::from_vec(u, (rows, 1), logits.device())?;
        draw(&weights, &u, vocab)?
    };
    let picked = shifted.gather(&tokens.unsqueeze(1)?, D::Minus1)?;
    let lp = (picked - lse)?.squeeze(1)?;
    Ok((tokens.to_vec1()?, lp.to_vec1()?))
}

/// The weights with the tokens that top-k and top-p drop set to zero.
fn filtered(
    logits: &Tensor,
    mut weights: Tensor,
    cfg: &SamplingConfig,
    vocab: usize,
) -> Result<Tensor> {
    if cfg.top_k > 0 && cfg.top_k < vocab {
        let k = cfg.top_k as f64;
        // The largest value whose count of logits at or above it is still at least k.
        let lo = logits.min_keepdim(D::Minus1)?;
        let hi = (logits.max_keepdim(D::Minus1)? + 1.0)?;
        let kth = bisect(&lo, &hi, VALUE_PROBES, |mid| {
            logits
                .broadcast_ge(mid)?
                .to_dtype(DType::F32)?
                .sum_keepdim(D::Minus1)?
                .ge(k)
        })?;
        weights = (weights * logits.broadcast_ge(&kth)?.to_dtype(DType::F32)?)?;
    }
    if cfg.top_p < 1.0 {
        let need = (weights.sum_keepdim(D::Minus1)? * cfg.top_p)?;
        // The largest weight such that the tokens at or above it hold at least `need`; the
        // largest weight is 1 (the row's maximum), so 2 bounds it from above.
        let lo = need.zeros_like()?;
        let hi = (lo.ones_like()? * 2.0)?;
        let floor = bisect(&lo, &hi, VALUE_PROBES, |mid| {
            let kept = (&weights * weights.broadcast_ge(mid)?.to_dtype(DType::F32)?)?;
            kept.sum_keepdim(D::Minus1)?.ge(&need)
        })?;
        weights = (&weights * weights.broadcast_ge(&floor)?.to_dtype(DType::F32)?)?;
    }
    Ok(weights)
}

/// Per-row bisection for the largest value in [lo, hi) where `holds` (a monotone test, true at
/// `lo`, false at `hi`) is true; `lo` and `hi` are (rows, 1). `holds` gives a (rows, 1) u8 mask.
fn bisect(
    lo: &Tensor,
    hi: &Tensor,
    probes: usize,
    holds: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (mut lo, mut hi) = (lo.clone(), hi.clone());
    for _ in 0..probes {
        let mid = ((&lo + &hi)? * 0.5)?;
        let yes = holds(&mid)?;
        lo = yes.where_cond(&mid, &lo)?;
        hi = yes.where_cond(&hi, &mid)?;
    }
    Ok(lo)
}

/// The first token of each row, in id order, whose cumulative weight exceeds `u * total`
/// (`u` (rows, 1) in [0, 1)), as u32 ids. A row whose weights are all zero gives token 0.
fn draw(weights: &Tensor, u: &Tensor, vocab: usize) -> Result<Tensor> {
    let dev = weights.device();
    let target = weights.sum_keepdim(D::Minus1)?.mul(u)?;
    let ids = Tensor::arange(0u32, vocab as u32, dev)?
        .to_dtype(DType::F32)?
        .unsqueeze(0)?;
    // The answer lies in [lo, hi]: ids are exact in f32 below 2^24, far above any vocabulary.
    let rows = weights.dim(0)?;
    let mut lo = Tensor::zeros((rows, 1), DType::F32, dev)?;
    let mut hi = Tensor::full((vocab - 1) as f32, (rows, 1), dev)?;
    let probes = usize::BITS - (vocab.max(1)).leading_zeros();
    for _ in 0..probes {
        let mid = ((&lo + &hi)? * 0.5)?.floor()?;
        let upto = ids.broadcast_le(&mid)?.to_dtype(DType::F32)?;
        let past = (weights * upto)?.sum_keepdim(D::Minus1)?.gt(&target)?;
        hi = past.where_cond(&mid, &hi)?;
        lo = past.where_cond(&lo, &(mid + 1.0)?.minimum(&hi)?)?;
    }
    lo.squeeze(1)?.to_dtype(DType::U32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn random_logits(rows: usize, vocab: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..rows)
            .map(|_| {
                (0..vocab)
                    .map(|_| rng.random_range(-spread..spread))
                    .collect()
            })
            .collect()
    }

    fn tensor(rows: &[Vec<f32>]) -> Tensor {
        let vocab = rows[0].len();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), vocab), &Device::Cpu).unwrap()
    }

    /// The host sampler's picks for the active rows, in row order.
    fn host(rows: &[Vec<f32>], active: &[bool], cfg: &SamplingConfig) -> Vec<(u32, f32)> {
        let mut s = Sampler::new(cfg.seed);
        rows.iter()
            .zip(active)
            .filter(|(_, &a)| a)
            .map(|(r, _)| s.sample(r, cfg))
            .collect()
    }

    fn device(rows: &[Vec<f32>], active: &[bool], cfg: &SamplingConfig) -> Vec<(u32, f32)> {
        let mut s = Sampler::new(cfg.seed);
        let (t, lp) = sample_rows(&tensor(rows), active, cfg, &mut s).unwrap();
        (0..rows.len())
            .filter(|&r| active[r])
            .map(|r| (t[r], lp[r]))
            .collect()
    }

    fn assert_same(a: &[(u32, f32)], b: &[(u32, f32)]) {
        assert_eq!(a.len(), b.len());
        for (r, ((ta, la), (tb, lb))) in a.iter().zip(b).enumerate() {
            assert_eq!(ta, tb, "row {r}: tokens differ");
            assert!((la - lb).abs() < 1e-4, "row {r}: log-probs {la} vs {lb}");
        }
    }

    #[test]
    fn deterministic_settings_pick_the_host_samplers_tokens() {
        let rows = random_logits(40, 97, 4.0, 1);
        let active = vec![true; rows.len()];
        let greedy = SamplingConfig {
            greedy: true,
            ..SamplingConfig::default()
        };
        let top1 = SamplingConfig {
            top_k: 1,
            temperature: 1.5,
            seed: 3,
            ..SamplingConfig::default()
        };
        let tiny_nucleus = SamplingConfig {
            top_p: 1e-6,
            seed: 4,
            ..SamplingConfig::default()
        };
        for cfg in [&greedy, &top1, &tiny_nucleus] {
            assert_same(&device(&rows, &active, cfg), &host(&rows, &active, cfg));
        }
        // A peaked distribution: one token holds all but e^-40 of the mass.
        let mut peaked = random_logits(8, 50, 1.0, 2);
        for (r, row) in peaked.iter_mut().enumerate() {
            row[(r * 7) % 50] = 40.0;
        }
        let cfg = SamplingConfig {
            top_k: 10,
            top_p: 0.9,
            seed: 5,
            ..SamplingConfig::default()
        };
        let got = device(&peaked, &[true; 8], &cfg);
        assert_same(&got, &host(&peaked, &[true; 8], &cfg));
        for (r, (t, _)) in got.iter().enumerate() {
            assert_eq!(*t as usize, (r * 7) % 50);
        }
    }

    #[test]
    fn unfiltered_draws_repeat_the_host_draws_and_skip_inactive_rows() {
        let rows = random_logits(300, 64, 3.0, 9);
        let active: Vec<bool> = (0..rows.len()).map(|r| r % 5 != 2).collect();
        let cfg = SamplingConfig {
            temperature: 0.8,
            seed: 11,
            ..SamplingConfig::default()
        };
        let (d, h) = (device(&rows, &active, &cfg), host(&rows, &active, &cfg));
        assert_same(&d, &h);
        let distinct: std::collections::HashSet<u32> = d.iter().map(|p| p.0).collect();
        assert!(
            distinct.len() > 20,
            "the draws must spread over the vocabulary"
        );
    }

    #[test]
    fn filtered_draws_follow_the_host_samplers_distribution() {
        // One row, many times: the frequencies of both samplers against the exact filtered
        // distribution (top-k 4 of 8, then the nucleus of 0.8 of what is left, temperature 0.7).
        let logits = vec![2.0f32, 0.5, 1.7, -1.0, 1.2, 0.9, -0.3, 1.95];
        let cfg = SamplingConfig {
            top_k: 4,
            top_p: 0.8,
            temperature: 0.7,
            seed: 21,
            ..SamplingConfig::default()
        };
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let w: Vec<f64> = order[..4]
            .iter()
            .map(|&i| ((logits[i] - 2.0) as f64 / 0.7).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let (mut acc, mut keep) = (0.0, 4);
        for (j, x) in w.iter().enumerate() {
            acc += x;
            if acc >= 0.8 * total {
                keep = j + 1;
                break;
            }
        }
        assert!(keep == 3, "the case must cut inside the top-k set");
        let kept: f64 = w[..keep].iter().sum();
        let mut want = [0.0f64; 8];
        for j in 0..keep {
            want[order[j]] = w[j] / kept;
        }
        let n = 6000;
        let rows = vec![logits; n];
        let active = vec![true; n];
        for (name, picks) in [
            ("device", device(&rows, &active, &cfg)),
            ("host", host(&rows, &active, &cfg)),
        ] {
            let mut freq = [0.0f64; 8];
            for (t, _) in &picks {
                freq[*t as usize] += 1.0 / n as f64;
            }
            for i in 0..8 {
                let tol = if want[i] == 0.0 { 0.0 } else { 0.03 };
                assert!(
                    (freq[i] - want[i]).abs() <= tol,
                    "{name}: token {i} drawn {:.3}, want {:.3}",
                    freq[i],
                    want[i]
                );
            }
        }
    }
}
