//! Rollouts: takes a model, B prompts (token ids) and sampling settings, gives G completions per
//! prompt (token ids, texts, per-token log-probabilities, finish reasons) and packs them into a
//! [`SequenceBatch`] for the loss.
//!
//! One batch does the whole job: prompts are left-padded with an explicit additive mask, each
//! prompt is prefilled once and its KV cache repeated G times along the batch, then all B * G
//! rows decode together on a no-grad path (detached weights, q/k/v and gate/up projections fused
//! into one matmul each, a preallocated KV cache written in place), finished rows leaving the
//! batch as they accumulate. On the CPU sampling happens on the host from a `StdRng` seeded with
//! `SamplingConfig::seed`, so a run repeats exactly; on other devices (CUDA) it happens on the
//! device (`device`), with the uniforms drawn from the same seeded `StdRng`, so that only the
//! sampled ids and their log-probabilities cross to the host each step.
//!
//! The log-probabilities returned are the policy's raw log-probabilities of the chosen tokens:
//! `log_softmax(logits)` at temperature 1, before temperature, top-k or top-p are applied.

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::model::logprob::SequenceBatch;
use crate::model::{linear, padded_causal_mask, Model, ModelError, Result};
use crate::ops;
use crate::tokenizer::TextTokenizer;

mod device;
mod host;
mod stop;

/// How completions are sampled.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// Completion length limit (tokens, EOS included).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Always take the most likely token (ties go to the lowest id).
    pub greedy: bool,
    /// A row stops once its decoded completion contains one of these strings.
    pub stop_strings: Vec<String>,
    /// Token ids that end a row; empty means the tokenizer's EOS ids and the model config's.
    pub eos_token_ids: Vec<u32>,
    /// Sample `max_new_tokens` tokens in every row, an EOS token being one more token (equal
    /// work per row, as benchmarks want).
    pub ignore_eos: bool,
    /// Seed of the host sampler.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 16,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            greedy: false,
            stop_strings: Vec::new(),
            eos_token_ids: Vec::new(),
            ignore_eos: false,
            seed: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced an EOS token (kept as its last token).
    Eos,
    /// Its text contains a stop string (the token that completed it is kept).
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// The completions of one rollout. Row `r` answers prompt `r / group_size`.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub group_size: usize,
    /// The B prompts, as given.
    pub prompt_ids: Vec<Vec<u32>>,
    /// B * G completions, up to and including the EOS or stop token.
    pub completion_ids: Vec<Vec<u32>>,
    /// Decoded completions (special tokens skipped).
    pub texts: Vec<String>,
    /// Raw policy log-probability (temperature 1, no top-k/top-p) of each completion token.
    pub logprobs: Vec<Vec<f32>>,
    pub finish: Vec<FinishReason>,
    /// Rows fed through the model over all decode steps (the prefill not counted): the work the
    /// decode did, which falls as rows finish and leave the batch.
    pub decode_rows: usize,
}

impl Rollout {
    /// The prompt of row `r`.
    pub fn prompt_of(&self, r: usize) -> &[u32] {
        &self.prompt_ids[r / self.group_size]
    }

    /// Packs all rows for the log-prob pass and the loss.
    pub fn to_batch(&self, pad_id: u32, device: &candle_core::Device) -> Result<SequenceBatch> {
        let prompts: Vec<&[u32]> = (0..self.completion_ids.len())
            .map(|r| self.prompt_of(r))
            .collect();
        let comps: Vec<&[u32]> = self.completion_ids.iter().map(Vec::as_slice).collect();
        SequenceBatch::new(&prompts, &comps, pad_id, device)
    }

    /// Generated tokens in all rows.
    pub fn num_tokens(&self) -> usize {
        self.completion_ids.iter().map(Vec::len).sum()
    }
}

/// A host-side sampler over logits rows; reproducible from its seed.
pub struct Sampler {
    rng: StdRng,
    /// `e^(logit - max)` of the row being sampled, kept between calls so that a rollout
    /// allocates it once.
    exps: Vec<f64>,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            exps: Vec::new(),
        }
    }

    /// Picks a token from one row of raw logits; gives (token, raw log-probability).
    pub fn sample(&mut self, logits: &[f32], cfg: &SamplingConfig) -> (u32, f32) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Each logit's exponential is computed once: the log-sum-exp sums them, and at
        // temperature 1 they are also the weights of the draw (a row of a large vocabulary costs
        // one exponential per entry instead of three).
        let mut exps = std::mem::take(&mut self.exps);
        exps.clear();
        exps.extend(logits.iter().map(|&l| ((l - max) as f64).exp()));
        let sum: f64 = exps.iter().sum();
        let lse = sum.ln() as f32 + max;
        let token = if cfg.greedy || cfg.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits, max, cfg, (&exps, sum))
        };
        self.exps = exps;
        (token as u32, logits[token] - lse)
    }

    /// Draws a token at the temperature, top-k and top-p of `cfg`; `exps` holds `e^(logit -
    /// max)` of every entry and their sum.
    fn draw(
        &mut self,
        logits: &[f32],
        max: f32,
        cfg: &SamplingConfig,
        (exps, sum): (&[f64], f64),
    ) -> usize {
        let inv_t = 1.0 / cfg.temperature;
        let weight = |i: usize| (((logits[i] - max) as f64) * inv_t).exp();
        let filter = (cfg.top_k > 0 && cfg.top_k < logits.len()) || cfg.top_p < 1.0;
        if !filter {
            let scaled: Vec<f64>;
            let (weights, total) = if inv_t == 1.0 {
                (exps, sum)
            } else {
                scaled = (0..logits.len()).map(weight).collect();
                let total = scaled.iter().sum();
                (&scaled[..], total)
            };
            let mut u = self.rng.random::<f64>() * total;
            for (i, w) in weights.iter().enumerate() {
                u -= w;
                if u < 0.0 {
                    return i;
                }
            }
            return argmax(logits);
        }
        // Candidates sorted by probability (ties by id, so the order is deterministic).
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        let by_prob = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        if cfg.top_k > 0 && cfg.top_k < idx.len() {
            idx.select_nth_unstable_by(cfg.top_k - 1, by_prob);
            idx.truncate(cfg.top_k);
        }
        idx.sort_unstable_by(by_prob);
        let weights: Vec<f64> = idx.iter().map(|&i| weight(i)).collect();
        let mut total: f64 = weights.iter().sum();
        if cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = weights.len();
            for (j, w) in weights.iter().enumerate() {
                acc += w;
                if acc >= cfg.top_p * total {
                    keep = j + 1;
                    break;
                }
            }
            idx.truncate(keep);
            total = weights[..keep].iter().sum();
        }
        let mut u = self.rng.random::<f64>() * total;
        for (j, &i) in idx.iter().enumerate() {
            u -= weights[j];
            if u < 0.0 {
                return i;
            }
        }
        idx[0]
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Weights of one block laid out for decoding: q/k/v and gate/up concatenated, detached.
struct DecodeLayer {
    qkv_w: Tensor,
    qkv_b: Option<Tensor>,
    o_w: Tensor,
    gate_up_w: Tensor,
    down_w: Tensor,
    input_norm: Tensor,
    post_norm: Tensor,
}

fn decode_layers(model: &Model) -> candle_core::Result<Vec<DecodeLayer>> {
    model
        .weights
        .layers
        .iter()
        .map(|w| {
            let cw = |t: &Tensor| model.cw(&t.detach());
            let qkv_w = Tensor::cat(&[cw(&w.q_w)?, cw(&w.k_w)?, cw(&w.v_w)?], 0)?;
            let qkv_b = match (&w.q_b, &w.k_b, &w.v_b) {
                (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[cw(q)?, cw(k)?, cw(v)?], 0)?),
                _ => None,
            };
            Ok(DecodeLayer {
                qkv_w,
                qkv_b,
                o_w: cw(&w.o_w)?,
                gate_up_w: Tensor::cat(&[cw(&w.gate_w)?, cw(&w.up_w)?], 0)?,
                down_w: cw(&w.down_w)?,
                input_norm: cw(&w.input_norm)?,
                post_norm: cw(&w.post_norm)?,
            })
        })
        .collect()
}

/// Which implementation runs the attention of the decode steps, and where tokens are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// The host kernel on CPU with f32 compute, the tensor path elsewhere; sampling on the host
    /// on the CPU and on the device elsewhere.
    Auto,
    /// Always the tensor path (candle ops through the `ops` facade, cache as tensors), sampling
    /// on the host.
    Tensor,
    /// The tensor path with sampling on the device, as `Auto` runs on CUDA (so that the CPU
    /// tests exercise it).
    Device,
}

/// The KV cache of a rollout: the host decoder's buffers on the CPU, or tensors written in place.
enum KvStore {
    Host(Box<host::HostDecoder>),
    Tensor {
        caches: Vec<(Tensor, Tensor)>,
        /// (n, 1, 1, cap) additive key mask.
        mask: Tensor,
    },
}

/// Generates `group` completions for each prompt (token ids, already templated). `tokenizer`
/// decodes texts and checks stop strings; without it texts are empty and stop strings are an
/// error.
pub fn generate(
    model: &Model,
    tokenizer: Option<&TextTokenizer>,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &SamplingConfig,
) -> Result<Rollout> {
    generate_on(model, tokenizer, prompts, group, cfg, DecodePath::Auto)
}

/// [`generate`] with an explicit choice of decode attention (both give the same tokens).
pub fn generate_on(
    model: &Model,
    tokenizer: Option<&TextTokenizer>,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &SamplingConfig,
    path: DecodePath,
) -> Result<Rollout> {
    // The decoder copies its weights into its own layout anyway; a LoRA model decodes with its
    // adapters merged into those copies, so the decode kernels need not know about adapters.
    let merged;
    let model = if model.lora_spec().is_some() {
        merged = model.merged()?;
        &merged
    } else {
        model
    };
    let c = model.config().clone();
    if prompts.is_empty() || group == 0 {
        return Err(ModelError::Invalid(
            "generate needs at least one prompt and group >= 1".into(),
        ));
    }
    if let Some(r) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Invalid(format!("prompt {r} is empty")));
    }
    if let Some(&bad) = prompts
        .iter()
        .flatten()
        .find(|&&id| id as usize >= c.vocab_size)
    {
        return Err(ModelError::Invalid(format!(
            "prompt token id {bad} is outside the vocabulary (size {})",
            c.vocab_size
        )));
    }
    if !cfg.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(ModelError::Invalid("stop strings need a tokenizer".into()));
    }
    let sampled = !(cfg.greedy || cfg.temperature <= 0.0);
    if sampled && (cfg.top_p.is_nan() || cfg.top_p <= 0.0 || cfg.top_p > 1.0) {
        return Err(ModelError::Invalid(format!(
            "top_p must be in (0, 1], got {}",
            cfg.top_p
        )));
    }
    let b = prompts.len();
    let n = b * group;
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let cap = p + cfg.max_new_tokens;
    if cap > c.max_position_embeddings {
        return Err(ModelError::Invalid(format!(
            "prompt width {p} + max_new_tokens {} exceeds max_position_embeddings {}",
            cfg.max_new_tokens, c.max_position_embeddings
        )));
    }
    let mut eos: Vec<u32> = cfg.eos_token_ids.clone();
    if eos.is_empty() && !cfg.ignore_eos {
        eos.extend(c.eos_token_ids.iter().copied());
        if let Some(t) = tokenizer {
            eos.extend(t.eos_ids.iter().copied());
        }
    }
    let pad_id = tokenizer.map(|t| t.pad_id).or(c.pad_token_id).unwrap_or(0);
    let mut sampler = Sampler::new(cfg.seed);
    let mut rollout = Rollout {
        group_size: group,
        prompt_ids: prompts.to_vec(),
        completion_ids: vec![Vec::new(); n],
        texts: vec![String::new(); n],
        logprobs: vec![Vec::new(); n],
        finish: vec![FinishReason::Length; n],
        decode_rows: 0,
    };
    if cfg.max_new_tokens == 0 {
        return Ok(rollout);
    }

    let view = model.detached_view();
    let dev = model.device().clone();
    let dt = model.compute_dtype();
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);

    // Prefill: the B prompts, left-padded, once each.
    let mut ids = vec![pad_id; b * p];
    let mut pad = vec![vec![true; p]; b];
    for (r, pr) in prompts.iter().enumerate() {
        let start = p - pr.len();
        ids[r * p + start..(r + 1) * p].copy_from_slice(pr);
        pad[r][start..].fill(false);
    }
    let ids_t = Tensor::from_vec(ids, (b, p), &dev)?;
    let mask = padded_causal_mask(&pad, dt, &dev)?;
    let mut kv: Vec<(Tensor, Tensor)> = Vec::with_capacity(c.num_hidden_layers);
    let mut x = view.embed(&ids_t)?;
    for l in 0..c.num_hidden_layers {
        x = view.block(l, &x, b, p, &mask, Some(&mut kv))?;
    }
    let last = x
        .reshape((b, p, c.hidden_size))?
        .narrow(1, p - 1, 1)?
        .squeeze(1)?;
    let last = ops::rms_norm(&last, &view.cw(&view.weights.norm)?, c.rms_norm_eps)?;
    let on_device = match path {
        DecodePath::Auto => !dev.is_cpu(),
        DecodePath::Tensor => false,
        DecodePath::Device => true,
    };
    // Sampling on the device keeps the logits there: the prompts' rows repeated G times.
    let (prefill_logits, mut device_logits): (Vec<Vec<f32>>, Option<Tensor>) = if on_device {
        let rows: Vec<u32> = (0..n as u32).map(|r| r / group as u32).collect();
        let rows = Tensor::from_vec(rows, n, &dev)?;
        (
            Vec::new(),
            Some(view.logits(&last)?.index_select(&rows, 0)?),
        )
    } else {
        (view.logits(&last)?.to_vec2()?, None)
    };

    // Additive key mask of each row: prompt padding is -inf for the whole rollout.
    let mut key_bias = vec![0f32; n * cap];
    for r in 0..n {
        for j in 0..p {
            if pad[r / group][j] {
                key_bias[r * cap + j] = f32::NEG_INFINITY;
            }
        }
    }
    let host = path == DecodePath::Auto && dev.is_cpu() && dt == DType::F32;
    debug_assert!(!(host && on_device), "the host decoder samples on the host");
    let mut kv_store = if host {
        KvStore::Host(Box::new(host::HostDecoder::new(
            &view,
            &kv,
            group,
            cap,
            key_bias.clone(),
        )?))
    } else {
        // Repeat each prompt's cache G times along the batch, into buffers with room for the
        // completion, once; later steps write into them in place.
        let rows: Vec<u32> = (0..n as u32).map(|r| r / group as u32).collect();
        let rows = Tensor::from_vec(rows, n, &dev)?;
        let mut caches = Vec::with_capacity(kv.len());
        for (k, v) in &kv {
            let grow = |t: &Tensor| -> candle_core::Result<Tensor> {
                let t = t.index_select(&rows, 0)?;
                let room = Tensor::zeros((n, nkv, cap - p, hd), dt, &dev)?;
                Tensor::cat(&[&t, &room], 2)
            };
            caches.push((grow(k)?, grow(v)?));
        }
        let mask = Tensor::from_vec(key_bias.clone(), (n, 1, 1, cap), &dev)?.to_dtype(dt)?;
        KvStore::Tensor { caches, mask }
    };
    drop(kv);

    let layers = match kv_store {
        KvStore::Host(_) => Vec::new(),
        KvStore::Tensor { .. } => decode_layers(&view)?,
    };
    let norm = view.cw(&view.weights.norm)?;
    let head = view.cw(view.weights.lm_head.as_ref().unwrap_or(&view.weights.embed))?;
    let embed = view.cw(&view.weights.embed)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let (qd, kvd, inter) = (nh * hd, nkv * hd, c.intermediate_size);

    let mut done = vec![false; n];
    let mut next = vec![0u32; n];
    // The rows the last forward fed, in row order: the rows of `step_logits` (and of
    // `device_logits`). The host decoder gives logits for every row and keeps this at 0..n;
    // the tensor path drops finished rows from it (see `compact`). Rows are sampled in row order
    // either way, so the sampler's random draws go to the same rows.
    let mut live: Vec<usize> = (0..n).collect();
    let stops = stop::StopStrings::new(&cfg.stop_strings);
    let mut step_logits: Vec<Vec<f32>> = Vec::new();
    for step in 0..cfg.max_new_tokens {
        let picks = match &device_logits {
            Some(logits) => {
                let active: Vec<bool> = live.iter().map(|&r| !done[r]).collect();
                Some(device::sample_rows(logits, &active, cfg, &mut sampler)?)
            }
            None => None,
        };
        for (i, &r) in live.iter().enumerate() {
            if done[r] {
                continue;
            }
            let (tok, lp) = match &picks {
                Some((tokens, lps)) => (tokens[i], lps[i]),
                None if step == 0 => sampler.sample(&prefill_logits[r / group], cfg),
                None => sampler.sample(&step_logits[i], cfg),
            };
            next[r] = tok;
            rollout.completion_ids[r].push(tok);
            rollout.logprobs[r].push(lp);
            if !cfg.ignore_eos && eos.contains(&tok) {
                done[r] = true;
                rollout.finish[r] = FinishReason::Eos;
            } else if let (false, Some(t)) = (cfg.stop_strings.is_empty(), tokenizer) {
                if stops.completed_by_last(t, &rollout.completion_ids[r])? {
                    done[r] = true;
                    rollout.finish[r] = FinishReason::Stop;
                }
            }
        }
        if step + 1 == cfg.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        let pos = p + step;
        let (caches, mask) = match &mut kv_store {
            // The host decoder feeds only the unfinished rows.
            KvStore::Host(dec) => {
                rollout.decode_rows += done.iter().filter(|&&d| !d).count();
                step_logits.resize_with(n, Vec::new);
                dec.step(&next, &done, pos, &mut step_logits)?;
                continue;
            }
            KvStore::Tensor { caches, mask } => (caches, mask),
        };
        compact(&mut live, &done, caches, mask)?;
        let m = live.len();
        rollout.decode_rows += m;
        // Feed the sampled tokens (finished rows not yet compacted away feed theirs too; their
        // outputs are ignored).
        let ids: Vec<u32> = live.iter().map(|&r| next[r]).collect();
        let ids = Tensor::from_vec(ids, m, &dev)?;
        let mut x = embed.index_select(&ids, 0)?;
        for (l, w) in layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &w.input_norm, c.rms_norm_eps)?;
            let qkv = linear(&h, &w.qkv_w, w.qkv_b.as_ref())?;
            let (ck, cv) = &caches[l];
            let cos = view.rope.cos.narrow(0, pos, 1)?;
            let sin = view.rope.sin.narrow(0, pos, 1)?;
            let mask = mask.narrow(3, 0, pos + 1)?;
            let q = qkv.narrow(1, 0, qd)?.reshape((m, nh, 1, hd))?;
            let k = qkv.narrow(1, qd, kvd)?.reshape((m, nkv, 1, hd))?;
            let v = qkv.narrow(1, qd + kvd, kvd)?.reshape((m, nkv, 1, hd))?;
            let q = ops::rope(&q, &cos, &sin)?;
            let k = ops::rope(&k, &cos, &sin)?.contiguous()?;
            ck.slice_set(&k, 2, pos)?;
            cv.slice_set(&v.contiguous()?, 2, pos)?;
            let keys = ck.narrow(2, 0, pos + 1)?;
            let vals = cv.narrow(2, 0, pos + 1)?;
            let y = ops::attention(&q, &keys, &vals, Some(&mask), scale)?;
            let y = y.reshape((m, qd))?;
            x = (x + linear(&y, &w.o_w, None)?)?;
            let h = ops::rms_norm(&x, &w.post_norm, c.rms_norm_eps)?;
            let gu = linear(&h, &w.gate_up_w, None)?;
            let act = ops::swiglu(&gu.narrow(1, 0, inter)?, &gu.narrow(1, inter, inter)?)?;
            x = (x + linear(&act, &w.down_w, None)?)?;
        }
        let h = ops::rms_norm(&x, &norm, c.rms_norm_eps)?;
        let logits = linear(&h, &head, None)?.to_dtype(DType::F32)?;
        match on_device {
            true => device_logits = Some(logits),
            false => step_logits = logits.to_vec2()?,
        }
    }
    if let Some(t) = tokenizer {
        for r in 0..n {
            rollout.texts[r] = t.decode(&rollout.completion_ids[r], true)?;
        }
    }
    Ok(rollout)
}

/// Drops the finished rows from the tensor path's batch (`live`, the caches and the key mask)
/// once they are at least a quarter of it. Each compaction copies the live rows' caches, which
/// costs about what two decode steps spend reading them; waiting for a quarter of the rows to
/// finish makes that copy pay for itself within a few steps and bounds the number of copies by
/// the logarithm of the batch size, where compacting at every finished row would copy the
/// caches once per row.
fn compact(
    live: &mut Vec<usize>,
    done: &[bool],
    caches: &mut [(Tensor, Tensor)],
    mask: &mut Tensor,
) -> candle_core::Result<()> {
    let finished = live.iter().filter(|&&r| done[r]).count();
    if finished == 0 || 4 * finished < live.len() {
        return Ok(());
    }
    let keep: Vec<u32> = (0..live.len() as u32)
        .filter(|&i| !done[live[i as usize]])
        .collect();
    let index = Tensor::from_vec(keep.clone(), keep.len(), mask.device())?;
    for (k, v) in caches.iter_mut() {
        *k = k.index_select(&index, 0)?;
        *v = v.index_select(&index, 0)?;
    }
    *mask = mask.index_select(&index, 0)?;
    *live = keep.iter().map(|&i| live[i as usize]).collect();
    Ok(())
}
