//! Fused scaled-dot-product attention on the CPU: takes `q` (batch, heads, tq, d), `k` and `v`
//! (batch, kv_heads, tk, d) with kv_heads dividing heads (grouped-query attention), views with a
//! dense last dimension, and an optional additive mask broadcast to (batch, heads, tq, tk); gives
//! `softmax(q k^T * scale + mask) v` (batch, heads, tq, d) without materialising the scores
//! tensor. The backward recomputes the probabilities per (batch, kv head) group and gives the
//! gradients of `q`, `k` and `v` in one pass; the mask gets none.

use super::cpu::{self, dense_last, par_for, slice, Real, Rows, SendPtr};
use super::softmax::softmax_row;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

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

/// The sizes of one attention call, checked once.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn new(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<Self> {
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

    fn rep(&self) -> usize {
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

/// `dst[j] += a * x[j]` over a row; the loop the kernels spend their time in, written so it
/// vectorises.
#[inline(always)]
fn axpy<T: Real>(dst: &mut [T], a: T, x: &[T]) {
    for (d, &x) in dst.iter_mut().zip(x) {
        *d += a * x;
    }
}

/// Copies the rows `t` of `src` (rows addressed by `rows`, starting at row `first`) transposed
/// into `dst` (`d` x `t`), so dot products against all of them become `axpy`s over `t`.
fn transpose_rows<T: Real>(
    src: &[T],
    rows: &Rows,
    first: usize,
    t: usize,
    d: usize,
    dst: &mut [T],
) {
    for j in 0..t {
        let r = rows.row(src, first + j);
        for c in 0..d {
            dst[c * t + j] = r[c];
        }
    }
}

/// Scores of one query row against all keys, into `s`: `scale * q . k_j + mask_j`.
#[inline]
fn scores_row<T: Real>(q: &[T], kt: &[T], tk: usize, scale: T, mask: Option<&[T]>, s: &mut [T]) {
    s.fill(T::zero());
    for (c, &qc) in q.iter().enumerate() {
        axpy(s, qc * scale, &kt[c * tk..(c + 1) * tk]);
    }
    if let Some(m) = mask {
        for (s, &m) in s.iter_mut().zip(m) {
            *s += m;
        }
    }
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
    let base = SendPtr::new(&mut out);
    with_mask::<T, _>(mask, dm, |mask| {
        par_for(b * kvh, rep * tq * tk * d * 2, |grp| {
            let (bi, kv) = (grp / kvh, grp % kvh);
            let mut kt = vec![T::zero(); d * tk];
            transpose_rows(k, &kr, grp * tk, tk, d, &mut kt);
            let mut s = vec![T::zero(); tk];
            let mut p = vec![T::zero(); tk];
            let first_head = bi * h + kv * rep;
            // SAFETY: each group writes only the rows of its own query heads, which no other
            // group touches, and `out` outlives the parallel loop.
            let o = unsafe { base.slice(first_head * tq * d, rep * tq * d) };
            for r in 0..rep {
                for i in 0..tq {
                    let row = (first_head + r) * tq + i;
                    let m = mask.map(|(m, mr)| mr.row(m, row));
                    scores_row(qr.row(q, row), &kt, tk, scale, m, &mut s);
                    softmax_row(&s, &mut p);
                    let o = &mut o[(r * tq + i) * d..(r * tq + i + 1) * d];
                    for (j, &pj) in p.iter().enumerate() {
                        if pj != T::zero() {
                            axpy(o, pj, vr.row(v, grp * tk + j));
                        }
                    }
                }
            }
        });
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
    let base = SendPtr::new(&mut out);
    with_mask::<T, _>(mask, dm, |mask| {
        par_for(b * kvh, rep * tq * tk * d * 5, |grp| {
            let (bi, kv) = (grp / kvh, grp % kvh);
            let first_head = bi * h + kv * rep;
            // SAFETY: each group writes the q-gradient rows of its own query heads and the k- and
            // v-gradient rows of its own kv head; no two groups share any of them.
            let dq = unsafe { base.slice(first_head * tq * d, rep * tq * d) };
            let dk = unsafe { base.slice(nq + grp * tk * d, tk * d) };
            let dv = unsafe { base.slice(nq + nk + grp * tk * d, tk * d) };
            let mut kt = vec![T::zero(); d * tk];
            let mut vt = vec![T::zero(); d * tk];
            transpose_rows(k, &kr, grp * tk, tk, d, &mut kt);
            transpose_rows(v, &vr, grp * tk, tk, d, &mut vt);
            let mut s = vec![T::zero(); tk];
            let mut p = vec![T::zero(); tk];
            let mut dp = vec![T::zero(); tk];
            for r in 0..rep {
                for i in 0..tq {
                    let row = (first_head + r) * tq + i;
                    let m = mask.map(|(m, mr)| mr.row(m, row));
                    let qi = qr.row(q, row);
                    let gi = gr.row(g, row);
                    scores_row(qi, &kt, tk, scale, m, &mut s);
                    softmax_row(&s, &mut p);
                    // dP_ij = dO_i . v_j, as axpys over the transposed values.
                    dp.fill(T::zero());
                    for (c, &gc) in gi.iter().enumerate() {
                        axpy(&mut dp, gc, &vt[c * tk..(c + 1) * tk]);
                    }
                    let dot = cpu::dot(&p, &dp);
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
        });
        Ok(())
    })?;
    Ok(out)
}

macro_rules! dispatch {
    ($s1:expr, $op:literal, |$x:ident| $body:expr) => {
        match $s1 {
            CpuStorage::F32($x) => CpuStorage::F32($body),
            CpuStorage::F64($x) => CpuStorage::F64($body),
            s => bail!(
                "{}: fused kernel supports f32 and f64, got {:?}",
                $op,
                s.dtype()
            ),
        }
    };
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
}
