//! Fused RMSNorm on the CPU: takes `x` (..., hidden) and `weight` (hidden), gives
//! `x / sqrt(mean(x^2) + eps) * weight` in one pass per row, and a backward that gives the
//! gradients of `x` and `weight` in one more pass.

use super::cpu::dispatch;
use super::cpu::{dense_last, for_rows, for_rows_acc, slice, Rows};
use super::kernels::{self, Real};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Forward op: `x` and `weight` in, the normalised `x` out (contiguous, same shape as `x`).
pub(crate) struct RmsNorm {
    pub eps: f64,
}

/// Backward op: `x`, `weight` and the output gradient in; gives a (rows + 1, hidden) tensor
/// whose first rows are the gradient of `x` and whose last row is the gradient of `weight`
/// (summed over rows), or only the `x` rows when `want_dw` is false.
struct RmsNormBwd {
    eps: f64,
    want_dw: bool,
}

fn check_weight(rows: &Rows, w: &Layout) -> Result<Rows> {
    let wr = Rows::new(w, "rms_norm weight")?;
    if w.dims().len() != 1 || wr.row_len != rows.row_len {
        bail!(
            "rms_norm: weight must have shape ({}), got {:?}",
            rows.row_len,
            w.dims()
        );
    }
    Ok(wr)
}

fn fwd<T: Real>(x: &[T], xl: &Layout, w: &[T], wl: &Layout, eps: f64) -> Result<Vec<T>> {
    let rows = Rows::new(xl, "rms_norm input")?;
    let wr = check_weight(&rows, wl)?;
    let w = wr.row(w, 0);
    let eps = T::from_f64(eps);
    let mut out = vec![T::zero(); rows.n_rows * rows.row_len];
    for_rows(&mut out, rows.row_len, |i, o| {
        kernels::rms_norm(rows.row(x, i), w, eps, o);
    });
    Ok(out)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "recap-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s1, "rms_norm", |x| fwd(
            x,
            l1,
            slice(s2, "rms_norm weight")?,
            l2,
            self.eps
        )?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(|op, s1, l1, s2, l2| super::cuda::rms_norm(s1, l1, s2, l2, op.eps));

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want_dw = w.track_op();
        let hidden = w.dim(0)?;
        let n_rows = x.elem_count() / hidden.max(1);
        let op = RmsNormBwd {
            eps: self.eps,
            want_dw,
        };
        let both = x.apply_op3_no_bwd(w, &dense_last(grad)?, &op)?;
        let dx = both.narrow(0, 0, n_rows)?.reshape(x.shape())?;
        let dw = if want_dw {
            Some(both.narrow(0, n_rows, 1)?.reshape(hidden)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

// The backward needs every input tensor and both flags of the op, so it takes them all.
#[allow(clippy::too_many_arguments)]
fn bwd<T: Real>(
    x: &[T],
    xl: &Layout,
    w: &[T],
    wl: &Layout,
    g: &[T],
    gl: &Layout,
    eps: f64,
    want_dw: bool,
) -> Result<(Vec<T>, usize)> {
    let rows = Rows::new(xl, "rms_norm input")?;
    let wr = check_weight(&rows, wl)?;
    let gr = Rows::new(gl, "rms_norm output gradient")?;
    if gl.dims() != xl.dims() {
        bail!(
            "rms_norm backward: gradient shape {:?} differs from input shape {:?}",
            gl.dims(),
            xl.dims()
        );
    }
    let w = wr.row(w, 0);
    let h = rows.row_len;
    let eps = T::from_f64(eps);
    let mut out = vec![T::zero(); (rows.n_rows + usize::from(want_dw)) * h];
    let (dx, dw_row) = out.split_at_mut(rows.n_rows * h);
    let partials = for_rows_acc(
        dx,
        h,
        || {
            if want_dw {
                vec![T::zero(); h]
            } else {
                vec![]
            }
        },
        |dw, i, dx| {
            let x = rows.row(x, i);
            let r = kernels::inv_rms(x, eps);
            let dw = want_dw.then_some(&mut dw[..]);
            kernels::rms_norm_backward(x, w, r, gr.row(g, i), dx, dw);
        },
    );
    if want_dw {
        for p in partials {
            for (d, v) in dw_row.iter_mut().zip(p) {
                *d += v;
            }
        }
    }
    Ok((out, rows.n_rows + usize::from(want_dw)))
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "recap-rms-norm-bwd"
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
        let h = *l1.dims().last().unwrap_or(&0);
        // The kernel also gives how many rows the output has (the weight gradient adds one).
        let n;
        let out = dispatch!(s1, "rms_norm", |x| {
            let (v, rows) = bwd(
                x,
                l1,
                slice(s2, "rms_norm weight")?,
                l2,
                slice(s3, "rms_norm output gradient")?,
                l3,
                self.eps,
                self.want_dw,
            )?;
            n = rows;
            v
        });
        Ok((out, Shape::from((n, h))))
    }

    cuda_fwd!(|op, s1, l1, s2, l2, s3, l3| {
        let (x, w, g) = ((s1, l1), (s2, l2), (s3, l3));
        super::cuda::rms_norm_backward(x, w, g, op.eps, op.want_dw)
    });
}
