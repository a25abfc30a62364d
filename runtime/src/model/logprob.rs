//! The log-prob pass: takes (prompt, completion) token pairs, gives per-token log-probabilities
//! of the completion tokens under a model, (n, L) with a 0/1 mask, batched with left-padded
//! prompts and right-padded completions. The policy pass keeps the graph (for the loss); the
//! reference pass is detached.
//!
//! Neither pass makes the (n, L, vocab) logits at once: [`PassOptions::logit_rows`] positions are
//! projected onto the vocabulary at a time and only their log-probabilities are kept. The
//! training pass on candle's autograd path ([`GraphPass`]) builds no graph through the logits in
//! its forward; its backward makes each chunk's logits again, takes their gradient, and hands it
//! on to the model's graph (or, with checkpointing, to each block in turn, made again from its
//! saved input).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::error::{ModelError, Result};
use super::{padded_causal_mask, Model};
use crate::ops;

/// A padded batch of (prompt, completion) rows, ready for [`token_logprobs`].
///
/// Layout of row r: `P - len(prompt_r)` pads, the prompt, the completion, then pads up to
/// `P + L`. Completion token j of every row sits at column `P + j`, so the log-prob of
/// completion token j is read from the logits at column `P + j - 1`.
#[derive(Clone)]
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

/// Elements of f32 logits that a pass makes at once (16 MiB): the chunk of positions projected
/// onto the vocabulary together is this over the vocabulary size.
pub const LOGIT_CHUNK_ELEMENTS: usize = 1 << 22;

/// How a training pass bounds its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassOptions {
    /// Positions whose logits are made at once (at least 1).
    pub logit_rows: usize,
    /// Keep only each block's input in the forward and make the block's activations again in the
    /// backward (`train { checkpointing = true }`).
    pub checkpointing: bool,
}

impl PassOptions {
    /// The default options for `model`: chunks of [`LOGIT_CHUNK_ELEMENTS`], no checkpointing.
    pub fn of(model: &Model) -> PassOptions {
        PassOptions::for_vocab(model.config().vocab_size)
    }

    /// The default options for a vocabulary of `vocab` entries.
    pub fn for_vocab(vocab: usize) -> PassOptions {
        PassOptions {
            logit_rows: (LOGIT_CHUNK_ELEMENTS / vocab.max(1)).max(1),
            checkpointing: false,
        }
    }

    /// These options with checkpointing on or off.
    pub fn with_checkpointing(self, checkpointing: bool) -> PassOptions {
        PassOptions {
            checkpointing,
            ..self
        }
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
/// is trainable, and makes the logits in chunks of [`PassOptions::of`] the model.
pub fn reference_logprobs(model: &Model, batch: &SequenceBatch) -> candle_core::Result<Tensor> {
    let view = model.detached_view();
    let hidden = view.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
    let sel = selected(&view, &hidden, batch)?;
    let lp = chunk_logprobs(&view, &sel, batch, PassOptions::of(model).logit_rows)?;
    lp.reshape(batch.completion_ids.dims())
}

/// The rows of `hidden` (n, P + L, hidden) that predict completion tokens, as (n * L, hidden).
fn selected(model: &Model, hidden: &Tensor, batch: &SequenceBatch) -> candle_core::Result<Tensor> {
    let n = batch.completion_ids.dim(0)?;
    hidden
        .narrow(1, batch.prompt_width - 1, batch.completion_width)?
        .reshape((n * batch.completion_width, model.config().hidden_size))
}

/// The logits of `sel` (rows, hidden) divided by the batch's sampling temperature.
fn scaled_logits(
    model: &Model,
    sel: &Tensor,
    batch: &SequenceBatch,
) -> candle_core::Result<Tensor> {
    let logits = model.logits(sel)?;
    if batch.temperature != 1.0 {
        logits.affine(1.0 / batch.temperature, 0.0)
    } else {
        Ok(logits)
    }
}

/// The log-probabilities (n * L) of the completion tokens from the selected rows `sel`
/// (n * L, hidden), `rows` positions at a time. With a detached `model` and `sel` no graph is
/// built, so each chunk's logits are freed before the next is made.
fn chunk_logprobs(
    model: &Model,
    sel: &Tensor,
    batch: &SequenceBatch,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let ns = sel.dim(0)?;
    let targets = batch.completion_ids.flatten_all()?;
    let rows = rows.max(1);
    let mut parts = Vec::with_capacity(ns.div_ceil(rows));
    for first in (0..ns).step_by(rows) {
        let len = rows.min(ns - first);
        let logits = scaled_logits(model, &sel.narrow(0, first, len)?, batch)?;
        parts.push(ops::log_softmax_gather(
            &logits,
            &targets.narrow(0, first, len)?,
        )?);
    }
    Tensor::cat(&parts, 0)
}

/// What the autograd path's training forward keeps for its backward.
enum Kept {
    /// The last block's output with the whole model's graph behind it.
    Graph(Tensor),
    /// Checkpointing: every block's input and the last block's output, all detached.
    Blocks { inputs: Vec<Tensor>, last: Tensor },
}

/// The training pass on candle's autograd path (any device and dtype): the log-probabilities of
/// the completion tokens with no graph through the logits, and a backward
/// ([`GraphPass::loss_backward`]) that makes the logits again chunk by chunk. With
/// [`PassOptions::checkpointing`] the forward keeps only each block's input and the backward
/// rebuilds one block's graph at a time, injecting the gradient of its output.
pub struct GraphPass<'m> {
    model: &'m Model,
    batch_dims: (usize, usize),
    /// The mask in the compute dtype.
    mask: Tensor,
    batch: SequenceBatch,
    kept: Kept,
    /// The log-probabilities (n, L), no graph.
    logp: Tensor,
    opts: PassOptions,
}

impl<'m> GraphPass<'m> {
    /// The forward of `model` on `batch`.
    pub fn forward(
        model: &'m Model,
        batch: &SequenceBatch,
        opts: PassOptions,
    ) -> candle_core::Result<GraphPass<'m>> {
        let (b, t) = batch.input_ids.dims2()?;
        let c = model.config();
        if t > c.max_position_embeddings {
            candle_core::bail!(
                "sequence length {t} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            );
        }
        let mask = batch.attention_mask.to_dtype(model.compute_dtype())?;
        let view = model.detached_view();
        let kept = if opts.checkpointing {
            let mut inputs = Vec::with_capacity(c.num_hidden_layers);
            let mut x = view.embed(&batch.input_ids)?;
            for l in 0..c.num_hidden_layers {
                let next = view.block(l, &x, b, t, &mask, None)?;
                inputs.push(x);
                x = next;
            }
            Kept::Blocks { inputs, last: x }
        } else {
            let mut x = model.embed(&batch.input_ids)?;
            for l in 0..c.num_hidden_layers {
                x = model.block(l, &x, b, t, &mask, None)?;
            }
            Kept::Graph(x)
        };
        let last = match &kept {
            Kept::Graph(x) => x.detach(),
            Kept::Blocks { last, .. } => last.clone(),
        };
        let hidden = final_norm(&view, &last, (b, t))?;
        let sel = selected(&view, &hidden, batch)?;
        let logp = chunk_logprobs(&view, &sel, batch, opts.logit_rows)?
            .reshape(batch.completion_ids.dims())?;
        Ok(GraphPass {
            model,
            batch_dims: (b, t),
            mask,
            batch: batch.clone(),
            kept,
            logp,
            opts,
        })
    }

    /// The log-probabilities (n, L) f32, with no graph.
    pub fn logp(&self) -> &Tensor {
        &self.logp
    }

    /// The gradient of every trainable weight of the model given `dlogp` (n, L), the gradient
    /// of a loss with respect to the log-probabilities: (weight tensor, gradient) pairs, one per
    /// trainable variable that the pass reaches.
    pub fn backward(&self, dlogp: &Tensor) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        let (model, batch) = (self.model, &self.batch);
        let vars = model.trainable_vars();
        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        // Adds the weights' part of one partial backward to the sums.
        let mut take = |grads: &GradStore| -> candle_core::Result<()> {
            for (v, a) in vars.iter().zip(acc.iter_mut()) {
                if let Some(g) = grads.get(v.as_tensor()) {
                    *a = Some(match a.take() {
                        Some(old) => (old + g)?,
                        None => g.clone(),
                    });
                }
            }
            Ok(())
        };
        let dlogp = dlogp.to_dtype(DType::F32)?.flatten_all()?;
        // The top: the last block's output as the graph's input (a Var when checkpointing, the
        // model's graph otherwise), its final norm and selected rows.
        let top_var = match &self.kept {
            Kept::Graph(_) => None,
            Kept::Blocks { last, .. } => Some(Var::from_tensor(last)?),
        };
        let top = match (&self.kept, &top_var) {
            (_, Some(v)) => v.as_tensor().clone(),
            (Kept::Graph(x), None) => x.clone(),
            (Kept::Blocks { last, .. }, None) => last.clone(),
        };
        let hidden = final_norm(model, &top, self.batch_dims)?;
        let sel = selected(model, &hidden, batch)?;
        // Each chunk of positions: its logits made again from a detached copy of its rows, and
        // the gradient of those rows and of the head.
        let ns = sel.dim(0)?;
        let targets = batch.completion_ids.flatten_all()?;
        let rows = self.opts.logit_rows.max(1);
        let mut dsel = Vec::with_capacity(ns.div_ceil(rows));
        for first in (0..ns).step_by(rows) {
            let len = rows.min(ns - first);
            let part = Var::from_tensor(&sel.narrow(0, first, len)?.detach())?;
            let logits = scaled_logits(model, part.as_tensor(), batch)?;
            let lp = ops::log_softmax_gather(&logits, &targets.narrow(0, first, len)?)?;
            let grads = (lp * dlogp.narrow(0, first, len)?)?.sum_all()?.backward()?;
            take(&grads)?;
            dsel.push(match grads.get(part.as_tensor()) {
                Some(g) => g.clone(),
                None => part.as_tensor().zeros_like()?,
            });
        }
        let dsel = Tensor::cat(&dsel, 0)?;
        let grads = inject(&sel, &dsel)?;
        take(&grads)?;
        if let (Kept::Blocks { inputs, .. }, Some(v)) = (&self.kept, &top_var) {
            let (b, t) = self.batch_dims;
            let mut dx = grad_of(&grads, v)?;
            drop(grads);
            for (l, x) in inputs.iter().enumerate().rev() {
                let xv = Var::from_tensor(x)?;
                let out = model.block(l, xv.as_tensor(), b, t, &self.mask, None)?;
                let grads = inject(&out, &dx)?;
                take(&grads)?;
                dx = grad_of(&grads, &xv)?;
            }
            take(&inject(&model.embed(&batch.input_ids)?, &dx)?)?;
        }
        Ok(vars
            .iter()
            .zip(acc)
            .filter_map(|(v, g)| g.map(|g| (v.as_tensor().clone(), g)))
            .collect())
    }

    /// Runs candle's backward of `loss`, a small graph built from `logp` (a `Var` holding
    /// [`GraphPass::logp`]), to get d loss / d logp, then this pass's backward, and gives the
    /// `GradStore` of `loss.backward()` with every weight's gradient inserted.
    pub fn loss_backward(&self, loss: &Tensor, logp: &Tensor) -> candle_core::Result<GradStore> {
        let mut grads = loss.backward()?;
        let dlogp = match grads.get(logp) {
            Some(g) => g.clone(),
            // A loss that does not depend on the log-probs gives every weight a zero gradient.
            None => self.logp.zeros_like()?,
        };
        for (w, g) in self.backward(&dlogp)? {
            grads.insert(&w, g);
        }
        Ok(grads)
    }
}

/// The final norm of the last block's output `x` (b * t, hidden), as (b, t, hidden).
fn final_norm(model: &Model, x: &Tensor, (b, t): (usize, usize)) -> candle_core::Result<Tensor> {
    let c = model.config();
    let w = model.cw(&model.weights.norm)?;
    ops::rms_norm(x, &w, c.rms_norm_eps)?.reshape((b, t, c.hidden_size))
}

/// The backward of `sum(out * grad)`: hands the gradient `grad` of `out` on to the graph
/// behind `out`.
fn inject(out: &Tensor, grad: &Tensor) -> candle_core::Result<GradStore> {
    (out * grad.to_dtype(out.dtype())?.detach())?
        .sum_all()?
        .backward()
}

/// The gradient `grads` holds for `v`, zeros when the graph did not reach it.
fn grad_of(grads: &GradStore, v: &Var) -> candle_core::Result<Tensor> {
    match grads.get(v.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => v.as_tensor().zeros_like(),
    }
}
