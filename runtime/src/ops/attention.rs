//! Fused scaled-dot-product attention on the CPU: takes `q` (batch, heads, tq, d), `k` and `v`
//! (batch, kv_heads, tk, d) with kv_heads dividing heads (grouped-query attention), views with a
//! dense last dimension, and an optional additive mask broadcast to (batch, heads, tq, tk); gives
//! `softmax(q k^T * scale + mask) v` (batch, heads, tq, d) without materialising the scores
//! tensor. The backward recomputes the probabilities per (batch, kv head) group and gives the
//! gradients of `q`, `k` and `v` in one pass; the mask gets none.

use super::cpu::dispatch;
use super::cpu::{dense_last, par_sized, slice, Rows};
use super::kernels::{self, axpy, multiversion, Real};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Forward op. The mask is held by the op (a custom op has at most three tensor inputs); it is
/// already broadcast to (batch, heads, tq, tk) with a dense last dimension.
pub(crate) struct Attention {
    pub scale: f64,
    pub mask: Option<Tensor>,
}

/// Backward op: `q`, `k`, `v` in (the output gradient held by the op); gives one flat tensor
/// holding the gradients of `q`, `k` and `v` one after the other.
struct AttentionBwd {
    scale: f64,
    mask: Option<Tensor>,
    grad: Tensor,
}

/// The sizes of one attention call, checked once (the CUDA forward checks them here too).
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
}

impl Dims {
    pub fn new(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<Self> {
        let (b, h, tq, d) = match ql.dims() {
            &[b, h, tq, d] => (b, h, tq, d),
            dims => bail!("attention: q must be (batch, heads, tq, head_dim), got {dims:?}"),
        };
        let (kb, kvh, tk, kd) = match kl.dims() {
            &[b, h, t, d] => (b, h, t, d),
            dims => bail!("attention: k must be (batch, kv_heads, tk, head_dim), got {dims:?}"),
        };
        if kb != b || kd != d || kvh == 0 || h % kvh != 0 {
            bail!(
                "attention: k {:?} does not fit q {:?} (same batch and head_dim, kv_heads dividing heads)",
                kl.dims(),
                ql.dims()
            );
        }
        if vl.dims() != kl.dims() {
            bail!(
                "attention: v {:?} must have the shape of k {:?}",
                vl.dims(),
                kl.dims()
            );
        }
        Ok(Self {
            b,
            h,
            kvh,
            tq,
            tk,
            d,
        })
    }

    pub fn rep(&self) -> usize {
        self.h / self.kvh
    }
}

/// The mask's CPU data as `T` with its row addressing, or None without a mask.
fn with_mask<T: Real, R>(
    mask: &Option<Tensor>,
    dims: Dims,
    f: impl FnOnce(Option<(&[T], &Rows)>) -> Result<R>,
) -> Result<R> {
    let Some(mask) = mask else { return f(None) };
    let want = [dims.b, dims.h, dims.tq, dims.tk];
    if mask.dims() != want {
        bail!(
            "attention: mask {:?} must be broadcast to {want:?}",
            mask.dims()
        );
    }
    let (storage, layout) = mask.storage_and_layout();
    let rows = Rows::new(layout, "attention mask")?;
    match &*storage {
        Storage::Cpu(s) => f(Some((slice(s, "attention mask")?, &rows))),
        _ => bail!("attention: the mask must be on the CPU like q"),
    }
}

/// Scores of one query row against the `tk` keys from row `first` of `k`, into `s`:
/// `scale * q . k_j + mask_j`. Dot products over head_dim, whose rows are contiguous.
#[inline(always)]
fn scores_row<T: Real>(
    q: &[T],
    (k, kr): (&[T], &Rows),
    first: usize,
    scale: T,
    mask: Option<&[T]>,
    s: &mut [T],
) {
    match mask {
        // Keys the mask hides (-inf, e.g. the causal future) need no dot product.
        Some(m) => {
            for (j, (s, &m)) in s.iter_mut().zip(m).enumerate() {
                *s = if m == T::neg_infinity() {
                    m
                } else {
                    kernels::dot(q, kr.row(k, first + j)) * scale + m
                };
            }
        }
        None => {
            for (j, s) in s.iter_mut().enumerate() {
                *s = kernels::dot(q, kr.row(k, first + j)) * scale;
            }
        }
    }
}

/// Everything one (batch, kv head) group of the forward or backward reads.
struct Ctx<'a, T> {
    q: (&'a [T], &'a Rows),
    k: (&'a [T], &'a Rows),
    v: (&'a [T], &'a Rows),
    /// The output gradient (backward only).
    g: Option<(&'a [T], &'a Rows)>,
    mask: Option<(&'a [T], &'a Rows)>,
    dm: Dims,
    scale: T,
}

/// Forward of one (batch, kv head) group: writes `o`, the output rows of its `rep` query heads.
#[inline(always)]
fn fwd_group<T: Real>(c: &Ctx<'_, T>, grp: usize, o: &mut [T]) {
    let Dims {
        h, kvh, tq, tk, d, ..
    } = c.dm;
    let rep = c.dm.rep();
    let ((q, qr), (k, kr), (v, vr)) = (c.q, c.k, c.v);
    let (bi, kv) = (grp / kvh, grp % kvh);
    let mut p = vec![T::zero(); tk];
    let first_head = bi * h + kv * rep;
    for r in 0..rep {
        for i in 0..tq {
            let row = (first_head + r) * tq + i;
            let m = c.mask.map(|(m, mr)| mr.row(m, row));
            scores_row(qr.row(q, row), (k, kr), grp * tk, c.scale, m, &mut p);
            kernels::softmax(&mut p);
            let o = &mut o[(r * tq + i) * d..(r * tq + i + 1) * d];
            for (j, &pj) in p.iter().enumerate() {
                if pj != T::zero() {
                    axpy(o, pj, vr.row(v, grp * tk + j));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fwd_group_avx2<T: Real>(c: &Ctx<'_, T>, grp: usize, o: &mut [T]) {
    fwd_group(c, grp, o)
}

/// Backward of one (batch, kv head) group: recomputes its probabilities and writes `dq`, the
/// q-gradient rows of its query heads, and `dk`, `dv`, the k- and v-gradient rows of its kv head.
#[inline(always)]
fn bwd_group<T: Real>(c: &Ctx<'_, T>, grp: usize, (dq, dk, dv): (&mut [T], &mut [T], &mut [T])) {
    let Dims {
        h, kvh, tq, tk, d, ..
    } = c.dm;
    let rep = c.dm.rep();
    let ((q, qr), (k, kr), (v, vr)) = (c.q, c.k, c.v);
    let Some((g, gr)) = c.g else { return };
    let scale = c.scale;
    let (bi, kv) = (grp / kvh, grp % kvh);
    let first_head = bi * h + kv * rep;
    let mut p = vec![T::zero(); tk];
    let mut dp = vec![T::zero(); tk];
    for r in 0..rep {
        for i in 0..tq {
            let row = (first_head + r) * tq + i;
            let m = c.mask.map(|(m, mr)| mr.row(m, row));
            let qi = qr.row(q, row);
            let gi = gr.row(g, row);
            scores_row(qi, (k, kr), grp * tk, scale, m, &mut p);
            kernels::softmax(&mut p);
            // dP_ij = dO_i . v_j.
            // Keys with zero probability contribute nothing below, so they are skipped.
            for (j, (dp, &pj)) in dp.iter_mut().zip(&p).enumerate() {
                *dp = if pj == T::zero() {
                    T::zero()
                } else {
                    kernels::dot(gi, vr.row(v, grp * tk + j))
                };
            }
            let dot = kernels::dot(&p, &dp);
            let dqi = &mut dq[(r * tq + i) * d..(r * tq + i + 1) * d];
            for j in 0..tk {
                let pj = p[j];
                if pj == T::zero() {
                    continue;
                }
                // dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij); scores are scaled q.k.
                let ds = pj * (dp[j] - dot) * scale;
                let kj = kr.row(k, grp * tk + j);
                axpy(dqi, ds, kj);
                axpy(&mut dk[j * d..(j + 1) * d], ds, qi);
                axpy(&mut dv[j * d..(j + 1) * d], pj, gi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bwd_group_avx2<T: Real>(
    c: &Ctx<'_, T>,
    grp: usize,
    parts: (&mut [T], &mut [T], &mut [T]),
) {
    bwd_group(c, grp, parts)
}

fn fwd<T: Real>(
    (q, ql): (&[T], &Layout),
    (k, kl): (&[T], &Layout),
    (v, vl): (&[T], &Layout),
    scale: f64,
    mask: &Option<Tensor>,
) -> Result<Vec<T>> {
    let dm = Dims::new(ql, kl, vl)?;
    let (qr, kr, vr) = (
        Rows::new(ql, "attention q")?,
        Rows::new(kl, "attention k")?,
        Rows::new(vl, "attention v")?,
    );
    let Dims {
        b,
        h,
        kvh,
        tq,
        tk,
        d,
    } = dm;
    let rep = dm.rep();
    let scale = T::from_f64(scale);
    let mut out = vec![T::zero(); b * h * tq * d];
    with_mask::<T, _>(mask, dm, |mask| {
        let ctx = Ctx {
            q: (q, &qr),
            k: (k, &kr),
            v: (v, &vr),
            g: None,
            mask,
            dm,
            scale,
        };
        // Each group writes the output rows of its own query heads, which are contiguous.
        let part = rep * tq * d;
        if part > 0 {
            let groups = out.par_chunks_mut(part);
            par_sized(groups, b * kvh * part * tk * 2)
                .enumerate()
                .for_each(|(grp, o)| multiversion!(fwd_group, fwd_group_avx2, &ctx, grp, o));
        }
        Ok(())
    })?;
    Ok(out)
}

fn bwd<T: Real>(
    (q, ql): (&[T], &Layout),
    (k, kl): (&[T], &Layout),
    (v, vl): (&[T], &Layout),
    (g, gl): (&[T], &Layout),
    scale: f64,
    mask: &Option<Tensor>,
) -> Result<Vec<T>> {
    let dm = Dims::new(ql, kl, vl)?;
    if gl.dims() != ql.dims() {
        bail!(
            "attention backward: gradient {:?} must have the shape of q {:?}",
            gl.dims(),
            ql.dims()
        );
    }
    let (qr, kr, vr, gr) = (
        Rows::new(ql, "attention q")?,
        Rows::new(kl, "attention k")?,
        Rows::new(vl, "attention v")?,
        Rows::new(gl, "attention output gradient")?,
    );
    let Dims {
        b,
        h,
        kvh,
        tq,
        tk,
        d,
    } = dm;
    let rep = dm.rep();
    let scale = T::from_f64(scale);
    let nq = b * h * tq * d;
    let nk = b * kvh * tk * d;
    let mut out = vec![T::zero(); nq + 2 * nk];
    with_mask::<T, _>(mask, dm, |mask| {
        let ctx = Ctx {
            q: (q, &qr),
            k: (k, &kr),
            v: (v, &vr),
            g: Some((g, &gr)),
            mask,
            dm,
            scale,
        };
        // Each group writes the q-gradient rows of its own query heads and the k- and
        // v-gradient rows of its own kv head: one contiguous part of each of the three.
        let (q_part, kv_part) = (rep * tq * d, tk * d);
        if q_part > 0 && kv_part > 0 {
            let (dq, dkv) = out.split_at_mut(nq);
            let (dk, dv) = dkv.split_at_mut(nk);
            let groups = dq
                .par_chunks_mut(q_part)
                .zip(dk.par_chunks_mut(kv_part))
                .zip(dv.par_chunks_mut(kv_part));
            par_sized(groups, b * kvh * q_part * tk * 5)
                .enumerate()
                .for_each(|(grp, ((dq, dk), dv))| {
                    multiversion!(bwd_group, bwd_group_avx2, &ctx, grp, (dq, dk, dv))
                });
        }
        Ok(())
    })?;
    Ok(out)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "recap-attention"
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
        let out = dispatch!(s1, "attention", |q| fwd(
            (q, l1),
            (slice(s2, "attention k")?, l2),
            (slice(s3, "attention v")?, l3),
            self.scale,
            &self.mask
        )?);
        Ok((out, l1.shape().clone()))
    }

    cuda_fwd!(|op, s1, l1, s2, l2, s3, l3| super::cuda::attention(
        (s1, l1),
        (s2, l2),
        (s3, l3),
        op.scale,
        &op.mask
    ));

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionBwd {
            scale: self.scale,
            mask: self.mask.clone(),
            grad: dense_last(grad)?,
        };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "recap-attention-bwd"
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
        let (gs, gl) = self.grad.storage_and_layout();
        let gs = match &*gs {
            Storage::Cpu(s) => s,
            _ => bail!("attention backward: the gradient must be on the CPU like q"),
        };
        let out = dispatch!(s1, "attention", |q| bwd(
            (q, l1),
            (slice(s2, "attention k")?, l2),
            (slice(s3, "attention v")?, l3),
            (slice(gs, "attention gradient")?, gl),
            self.scale,
            &self.mask
        )?);
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((out, Shape::from(n)))
    }

    cuda_fwd!(|op, s1, l1, s2, l2, s3, l3| {
        let extra = (&op.grad, op.scale, &op.mask);
        super::cuda::attention_backward((s1, l1), (s2, l2), (s3, l3), extra)
    });
}
