//! Data-parallel micro-batches for the CPU: takes a batch's row count, the stage's optional
//! micro-batch size and how many chunks run at once ([`parts`]); gives the row ranges a step's
//! forward and backward passes run over, and runs a closure over those ranges (side by side on
//! the CPU, in order elsewhere).
//!
//! Why: on the CPU, a single forward+backward over the whole batch keeps only the matrix
//! multiplies parallel; every element-wise op, fused kernel sweep and gradient sum in between
//! runs on one core. Splitting the rows into chunks, up to one per core, and running the chunks
//! side by side keeps all cores busy for all of the step at the same CPU seconds
//! (docs/performance.md has the figures), at the price of one set of weight gradients per
//! chunk. Each chunk's loss is already scaled to its share of the batch, so the gradients of
//! the chunks add up to the gradient of the whole batch. Results come back in chunk order and
//! are summed in that order, so a run stays deterministic whatever the threads' timing.

use std::ops::Range;

use candle_core::Device;
use rayon::prelude::*;

/// The per-token work, in passes over `tokens x hidden` floats per layer, that one more chunk
/// of a split batch must carry to pay for its own full set of weight gradients (`params`
/// floats, allocated, filled and summed). The element-wise work outside the matrix multiplies
/// (activations and their gradients) is some 16 such passes, but only the part of it that
/// would otherwise run on one core is won back, and the extra set also costs memory, so a
/// chunk is asked for a quarter of it: docs/performance.md has the measurements that placed
/// the threshold.
const WORK_PER_TOKEN: usize = 4;

/// How many chunks of a batch run side by side on `device`: one on an accelerator, which is
/// parallel on its own; on the CPU, one per worker thread at most, and only as many as the
/// batch's per-token work pays for, each extra chunk costing a full set of weight gradients.
/// So a small model with a large batch (the benchmark fixture) splits across the cores, and a
/// 135M-weight model with a few short rows does not (split, it was no faster and held one more
/// gradient set: docs/performance.md); on a many-core machine a large model is not split into as many sets
/// of gradients as there are cores.
pub fn parts(device: &Device, tokens: usize, hidden: usize, layers: usize, params: usize) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    let work = tokens
        .saturating_mul(hidden)
        .saturating_mul(layers)
        .saturating_mul(WORK_PER_TOKEN);
    (work / params.max(1)).clamp(1, rayon::current_num_threads().max(1))
}

/// The row ranges of a batch of `n` rows. With `micro` set, chunks of that many rows (the
/// user's memory bound); otherwise `parts` chunks of equal size (see [`parts`]).
pub fn row_chunks(n: usize, micro: Option<usize>, parts: usize) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let size = match micro {
        Some(m) => m.max(1),
        None => n.div_ceil(parts.clamp(1, n)),
    };
    (0..n)
        .step_by(size)
        .map(|start| start..(start + size).min(n))
        .collect()
}

/// Runs `f` on every chunk and hands each result to `consume` in chunk order, `parts` chunks
/// at a time side by side on rayon's pool (see [`parts`]; one at a time when it is one). A
/// chunk's result (a full set of weight gradients) is consumed before the next group of chunks
/// starts, so a micro-batch bound keeps at most that many results alive
/// whatever the number of chunks. Stops at the first error, of `f` or of `consume`.
pub fn fold_chunks<T, E, F, C>(
    chunks: &[Range<usize>],
    parts: usize,
    f: F,
    mut consume: C,
) -> Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(Range<usize>) -> Result<T, E> + Sync + Send,
    C: FnMut(T) -> Result<(), E>,
{
    for group in chunks.chunks(parts.max(1)) {
        let outs: Vec<T> = if group.len() > 1 {
            group
                .par_iter()
                .map(|r| f(r.clone()))
                .collect::<Result<_, E>>()?
        } else {
            group
                .iter()
                .map(|r| f(r.clone()))
                .collect::<Result<_, E>>()?
        };
        for out in outs {
            consume(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(chunks: &[Range<usize>], n: usize) -> bool {
        let mut next = 0;
        for c in chunks {
            if c.start != next || c.is_empty() {
                return false;
            }
            next = c.end;
        }
        next == n
    }

    #[test]
    fn chunks_cover_the_rows_in_order() {
        for n in [1, 2, 3, 7, 64, 65] {
            for micro in [None, Some(1), Some(5), Some(100)] {
                for parts in [1, 2, 3, 8] {
                    let c = row_chunks(n, micro, parts);
                    assert!(covers(&c, n), "n={n} micro={micro:?} parts={parts}: {c:?}");
                    match micro {
                        Some(m) => assert!(c.iter().all(|r| r.len() <= m)),
                        None => assert_eq!(c.len(), parts.min(n)),
                    }
                }
            }
        }
        assert!(row_chunks(0, None, 2).is_empty());
        assert_eq!(row_chunks(64, None, 1), vec![0..64]);
        assert_eq!(row_chunks(64, Some(32), 1).len(), 2);
    }

    #[test]
    fn splitting_pays_for_large_batches_of_small_models_only() {
        let threads = rayon::current_num_threads();
        let cpu =
            |tokens, hidden, layers, params| parts(&Device::Cpu, tokens, hidden, layers, params);
        // The fixture benchmark: 1M weights, hidden 128, 4 layers, 64 rows of 23 tokens.
        assert_eq!(cpu(64 * 23, 128, 4, 992_384), threads.min(3));
        // SmolLM2-135M (hidden 576, 30 layers) on the CPU benchmark's 8 rows of 68 tokens, which
        // measured no faster split.
        assert_eq!(cpu(8 * 68, 576, 30, 134_515_008), 1);
        // The same model on 64 rows of 300 tokens: as many chunks as threads, up to 9.
        assert_eq!(cpu(64 * 300, 576, 30, 134_515_008), threads.min(9));
        // Never more chunks than threads, and one chunk for an empty or weightless batch.
        assert!(cpu(usize::MAX, 1, 1, 1) <= threads);
        assert_eq!(cpu(0, 576, 30, 134_515_008), 1);
    }

    #[test]
    fn results_come_back_in_chunk_order_and_errors_surface() {
        let chunks = row_chunks(10, Some(3), 1);
        let mut starts = Vec::new();
        fold_chunks(
            &chunks,
            2,
            |r| Ok::<_, String>(r.start),
            |s| {
                starts.push(s);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(starts, vec![0, 3, 6, 9]);
        let mut seen = 0;
        let err = fold_chunks(
            &chunks,
            2,
            |r| {
                if r.start == 6 {
                    Err(format!("chunk at {}", r.start))
                } else {
                    Ok(r.start)
                }
            },
            |_| {
                seen += 1;
                Ok(())
            },
        );
        assert_eq!(err, Err("chunk at 6".to_string()));
        // The groups before the failing one (chunks 0 and 3) were consumed, nothing after it.
        assert_eq!(seen, 2);
    }
}
