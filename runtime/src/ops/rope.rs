//! Fused rotary position embedding (non-interleaved, HF "rotate_half" layout) on the CPU: takes
//! `x` (batch, heads, seq, head_dim), possibly a transposed view, and `cos`, `sin`
//! (>= seq, head_dim / 2); gives the rotated `x` as a contiguous tensor. The backward is the
//! inverse rotation (the same kernel with `-sin`); `cos` and `sin` get no gradient.

use super::cpu::dispatch;
use super::cpu::{dense_last, for_rows, slice, Real, Rows};
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
        let x = rows.row(x, i);
        let pos = i % seq;
        let c = cr.row(cos, pos);
        let s = sr.row(sin, pos);
        let (x1, x2) = x.split_at(half);
        let (o1, o2) = o.split_at_mut(half);
        // The inverse rotation is the rotation by -angle: the same loop with -sin.
        let sign = if inverse { -T::one() } else { T::one() };
        // Zipped iterators rather than indices, so there are no bounds checks to keep the loop
        // from vectorising.
        for ((((o1, o2), (&a, &b)), &c), &s) in o1
            .iter_mut()
            .zip(o2.iter_mut())
            .zip(x1.iter().zip(x2))
            .zip(c)
            .zip(s)
        {
            let s = s * sign;
            *o1 = a * c - b * s;
            *o2 = b * c + a * s;
        }
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
