//! The CPU f32 decode path of a rollout: takes the detached model (its weights copied once per
//! rollout into host buffers), the prefill KV cache of the B prompts and, each step, the token
//! every unfinished row just sampled; gives those rows' next-token logits.
//!
//! Why a host path: a decode step multiplies a few dozen rows by every weight matrix, and
//! through candle each of the some fifty small ops of a step is a tensor allocation and a
//! thread-pool round trip. Here a step is five `gemm` calls per layer on plain buffers plus
//! loops for RMSNorm, RoPE, attention and SwiGLU. Rows never interact while decoding, so the
//! rows are split into one part per worker thread and each part runs the whole layer stack on
//! its own core with single-threaded matrix multiplies: one fork and join per step instead of
//! one per op. Rows that finished (EOS or stop string) drop out of the work entirely.

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

use crate::model::Model;
use crate::ops::kernels::{self, mm_with};

/// The weight size above which a decode step reads its weights from memory rather than from
/// the cache: the last-level cache of the server CPUs recap is tuned on (32 MiB).
const CACHED_WEIGHT_BYTES: usize = 32 << 20;

/// Whether `params` f32 weights outgrow [`CACHED_WEIGHT_BYTES`], so that a decode step reads
/// them from memory.
fn outgrow_cache(params: usize) -> bool {
    params * std::mem::size_of::<f32>() > CACHED_WEIGHT_BYTES
}

/// The rows from which a decode step of a model within the cache multiplies by a transposed
/// copy of its weights (gemm reads it without packing).
const TRANSPOSE_FROM_ROWS: usize = 8;

/// The most rows a decode step of a model above [`CACHED_WEIGHT_BYTES`] multiplies by its
/// weights in place (`kernels::rows_by_weight`, which streams each weight row once); with more
/// rows gemm on a transposed copy is faster (docs/performance.md).
const IN_PLACE_MAX_ROWS: usize = 8;

/// One block's weights on the host, transposed to (in, out) row-major (see [`matmul`]); q/k/v and
/// gate/up are concatenated along the output so each is a single matrix multiply.
struct HostLayer {
    qkv_w: Weight,
    qkv_b: Option<Vec<f32>>,
    o_w: Weight,
    gate_up_w: Weight,
    down_w: Weight,
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
}

/// The shapes a step needs.
#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    eps: f32,
    scale: f32,
    /// Positions each row's cache has room for (prompt width + max new tokens).
    cap: usize,
}

impl Dims {
    /// Width of the fused q/k/v projection.
    fn qkv(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Weights a decode step multiplies each row by, in a model of `layers` blocks: the blocks'
    /// projections and the head.
    fn step_weights(&self, layers: usize) -> usize {
        layers * (self.qkv() + self.heads * self.head_dim + 3 * self.inter) * self.hidden
            + self.vocab * self.hidden
    }

    /// Floats of one layer's keys (or values) in one row's cache.
    fn layer_kv(&self) -> usize {
        self.kv_heads * self.cap * self.head_dim
    }
}

/// One row's rotated keys and values, (layers, kv_heads, cap, head_dim) each, and the scratch
/// its attention reuses at every layer and step: the rotated query of one head (head_dim) and
/// its scores (cap), kept here so that attention allocates nothing per row, layer and step
/// (thousands of small allocations per rollout).
struct RowCache {
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>,
    scores: Vec<f32>,
}

/// The decoder of one rollout: what every row reads, and each row's cache.
pub(super) struct HostDecoder {
    fixed: Fixed,
    rows: Vec<RowCache>,
}

/// What every row of a rollout reads: host weights, RoPE tables, key masks and shapes.
struct Fixed {
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    /// (vocab, hidden): the LM head (the embedding when tied).
    head: Weight,
    /// (vocab, hidden), read in place for the rows of each step's tokens.
    embed: Tensor,
    /// (max_positions, head_dim / 2).
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// (rows, cap) additive key mask: prompt padding is -inf for the whole rollout.
    key_bias: Vec<f32>,
    dims: Dims,
    /// The weights a step multiplies by ([`Dims::step_weights`]).
    params: usize,
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor, borrowed from its storage (no copy).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("host decoder: weights must be on the CPU");
    };
    let data = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("host decoder: weights must be contiguous");
    };
    Ok(f(&data[start..end]))
}

/// How [`Weight::load`] keeps a weight.
#[derive(Clone, Copy)]
enum Layout {
    Transposed,
    Stored,
    Streamed,
}

/// A weight matrix for the decoder: a transposed host copy, (in, out) row-major, the layout
/// gemm multiplies fastest (see [`matmul`]); or the model's own (out, in) tensors, stacked along
/// the output and borrowed at each multiply.
enum Weight {
    Transposed(Vec<f32>),
    Stored(Vec<Tensor>),
    /// The stored tensors of a model too large for the cache, multiplied by
    /// `kernels::rows_by_weight`.
    Streamed(Vec<Tensor>),
}

impl Weight {
    /// The (out, in) matrices `ts` stacked along the output, transposed for
    /// `Layout::Transposed`.
    /// Transposing costs one pass over the weights per rollout; it pays when a rollout decodes
    /// several rows (32 rows: 1.5x to 4.6x faster multiplies), not for a few rows of a large
    /// model, which then read the weights in place.
    fn load(ts: &[&Tensor], layout: Layout) -> candle_core::Result<Weight> {
        let ts: Vec<Tensor> = ts
            .iter()
            .map(|t| t.detach().to_dtype(DType::F32)?.contiguous())
            .collect::<candle_core::Result<_>>()?;
        match layout {
            Layout::Stored => return Ok(Weight::Stored(ts)),
            Layout::Streamed => return Ok(Weight::Streamed(ts)),
            Layout::Transposed => {}
        }
        let mut rows = Vec::new();
        let mut k = 0;
        for t in &ts {
            let (_, cols) = t.dims2()?;
            k = cols;
            rows.extend(host(t)?);
        }
        let n = rows.len() / k.max(1);
        let mut out = vec![0f32; rows.len()];
        // Blocks of 16 x 16 keep both the reads and the writes within a few cache lines; the
        // blocks of output rows go to all threads, as large models have hundreds of MB here.
        const B: usize = 16;
        out.par_chunks_mut((B * n).max(1))
            .enumerate()
            .for_each(|(block, chunk)| {
                let k0 = block * B;
                for j0 in (0..n).step_by(B) {
                    for (dk, row) in chunk.chunks_mut(n).enumerate() {
                        let kk = k0 + dk;
                        for j in j0..(j0 + B).min(n) {
                            row[j] = rows[j * k + kk];
                        }
                    }
                }
            });
        Ok(Weight::Transposed(out))
    }
}

impl HostDecoder {
    /// Copies the weights of `model` and the prefill keys/values (b, kv_heads, p, head_dim per
    /// layer) of each prompt into the caches of its `group` rows.
    pub(super) fn new(
        model: &Model,
        prefill: &[(Tensor, Tensor)],
        group: usize,
        cap: usize,
        key_bias: Vec<f32>,
    ) -> candle_core::Result<HostDecoder> {
        let c = model.config();
        let w = &model.weights;
        let b = prefill.first().map_or(0, |(k, _)| k.dims()[0]);
        let n = b * group;
        let dims = Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            cap,
        };
        let params = dims.step_weights(w.layers.len());
        // Weights larger than the cache are read from memory at every step: a few rows are
        // multiplied by them in place, more rows by a transposed copy.
        let layout = if outgrow_cache(params) {
            if n <= IN_PLACE_MAX_ROWS {
                Layout::Streamed
            } else {
                Layout::Transposed
            }
        } else if n >= TRANSPOSE_FROM_ROWS {
            Layout::Transposed
        } else {
            Layout::Stored
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for lw in &w.layers {
            let qkv_b = match (&lw.q_b, &lw.k_b, &lw.v_b) {
                (Some(q), Some(k), Some(v)) => Some([host(q)?, host(k)?, host(v)?].concat()),
                _ => None,
            };
            layers.push(HostLayer {
                qkv_w: Weight::load(&[&lw.q_w, &lw.k_w, &lw.v_w], layout)?,
                qkv_b,
                o_w: Weight::load(&[&lw.o_w], layout)?,
                gate_up_w: Weight::load(&[&lw.gate_w, &lw.up_w], layout)?,
                down_w: Weight::load(&[&lw.down_w], layout)?,
                input_norm: host(&lw.input_norm)?,
                post_norm: host(&lw.post_norm)?,
            });
        }
        let per_layer = dims.layer_kv();
        let mut rows: Vec<RowCache> = (0..n)
            .map(|_| RowCache {
                k: vec![0f32; per_layer * layers.len()],
                v: vec![0f32; per_layer * layers.len()],
                q: vec![0f32; dims.head_dim],
                scores: vec![0f32; dims.cap],
            })
            .collect();
        for (l, (k, v)) in prefill.iter().enumerate() {
            let (_, nkv, p, hd) = k.dims4()?;
            let k = host(k)?;
            let v = host(v)?;
            for (r, row) in rows.iter_mut().enumerate() {
                for g in 0..nkv {
                    let from = ((r / group) * nkv + g) * p * hd;
                    let to = l * per_layer + g * cap * hd;
                    row.k[to..to + p * hd].copy_from_slice(&k[from..from + p * hd]);
                    row.v[to..to + p * hd].copy_from_slice(&v[from..from + p * hd]);
                }
            }
        }
        let fixed = Fixed {
            layers,
            norm: host(&w.norm)?,
            head: Weight::load(&[w.lm_head.as_ref().unwrap_or(&w.embed)], layout)?,
            embed: w.embed.detach().to_dtype(DType::F32)?.contiguous()?,
            cos: host(&model.rope.cos)?,
            sin: host(&model.rope.sin)?,
            key_bias,
            dims,
            params,
        };
        Ok(HostDecoder { fixed, rows })
    }

    /// Feeds `tokens[r]` at position `pos` to every row `r` that is not `done[r]` and writes its
    /// next-token logits into `logits[r]` (reusing that row's buffer); finished rows are left
    /// untouched, cache and logits alike.
    pub(super) fn step(
        &mut self,
        tokens: &[u32],
        done: &[bool],
        pos: usize,
        logits: &mut [Vec<f32>],
    ) -> candle_core::Result<()> {
        let HostDecoder { fixed, rows } = self;
        let d = fixed.dims;
        let mut sel: Vec<(usize, &mut RowCache)> = rows
            .iter_mut()
            .enumerate()
            .filter(|(r, _)| !done[*r])
            .collect();
        if sel.is_empty() {
            return Ok(());
        }
        let order: Vec<usize> = sel.iter().map(|(r, _)| *r).collect();
        let shared = Shared {
            f: fixed,
            tokens,
            pos,
        };
        // About 2 flops per weight per row; a part below ~2 Mflop costs less than the fork.
        let params = fixed.params;
        let threads = rayon::current_num_threads().max(1);
        // A step reads every weight once per part. When the weights outgrow the last-level
        // cache, a step is bound by reading them from memory, so one part whose multiplies
        // split the weights' rows between the threads beats one part per thread that each
        // stream all of them.
        let parts = if outgrow_cache(params) {
            1
        } else {
            threads
                .min(sel.len())
                .min((2 * params * sel.len() / 2_000_000).max(1))
        };
        let per_part: Vec<Vec<f32>> = if parts > 1 {
            let size = sel.len().div_ceil(parts);
            sel.par_chunks_mut(size)
                .map(|part| shared.run(part, gemm::Parallelism::None))
                .collect::<candle_core::Result<_>>()?
        } else {
            // One part: let the matrix multiplies themselves use every thread instead.
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            vec![shared.run(&mut sel, par)?]
        };
        let rows_out = per_part.iter().flat_map(|l| l.chunks(d.vocab));
        for (&r, row) in order.iter().zip(rows_out) {
            logits[r].clear();
            logits[r].extend_from_slice(row);
        }
        Ok(())
    }
}

/// What every part of a step reads.
struct Shared<'a> {
    f: &'a Fixed,
    tokens: &'a [u32],
    pos: usize,
}

impl Shared<'_> {
    /// Runs the layer stack for the rows of one part; gives their logits, (rows, vocab).
    fn run(
        &self,
        part: &mut [(usize, &mut RowCache)],
        par: gemm::Parallelism,
    ) -> candle_core::Result<Vec<f32>> {
        let d = self.f.dims;
        let (m, h) = (part.len(), d.hidden);
        let qd = d.heads * d.head_dim;
        let mut x = vec![0f32; m * h];
        with_f32(&self.f.embed, |embed| {
            for (i, (r, _)) in part.iter().enumerate() {
                let t = self.tokens[*r] as usize;
                x[i * h..(i + 1) * h].copy_from_slice(&embed[t * h..(t + 1) * h]);
            }
        })?;
        let mut hn = vec![0f32; m * h];
        let mut qkv = vec![0f32; m * d.qkv()];
        let mut y = vec![0f32; m * qd];
        let mut gu = vec![0f32; m * 2 * d.inter];
        let mut act = vec![0f32; m * d.inter];
        for (l, w) in self.f.layers.iter().enumerate() {
            rms_norm(&x, &w.input_norm, d.eps, &mut hn);
            matmul(&hn, m, h, &w.qkv_w, d.qkv(), &mut qkv, false, par)?;
            if let Some(b) = &w.qkv_b {
                for row in qkv.chunks_mut(d.qkv()) {
                    row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
            }
            // Rows attend to their own caches only, so they run side by side (when the step is
            // one part, the other threads would otherwise wait for this loop).
            part.par_iter_mut()
                .zip(y.par_chunks_mut(qd))
                .zip(qkv.par_chunks(d.qkv()))
                .for_each(|(((r, cache), y), qkv)| {
                    let bias = &self.f.key_bias[*r * d.cap..(*r + 1) * d.cap];
                    self.attend(l, qkv, cache, bias, y);
                });
            // The residual add rides on the multiply: x += y o_w^T.
            matmul(&y, m, qd, &w.o_w, h, &mut x, true, par)?;
            rms_norm(&x, &w.post_norm, d.eps, &mut hn);
            matmul(&hn, m, h, &w.gate_up_w, 2 * d.inter, &mut gu, false, par)?;
            for (a, row) in act.chunks_mut(d.inter).zip(gu.chunks(2 * d.inter)) {
                let (gate, up) = row.split_at(d.inter);
                kernels::swiglu(gate, up, a);
            }
            matmul(&act, m, d.inter, &w.down_w, h, &mut x, true, par)?;
        }
        rms_norm(&x, &self.f.norm, d.eps, &mut hn);
        let mut logits = vec![0f32; m * d.vocab];
        matmul(&hn, m, h, &self.f.head, d.vocab, &mut logits, false, par)?;
        Ok(logits)
    }

    /// RoPE, cache append and attention of one row in layer `l`: `qkv` is the row's projection
    /// before RoPE; writes the attention output (heads * head_dim) into `out`.
    fn attend(&self, l: usize, qkv: &[f32], cache: &mut RowCache, bias: &[f32], out: &mut [f32]) {
        let d = self.f.dims;
        let (hd, nh, nkv, pos) = (d.head_dim, d.heads, d.kv_heads, self.pos);
        let half = hd / 2;
        let cos = &self.f.cos[pos * half..(pos + 1) * half];
        let sin = &self.f.sin[pos * half..(pos + 1) * half];
        let rope = |x: &[f32], out: &mut [f32]| {
            out.copy_from_slice(x);
            kernels::rope(out, cos, sin, false);
        };
        let base = l * d.layer_kv();
        let kc = &mut cache.k[base..base + d.layer_kv()];
        let vc = &mut cache.v[base..base + d.layer_kv()];
        let q = &mut cache.q[..];
        let scores = &mut cache.scores[..=pos];
        for g in 0..nkv {
            let at = (g * d.cap + pos) * hd;
            rope(&qkv[(nh + g) * hd..(nh + g + 1) * hd], &mut kc[at..at + hd]);
            vc[at..at + hd].copy_from_slice(&qkv[(nh + nkv + g) * hd..(nh + nkv + g + 1) * hd]);
        }
        let bias = &bias[..=pos];
        let rep = nh / nkv;
        out.fill(0.0);
        for h in 0..nh {
            rope(&qkv[h * hd..(h + 1) * hd], q);
            let g = h / rep;
            let keys = &kc[g * d.cap * hd..(g * d.cap + pos + 1) * hd];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = kernels::dot(q, &keys[j * hd..(j + 1) * hd]) * d.scale + bias[j];
            }
            kernels::softmax(scores);
            let oh = &mut out[h * hd..(h + 1) * hd];
            let vals = &vc[g * d.cap * hd..(g * d.cap + pos + 1) * hd];
            for (j, &w) in scores.iter().enumerate() {
                // Keys the mask hides have weight zero and add nothing.
                if w != 0.0 {
                    kernels::axpy(oh, w, &vals[j * hd..(j + 1) * hd]);
                }
            }
        }
    }
}

/// `out = x w^T` (or `out += x w^T` with `accumulate`) for row-major `x` (m, k), the (n, k)
/// weight `w` and `out` (m, n), through `ops::kernels::mm_with`.
///
/// With transposed weights gemm is asked for `out^T = w x^T`, which puts the weights on the left
/// in the column-major layout its microkernel reads directly: nothing is packed per call. With
/// (out, in) weights gemm repacks the rows of `x` and reads the weights with a stride, which
/// measured 1.5x to 4.6x slower on decode shapes (32 rows) but is as fast for a single row.
/// Streamed weights (a model larger than the cache, a few rows) go through
/// `kernels::rows_by_weight`, which reads each weight row once per step.
#[allow(clippy::too_many_arguments)]
fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: &Weight,
    n: usize,
    out: &mut [f32],
    accumulate: bool,
    par: gemm::Parallelism,
) -> candle_core::Result<()> {
    match w {
        // out^T (n, m) = w (n, k) . x^T (k, m): the weight is the (k, n) row-major copy read
        // column-major, x is read transposed, and out is written transposed.
        Weight::Transposed(wt) => mm_with(
            (n, m, k),
            out,
            (1, n),
            accumulate,
            wt,
            (1, n),
            x,
            (1, k),
            1.0,
            par,
        ),
        Weight::Stored(parts) | Weight::Streamed(parts) => {
            let streamed = matches!(w, Weight::Streamed(_));
            // Each stacked (rows, k) part writes its own columns of `out`: x (m, k) times the
            // part read transposed.
            let mut col = 0;
            for t in parts {
                let (rows, cols) = t.dims2()?;
                if cols != k || col + rows > n {
                    candle_core::bail!(
                        "host decoder: weight of shape ({rows}, {cols}) does not fit ({n}, {k})"
                    );
                }
                with_f32(t, |wp| {
                    if streamed {
                        let parallel = matches!(par, gemm::Parallelism::Rayon(_));
                        kernels::rows_by_weight(
                            x,
                            m,
                            k,
                            wp,
                            rows,
                            &mut out[col..],
                            n,
                            accumulate,
                            parallel,
                        )
                    } else {
                        mm_with(
                            (m, rows, k),
                            &mut out[col..],
                            (n, 1),
                            accumulate,
                            x,
                            (k, 1),
                            wp,
                            (1, k),
                            1.0,
                            par,
                        )
                    }
                })?;
                col += rows;
            }
        }
    }
    Ok(())
}

/// RMSNorm of each row of `x` into `out`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let width = w.len();
    for (row, o) in x.chunks(width).zip(out.chunks_mut(width)) {
        kernels::rms_norm(row, w, eps, o);
    }
}
