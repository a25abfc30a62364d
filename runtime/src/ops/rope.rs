//! Fused rotary position embedding (non-interleaved, HF "rotate_half" layout) on the CPU: takes
//! `x` (batch, heads, seq, head_dim), possibly a transposed view, and `cos`, `sin`
//! (>= seq, head_dim / 2); gives the rotated `x` as a contiguous tensor. The backward is the
//! inverse rotation (the same kernel with `-sin`); `cos` and `sin` get no gradient.

use super::cpu::dispatch;
use super::cpu::{dense_last, for_rows, slice, Rows};
use super::kernels::{self, Real};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Rotates `x` by the angles whose cosines and sines are given; `inverse` rotates backwards.
pub(crate) struct Rope {
    pub inverse: bool,
}

fn fwd<T: Real>(
    x: &[T],
    xl: &Layout,
    cos: &[T],
    cl: &Layout,
    sin: &[T],
    sl: &Layout,
    inverse: bool,
) -> Result<Vec<T>> {
    let (_b, _h, seq, d) = match xl.dims() {
        &[b, h, s, d] => (b, h, s, d),
        dims => bail!("rope: input must be (batch, heads, seq, head_dim), got {dims:?}"),
    };
    if d % 2 != 0 {
        bail!("rope: head_dim must be even, got {d}");
    }
    let half = d / 2;
    let rows = Rows::new(xl, "rope input")?;
    let cr = Rows::new(cl, "rope cos")?;
    let sr = Rows::new(sl, "rope sin")?;
    for (name, l, r) in [("cos", cl, &cr), ("sin", sl, &sr)] {
        if l.dims().len() != 2 || r.row_len != half || r.n_rows < seq {
            bail!(
                "rope: {name} must be (>= {seq}, {half}) for input {:?}, got {:?}",
                xl.dims(),
                l.dims()
            );
        }
    }
    let mut out = vec![T::zero(); rows.n_rows * d];
    for_rows(&mut out, d, |i, o| {
        let pos = i % seq;
        o.copy_from_slice(rows.row(x, i));
        kernels::rope(o, cr.row(cos, pos), sr.row(sin, pos), inverse);
    });
    Ok(out)
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "recap-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, "rope", |x| fwd(
            x,
            l1,
            slice(s2, "rope cos")?,
            l2,
            slice(s3, "rope sin")?,
            l3,
            self.inverse
        )?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(|op, s1, l1, s2, l2, s3, l3| super::cuda::rope(
        (s1, l1),
        (s2, l2),
        (s3, l3),
        op.inverse
    ));

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inv = Rope {
            inverse: !self.inverse,
        };
        let grad = dense_last(grad)?;
        Ok((Some(grad.apply_op3_no_bwd(cos, sin, &inv)?), None, None))
    }
}
