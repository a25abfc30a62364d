//! What turns the slice kernels of [`super::kernels`] into candle custom ops: takes candle CPU
//! storages and layouts, gives typed slices, row addressing for strided inputs, and parallel
//! loops over rows sized so that each work item has enough work to pay for its scheduling.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, WithDType};
use rayon::iter::MinLen;
use rayon::prelude::*;

/// Below this many elements per work item, scheduling costs more than the work it spreads.
const MIN_TASK_ELEMS: usize = 8 * 1024;

/// Row addressing of a tensor viewed as rows of its last dimension. The last dimension must be
/// dense (stride 1, or of length 1); the leading dimensions may have any strides, including the
/// zero strides of a broadcast, so transposed or narrowed views are read without a copy.
pub(crate) struct Rows {
    start: usize,
    lead_dims: Vec<usize>,
    lead_strides: Vec<usize>,
    contiguous: bool,
    /// Number of rows (product of the leading dimensions).
    pub n_rows: usize,
    /// Length of one row (the last dimension).
    pub row_len: usize,
}

impl Rows {
    /// Describes `layout` as rows; `what` names the tensor in the error for an unusable layout.
    pub fn new(layout: &Layout, what: &str) -> Result<Self> {
        let dims = layout.dims();
        let stride = layout.stride();
        if dims.is_empty() {
            bail!("{what}: expected at least one dimension, got a scalar");
        }
        let last = dims.len() - 1;
        let row_len = dims[last];
        if row_len > 1 && stride[last] != 1 {
            bail!(
                "{what}: the last dimension must be dense (stride 1), got strides {stride:?} for shape {dims:?}"
            );
        }
        let lead_dims = dims[..last].to_vec();
        let lead_strides = stride[..last].to_vec();
        let n_rows = lead_dims.iter().product();
        Ok(Self {
            start: layout.start_offset(),
            contiguous: layout.is_contiguous(),
            lead_dims,
            lead_strides,
            n_rows,
            row_len,
        })
    }

    /// Offset in the storage of the first element of row `row`.
    #[inline]
    pub fn offset(&self, mut row: usize) -> usize {
        if self.contiguous {
            return self.start + row * self.row_len;
        }
        let mut off = self.start;
        for (d, s) in self.lead_dims.iter().zip(&self.lead_strides).rev() {
            off += (row % d) * s;
            row /= d;
        }
        off
    }

    /// Row `row` of `data`, the whole storage slice this layout describes.
    #[inline]
    pub fn row<'a, T>(&self, data: &'a [T], row: usize) -> &'a [T] {
        let o = self.offset(row);
        &data[o..o + self.row_len]
    }
}

/// The typed slice of a CPU storage, with a clear error naming the tensor on a dtype mismatch.
pub(crate) fn slice<'a, T: WithDType>(s: &'a CpuStorage, what: &str) -> Result<&'a [T]> {
    match T::cpu_storage_as_slice(s) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{what}: expected dtype {:?}, got {:?}", T::DTYPE, s.dtype()),
    }
}

/// Rows per parallel work item for rows that each cost about `work_per_row` element updates.
fn rows_per_task(work_per_row: usize) -> usize {
    (MIN_TASK_ELEMS / work_per_row.max(1)).max(1)
}

/// `items` as a parallel job that costs about `total_work` element updates in all: split
/// across rayon's pool when there is enough work, else kept whole, which rayon runs on the
/// calling thread without waking the pool. Large jobs run on rayon's pool (the one candle's
/// matmul uses), where the calling thread sleeps on a latch while it waits; candle's own barrier
/// pool makes the caller spin until a parked worker wakes, which on a small, busy machine burnt a
/// third of the step (see [`crate::alloc::tune_threads`], which leaves that pool without
/// workers).
pub(crate) fn par_sized<I: IndexedParallelIterator>(items: I, total_work: usize) -> MinLen<I> {
    let n = items.len();
    let min = if n < 2 || total_work <= 2 * MIN_TASK_ELEMS {
        n.max(1)
    } else {
        1
    };
    items.with_min_len(min)
}

/// Runs `f(first_row, block)` over blocks of whole rows of `dst` (rows of `row_len` elements,
/// each costing about `work_per_row` element updates) and returns each block's result, in
/// parallel when there is enough work (see [`par_sized`]).
pub(crate) fn for_blocks<T: Send, R: Send>(
    dst: &mut [T],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    if row_len == 0 || dst.is_empty() {
        return vec![];
    }
    let n_rows = dst.len() / row_len;
    let per = rows_per_task(work_per_row);
    par_sized(dst.par_chunks_mut(per * row_len), n_rows * work_per_row)
        .enumerate()
        .map(|(b, block)| f(b * per, block))
        .collect()
}

/// Calls `f(row_index, row)` for every row of `dst` (rows of `row_len` elements), in parallel
/// when there is enough work.
pub(crate) fn for_rows<T: Send>(
    dst: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    for_blocks(dst, row_len, row_len, |first, block| {
        for (i, r) in block.chunks_mut(row_len).enumerate() {
            f(first + i, r)
        }
    });
}

/// Like [`for_rows`], but each block of rows also accumulates into its own `acc` (created by
/// `init`), and the accumulators are returned so the caller can reduce them (e.g. a weight
/// gradient summed over rows).
pub(crate) fn for_rows_acc<T: Send, A: Send>(
    dst: &mut [T],
    row_len: usize,
    init: impl Fn() -> A + Sync + Send,
    f: impl Fn(&mut A, usize, &mut [T]) + Sync + Send,
) -> Vec<A> {
    for_blocks(dst, row_len, row_len, |first, block| {
        let mut acc = init();
        for (i, r) in block.chunks_mut(row_len).enumerate() {
            f(&mut acc, first + i, r)
        }
        acc
    })
}

/// Like [`for_rows`] over two outputs of the same shape at once: `f(row_index, row_a, row_b)`.
/// `both` holds the first output followed by the second.
pub(crate) fn for_rows2<T: Send>(
    both: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync + Send,
) {
    let n = both.len() / 2;
    if row_len == 0 || n == 0 {
        return;
    }
    let (first, second) = both.split_at_mut(n);
    let per = rows_per_task(row_len);
    let blocks = first
        .par_chunks_mut(per * row_len)
        .zip(second.par_chunks_mut(per * row_len));
    par_sized(blocks, n)
        .enumerate()
        .for_each(|(blk, (block_a, block_b))| {
            let rows = block_a.chunks_mut(row_len).zip(block_b.chunks_mut(row_len));
            for (i, (a, b)) in rows.enumerate() {
                f(blk * per + i, a, b)
            }
        });
}

/// `t` itself when its last dimension is dense (what [`Rows`] needs), else a contiguous copy;
/// gradients that come from a broadcast (e.g. of a summed loss) take the copy. Off the CPU the
/// copy is made whenever `t` is not contiguous: the CUDA kernels index plain row-major buffers.
pub(crate) fn dense_last(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    if !t.device().is_cpu() {
        return t.contiguous();
    }
    let dims = t.dims();
    if dims.is_empty() || dims[dims.len() - 1] <= 1 || t.stride()[dims.len() - 1] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Runs a fused kernel on the f32 or f64 storage it supports and wraps the result in the same
/// storage type; any other dtype is an error naming the op (the facade routes bf16/f16 to the
/// reference composition, so this is reached only by direct calls). One macro rather than a
/// match per kernel keeps the supported dtypes and the message the same for every op.
macro_rules! dispatch {
    ($s:expr, $op:literal, |$x:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32($x) => candle_core::CpuStorage::F32($body),
            candle_core::CpuStorage::F64($x) => candle_core::CpuStorage::F64($body),
            s => candle_core::bail!(
                "{}: fused kernel supports f32 and f64, got {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(s)
            ),
        }
    };
}
pub(crate) use dispatch;
