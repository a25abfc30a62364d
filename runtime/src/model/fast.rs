//! A hand-written CPU f32 forward and backward pass of the decoder for the training step: takes a
//! [`Model`] on the CPU whose master and compute dtypes are f32 and a [`SequenceBatch`]; gives the
//! per-token log-probabilities of the completion tokens (n, L), exactly those of
//! [`token_logprobs`](super::logprob::token_logprobs), and, from the gradient of a loss with
//! respect to them, the gradient of every weight of the model.
//!
//! Why: candle's autograd spends a large share of the training pass outside the matrix
//! multiplies (every graph edge allocates a zero tensor and adds into it, every op allocates its
//! output). Here the forward keeps only the activations the backward needs, in plain `Vec<f32>`,
//! every matrix multiply is one `gemm::gemm` call with strides chosen so that nothing is
//! transposed by copying, and the rest are loops over contiguous rows. The engine runs chunks of
//! rows side by side, up to one per core, where the batch's work pays for it
//! (`train::parallel`); within a chunk the matrix multiplies, the attention of separate
//! segments and the row-wise loops (norms, rotation, SwiGLU, the vocabulary's log-softmax) are
//! split across rayon's threads too, so that a single chunk keeps every core busy. Every split
//! is of rows or segments that do not interact and no reduction is split, so a pass gives the
//! same bits on any number of threads.
//!
//! The math mirrors the candle path op for op (RMSNorm, q/k/v projections with optional biases,
//! half-split RoPE at the column position, grouped-query attention with the batch's additive mask
//! and scale `1/sqrt(head_dim)`, o-projection, residual, RMSNorm, SwiGLU MLP, residual, final
//! RMSNorm of the positions that predict completion tokens, vocabulary projection, log-softmax),
//! including what padding rows produce (see `Packing`). Two savings change no value: tokens
//! that attend only to themselves (padding) are computed once per token id, and the last block
//! computes its queries, attention and MLP only for the rows the final norm reads.
//!
//! `supported` says whether the engine can take this path (CPU, f32); the engine takes it unless
//! its run options ask for candle's autograd (`RECAP_AUTOGRAD=1` on the command line), which is
//! kept so that both paths can be compared on the same run.

use candle_core::{bail, CpuStorage, DType, Result, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use super::logprob::{PassOptions, SequenceBatch};
use super::lora::{host_adapters, AdapterGrads, HostAdapters};
use super::{LoraTarget, Model};
use crate::ops::cpu::{for_rows, for_rows2, par_sized};
use crate::ops::kernels::{self, mm, Real};

/// The sizes of one pass, checked once.
#[derive(Clone, Copy)]
struct Dims {
    /// Rows of the batch.
    n: usize,
    /// Columns (padded prompt plus padded completion).
    t: usize,
    /// Padded prompt width.
    p: usize,
    /// Padded completion width.
    lw: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    eps: f32,
    scale: f32,
}

impl Dims {
    fn qd(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kvd(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Rows projected onto the vocabulary: one per completion position of every row.
    fn selected(&self) -> usize {
        self.n * self.lw
    }
}

/// How the batch's tokens are laid out as rows of the activations.
///
/// A token whose mask row sees only itself and that no other query sees (a padding token, or a
/// lone one-token row) attends to itself alone: its attention output is its own value whatever
/// its position, so its whole computation depends on its id only. Such tokens are computed once
/// per distinct id. Their values, padding included, are still those `token_logprobs` gives (a
/// one-key softmax is 1 at any position), and the keys they drop from the other rows' softmax
/// had weight `exp(-inf) = 0` there. On the workload of `bench_model` this removes about a tenth
/// of the rows.
struct Packing {
    /// Token id of each row.
    ids: Vec<u32>,
    /// Column (RoPE position) of each row.
    pos: Vec<usize>,
    /// The attention segments: rows that attend only among themselves.
    segs: Vec<Segment>,
    /// The row that holds each selected position (n * L, row-major).
    selected: Vec<usize>,
}

/// Rows `start .. start + len` attend among themselves under the additive `mask` (len, len).
struct Segment {
    start: usize,
    len: usize,
    mask: Vec<f32>,
}

impl Packing {
    fn new(d: &Dims, ids: &[u32], mask: &[f32]) -> Packing {
        let t = d.t;
        let sees = |b: usize, i: usize, j: usize| mask[(b * t + i) * t + j] != f32::NEG_INFINITY;
        // The row of every (batch row, column) token, filled as rows are assigned.
        let mut row_of = vec![0usize; d.n * t];
        let (mut out_ids, mut pos, mut segs) = (Vec::new(), Vec::new(), Vec::new());
        let mut lone: Vec<usize> = Vec::new();
        for b in 0..d.n {
            let mut linked = Vec::with_capacity(t);
            for j in 0..t {
                let alone = (0..t).all(|k| sees(b, j, k) == (k == j))
                    && (0..t).all(|i| sees(b, i, j) == (i == j));
                if alone {
                    lone.push(b * t + j);
                } else {
                    linked.push(j);
                }
            }
            if linked.is_empty() {
                continue;
            }
            let start = out_ids.len();
            let len = linked.len();
            let mut m = Vec::with_capacity(len * len);
            for &i in &linked {
                m.extend(linked.iter().map(|&j| mask[(b * t + i) * t + j]));
            }
            for (r, &j) in linked.iter().enumerate() {
                row_of[b * t + j] = start + r;
                out_ids.push(ids[b * t + j]);
                pos.push(j);
            }
            segs.push(Segment {
                start,
                len,
                mask: m,
            });
        }
        // One row per distinct id of the lone tokens, each a segment of its own.
        let mut first: std::collections::HashMap<u32, usize> = Default::default();
        for tok in lone {
            let row = *first.entry(ids[tok]).or_insert_with(|| {
                let row = out_ids.len();
                out_ids.push(ids[tok]);
                pos.push(tok % t);
                segs.push(Segment {
                    start: row,
                    len: 1,
                    mask: vec![0.0],
                });
                row
            });
            row_of[tok] = row;
        }
        let selected = (0..d.selected())
            .map(|j| row_of[(j / d.lw) * t + d.p - 1 + j % d.lw])
            .collect();
        Packing {
            ids: out_ids,
            pos,
            segs,
            selected,
        }
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// One value per weight of a block, in `LayerWeights` order: the weights read on the host
/// ([`HostLayer`]) and their gradients ([`LayerGrads`]) have the same shape.
#[derive(Clone)]
struct LayerVecs<V> {
    q_w: V,
    q_b: Option<V>,
    k_w: V,
    k_b: Option<V>,
    v_w: V,
    v_b: Option<V>,
    o_w: V,
    gate_w: V,
    up_w: V,
    down_w: V,
    input_norm: V,
    post_norm: V,
}

/// The weights of one block, read in place.
type HostLayer<'a> = LayerVecs<HostSlice<'a>>;

/// A contiguous f32 weight on the CPU, read in place from the tensor's storage. The storage's
/// read lock is held while this lives, so the optimiser (which writes the weights through the
/// same lock) cannot change a weight under a pass that reads it.
pub struct HostSlice<'a> {
    storage: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> HostSlice<'a> {
    pub(super) fn new(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!(
                "fast path: weight of shape {:?} is not contiguous",
                t.dims()
            );
        };
        if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
            bail!(
                "fast path: weight of shape {:?} must be f32 on the CPU, is {:?} on {:?}",
                t.dims(),
                t.dtype(),
                t.device()
            );
        }
        Ok(HostSlice {
            storage,
            start,
            end,
        })
    }
}

impl std::ops::Deref for HostSlice<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            // `HostSlice::new` admits f32 CPU storage only, and a read lock keeps it so.
            _ => &[],
        }
    }
}

/// All weights of a model, read in place (see [`HostSlice`]); `lm_head` is `None` when tied to
/// the embedding. A training step makes one per model ([`HostWeights::new`]) and shares it
/// between its chunks ([`forward_with`], [`logprobs_tensor_with`]); the weights only change at
/// the optimiser step, after it is dropped.
pub struct HostWeights<'a> {
    embed: HostSlice<'a>,
    layers: Vec<HostLayer<'a>>,
    norm: HostSlice<'a>,
    lm_head: Option<HostSlice<'a>>,
    /// LoRA adapters per block (empty without LoRA); the other weights are then frozen.
    adapters: Vec<HostAdapters<'a>>,
}

impl HostWeights<'_> {
    fn head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}

/// A tensor's values as a host vector (f32 is checked by `to_vec1`).
fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn slice_opt(t: &Option<Tensor>) -> Result<Option<HostSlice<'_>>> {
    t.as_ref().map(HostSlice::new).transpose()
}

impl<'a> HostWeights<'a> {
    /// Reads the weights of `model` in place, without copying them. Holds their read locks:
    /// drop it before the optimiser step.
    pub fn new(model: &'a Model) -> Result<Self> {
        let w = &model.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| -> Result<HostLayer<'a>> {
                Ok(HostLayer {
                    q_w: HostSlice::new(&l.q_w)?,
                    q_b: slice_opt(&l.q_b)?,
                    k_w: HostSlice::new(&l.k_w)?,
                    k_b: slice_opt(&l.k_b)?,
                    v_w: HostSlice::new(&l.v_w)?,
                    v_b: slice_opt(&l.v_b)?,
                    o_w: HostSlice::new(&l.o_w)?,
                    gate_w: HostSlice::new(&l.gate_w)?,
                    up_w: HostSlice::new(&l.up_w)?,
                    down_w: HostSlice::new(&l.down_w)?,
                    input_norm: HostSlice::new(&l.input_norm)?,
                    post_norm: HostSlice::new(&l.post_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HostWeights {
            embed: HostSlice::new(&w.embed)?,
            layers,
            norm: HostSlice::new(&w.norm)?,
            lm_head: slice_opt(&w.lm_head)?,
            adapters: host_adapters(model)?,
        })
    }
}

/// The weights a pass reads: made for it, or shared with the other chunks of a step.
enum Held<'a> {
    Own(HostWeights<'a>),
    Shared(&'a HostWeights<'a>),
}

impl<'a> std::ops::Deref for Held<'a> {
    type Target = HostWeights<'a>;

    fn deref(&self) -> &HostWeights<'a> {
        match self {
            Held::Own(w) => w,
            Held::Shared(w) => w,
        }
    }
}

/// The activations of one block that its backward reads.
/// "Rows" are the rows of the [`Packing`], "query rows" those of the block's [`Queries`].
struct Saved {
    /// Block input (rows, hidden).
    x: Vec<f32>,
    /// Inverse RMS of each row of `x`.
    r1: Vec<f32>,
    /// Normed input (rows, hidden).
    h1: Vec<f32>,
    /// Rotated queries (query rows, heads * head_dim) and keys (rows, kv_heads * head_dim).
    q: Vec<f32>,
    k: Vec<f32>,
    /// Values (rows, kv_heads * head_dim).
    v: Vec<f32>,
    /// Attention probabilities, per segment (heads, query rows, rows) of the segment.
    probs: Vec<f32>,
    /// Attention output before the o-projection (query rows, heads * head_dim).
    attn: Vec<f32>,
    /// The residual stream after attention (query rows, hidden), its inverse RMS and its norm.
    x_mid: Vec<f32>,
    r2: Vec<f32>,
    h2: Vec<f32>,
    /// Gate and up projections and the SwiGLU output (query rows, intermediate).
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// What the forward keeps of one block: all its backward reads, or with checkpointing only its
/// input, from which the backward makes the rest again.
enum Kept {
    Full(Box<Saved>),
    Input(Vec<f32>),
}

/// The result of [`forward`]: the log-probabilities and what [`FastForward::backward`] needs.
pub struct FastForward<'a> {
    model: &'a Model,
    dims: Dims,
    weights: Held<'a>,
    packing: Packing,
    /// The query rows of every block but the last, and of the last.
    qs_all: Queries,
    qs_last: Queries,
    /// The row of the last block's output that each selected position reads.
    sel_rows: Vec<usize>,
    targets: Vec<u32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    layers: Vec<Kept>,
    /// The selected rows of the last block's output, their inverse RMS and their final norm.
    sel_x: Vec<f32>,
    sel_r: Vec<f32>,
    sel_h: Vec<f32>,
    logp: Vec<f32>,
    /// How the pass bounds its memory: the backward recomputes the logits chunk by chunk.
    opts: PassOptions,
    /// 1 / the batch's sampling temperature, which the backward carries through the division.
    inv_temperature: f32,
}

/// True when `model` can take the fast path: on the CPU with f32 master weights computed in f32.
pub fn supported(model: &Model) -> bool {
    model.device().is_cpu() && model.dtype() == DType::F32 && model.compute_dtype() == DType::F32
}

/// `y (rows, out) = x (rows, in) . w^T (+ b)` with `w` stored (out, in).
pub(super) fn linear(
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    out: usize,
    b: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * out];
    if let Some(b) = b {
        for row in y.chunks_exact_mut(out) {
            row.copy_from_slice(b);
        }
    }
    mm(
        (rows, out, inp),
        &mut y,
        (out, 1),
        b.is_some(),
        x,
        (inp, 1),
        w,
        (1, inp),
        1.0,
    );
    y
}

/// The logits of the selected positions `first .. first + buf.len() / vocab` (final-normed rows
/// of `sel_h`) projected by `head` (vocab, hidden) and multiplied by `scale` (1 / the sampling
/// temperature), into `buf`.
fn head_logits(d: &Dims, sel_h: &[f32], head: &[f32], first: usize, scale: f32, buf: &mut [f32]) {
    let (rows, hs) = (buf.len() / d.vocab, d.hidden);
    mm(
        (rows, d.vocab, hs),
        buf,
        (d.vocab, 1),
        false,
        &sel_h[first * hs..(first + rows) * hs],
        (hs, 1),
        head,
        (1, hs),
        scale,
    );
}

/// `dx (rows, in) [+]= dy (rows, out) . w (out, in)`.
pub(super) fn linear_dx(
    dy: &[f32],
    rows: usize,
    out: usize,
    w: &[f32],
    inp: usize,
    dx: &mut [f32],
    acc: bool,
) {
    mm(
        (rows, inp, out),
        dx,
        (inp, 1),
        acc,
        dy,
        (out, 1),
        w,
        (inp, 1),
        1.0,
    );
}

/// `dw (out, in) = dy^T (out, rows) . x (rows, in)`.
pub(super) fn linear_dw(dy: &[f32], rows: usize, out: usize, x: &[f32], inp: usize) -> Vec<f32> {
    let mut dw = vec![0f32; out * inp];
    mm(
        (out, inp, rows),
        &mut dw,
        (inp, 1),
        false,
        dy,
        (1, out),
        x,
        (inp, 1),
        1.0,
    );
    dw
}

/// Splits `s` into consecutive parts of the given lengths; what is left after them is dropped.
/// Panics if the lengths add up to more than `s` holds, which only an internal bug can cause.
fn split_lens<T>(mut s: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for len in lens {
        let (part, rest) = std::mem::take(&mut s).split_at_mut(len);
        parts.push(part);
        s = rest;
    }
    parts
}

/// Column sums of `dy` (rows, width): the gradient of a bias.
fn col_sums(dy: &[f32], width: usize) -> Vec<f32> {
    let mut s = vec![0f32; width];
    for row in dy.chunks_exact(width) {
        for (s, &v) in s.iter_mut().zip(row) {
            *s += v;
        }
    }
    s
}

/// RMSNorm of each row of `x` into `out`, keeping each row's inverse RMS in `r`.
fn rms_forward(x: &[f32], w: &[f32], eps: f32, r: &mut [f32], out: &mut [f32]) {
    let width = w.len();
    let rows = x
        .par_chunks_exact(width)
        .zip(out.par_chunks_exact_mut(width))
        .zip(r.par_iter_mut());
    par_sized(rows, x.len()).for_each(|((row, o), r)| *r = kernels::rms_norm(row, w, eps, o));
}

/// Backward of [`rms_forward`]: adds the gradient of `x` into `dx` and of `w` into `dw`.
fn rms_backward(x: &[f32], r: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32]) {
    let width = w.len();
    for (((row, dyr), dxr), &r) in x
        .chunks_exact(width)
        .zip(dy.chunks_exact(width))
        .zip(dx.chunks_exact_mut(width))
        .zip(r)
    {
        kernels::rms_norm_backward(row, w, r, dyr, dxr, Some(&mut *dw));
    }
}

/// Rotates every head of every token of `x` (tokens, heads * head_dim) by the angles of its
/// column position `positions[row]`; `inverse` rotates backwards (the backward of the rotation).
fn rope(
    x: &mut [f32],
    width: usize,
    positions: &[usize],
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = head_dim / 2;
    let work = x.len();
    let rows = x.par_chunks_exact_mut(width).zip(positions.par_iter());
    par_sized(rows, work).for_each(|(tok, &pos)| {
        let c = &cos[pos * half..(pos + 1) * half];
        let s = &sin[pos * half..(pos + 1) * half];
        for head in tok.chunks_exact_mut(head_dim) {
            kernels::rope(head, c, s, inverse);
        }
    });
}

/// A batch checked against the model, on the host: ids (n, t), the additive mask (n, t, t) and
/// the completion ids (n, L).
struct Inputs {
    dims: Dims,
    ids: Vec<u32>,
    mask: Vec<f32>,
    targets: Vec<u32>,
}

/// Checks the batch against the model and copies its ids, mask and targets to the host.
fn inputs(model: &Model, batch: &SequenceBatch) -> Result<Inputs> {
    if !supported(model) {
        bail!(
            "fast path: the model must be on the CPU with f32 weights and compute dtype, got {:?} weights computed in {:?}",
            model.dtype(),
            model.compute_dtype()
        );
    }
    let c = &model.config;
    let (n, t) = batch.input_ids.dims2()?;
    let (cn, lw) = batch.completion_ids.dims2()?;
    let p = batch.prompt_width;
    if cn != n || lw != batch.completion_width || p == 0 || p + lw > t {
        bail!(
            "fast path: batch of input ids {:?}, completion ids {:?}, prompt width {p}, completion width {} does not fit together",
            batch.input_ids.dims(),
            batch.completion_ids.dims(),
            batch.completion_width
        );
    }
    if t > c.max_position_embeddings {
        bail!(
            "sequence length {t} exceeds max_position_embeddings {}",
            c.max_position_embeddings
        );
    }
    if batch.attention_mask.dims() != [n, 1, t, t] {
        bail!(
            "fast path: attention mask {:?} must be ({n}, 1, {t}, {t})",
            batch.attention_mask.dims()
        );
    }
    let ids = batch.input_ids.flatten_all()?.to_vec1::<u32>()?;
    let targets = batch.completion_ids.flatten_all()?.to_vec1::<u32>()?;
    let vocab = c.vocab_size;
    if let Some(&bad) = ids.iter().chain(&targets).find(|&&i| i as usize >= vocab) {
        bail!("fast path: token id {bad} is outside the vocabulary of {vocab}");
    }
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let dims = Dims {
        n,
        t,
        p,
        lw,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        inter: c.intermediate_size,
        vocab,
        eps: c.rms_norm_eps as f32,
        scale: (1.0 / (c.head_dim as f64).sqrt()) as f32,
    };
    Ok(Inputs {
        dims,
        ids,
        mask,
        targets,
    })
}

/// The rows a block computes queries, attention outputs and its MLP for. Every block but the last
/// needs all rows; the last one only those the final norm reads (the positions that predict
/// completion tokens), while its keys and values still cover every row. Within each linked
/// segment those rows are a suffix (rows are in column order and the selected columns start at
/// `p - 1`), so a segment is cut by skipping its first rows.
struct Queries {
    /// The rows in packing order, ascending; `None` means all rows.
    rows: Option<Vec<usize>>,
    /// Per segment: the first query row (in query numbering), the rows skipped at its start and
    /// the offset of its probabilities (heads * (len - skip) * len of them).
    segs: Vec<(usize, usize, usize)>,
    /// Number of query rows.
    len: usize,
    /// Length of a block's saved attention probabilities.
    probs_len: usize,
}

impl Queries {
    fn new(d: &Dims, pk: &Packing, last: bool) -> Queries {
        let (mut segs, mut rows, mut len, mut probs) = (Vec::new(), Vec::new(), 0, 0);
        for seg in &pk.segs {
            let skip = if last {
                let first = pk.pos[seg.start..seg.start + seg.len]
                    .iter()
                    .position(|&c| c + 1 >= d.p)
                    .unwrap_or(seg.len);
                // A lone row (a segment of one) may be read at any position: it is kept.
                if seg.len == 1 {
                    0
                } else {
                    first
                }
            } else {
                0
            };
            segs.push((len, skip, probs));
            rows.extend(seg.start + skip..seg.start + seg.len);
            len += seg.len - skip;
            probs += d.heads * (seg.len - skip) * seg.len;
        }
        let rows = (len < pk.rows()).then_some(rows);
        Queries {
            rows,
            segs,
            len,
            probs_len: probs,
        }
    }

    /// Per segment of `pk`: its query rows and its key rows.
    fn segs_sizes<'s>(&'s self, pk: &'s Packing) -> impl Iterator<Item = (usize, usize)> + 's {
        pk.segs
            .iter()
            .zip(&self.segs)
            .map(|(seg, &(_, skip, _))| (seg.len - skip, seg.len))
    }

    /// The query rows' part of `x` (rows, width): borrowed when every row is a query row.
    fn gather<'x, T: Clone>(&self, x: &'x [T], width: usize) -> std::borrow::Cow<'x, [T]> {
        match &self.rows {
            None => std::borrow::Cow::Borrowed(x),
            Some(rows) => {
                let mut out = Vec::with_capacity(rows.len() * width);
                for &r in rows {
                    out.extend_from_slice(&x[r * width..(r + 1) * width]);
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// The positions of the query rows.
    fn gather_pos<'x>(&self, pos: &'x [usize]) -> std::borrow::Cow<'x, [usize]> {
        self.gather(pos, 1)
    }

    /// The query row of each packing row (`usize::MAX` for rows that are not query rows).
    fn index(&self, rows: usize) -> Vec<usize> {
        match &self.rows {
            None => (0..rows).collect(),
            Some(q) => {
                let mut idx = vec![usize::MAX; rows];
                for (i, &r) in q.iter().enumerate() {
                    idx[r] = i;
                }
                idx
            }
        }
    }
}

/// One block's forward on `x` (rows, hidden); gives its saved activations (which own `x`) and
/// its output on the query rows of `qs`.
fn block_forward(
    d: &Dims,
    w: &HostLayer,
    ad: Option<&HostAdapters>,
    pk: &Packing,
    qs: &Queries,
    (cos, sin): (&[f32], &[f32]),
    x: Vec<f32>,
) -> (Saved, Vec<f32>) {
    let (nt, nq, hs, qd, kvd, hd) = (pk.rows(), qs.len, d.hidden, d.qd(), d.kvd(), d.head_dim);
    let mut r1 = vec![0f32; nt];
    let mut h1 = vec![0f32; nt * hs];
    rms_forward(&x, &w.input_norm, d.eps, &mut r1, &mut h1);
    let h1q = qs.gather(&h1, hs);
    // The LoRA term of target `t` on input `x` (rows, inp), added into `y` (rows, out).
    let lora = |t: LoraTarget, x: &[f32], rows, inp, out, y: &mut [f32]| {
        if let Some(a) = ad.and_then(|ad| ad[super::lora::slot(t)].as_ref()) {
            a.forward(x, rows, inp, out, y);
        }
    };
    let mut q = linear(&h1q, nq, hs, &w.q_w, qd, w.q_b.as_deref());
    lora(LoraTarget::QProj, &h1q, nq, hs, qd, &mut q);
    drop(h1q);
    let mut k = linear(&h1, nt, hs, &w.k_w, kvd, w.k_b.as_deref());
    lora(LoraTarget::KProj, &h1, nt, hs, kvd, &mut k);
    let mut v = linear(&h1, nt, hs, &w.v_w, kvd, w.v_b.as_deref());
    lora(LoraTarget::VProj, &h1, nt, hs, kvd, &mut v);
    let pos_q = qs.gather_pos(&pk.pos);
    rope(&mut q, qd, &pos_q, hd, cos, sin, false);
    rope(&mut k, kvd, &pk.pos, hd, cos, sin, false);
    let mut probs = vec![0f32; qs.probs_len];
    let mut attn = vec![0f32; nq * qd];
    // Segments attend independently; each writes its own query rows of `attn` and its own
    // probabilities, so they run side by side.
    let probs_parts = split_lens(
        &mut probs,
        qs.segs_sizes(pk).map(|(tq, tk)| d.heads * tq * tk),
    );
    let attn_parts = split_lens(&mut attn, qs.segs_sizes(pk).map(|(tq, _)| tq * qd));
    let tasks: Vec<_> = pk
        .segs
        .iter()
        .zip(&qs.segs)
        .zip(probs_parts.into_iter().zip(attn_parts))
        .collect();
    tasks
        .into_par_iter()
        .for_each(|((seg, &(q0, skip, _)), (probs, attn))| {
            let (r0, tk) = (seg.start, seg.len);
            let tq = tk - skip;
            for h in 0..d.heads {
                let g = h / d.rep();
                let pb = &mut probs[h * tq * tk..][..tq * tk];
                // Scores `scale * q k^T`: the keys are read transposed through their strides.
                mm(
                    (tq, tk, hd),
                    pb,
                    (tk, 1),
                    false,
                    &q[q0 * qd + h * hd..],
                    (qd, 1),
                    &k[r0 * kvd + g * hd..],
                    (1, kvd),
                    d.scale,
                );
                for (row, m) in pb
                    .chunks_exact_mut(tk)
                    .zip(seg.mask[skip * tk..].chunks_exact(tk))
                {
                    for (s, &m) in row.iter_mut().zip(m) {
                        *s += m;
                    }
                    kernels::softmax(row);
                }
                mm(
                    (tq, hd, tk),
                    &mut attn[h * hd..],
                    (qd, 1),
                    false,
                    pb,
                    (tk, 1),
                    &v[r0 * kvd + g * hd..],
                    (kvd, 1),
                    1.0,
                );
            }
        });
    // The residual is the destination gemm accumulates into.
    let mut x_mid = qs.gather(&x, hs).into_owned();
    mm(
        (nq, hs, qd),
        &mut x_mid,
        (hs, 1),
        true,
        &attn,
        (qd, 1),
        &w.o_w,
        (1, qd),
        1.0,
    );
    lora(LoraTarget::OProj, &attn, nq, qd, hs, &mut x_mid);
    let mut r2 = vec![0f32; nq];
    let mut h2 = vec![0f32; nq * hs];
    rms_forward(&x_mid, &w.post_norm, d.eps, &mut r2, &mut h2);
    let mut gate = linear(&h2, nq, hs, &w.gate_w, d.inter, None);
    lora(LoraTarget::GateProj, &h2, nq, hs, d.inter, &mut gate);
    let mut up = linear(&h2, nq, hs, &w.up_w, d.inter, None);
    lora(LoraTarget::UpProj, &h2, nq, hs, d.inter, &mut up);
    let mut act = vec![0f32; gate.len()];
    for_rows(&mut act, d.inter, |i, a| {
        let row = i * d.inter..(i + 1) * d.inter;
        kernels::swiglu(&gate[row.clone()], &up[row], a)
    });
    let mut out = x_mid.clone();
    mm(
        (nq, hs, d.inter),
        &mut out,
        (hs, 1),
        true,
        &act,
        (d.inter, 1),
        &w.down_w,
        (1, d.inter),
        1.0,
    );
    lora(LoraTarget::DownProj, &act, nq, d.inter, hs, &mut out);
    let saved = Saved {
        x,
        r1,
        h1,
        q,
        k,
        v,
        probs,
        attn,
        x_mid,
        r2,
        h2,
        gate,
        up,
        act,
    };
    (saved, out)
}

/// The gradients of one block's weights.
type LayerGrads = LayerVecs<Vec<f32>>;

/// The gradients of one block's LoRA adapters, one slot per target.
type BlockAdapterGrads = [Option<AdapterGrads>; 7];

/// One block's backward: `dy` is the gradient of its output (on the query rows of `qs`); gives
/// the gradient of its input (all rows) and of its weights. With LoRA adapters (`ad`) the
/// block's own weights are frozen: their gradients are left empty and the adapters' given.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    d: &Dims,
    w: &HostLayer,
    ad: Option<&HostAdapters>,
    s: &Saved,
    pk: &Packing,
    qs: &Queries,
    (cos, sin): (&[f32], &[f32]),
    dy: Vec<f32>,
) -> (Vec<f32>, LayerGrads, BlockAdapterGrads) {
    let (nt, nq, hs, qd, kvd, hd, it) = (
        pk.rows(),
        qs.len,
        d.hidden,
        d.qd(),
        d.kvd(),
        d.head_dim,
        d.inter,
    );
    let frozen = ad.is_some();
    let dw = |dy: &[f32], rows, out, x: &[f32], inp| {
        if frozen {
            Vec::new()
        } else {
            linear_dw(dy, rows, out, x, inp)
        }
    };
    let mut agrads: BlockAdapterGrads = Default::default();
    // The LoRA backward of target `t` (input `x` (rows, inp), output gradient `dy`), adding
    // into `dx`.
    let mut lora = |t: LoraTarget, x: &[f32], rows, inp, out, dy: &[f32], dx: &mut [f32]| {
        let i = super::lora::slot(t);
        if let Some(a) = ad.and_then(|ad| ad[i].as_ref()) {
            agrads[i] = Some(a.backward(x, rows, inp, out, dy, dx));
        }
    };
    // MLP: out = x_mid + act . down^T.
    let mut dact = vec![0f32; nq * it];
    linear_dx(&dy, nq, hs, &w.down_w, it, &mut dact, false);
    lora(LoraTarget::DownProj, &s.act, nq, it, hs, &dy, &mut dact);
    let down_w = dw(&dy, nq, hs, &s.act, it);
    // The gradients of gate and up, one buffer holding the first then the second.
    let mut dgu = vec![0f32; 2 * nq * it];
    for_rows2(&mut dgu, it, |i, dg, du| {
        let row = i * it..(i + 1) * it;
        kernels::swiglu_backward(&dact[row.clone()], &s.gate[row.clone()], &s.up[row], dg, du)
    });
    drop(dact);
    let (dgate, dup) = dgu.split_at(nq * it);
    let gate_w = dw(dgate, nq, it, &s.h2, hs);
    let up_w = dw(dup, nq, it, &s.h2, hs);
    let mut dh2 = vec![0f32; nq * hs];
    linear_dx(dgate, nq, it, &w.gate_w, hs, &mut dh2, false);
    linear_dx(dup, nq, it, &w.up_w, hs, &mut dh2, true);
    lora(LoraTarget::GateProj, &s.h2, nq, hs, it, dgate, &mut dh2);
    lora(LoraTarget::UpProj, &s.h2, nq, hs, it, dup, &mut dh2);
    drop(dgu);
    // The residual passes `dy` through; the norm's gradient adds to it.
    let mut dx_mid = dy;
    let mut post_norm = vec![0f32; hs];
    rms_backward(
        &s.x_mid,
        &s.r2,
        &w.post_norm,
        &dh2,
        &mut dx_mid,
        &mut post_norm,
    );
    drop(dh2);
    // Attention output projection: x_mid = x + attn . o^T.
    let mut dattn = vec![0f32; nq * qd];
    linear_dx(&dx_mid, nq, hs, &w.o_w, qd, &mut dattn, false);
    lora(LoraTarget::OProj, &s.attn, nq, qd, hs, &dx_mid, &mut dattn);
    let o_w = dw(&dx_mid, nq, hs, &s.attn, qd);
    // Attention: per (segment, head), dP = dO v^T, dv += P^T dO, dS = P * (dP - sum(dP * P)),
    // dq = scale * dS k, dk += scale * dS^T q.
    let mut dq = vec![0f32; nq * qd];
    let mut dk = vec![0f32; nt * kvd];
    let mut dv = vec![0f32; nt * kvd];
    // Each segment writes the gradients of its own query, key and value rows, so segments run
    // side by side.
    let dq_parts = split_lens(&mut dq, qs.segs_sizes(pk).map(|(tq, _)| tq * qd));
    let dk_parts = split_lens(&mut dk, pk.segs.iter().map(|g| g.len * kvd));
    let dv_parts = split_lens(&mut dv, pk.segs.iter().map(|g| g.len * kvd));
    let tasks: Vec<_> = pk
        .segs
        .iter()
        .zip(&qs.segs)
        .zip(dq_parts.into_iter().zip(dk_parts).zip(dv_parts))
        .collect();
    // One buffer of score gradients per thread, resized per segment (gemm overwrites it).
    tasks.into_par_iter().for_each_init(
        Vec::new,
        |ds, ((seg, &(q0, skip, po)), ((dq, dk), dv))| {
            let (r0, tk) = (seg.start, seg.len);
            let tq = tk - skip;
            ds.resize(tq * tk, 0.0);
            for h in 0..d.heads {
                let g = h / d.rep();
                let pb = &s.probs[po + h * tq * tk..][..tq * tk];
                let (qo, ko) = (q0 * qd + h * hd, r0 * kvd + g * hd);
                mm(
                    (tq, tk, hd),
                    ds,
                    (tk, 1),
                    false,
                    &dattn[qo..],
                    (qd, 1),
                    &s.v[ko..],
                    (1, kvd),
                    1.0,
                );
                mm(
                    (tk, hd, tq),
                    &mut dv[g * hd..],
                    (kvd, 1),
                    true,
                    pb,
                    (1, tk),
                    &dattn[qo..],
                    (qd, 1),
                    1.0,
                );
                for (dr, pr) in ds.chunks_exact_mut(tk).zip(pb.chunks_exact(tk)) {
                    kernels::softmax_backward(dr, pr);
                }
                mm(
                    (tq, hd, tk),
                    &mut dq[h * hd..],
                    (qd, 1),
                    false,
                    ds,
                    (tk, 1),
                    &s.k[ko..],
                    (kvd, 1),
                    d.scale,
                );
                mm(
                    (tk, hd, tq),
                    &mut dk[g * hd..],
                    (kvd, 1),
                    true,
                    ds,
                    (1, tk),
                    &s.q[qo..],
                    (qd, 1),
                    d.scale,
                );
            }
        },
    );
    drop(dattn);
    // Back through the rotation to the projections' outputs.
    let pos_q = qs.gather_pos(&pk.pos);
    rope(&mut dq, qd, &pos_q, hd, cos, sin, true);
    rope(&mut dk, kvd, &pk.pos, hd, cos, sin, true);
    let bias = |dy: &[f32], width: usize, b: &Option<HostSlice>| {
        b.as_ref().filter(|_| !frozen).map(|_| col_sums(dy, width))
    };
    let q_b = bias(&dq, qd, &w.q_b);
    let k_b = bias(&dk, kvd, &w.k_b);
    let v_b = bias(&dv, kvd, &w.v_b);
    let h1q = qs.gather(&s.h1, hs);
    let q_w = dw(&dq, nq, qd, &h1q, hs);
    let k_w = dw(&dk, nt, kvd, &s.h1, hs);
    let v_w = dw(&dv, nt, kvd, &s.h1, hs);
    let mut dh1 = vec![0f32; nt * hs];
    linear_dx(&dk, nt, kvd, &w.k_w, hs, &mut dh1, false);
    linear_dx(&dv, nt, kvd, &w.v_w, hs, &mut dh1, true);
    lora(LoraTarget::KProj, &s.h1, nt, hs, kvd, &dk, &mut dh1);
    lora(LoraTarget::VProj, &s.h1, nt, hs, kvd, &dv, &mut dh1);
    // The query rows' parts: the q projection's input gradient and the residual.
    let mut dx = match &qs.rows {
        None => {
            linear_dx(&dq, nt, qd, &w.q_w, hs, &mut dh1, true);
            lora(LoraTarget::QProj, &h1q, nq, hs, qd, &dq, &mut dh1);
            dx_mid
        }
        Some(rows) => {
            let mut dh1q = vec![0f32; nq * hs];
            linear_dx(&dq, nq, qd, &w.q_w, hs, &mut dh1q, false);
            lora(LoraTarget::QProj, &h1q, nq, hs, qd, &dq, &mut dh1q);
            let mut dx = vec![0f32; nt * hs];
            for ((&r, a), b) in rows
                .iter()
                .zip(dh1q.chunks_exact(hs))
                .zip(dx_mid.chunks_exact(hs))
            {
                for ((h, x), (&a, &b)) in dh1[r * hs..(r + 1) * hs]
                    .iter_mut()
                    .zip(&mut dx[r * hs..(r + 1) * hs])
                    .zip(a.iter().zip(b))
                {
                    *h += a;
                    *x = b;
                }
            }
            dx
        }
    };
    let mut input_norm = vec![0f32; hs];
    rms_backward(&s.x, &s.r1, &w.input_norm, &dh1, &mut dx, &mut input_norm);
    let grads = LayerGrads {
        q_w,
        q_b,
        k_w,
        k_b,
        v_w,
        v_b,
        o_w,
        gate_w,
        up_w,
        down_w,
        input_norm,
        post_norm,
    };
    (dx, grads, agrads)
}

/// The shared forward: with `save`, keeps every activation the backward needs.
fn run<'a>(
    model: &'a Model,
    weights: Held<'a>,
    batch: &SequenceBatch,
    save: bool,
    opts: PassOptions,
) -> Result<FastForward<'a>> {
    let Inputs {
        dims: d,
        ids,
        mask,
        targets,
    } = inputs(model, batch)?;
    let half = d.head_dim / 2;
    let rope_cos = host(&model.rope.cos.narrow(0, 0, d.t)?)?;
    let rope_sin = host(&model.rope.sin.narrow(0, 0, d.t)?)?;
    if rope_cos.len() != d.t * half || rope_sin.len() != d.t * half {
        bail!("fast path: RoPE tables do not have head_dim / 2 = {half} columns");
    }
    let pk = Packing::new(&d, &ids, &mask);
    drop((ids, mask));
    let n_layers = weights.layers.len();
    let (qs_all, qs_last) = (Queries::new(&d, &pk, false), Queries::new(&d, &pk, true));
    let mut layers_seen = 0;
    // The row of the last block's output that each selected position reads.
    let out_index = if n_layers > 0 {
        qs_last.index(pk.rows())
    } else {
        (0..pk.rows()).collect()
    };
    let sel_rows: Vec<usize> = pk.selected.iter().map(|&r| out_index[r]).collect();
    drop(out_index);
    let hs = d.hidden;
    let mut x = vec![0f32; pk.rows() * hs];
    for (row, &id) in x.chunks_exact_mut(hs).zip(&pk.ids) {
        let id = id as usize;
        row.copy_from_slice(&weights.embed[id * hs..(id + 1) * hs]);
    }
    let mut layers = Vec::with_capacity(if save { weights.layers.len() } else { 0 });
    for (l, w) in weights.layers.iter().enumerate() {
        let qs = if layers_seen + 1 == n_layers {
            &qs_last
        } else {
            &qs_all
        };
        layers_seen += 1;
        let ad = weights.adapters.get(l);
        let (saved, out) = block_forward(&d, w, ad, &pk, qs, (&rope_cos, &rope_sin), x);
        if save {
            layers.push(if opts.checkpointing {
                Kept::Input(saved.x)
            } else {
                Kept::Full(Box::new(saved))
            });
        }
        x = out;
    }
    // Only the L positions that predict completion tokens are normed and projected.
    let ns = d.selected();
    let mut sel_x = vec![0f32; ns * hs];
    for (row, &src) in sel_x.chunks_exact_mut(hs).zip(&sel_rows) {
        row.copy_from_slice(&x[src * hs..(src + 1) * hs]);
    }
    drop(x);
    let mut sel_r = vec![0f32; ns];
    let mut sel_h = vec![0f32; ns * hs];
    rms_forward(&sel_x, &weights.norm, d.eps, &mut sel_r, &mut sel_h);
    let inv_temperature = (1.0 / batch.temperature) as f32;
    // The logits are made `opts.logit_rows` positions at a time and only each position's
    // log-probability is kept, so the (n * L, vocab) logits never exist at once.
    let mut logp = vec![0f32; ns];
    let chunk = opts.logit_rows.max(1);
    let mut logits = vec![0f32; chunk.min(ns) * d.vocab];
    for (c, (lp, tg)) in logp
        .chunks_mut(chunk)
        .zip(targets.chunks(chunk))
        .enumerate()
    {
        let first = c * chunk;
        let buf = &mut logits[..lp.len() * d.vocab];
        head_logits(&d, &sel_h, weights.head(), first, inv_temperature, buf);
        buf.par_chunks_exact(d.vocab)
            .zip(lp.par_iter_mut())
            .zip(tg.par_iter())
            .for_each(|((row, lp), &tgt)| *lp = row[tgt as usize] - kernels::log_sum_exp(row));
    }
    drop(logits);
    if !save {
        sel_x = Vec::new();
        sel_h = Vec::new();
    }
    Ok(FastForward {
        model,
        dims: d,
        weights,
        packing: pk,
        qs_all,
        qs_last,
        sel_rows,
        targets,
        rope_cos,
        rope_sin,
        layers,
        sel_x,
        sel_r,
        sel_h,
        logp,
        inv_temperature,
        opts,
    })
}

/// The training forward: the log-probabilities of the completion tokens and every activation
/// [`FastForward::backward`] needs, with the default [`PassOptions`] of the model.
pub fn forward<'a>(model: &'a Model, batch: &SequenceBatch) -> Result<FastForward<'a>> {
    forward_opts(model, batch, PassOptions::of(model))
}

/// [`forward`] with the given options (chunk size of the logits, checkpointing).
pub fn forward_opts<'a>(
    model: &'a Model,
    batch: &SequenceBatch,
    opts: PassOptions,
) -> Result<FastForward<'a>> {
    run(
        model,
        Held::Own(HostWeights::new(model)?),
        batch,
        true,
        opts,
    )
}

/// [`forward_opts`] with the model's weights already read (see [`HostWeights`]).
pub fn forward_with<'a>(
    model: &'a Model,
    weights: &'a HostWeights<'a>,
    batch: &SequenceBatch,
    opts: PassOptions,
) -> Result<FastForward<'a>> {
    run(model, Held::Shared(weights), batch, true, opts)
}

/// The log-probabilities (n * L, row-major) alone, keeping no activations: the reference pass.
pub fn logprobs(model: &Model, batch: &SequenceBatch) -> Result<Vec<f32>> {
    let w = Held::Own(HostWeights::new(model)?);
    Ok(run(model, w, batch, false, PassOptions::of(model))?.logp)
}

/// [`logprobs`] as an (n, L) tensor on the model's device, like
/// [`reference_logprobs`](super::logprob::reference_logprobs).
pub fn logprobs_tensor(model: &Model, batch: &SequenceBatch) -> Result<Tensor> {
    logprobs_tensor_with(model, &HostWeights::new(model)?, batch)
}

/// [`logprobs_tensor`] with the model's weights already read (see [`HostWeights`]).
pub fn logprobs_tensor_with(
    model: &Model,
    weights: &HostWeights<'_>,
    batch: &SequenceBatch,
) -> Result<Tensor> {
    let lp = run(
        model,
        Held::Shared(weights),
        batch,
        false,
        PassOptions::of(model),
    )?
    .logp;
    Tensor::from_vec(
        lp,
        (batch.completion_ids.dims2()?.0, batch.completion_width),
        model.device(),
    )
}

impl FastForward<'_> {
    /// The log-probabilities (n * L, row-major); padding positions hold finite values.
    pub fn logp(&self) -> &[f32] {
        &self.logp
    }

    /// The log-probabilities as an (n, L) tensor on the model's device.
    pub fn logp_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.logp.clone(),
            (self.dims.n, self.dims.lw),
            self.model.device(),
        )
    }

    /// The gradient of every trainable weight given `dlogp` (n * L, row-major), the gradient of
    /// the loss with respect to the log-probabilities. Gives (weight tensor, gradient) pairs,
    /// the weight tensor being the one held in the model (the `Var`'s tensor of a trainable
    /// model), so that the pairs can go into a `GradStore`. A tied embedding's gradient holds
    /// both the head's part and the scatter-add of the input embeddings.
    pub fn backward(&self, dlogp: &[f32]) -> Result<Vec<(Tensor, Tensor)>> {
        let d = &self.dims;
        let ns = d.selected();
        if dlogp.len() != ns {
            bail!(
                "fast path: gradient of {} log-probs given for a batch of {} rows x {} positions",
                dlogp.len(),
                d.n,
                d.lw
            );
        }
        if self.layers.len() != self.weights.layers.len() || self.sel_h.len() != ns * d.hidden {
            bail!("fast path: backward of a forward that kept no activations (use `forward`)");
        }
        let hs = d.hidden;
        // d logp / d logits = (onehot(target) - softmax) / temperature, chunk by chunk of
        // positions with the chunk's logits made again (the forward kept none of them).
        let head = self.weights.head();
        // With LoRA the head and the embedding are frozen: no gradient is computed for them.
        let frozen = !self.weights.adapters.is_empty();
        let mut dhead = if frozen {
            Vec::new()
        } else {
            vec![0f32; d.vocab * hs]
        };
        let mut dsel_h = vec![0f32; ns * hs];
        let chunk = self.opts.logit_rows.max(1);
        let mut dlogits = vec![0f32; chunk.min(ns) * d.vocab];
        for (c, (g, tg)) in dlogp
            .chunks(chunk)
            .zip(self.targets.chunks(chunk))
            .enumerate()
        {
            let (first, rows) = (c * chunk, g.len());
            let buf = &mut dlogits[..rows * d.vocab];
            head_logits(d, &self.sel_h, head, first, self.inv_temperature, buf);
            let inv_temperature = self.inv_temperature;
            buf.par_chunks_exact_mut(d.vocab)
                .zip(g.par_iter())
                .zip(tg.par_iter())
                .for_each(|((row, &g), &tgt)| {
                    let lse = kernels::log_sum_exp(row);
                    let g = g * inv_temperature;
                    for v in row.iter_mut() {
                        *v = -g * (*v - lse).fexp();
                    }
                    row[tgt as usize] += g;
                });
            let sel_h = &self.sel_h[first * hs..(first + rows) * hs];
            // dhead (vocab, hidden) += dlogits^T . sel_h, summed over the chunks.
            if !frozen {
                mm(
                    (d.vocab, hs, rows),
                    &mut dhead,
                    (hs, 1),
                    c > 0,
                    buf,
                    (1, d.vocab),
                    sel_h,
                    (hs, 1),
                    1.0,
                );
            }
            let dh = &mut dsel_h[first * hs..(first + rows) * hs];
            linear_dx(buf, rows, d.vocab, head, hs, dh, false);
        }
        drop(dlogits);
        let mut dsel_x = vec![0f32; ns * hs];
        let mut dnorm = vec![0f32; hs];
        rms_backward(
            &self.sel_x,
            &self.sel_r,
            &self.weights.norm,
            &dsel_h,
            &mut dsel_x,
            &mut dnorm,
        );
        // Positions that share a row (the lone tokens of `Packing`) add their gradients.
        let pk = &self.packing;
        let n_layers = self.layers.len();
        let out_rows = if n_layers > 0 {
            self.qs_last.len
        } else {
            pk.rows()
        };
        let mut dx = vec![0f32; out_rows * hs];
        for (row, &dst) in dsel_x.chunks_exact(hs).zip(&self.sel_rows) {
            for (a, &g) in dx[dst * hs..(dst + 1) * hs].iter_mut().zip(row) {
                *a += g;
            }
        }
        let mut layer_grads = Vec::with_capacity(self.layers.len());
        let mut adapter_grads = Vec::with_capacity(self.weights.adapters.len());
        for (l, (w, s)) in self
            .weights
            .layers
            .iter()
            .zip(&self.layers)
            .enumerate()
            .rev()
        {
            let qs = if l + 1 == n_layers {
                &self.qs_last
            } else {
                &self.qs_all
            };
            let rope = (&self.rope_cos[..], &self.rope_sin[..]);
            let ad = self.weights.adapters.get(l);
            let remade;
            let s = match s {
                Kept::Full(s) => s,
                Kept::Input(x) => {
                    remade = block_forward(d, w, ad, pk, qs, rope, x.clone()).0;
                    &remade
                }
            };
            let (dxi, g, ag) = block_backward(d, w, ad, s, pk, qs, rope, dx);
            dx = dxi;
            layer_grads.push(g);
            adapter_grads.push(ag);
        }
        layer_grads.reverse();
        adapter_grads.reverse();
        if let (true, Some(lora)) = (frozen, &self.model.lora) {
            return super::lora::grad_pairs(lora, adapter_grads);
        }
        // The embedding: the tied head's part plus the scatter-add of the input rows.
        let tied = self.weights.lm_head.is_none();
        let mut dembed = if tied {
            std::mem::take(&mut dhead)
        } else {
            vec![0f32; d.vocab * hs]
        };
        for (row, &id) in dx.chunks_exact(hs).zip(&pk.ids) {
            let id = id as usize;
            for (e, &g) in dembed[id * hs..(id + 1) * hs].iter_mut().zip(row) {
                *e += g;
            }
        }
        let mw = &self.model.weights;
        let pair = |w: &Tensor, g: Vec<f32>| -> Result<(Tensor, Tensor)> {
            Ok((w.clone(), Tensor::from_vec(g, w.shape(), w.device())?))
        };
        let mut out = vec![pair(&mw.embed, dembed)?];
        for (w, g) in mw.layers.iter().zip(layer_grads) {
            out.push(pair(&w.q_w, g.q_w)?);
            out.push(pair(&w.k_w, g.k_w)?);
            out.push(pair(&w.v_w, g.v_w)?);
            for (t, gb) in [(&w.q_b, g.q_b), (&w.k_b, g.k_b), (&w.v_b, g.v_b)] {
                if let (Some(t), Some(gb)) = (t, gb) {
                    out.push(pair(t, gb)?);
                }
            }
            out.push(pair(&w.o_w, g.o_w)?);
            out.push(pair(&w.gate_w, g.gate_w)?);
            out.push(pair(&w.up_w, g.up_w)?);
            out.push(pair(&w.down_w, g.down_w)?);
            out.push(pair(&w.input_norm, g.input_norm)?);
            out.push(pair(&w.post_norm, g.post_norm)?);
        }
        out.push(pair(&mw.norm, dnorm)?);
        if let Some(h) = &mw.lm_head {
            out.push(pair(h, dhead)?);
        }
        Ok(out)
    }

    /// Runs candle's backward of `loss`, a small graph built from `logp` (a `Var` holding
    /// [`FastForward::logp_tensor`]), to get d loss / d logp, then this pass's backward, and gives
    /// the `GradStore` of `loss.backward()` with every weight's gradient inserted: what
    /// `loss.backward()` on the autograd path would have given for the model's variables.
    pub fn loss_backward(
        &self,
        loss: &Tensor,
        logp: &Tensor,
    ) -> Result<candle_core::backprop::GradStore> {
        let mut grads = loss.backward()?;
        let dlogp = match grads.get(logp) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            // A loss that does not depend on the log-probs gives every weight a zero gradient.
            None => vec![0f32; self.dims.selected()],
        };
        for (w, g) in self.backward(&dlogp)? {
            grads.insert(&w, g);
        }
        Ok(grads)
    }
}
