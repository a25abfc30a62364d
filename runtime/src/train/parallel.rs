//! Data-parallel micro-batches for the CPU: takes a batch's row count, the stage's optional
//! micro-batch size and the device; gives the row ranges a step's forward and backward passes
//! run over, and runs a closure over those ranges (side by side on the CPU, in order elsewhere).
//!
//! Why: on the CPU, a single forward+backward over the whole batch keeps only the matrix
//! multiplies parallel; every element-wise op, fused kernel sweep and gradient sum in between
//! runs on one core. Splitting the rows into one chunk per core and running the chunks side by
//! side keeps all cores busy for all of the step at the same CPU seconds (docs/performance.md
//! has the figures). Each chunk's
//! loss is already scaled to its share of the batch, so the gradients of the chunks add up to
//! the gradient of the whole batch. Results come back in chunk order and are summed in that
//! order, so a run stays deterministic whatever the threads' timing.

use std::ops::Range;

use candle_core::Device;
use rayon::prelude::*;

/// Whether splitting a batch across cores pays. Each extra chunk costs one more full set of
/// weight gradients (allocated, filled and summed: a few passes over `params` floats), while the
/// split runs the per-token work outside the matrix multiplies in parallel (activations and
/// their gradients: some 16 passes over `tokens x hidden` floats per layer). So a small model
/// with a large batch (the benchmark fixture) splits, and a 135M-weight model with a handful of
/// short rows does not (it measured slower split).
pub fn split_pays(tokens: usize, hidden: usize, layers: usize, params: usize) -> bool {
    tokens
        .saturating_mul(hidden)
        .saturating_mul(layers)
        .saturating_mul(16)
        >= params
}

/// The row ranges of a batch of `n` rows. With `micro` set, chunks of that many rows (the
/// user's memory bound); otherwise, when `split` (see [`split_pays`]), one chunk per worker
/// thread on the CPU, and a single chunk on an accelerator, which is parallel on its own.
pub fn row_chunks(
    n: usize,
    micro: Option<usize>,
    device: &Device,
    split: bool,
) -> Vec<Range<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let size = match micro {
        Some(m) => m.max(1),
        None if device.is_cpu() && split => {
            let parts = rayon::current_num_threads().clamp(1, n);
            n.div_ceil(parts)
        }
        None => n,
    };
    (0..n)
        .step_by(size)
        .map(|start| start..(start + size).min(n))
        .collect()
}

/// Chunks that run at once on `device`: one per worker thread on the CPU, one elsewhere.
pub fn chunks_in_flight(device: &Device) -> usize {
    if device.is_cpu() {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Runs `f` on every chunk and hands each result to `consume` in chunk order: side by side on
/// rayon's pool on the CPU, [`chunks_in_flight`] chunks at a time, one after the other
/// elsewhere. A chunk's result (a full set of weight gradients) is consumed before the next
/// group of chunks starts, so a micro-batch bound keeps at most that many results alive
/// whatever the number of chunks. Stops at the first error, of `f` or of `consume`.
pub fn fold_chunks<T, E, F, C>(
    chunks: &[Range<usize>],
    device: &Device,
    f: F,
    mut consume: C,
) -> Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(Range<usize>) -> Result<T, E> + Sync + Send,
    C: FnMut(T) -> Result<(), E>,
{
    for group in chunks.chunks(chunks_in_flight(device)) {
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
                let c = row_chunks(n, micro, &Device::Cpu, true);
                assert!(covers(&c, n), "n={n} micro={micro:?}: {c:?}");
                if let Some(m) = micro {
                    assert!(c.iter().all(|r| r.len() <= m));
                }
            }
        }
        assert!(row_chunks(0, None, &Device::Cpu, true).is_empty());
    }

    #[test]
    fn without_micro_batch_the_cpu_gets_one_chunk_per_thread() {
        let threads = rayon::current_num_threads();
        let c = row_chunks(64, None, &Device::Cpu, true);
        assert_eq!(c.len(), threads.min(64));
        // When splitting does not pay, the batch stays whole unless a micro-batch asks.
        assert_eq!(row_chunks(64, None, &Device::Cpu, false), vec![0..64]);
        assert_eq!(row_chunks(64, Some(32), &Device::Cpu, false).len(), 2);
    }

    #[test]
    fn splitting_pays_for_large_batches_of_small_models_only() {
        // The fixture benchmark: 1M weights, hidden 128, 4 layers, 64 rows of 23 tokens.
        assert!(split_pays(64 * 23, 128, 4, 992_384));
        // SmolLM2-135M (hidden 576, 30 layers) on 4 rows of 30 tokens.
        assert!(!split_pays(4 * 30, 576, 30, 134_515_008));
        // The same model on 64 rows of 300 tokens.
        assert!(split_pays(64 * 300, 576, 30, 134_515_008));
    }

    #[test]
    fn results_come_back_in_chunk_order_and_errors_surface() {
        let chunks = row_chunks(10, Some(3), &Device::Cpu, true);
        let mut starts = Vec::new();
        fold_chunks(
            &chunks,
            &Device::Cpu,
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
            &Device::Cpu,
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
        // The groups before the failing one were consumed, and nothing after it.
        assert!(seen <= 6 / chunks_in_flight(&Device::Cpu) * chunks_in_flight(&Device::Cpu));
    }
}
