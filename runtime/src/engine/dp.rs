//! How a step's global batch is cut across the ranks of a data-parallel job: takes the batch
//! size, the shard count and the rank; gives each rank its prompts, each shard its rollout
//! seed, and sums of per-shard statistics taken in a fixed order.
//!
//! Every rank draws the same global batch (the readers and the mixer are seeded alike and
//! advance alike), then keeps its contiguous share of it: so every prompt of an epoch is used
//! exactly once across the ranks, and a prompt's whole group of completions stays on the rank
//! that holds the prompt (group advantages need no communication).
//!
//! The batch is cut into *shards*, by default one per rank. A shard is the unit of work whose
//! result does not depend on where it runs: it has its own rollout seed, its own chunks, and
//! its own gradient sum; the shards' sums are added in shard order (first within a rank, then
//! across ranks in rank order). So a single process given a job's shard count
//! ([`super::RunOptions::shards`]) takes bit for bit the steps that job's ranks take together.

use std::ops::Range;

use anyhow::{bail, Result};

use crate::dist::Collective;

/// The rows `0..n` of shard `s` of `shards`: contiguous, the first `n % shards` shards one row
/// longer than the others.
pub(crate) fn shard_range(n: usize, shards: usize, s: usize) -> Range<usize> {
    let (base, extra) = (n / shards, n % shards);
    let start = s * base + s.min(extra);
    start..start + base + usize::from(s < extra)
}

/// The shards rank `rank` of `world` works on: a contiguous run of `shards / world`.
pub(crate) fn local_shards(rank: usize, world: usize, shards: usize) -> Range<usize> {
    let per = shards / world;
    rank * per..(rank + 1) * per
}

/// Checks a shard count against the world size and the stages' batches: every rank holds the
/// same number of shards, and every shard at least one prompt (a rank with none would have no
/// gradient and no rollout to take part with).
pub(crate) fn check_shards(shards: usize, world: usize, batches: &[(String, usize)]) -> Result<()> {
    if shards == 0 || !shards.is_multiple_of(world) {
        bail!(
            "{shards} shards do not divide evenly among {world} ranks; use a multiple of {world}"
        );
    }
    for (stage, prompts) in batches {
        if *prompts < shards {
            bail!(
                "stage `{stage}` takes {prompts} prompts per step, fewer than the {shards} shards \
                 of its batch ({world} ranks): every rank needs at least one prompt; raise \
                 `prompts_per_step` or run on fewer ranks"
            );
        }
    }
    Ok(())
}

/// The rollout seed of shard `s` of a step whose rollout drew `seed`: shard 0 keeps the seed
/// itself, so a job of one shard samples as it did before data parallelism.
pub(crate) fn shard_seed(seed: u64, s: usize) -> u64 {
    if s == 0 {
        return seed;
    }
    // SplitMix64's finaliser of the shard index: distinct shards get unrelated seeds.
    let mut z = (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    seed ^ z ^ (z >> 31)
}

/// The element-wise sum of `width` values over this rank's shards (`parts`, in shard order)
/// and then over the ranks (in rank order, through `comm`).
pub(crate) fn sum_shards(
    comm: &mut dyn Collective,
    parts: &[Vec<f64>],
    width: usize,
) -> Result<Vec<f64>> {
    let mut total = vec![0.0; width];
    for p in parts {
        if p.len() != width {
            bail!(
                "a shard gave {} values where {width} were expected",
                p.len()
            );
        }
        for (t, x) in total.iter_mut().zip(p) {
            *t += x;
        }
    }
    comm.all_reduce_f64(&mut total)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over several epochs of a shuffled source, the ranks' shares of every step's batch hold
    /// every row exactly once per epoch, for several world sizes and batch sizes that do not
    /// divide the source.
    #[test]
    fn shards_use_every_prompt_once_per_epoch() {
        use super::super::data::Reader;
        for (rows, batch, world) in [(10, 4, 2), (12, 6, 3), (7, 7, 7), (23, 5, 4), (9, 3, 1)] {
            // Every rank runs its own reader, seeded alike, as the engine's ranks do.
            let mut readers: Vec<Reader> = (0..world).map(|_| Reader::new(rows, true, 9)).collect();
            let mut seen: Vec<usize> = Vec::new();
            let steps = rows * 3;
            for _ in 0..steps {
                let mut step: Vec<usize> = Vec::new();
                for (rank, reader) in readers.iter_mut().enumerate() {
                    let idx = reader.next_batch(batch);
                    for s in local_shards(rank, world, world) {
                        step.extend(&idx[shard_range(batch, world, s)]);
                    }
                }
                assert_eq!(step.len(), batch, "no row lost or doubled within a step");
                seen.extend(step);
            }
            // Every complete epoch of `rows` draws holds each row once.
            for epoch in seen.chunks_exact(rows) {
                let mut e = epoch.to_vec();
                e.sort_unstable();
                assert_eq!(e, (0..rows).collect::<Vec<_>>(), "{rows} {batch} {world}");
            }
        }
    }

    #[test]
    fn shards_cover_the_batch_in_order() {
        for n in 1..20 {
            for shards in 1..=n {
                let ranges: Vec<_> = (0..shards).map(|s| shard_range(n, shards, s)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[shards - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
        assert_eq!(local_shards(1, 2, 4), 2..4);
        assert_eq!(shard_seed(42, 0), 42);
        assert_ne!(shard_seed(42, 1), shard_seed(42, 2));
        assert!(check_shards(3, 2, &[]).is_err());
        let e = check_shards(4, 4, &[("rl".into(), 3)]).unwrap_err();
        assert!(e.to_string().contains("stage `rl` takes 3 prompts"), "{e}");
        assert!(check_shards(4, 2, &[("rl".into(), 4)]).is_ok());
    }
}
