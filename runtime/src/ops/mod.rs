//! Tensor building blocks of the models and losses: takes candle tensors, gives candle tensors,
//! always with a working backward pass.
//!
//! candle's fused ops (softmax_last_dim, rms_norm, rope) silently drop gradients, so every model
//! and loss goes through these functions instead. Each function runs a fused kernel, a candle
//! `CustomOp` with its own backward (itself a `CustomOp`): on the CPU with f32 or f64 tensors
//! its `cpu_fwd` runs the slice kernels of `kernels`, parallel over rows; with the `cuda`
//! feature, on a CUDA device with f32 or bf16 tensors its `cuda_fwd` launches the CUDA kernels
//! of `cuda` (`runtime/kernels/`). One op type per kernel serves both devices, so the backward
//! wiring is written once. On other devices and dtypes each function runs the plain composition
//! of differentiable candle ops kept here as `reference`, against which the fused kernels are
//! tested. The backward passes of the fused kernels are not themselves differentiable (no
//! second-order gradients).

/// The `cuda_fwd` of a fused op (inside its `CustomOp1`, `CustomOp2` or `CustomOp3` impl): the
/// body gets the op as `$this` and the inputs' CUDA storages and layouts as `$s`, `$l`, and
/// gives the output storage and shape. Compiled only with the `cuda` feature.
macro_rules! cuda_fwd {
    (|$this:pat, $($s:ident, $l:ident),+| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            $($s: &candle_core::CudaStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            let $this = self;
            $body
        }
    };
}

mod attention;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub(crate) mod kernels;
pub mod launch;
mod log_softmax;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;
#[cfg(test)]
mod tests;

use candle_core::{DType, Result, Tensor, D};

/// True when the fused kernels take these tensors: all in one dtype on one device, the CPU in
/// f32 or f64 or (with the `cuda` feature) a CUDA device in f32 or bf16.
fn fused(ts: &[&Tensor]) -> bool {
    let (dtype, dev) = (ts[0].dtype(), ts[0].device());
    let kernel = match dtype {
        DType::F32 => dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda()),
        DType::F64 => dev.is_cpu(),
        DType::BF16 => cfg!(feature = "cuda") && dev.is_cuda(),
        _ => false,
    };
    kernel
        && ts
            .iter()
            .all(|t| t.dtype() == dtype && t.device().same_device(dev))
}

use cpu::dense_last as dense;

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, weight]) {
        return dense(x)?.apply_op2(&weight.contiguous()?, rms_norm::RmsNorm { eps });
    }
    reference::rms_norm(x, weight, eps)
}

/// Softmax over the last dimension. A row that is entirely `-inf` gives zeros on the fused path.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) {
        return dense(x)?.apply_op1(softmax::Softmax);
    }
    reference::softmax_last_dim(x)
}

/// Rotary position embedding, non-interleaved (HF "rotate_half" layout).
/// `x`: (batch, heads, seq, head_dim); `cos`, `sin`: (seq, head_dim / 2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused(&[x, cos, sin]) {
        let (cos, sin) = (dense(cos)?, dense(sin)?);
        return dense(x)?.apply_op3(&cos, &sin, rope::Rope { inverse: false });
    }
    reference::rope(x, cos, sin)
}

/// SwiGLU activation of the MLP: `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(&[gate, up]) {
        return dense(gate)?.apply_op2(&dense(up)?, swiglu::Swiglu);
    }
    reference::swiglu(gate, up)
}

/// Log-probability of each target token: `log_softmax(logits)[.., target]`.
/// `logits`: (batch, seq, vocab); `targets`: (batch, seq) u32. Gives (batch, seq), in f32 on
/// CUDA whatever the logits' dtype.
pub fn log_softmax_gather(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused(&[logits]) && targets.device().same_device(logits.device()) {
        // The CUDA kernels read u32 targets; the CPU ones also take i64 and u8 and check each.
        let targets = match logits.device().is_cpu() {
            true => targets.contiguous()?,
            false => targets.to_dtype(DType::U32)?.contiguous()?,
        };
        return dense(logits)?.apply_op2(&targets, log_softmax::LogSoftmaxGather);
    }
    reference::log_softmax_gather(logits, targets)
}

/// Scaled dot-product attention with grouped-query heads.
/// `q`: (batch, heads, tq, head_dim); `k`, `v`: (batch, kv_heads, tk, head_dim) where heads is a
/// multiple of kv_heads (query head i reads kv head i / (heads / kv_heads)); `mask`: optional
/// additive mask broadcastable to (batch, heads, tq, tk). Gives (batch, heads, tq, head_dim).
/// On the fused path a query whose keys are all masked gets zeros (the reference gives NaN), and
/// the mask gets no gradient.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if fused(&[q, k, v]) && mask.is_none_or(|m| m.device().same_device(q.device())) {
        let (b, h, tq, _) = q.dims4()?;
        let (_, _, tk, _) = k.dims4()?;
        // The kernels read the mask at the full (batch, heads, tq, tk) shape through zero
        // strides, so broadcasting costs nothing; on the CPU only a mask whose last dimension
        // is itself broadcast is copied, on CUDA none is.
        let mask = match mask {
            Some(m) => {
                let m = m.to_dtype(q.dtype())?.broadcast_as((b, h, tq, tk))?;
                Some(match q.device().is_cpu() {
                    true => dense(&m)?,
                    false => m,
                })
            }
            None => None,
        };
        let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
        return q.apply_op3(&k, &v, attention::Attention { scale, mask });
    }
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
        // candle's gather needs contiguous indices; targets are often a narrowed view of the ids.
        let targets = targets.contiguous()?.unsqueeze(D::Minus1)?;
        let picked = shifted.gather(&targets, D::Minus1)?;
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
