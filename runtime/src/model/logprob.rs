//! The log-prob pass: takes (prompt, completion) token pairs, gives per-token log-probabilities
//! of the completion tokens under a model, (n, L) with a 0/1 mask, batched with left-padded
//! prompts and right-padded completions. The policy pass keeps the graph (for the loss); the
//! reference pass is detached.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};
use super::{padded_causal_mask, Model};
use crate::ops;

/// A padded batch of (prompt, completion) rows, ready for [`token_logprobs`].
///
/// Layout of row r: `P - len(prompt_r)` pads, the prompt, the completion, then pads up to
/// `P + L`. Completion token j of every row sits at column `P + j`, so the log-prob of
/// completion token j is read from the logits at column `P + j - 1`.
pub struct SequenceBatch {
    /// (n, P + L) u32 token ids.
    pub input_ids: Tensor,
    /// (n, 1, P + L, P + L) additive f32 mask: causal, padding masked.
    pub attention_mask: Tensor,
    /// (n, L) u32 completion ids, padded with `pad_id`.
    pub completion_ids: Tensor,
    /// (n, L) f32: 1 for real completion tokens, 0 for padding.
    pub completion_mask: Tensor,
    /// P: the padded prompt width.
    pub prompt_width: usize,
    /// L: the padded completion width.
    pub completion_width: usize,
    /// The sampling temperature the completions were drawn at: the logits are divided by it
    /// before the log-softmax, as TRL does when it scores completions, so the log-probs are
    /// those of the distribution that sampled them. 1 for targets that were not sampled (SFT).
    pub temperature: f64,
}

impl SequenceBatch {
    /// Packs rows; `prompts[r]` and `completions[r]` belong together. Every prompt must hold at
    /// least one token; completions may be empty (their mask row is all zeros).
    pub fn new(
        prompts: &[&[u32]],
        completions: &[&[u32]],
        pad_id: u32,
        device: &Device,
    ) -> Result<SequenceBatch> {
        if prompts.len() != completions.len() {
            return Err(ModelError::Invalid(format!(
                "{} prompts but {} completions",
                prompts.len(),
                completions.len()
            )));
        }
        if prompts.is_empty() {
            return Err(ModelError::Invalid("empty batch".into()));
        }
        if let Some(r) = prompts.iter().position(|p| p.is_empty()) {
            return Err(ModelError::Invalid(format!("prompt of row {r} is empty")));
        }
        let n = prompts.len();
        let p_w = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let l_w = completions
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let t = p_w + l_w;
        let mut ids = vec![pad_id; n * t];
        let mut pad = vec![vec![true; t]; n];
        let mut comp = vec![pad_id; n * l_w];
        let mut cmask = vec![0f32; n * l_w];
        for r in 0..n {
            let (p, c) = (prompts[r], completions[r]);
            let start = p_w - p.len();
            for (j, &id) in p.iter().enumerate() {
                ids[r * t + start + j] = id;
                pad[r][start + j] = false;
            }
            for (j, &id) in c.iter().enumerate() {
                ids[r * t + p_w + j] = id;
                pad[r][p_w + j] = false;
                comp[r * l_w + j] = id;
                cmask[r * l_w + j] = 1.0;
            }
        }
        Ok(SequenceBatch {
            input_ids: Tensor::from_vec(ids, (n, t), device)?,
            attention_mask: padded_causal_mask(&pad, DType::F32, device)?,
            completion_ids: Tensor::from_vec(comp, (n, l_w), device)?,
            completion_mask: Tensor::from_vec(cmask, (n, l_w), device)?,
            prompt_width: p_w,
            completion_width: l_w,
            temperature: 1.0,
        })
    }

    /// The batch scored at sampling temperature `temperature` (> 0).
    pub fn with_temperature(mut self, temperature: f64) -> Result<SequenceBatch> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(ModelError::Invalid(format!(
                "log-probs need a sampling temperature > 0, got {temperature}"
            )));
        }
        self.temperature = temperature;
        Ok(self)
    }
}

/// Per-token log-probabilities (n, L) f32 of the completion tokens under `model`, with the
/// graph kept (gradients flow to a trainable model's variables). Padding positions hold
/// finite values; multiply by `completion_mask`.
pub fn token_logprobs(model: &Model, batch: &SequenceBatch) -> candle_core::Result<Tensor> {
    let hidden = model.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
    // Only the L positions that predict completion tokens are projected onto the vocabulary.
    let hidden = hidden.narrow(1, batch.prompt_width - 1, batch.completion_width)?;
    let mut logits = model.logits(&hidden)?;
    if batch.temperature != 1.0 {
        logits = logits.affine(1.0 / batch.temperature, 0.0)?;
    }
    ops::log_softmax_gather(&logits, &batch.completion_ids)
}

/// The same log-probabilities with no graph: for the frozen reference model (or old-policy
/// values). It runs on a detached view of the weights, so no graph is built even when `model`
/// is trainable.
pub fn reference_logprobs(model: &Model, batch: &SequenceBatch) -> candle_core::Result<Tensor> {
    token_logprobs(&model.detached_view(), batch)
}
