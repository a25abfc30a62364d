//! Fused SwiGLU on the CPU: takes `gate` and `up` of the same shape (any views whose last
//! dimension is dense), gives `silu(gate) * up` in one pass, and a backward that gives the
//! gradients of both inputs in one more pass.

use super::cpu::dispatch;
use super::cpu::{dense_last, for_rows, for_rows2, slice, Rows};
use super::kernels::{self, Real};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Forward op: `gate`, `up` in, `silu(gate) * up` out (contiguous).
pub(crate) struct Swiglu;

/// Backward op: `gate`, `up` and the output gradient in; gives a (2, n) tensor holding the
/// gradient of `gate` (flattened) then that of `up`.
struct SwigluBwd;

fn rows_of(l1: &Layout, l2: &Layout, what: &str) -> Result<(Rows, Rows)> {
    if l1.dims() != l2.dims() {
        bail!(
            "swiglu{what}: gate {:?} and up {:?} must have the same shape",
            l1.dims(),
            l2.dims()
        );
    }
    Ok((Rows::new(l1, "swiglu gate")?, Rows::new(l2, "swiglu up")?))
}

fn fwd<T: Real>(g: &[T], gl: &Layout, u: &[T], ul: &Layout) -> Result<Vec<T>> {
    let (gr, ur) = rows_of(gl, ul, "")?;
    let mut out = vec![T::zero(); gr.n_rows * gr.row_len];
    for_rows(&mut out, gr.row_len, |i, o| {
        kernels::swiglu(gr.row(g, i), ur.row(u, i), o)
    });
    Ok(out)
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "recap-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, "swiglu", |g| fwd(g, l1, slice(s2, "swiglu up")?, l2)?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(|_, s1, l1, s2, l2| super::cuda::swiglu(s1, l1, s2, l2));

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &dense_last(grad)?, &SwigluBwd)?;
        let dg = both.get(0)?.reshape(gate.shape())?;
        let du = both.get(1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

fn bwd<T: Real>(
    g: &[T],
    gl: &Layout,
    u: &[T],
    ul: &Layout,
    d: &[T],
    dl: &Layout,
) -> Result<Vec<T>> {
    let (gr, ur) = rows_of(gl, ul, " backward")?;
    if dl.dims() != gl.dims() {
        bail!(
            "swiglu backward: gradient shape {:?} differs from input shape {:?}",
            dl.dims(),
            gl.dims()
        );
    }
    let dr = Rows::new(dl, "swiglu output gradient")?;
    let n = gr.n_rows * gr.row_len;
    let mut out = vec![T::zero(); 2 * n];
    for_rows2(&mut out, gr.row_len, |i, dg, du| {
        kernels::swiglu_backward(dr.row(d, i), gr.row(g, i), ur.row(u, i), dg, du)
    });
    Ok(out)
}

impl CustomOp3 for SwigluBwd {
    fn name(&self) -> &'static str {
        "recap-swiglu-bwd"
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
        let n = l1.shape().elem_count();
        let out = dispatch!(s1, "swiglu", |g| bwd(
            g,
            l1,
            slice(s2, "swiglu up")?,
            l2,
            slice(s3, "swiglu gradient")?,
            l3
        )?);
        Ok((out, Shape::from((2, n))))
    }

    cuda_fwd!(|_, s1, l1, s2, l2, s3, l3| super::cuda::swiglu_backward(
        (s1, l1),
        (s2, l2),
        (s3, l3)
    ));
}
