//! Shared machinery of the fused CPU kernels: takes candle CPU storages and layouts, gives typed
//! slices, row addressing for strided inputs, and rayon loops over rows sized so that each task
//! has enough work to pay for its scheduling.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;

/// The element types the fused kernels compute in: f32 for speed, f64 so that finite-difference
/// tests can run through the same code.
pub(crate) trait Real: WithDType + num_traits::Float {}
impl Real for f32 {}
impl Real for f64 {}

/// Below this many elements per task, rayon's scheduling costs more than the work it spreads.
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

/// Rows per rayon task for rows of `row_len` elements.
fn rows_per_task(row_len: usize) -> usize {
    (MIN_TASK_ELEMS / row_len.max(1)).max(1)
}

/// Calls `f(row_index, row)` for every row of `dst` (rows of `row_len` elements), in parallel
/// when there is enough work.
pub(crate) fn for_rows<T: Send>(
    dst: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if row_len == 0 || dst.is_empty() {
        return;
    }
    if dst.len() <= 2 * MIN_TASK_ELEMS {
        for (i, r) in dst.chunks_mut(row_len).enumerate() {
            f(i, r)
        }
        return;
    }
    let per = rows_per_task(row_len);
    dst.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(t, block)| {
            for (i, r) in block.chunks_mut(row_len).enumerate() {
                f(t * per + i, r)
            }
        });
}

/// Like [`for_rows`], but each task also accumulates into its own `acc` (created by `init`), and
/// the accumulators of all tasks are returned so the caller can reduce them (e.g. a weight
/// gradient summed over rows).
pub(crate) fn for_rows_acc<T: Send, A: Send>(
    dst: &mut [T],
    row_len: usize,
    init: impl Fn() -> A + Sync + Send,
    f: impl Fn(&mut A, usize, &mut [T]) + Sync + Send,
) -> Vec<A> {
    if row_len == 0 || dst.is_empty() {
        return vec![];
    }
    let per = rows_per_task(row_len);
    let block = |(t, block): (usize, &mut [T])| {
        let mut acc = init();
        for (i, r) in block.chunks_mut(row_len).enumerate() {
            f(&mut acc, t * per + i, r)
        }
        acc
    };
    if dst.len() <= 2 * MIN_TASK_ELEMS {
        return dst
            .chunks_mut(per * row_len)
            .enumerate()
            .map(block)
            .collect();
    }
    dst.par_chunks_mut(per * row_len)
        .enumerate()
        .map(block)
        .collect()
}

/// `t` itself when its last dimension is dense (what [`Rows`] needs), else a contiguous copy;
/// gradients that come from a broadcast (e.g. of a summed loss) take the copy.
pub(crate) fn dense_last(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    let dims = t.dims();
    if dims.is_empty() || dims[dims.len() - 1] <= 1 || t.stride()[dims.len() - 1] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Like [`for_rows`] over two outputs of the same shape at once: `f(row_index, row_a, row_b)`.
pub(crate) fn for_rows2<T: Send>(
    a: &mut [T],
    b: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync + Send,
) {
    if row_len == 0 || a.is_empty() {
        return;
    }
    if a.len() <= MIN_TASK_ELEMS {
        for (i, (ra, rb)) in a.chunks_mut(row_len).zip(b.chunks_mut(row_len)).enumerate() {
            f(i, ra, rb)
        }
        return;
    }
    let per = rows_per_task(row_len);
    a.par_chunks_mut(per * row_len)
        .zip(b.par_chunks_mut(per * row_len))
        .enumerate()
        .for_each(|(t, (ba, bb))| {
            for (i, (ra, rb)) in ba
                .chunks_mut(row_len)
                .zip(bb.chunks_mut(row_len))
                .enumerate()
            {
                f(t * per + i, ra, rb)
            }
        });
}
