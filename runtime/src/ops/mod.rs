//! Tensor building blocks of the models and losses: takes candle tensors, gives candle tensors,
//! always with a working backward pass.
//!
//! candle's fused ops (softmax_last_dim, rms_norm, rope) silently drop gradients, so every model
//! and loss goes through these functions instead. They start as compositions of differentiable
//! candle ops; fused CPU kernels with their own backward replace them one by one, each tested
//! against the plain composition kept here as `reference`.

use candle_core::{DType, Result, Tensor, D};

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    reference::rms_norm(x, weight, eps)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    reference::softmax_last_dim(x)
}

/// Rotary position embedding, non-interleaved (HF "rotate_half" layout).
/// `x`: (batch, heads, seq, head_dim); `cos`, `sin`: (seq, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    reference::rope(x, cos, sin)
}

/// SwiGLU activation of the MLP: `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    reference::swiglu(gate, up)
}

/// Log-probability of each target token: `log_softmax(logits)[.., target]`.
/// `logits`: (batch, seq, vocab); `targets`: (batch, seq) u32. Gives (batch, seq) f32.
pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    reference::log_softmax_gather(logits, targets)
}

/// Scaled dot-product attention with grouped-query heads.
/// `q`: (batch, heads, tq, head_dim); `k`, `v`: (batch, kv_heads, tk, head_dim) where heads is a
/// multiple of kv_heads (query head i reads kv head i / (heads / kv_heads)); `mask`: optional
/// additive mask broadcastable to (batch, heads, tq, tk). Gives (batch, heads, tq, head_dim).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    reference::attention(q, k, v, mask, scale)
}

/// The plain compositions of differentiable candle ops; fused kernels are tested against them.
pub mod reference {
    use super::*;

    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        // Half-precision inputs are normalised in f32; f32 and f64 stay in their own precision
        // so the f64 finite-difference tests measure the model, not a rounding step.
        let dtype = x.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(weight)
    }

    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (_b, _h, seq, d) = x.dims4()?;
        let cos = cos.narrow(0, 0, seq)?;
        let sin = sin.narrow(0, 0, seq)?;
        let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
        let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }

    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        candle_nn::ops::silu(gate)? * up
    }

    pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let picked = shifted.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
        (picked - lse)?.squeeze(D::Minus1)
    }

    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, h, tq, d) = q.dims4()?;
        let (_, kvh, tk, _) = k.dims4()?;
        let rep = h / kvh;
        // Query heads that share a kv head are stacked along the row axis, so one matmul per kv
        // head serves the whole group without copying keys and values `rep` times.
        let q = (q * scale)?.contiguous()?.reshape((b, kvh, rep * tq, d))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, h, tq, tk))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let p = super::softmax_last_dim(&scores)?.reshape((b, kvh, rep * tq, tk))?;
        p.matmul(v)?.reshape((b, h, tq, d))
    }
}
