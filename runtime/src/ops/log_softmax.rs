//! Fused log-softmax + gather on the CPU: takes `logits` (..., vocab), possibly a narrowed view,
//! and integer `targets` (...); gives `log_softmax(logits)[.., target]` (...) in one pass per
//! row without materialising the log-softmax, and a backward that writes
//! `dy * (onehot(target) - softmax(logits))` in one more pass. `targets` get no gradient.

use super::cpu::dispatch;
use super::cpu::{for_blocks, for_rows, slice, Rows};
use super::kernels::{self, Real};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Forward op: `logits`, `targets` in; the log-probability of each target out.
pub(crate) struct LogSoftmaxGather;

/// Backward op: `logits`, `targets` and the gradient of the output in; the gradient of
/// `logits` out (contiguous).
struct LogSoftmaxGatherBwd;

/// Reads contiguous integer targets as indices, checking each against the vocabulary size.
fn targets_of(s: &CpuStorage, l: &Layout, vocab: usize) -> Result<Vec<usize>> {
    let (a, b) = match l.contiguous_offsets() {
        Some(o) => o,
        None => bail!("log_softmax_gather: targets must be contiguous"),
    };
    let idx: Vec<i64> = match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        CpuStorage::I64(v) => v[a..b].to_vec(),
        CpuStorage::U8(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        s => bail!(
            "log_softmax_gather: targets must be u32, i64 or u8, got {:?}",
            s.dtype()
        ),
    };
    idx.into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t < 0 || t as usize >= vocab {
                bail!("log_softmax_gather: target {t} at flat position {i} is outside the vocabulary of {vocab}")
            }
            Ok(t as usize)
        })
        .collect()
}

fn check_shapes(ll: &Layout, tl: &Layout) -> Result<Rows> {
    let rows = Rows::new(ll, "log_softmax_gather logits")?;
    let lead = &ll.dims()[..ll.dims().len() - 1];
    if tl.dims() != lead {
        bail!(
            "log_softmax_gather: targets {:?} must have the leading dimensions of logits {:?}",
            tl.dims(),
            ll.dims()
        );
    }
    Ok(rows)
}

fn fwd<T: Real>(x: &[T], xl: &Layout, t: &[usize]) -> Result<Vec<T>> {
    let rows = Rows::new(xl, "log_softmax_gather logits")?;
    let mut out = vec![T::zero(); rows.n_rows];
    for_blocks(&mut out, 1, rows.row_len, |first, block| {
        for (k, o) in block.iter_mut().enumerate() {
            let row = rows.row(x, first + k);
            *o = row[t[first + k]] - kernels::log_sum_exp(row);
        }
    });
    Ok(out)
}

impl CustomOp2 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "recap-log-softmax-gather"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_shapes(l1, l2)?;
        let vocab = *l1.dims().last().unwrap_or(&0);
        let t = targets_of(s2, l2, vocab)?;
        let out = dispatch!(s1, "log_softmax_gather", |x| fwd(x, l1, &t)?);
        Ok((out, l2.shape().clone()))
    }

    cuda_fwd!(|_, s1, l1, s2, l2| super::cuda::log_softmax_gather(s1, l1, s2, l2));

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = logits.apply_op3_no_bwd(targets, &grad, &LogSoftmaxGatherBwd)?;
        Ok((Some(dx), None))
    }
}

fn bwd<T: Real>(x: &[T], xl: &Layout, t: &[usize], g: &[T]) -> Result<Vec<T>> {
    let rows = Rows::new(xl, "log_softmax_gather logits")?;
    let mut out = vec![T::zero(); rows.n_rows * rows.row_len];
    for_rows(&mut out, rows.row_len, |i, o| {
        let row = rows.row(x, i);
        let lse = kernels::log_sum_exp(row);
        let gi = g[i];
        for (o, &v) in o.iter_mut().zip(row) {
            *o = -gi * (v - lse).fexp();
        }
        o[t[i]] += gi;
    });
    Ok(out)
}

impl CustomOp3 for LogSoftmaxGatherBwd {
    fn name(&self) -> &'static str {
        "recap-log-softmax-gather-bwd"
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
        check_shapes(l1, l2)?;
        if l3.dims() != l2.dims() {
            bail!(
                "log_softmax_gather backward: gradient {:?} must have the shape of targets {:?}",
                l3.dims(),
                l2.dims()
            );
        }
        let vocab = *l1.dims().last().unwrap_or(&0);
        let t = targets_of(s2, l2, vocab)?;
        let (a, b) = match l3.contiguous_offsets() {
            Some(o) => o,
            None => bail!("log_softmax_gather backward: gradient must be contiguous"),
        };
        let out = dispatch!(s1, "log_softmax_gather", |x| bwd(
            x,
            l1,
            &t,
            &slice(s3, "log_softmax_gather gradient")?[a..b],
        )?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(
        |_, s1, l1, s2, l2, s3, l3| super::cuda::log_softmax_gather_backward(
            (s1, l1),
            (s2, l2),
            (s3, l3)
        )
    );
}
