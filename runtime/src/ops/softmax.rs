//! Fused softmax over the last dimension on the CPU: takes `x` (..., n), gives `softmax(x)` in
//! one pass per row, and a backward that gives `y * (dy - sum(dy * y))` from the output `y`.

use super::cpu::dispatch;
use super::cpu::{dense_last, for_rows, slice, Rows};
use super::kernels::{self, Real};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Forward op: `x` in, `softmax(x)` over the last dimension out (contiguous).
pub(crate) struct Softmax;

/// Backward op: the forward output `y` and its gradient `dy` in, the gradient of `x` out.
struct SoftmaxBwd;

fn fwd<T: Real>(x: &[T], xl: &Layout) -> Result<Vec<T>> {
    let rows = Rows::new(xl, "softmax input")?;
    let mut out = vec![T::zero(); rows.n_rows * rows.row_len];
    for_rows(&mut out, rows.row_len, |i, o| {
        o.copy_from_slice(rows.row(x, i));
        kernels::softmax(o)
    });
    Ok(out)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "recap-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s, "softmax", |x| fwd(x, l)?);
        Ok((out, l.shape().clone()))
    }

    cuda_fwd!(|_, s, l| super::cuda::softmax(s, l));

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dense_last(grad)?, &SoftmaxBwd)?))
    }
}

fn bwd<T: Real>(y: &[T], yl: &Layout, g: &[T], gl: &Layout) -> Result<Vec<T>> {
    let yr = Rows::new(yl, "softmax output")?;
    let gr = Rows::new(gl, "softmax output gradient")?;
    if yl.dims() != gl.dims() {
        bail!(
            "softmax backward: gradient shape {:?} differs from output shape {:?}",
            gl.dims(),
            yl.dims()
        );
    }
    let mut out = vec![T::zero(); yr.n_rows * yr.row_len];
    for_rows(&mut out, yr.row_len, |i, o| {
        o.copy_from_slice(gr.row(g, i));
        kernels::softmax_backward(o, yr.row(y, i))
    });
    Ok(out)
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "recap-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, "softmax", |y| bwd(
            y,
            l1,
            slice(s2, "softmax gradient")?,
            l2
        )?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(|_, s1, l1, s2, l2| super::cuda::softmax_backward((s1, l1), (s2, l2)));
}
