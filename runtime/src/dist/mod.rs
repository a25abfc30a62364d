//! Data parallelism: one training job spread over several processes ("ranks"), each holding a
//! whole copy of the policy and a share of every step's prompts. Takes the ranks' gradients,
//! signals and metrics; gives every rank the same sums, so every rank takes the same optimizer
//! step and computes the same reweighting lambdas.
//!
//! [`Collective`] is the one interface the engine sees. Its implementations differ only in how
//! bytes move between ranks: [`Single`] (one rank, nothing moves), [`ThreadGroup`] (ranks as
//! threads of one process, for tests), and the process-level collectives built from the
//! environment the launchers set.

use std::sync::{Arc, Barrier, Mutex};

mod connect;
pub mod env;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod store;
pub mod tcp;

pub use connect::{connect, from_env, DEFAULT_COLLECTIVE_SECS, DEFAULT_RENDEZVOUS_SECS};
pub use env::{Launcher, Topology};
pub use tcp::{TcpGroup, Timeouts};

use anyhow::{anyhow, Result};
use candle_core::Tensor;

/// The collective operations a data-parallel step needs. Every rank calls the same operations
/// in the same order with tensors of the same shape and dtype; a rank that calls something else
/// is a bug the implementations report rather than hang on where they can.
///
/// Sums are taken in rank order (rank 0 + rank 1 + ...) wherever the implementation controls
/// the order, so a run's result does not depend on which rank arrived first and every rank
/// holds bit-identical values afterwards.
pub trait Collective: Send {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;

    /// The number of ranks in the job.
    fn world(&self) -> usize;

    /// The element-wise sum of every rank's `t`, returned to every rank on `t`'s device and in
    /// its dtype.
    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor>;

    /// The element-wise sum of every rank's one-dimensional `t`, of which this rank receives
    /// only its segment: `t` is read as `world()` consecutive segments of `counts[r]` elements
    /// (every rank passes the same `counts`), and rank `r` gets the sum of segment `r`. The
    /// values are those of [`Collective::all_reduce_sum`] narrowed to the segment (bit for bit
    /// where the implementation fixes the order of the sum, as every one but NCCL does); an
    /// implementation only saves moving and holding the other segments.
    /// ZeRO-2 sums gradients this way: a rank keeps the gradient of the parameters it updates.
    fn reduce_scatter_sum(&mut self, t: &Tensor, counts: &[usize]) -> Result<Tensor> {
        let start = segment_start(t, counts, self.rank(), self.world())?;
        Ok(self
            .all_reduce_sum(t)?
            .narrow(0, start, counts[self.rank()])?)
    }

    /// Sums `values` element-wise across ranks in place: reweighting signals, advantage
    /// moments, metric totals.
    fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()>;

    /// Every rank's `t` concatenated along dimension 0 in rank order. Ranks may pass different
    /// lengths along dimension 0 (the shards of an uneven split); the other dimensions match.
    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;

    /// Whether this rank writes the run's shared files (metrics, checkpoints, samples).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// Copies of one reduce-scatter bucket that a rank of a job of `world` ranks on `device` holds
/// at once while the bucket is summed, the operand it builds included: NCCL's padded operand
/// and its segment beside the operand (3); on CPUs, rank 0 of the TCP group, the hub, holds
/// every rank's operand as it arrives, its decoded copy, the running sum and the encoded sum
/// beside its own (`world + 4`), the most of any rank.
pub fn staging_buckets(device: &candle_core::Device, world: usize) -> usize {
    if device.is_cpu() {
        world + 4
    } else {
        3
    }
}

/// Checks the operand of [`Collective::reduce_scatter_sum`] (one dimension, one count per rank,
/// the counts adding up to its length); gives where `rank`'s segment starts.
pub(crate) fn segment_start(
    t: &Tensor,
    counts: &[usize],
    rank: usize,
    world: usize,
) -> Result<usize> {
    if t.rank() != 1 {
        return Err(anyhow!(
            "reduce_scatter_sum takes a one-dimensional tensor, not {:?}",
            t.dims()
        ));
    }
    if counts.len() != world || counts.iter().sum::<usize>() != t.dim(0)? {
        return Err(anyhow!(
            "reduce_scatter_sum: segments {counts:?} do not cut {} elements among {world} ranks",
            t.dim(0)?
        ));
    }
    Ok(counts[..rank].iter().sum())
}

/// A job of one rank: every collective is the identity. The engine runs with this when no
/// launcher started it, so the single-process path and the data-parallel path are one path.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn all_reduce_f64(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What one collective call deposits for the others to read.
#[derive(Clone)]
enum Slot {
    Empty,
    Tensor(Tensor),
    Values(Vec<f64>),
}

/// The state the ranks of a [`ThreadGroup`] share.
struct Shared {
    slots: Mutex<Vec<Slot>>,
    barrier: Barrier,
}

/// Ranks as threads of one process, exchanging tensors through shared memory. It stands in for
/// a process-level collective in tests: a data-parallel step run on a `ThreadGroup` must equal
/// the same step run in one process on the same global batch.
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// One handle per rank, in rank order; hand each to its own thread.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Slot::Empty; world]),
            barrier: Barrier::new(world),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Deposits `slot`, waits for every rank, reads every rank's slot in rank order, and waits
    /// again so no rank overwrites its slot before the others have read it.
    fn exchange(&self, slot: Slot) -> Result<Vec<Slot>> {
        self.lock()?[self.rank] = slot;
        self.shared.barrier.wait();
        let all = self.lock()?.clone();
        self.shared.barrier.wait();
        Ok(all)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<Slot>>> {
        self.shared
            .slots
            .lock()
            .map_err(|_| anyhow!("a rank of the thread group panicked"))
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        let all = self.exchange(Slot::Tensor(t.clone()))?;
        let mut sum: Option<Tensor> = None;
        for slot in all {
            let Slot::Tensor(x) = slot else {
                return Err(anyhow!("ranks called different collectives"));
            };
            sum = Some(match sum {
                None => x,
                Some(s) => (s + x)?,
            });
        }
        sum.ok_or_else(|| anyhow!("a thread group of no ranks"))
    }

    fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()> {
        let all = self.exchange(Slot::Values(values.to_vec()))?;
        values.iter_mut().for_each(|v| *v = 0.0);
        for slot in all {
            let Slot::Values(x) = slot else {
                return Err(anyhow!("ranks called different collectives"));
            };
            if x.len() != values.len() {
                return Err(anyhow!(
                    "ranks reduced {} and {} values",
                    x.len(),
                    values.len()
                ));
            }
            values.iter_mut().zip(x).for_each(|(v, x)| *v += x);
        }
        Ok(())
    }

    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        let all = self.exchange(Slot::Tensor(t.clone()))?;
        let parts = all
            .into_iter()
            .map(|slot| match slot {
                Slot::Tensor(x) => Ok(x),
                _ => Err(anyhow!("ranks called different collectives")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn barrier(&mut self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Runs `f` on every rank of a thread group of `world` and returns the ranks' results.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(ThreadGroup) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn thread_group_sums_and_gathers_in_rank_order() {
        let out = on_ranks(3, |mut g| {
            let r = g.rank() as f32;
            let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap();
            let sum = g.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
            let mut v = [r as f64, 1.0];
            g.all_reduce_f64(&mut v).unwrap();
            // Rank r contributes r + 1 rows so the gather sees uneven shards.
            let rows = Tensor::full(r, (g.rank() + 1, 1), &Device::Cpu).unwrap();
            let gathered = g.all_gather(&rows).unwrap();
            (
                sum,
                v,
                gathered.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        });
        for (sum, v, gathered) in out {
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(v, [3.0, 3.0]);
            assert_eq!(gathered, vec![0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        }
    }

    #[test]
    fn reduce_scatter_gives_each_rank_its_segment_of_the_sum() {
        let out = on_ranks(3, |mut g| {
            let r = g.rank() as f32;
            let t = Tensor::new(&[r, 1.0, 2.0 * r, 3.0, r], &Device::Cpu).unwrap();
            let bad = g.reduce_scatter_sum(&t, &[1, 1]).unwrap_err().to_string();
            let part = g.reduce_scatter_sum(&t, &[2, 0, 3]).unwrap();
            (part.to_vec1::<f32>().unwrap(), bad)
        });
        // The sum is [3, 3, 6, 9, 3]: rank 0 gets two elements, rank 1 none, rank 2 three.
        assert_eq!(out[0].0, vec![3.0, 3.0]);
        assert!(out[1].0.is_empty());
        assert_eq!(out[2].0, vec![6.0, 9.0, 3.0]);
        assert!(
            out[0].1.contains("do not cut 5 elements among 3 ranks"),
            "{}",
            out[0].1
        );
    }

    #[test]
    fn single_is_the_identity() {
        let mut s = Single;
        let t = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        assert_eq!(
            s.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.5, -2.0]
        );
        let mut v = [4.0];
        s.all_reduce_f64(&mut v).unwrap();
        assert_eq!(v, [4.0]);
        assert!(s.is_leader());
    }
}
