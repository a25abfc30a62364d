//! The collective a process runs with: takes the launcher's environment ([`Topology`]) and the
//! device the rank trains on, gives [`Single`] for a world of one, the TCP group for ranks on
//! CPUs, and NCCL for ranks on GPUs (in a build with the `nccl` feature; there also for a
//! launcher's world of one, so one GPU runs the same collective).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::env::Topology;
use super::tcp::{TcpGroup, Timeouts};
use super::{Collective, Single};

/// How long ranks wait for each other to meet, in seconds, when `RECAP_RENDEZVOUS_TIMEOUT` is
/// not set: long enough for a cluster to start every process, short enough that a rank that
/// never starts ends the job within minutes.
pub const DEFAULT_RENDEZVOUS_SECS: u64 = 300;

/// How long a rank waits in one collective call for the others, in seconds, when
/// `RECAP_COLLECTIVE_TIMEOUT` is not set. Ranks reach each call at different times (rank 0
/// writes checkpoints while the others wait), so this is generous, as NCCL's own watchdog is.
pub const DEFAULT_COLLECTIVE_SECS: u64 = 1800;

impl Timeouts {
    /// The timeouts from `RECAP_RENDEZVOUS_TIMEOUT` and `RECAP_COLLECTIVE_TIMEOUT` (seconds),
    /// or their defaults.
    pub fn from_env() -> Result<Timeouts> {
        let secs = |name: &str, default: u64| -> Result<Duration> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .with_context(|| format!("{name}=`{v}` is not a number of seconds above 0")),
                _ => Ok(Duration::from_secs(default)),
            }
        };
        Ok(Timeouts {
            connect: secs("RECAP_RENDEZVOUS_TIMEOUT", DEFAULT_RENDEZVOUS_SECS)?,
            op: secs("RECAP_COLLECTIVE_TIMEOUT", DEFAULT_COLLECTIVE_SECS)?,
        })
    }
}

/// The collective of this process, from the launcher's variables and the timeouts'; `device`
/// is where the rank trains (see [`Topology::device_name`] for the GPU of each rank).
pub fn from_env(device: &Device) -> Result<Box<dyn Collective>> {
    connect(&Topology::from_env()?, device, Timeouts::from_env()?)
}

/// The collective of the rank `topo` describes, on `device`.
pub fn connect(
    topo: &Topology,
    device: &Device,
    timeouts: Timeouts,
) -> Result<Box<dyn Collective>> {
    // A launcher's job of one rank on a GPU still goes through NCCL in a build that has it, so
    // that a single-GPU run exercises the collective a job of several ranks uses; anywhere else
    // a world of one needs no collective at all.
    let nccl_of_one = cfg!(feature = "nccl")
        && topo.launcher != super::Launcher::None
        && matches!(device, Device::Cuda(_));
    if topo.world == 1 && !nccl_of_one {
        return Ok(Box::new(Single));
    }
    let what = || {
        format!(
            "rank {} of {} ({}) cannot join the job at {}:{}",
            topo.rank, topo.world, topo.launcher, topo.master_addr, topo.master_port
        )
    };
    match device {
        Device::Cpu => Ok(Box::new(
            TcpGroup::connect(
                topo.rank,
                topo.world,
                &topo.master_addr,
                topo.master_port,
                timeouts,
            )
            .with_context(what)?,
        )),
        Device::Cuda(_) => cuda(topo, device, timeouts).with_context(what),
        Device::Metal(_) => bail!("a job of several ranks runs on CPUs or CUDA GPUs, not on Metal"),
    }
}

#[cfg(feature = "nccl")]
fn cuda(topo: &Topology, device: &Device, timeouts: Timeouts) -> Result<Box<dyn Collective>> {
    Ok(Box::new(super::nccl::NcclGroup::connect(
        topo, device, timeouts,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn cuda(topo: &Topology, _device: &Device, _timeouts: Timeouts) -> Result<Box<dyn Collective>> {
    bail!(
        "a job of {} ranks on GPUs needs NCCL: build recapc with `--features nccl`",
        topo.world
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_needs_no_network() {
        let topo = Topology::single();
        let c = connect(
            &topo,
            &Device::Cpu,
            Timeouts {
                connect: Duration::ZERO,
                op: Duration::ZERO,
            },
        )
        .unwrap();
        assert_eq!((c.rank(), c.world()), (0, 1));
        // A launcher's world of one on the CPU needs no network either.
        let launched = Topology {
            launcher: crate::dist::Launcher::Torchrun,
            master_port: 1,
            ..Topology::single()
        };
        let zero = Duration::ZERO;
        let c = connect(
            &launched,
            &Device::Cpu,
            Timeouts {
                connect: zero,
                op: zero,
            },
        )
        .unwrap();
        assert_eq!((c.rank(), c.world()), (0, 1));
    }
}
