//! Benchmark of the process collective a data-parallel job on CPUs runs with (`dist::TcpGroup`,
//! rank 0 as the hub, over loopback): takes the world sizes and the largest tensor to move;
//! prints, for each world size, the median time per call of `all_reduce_sum`,
//! `reduce_scatter_sum` and `all_gather` on f32 tensors from 4 KiB to the engine's gradient
//! bucket (`BUCKET_ELEMS` f32), of `all_reduce_f64` on a few values, and of `barrier`, with the
//! effective bandwidth.
//!
//! Run: `cargo build --release -p recap-runtime --example bench_collective &&
//! target/release/examples/bench_collective [--worlds 2,3] [--max-mib 128] [--min-reps 5]`.
//!
//! Started without launcher variables, the program starts itself again as the ranks of each
//! world size, with the variables torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR=127.0.0.1`, a free `MASTER_PORT`), so every rank joins through
//! `dist::from_env` as `recapc run` does. Started by a launcher (for instance
//! `torchrun --nproc-per-node 2 --no-python bench_collective`), it is one rank of that job.
//!
//! What is counted: each call is timed on every rank after a barrier, and a call takes as long
//! as its slowest rank; the median over the repetitions is printed, after two warm-up calls.
//! Bandwidths follow nccl-tests' definitions: the algorithm bandwidth is the operation's size
//! over the time, where the size of an all-reduce or a reduce-scatter is the tensor each rank
//! passes and the size of an all-gather is the gathered tensor; the bus bandwidth multiplies it
//! by `2 (n - 1) / n` (all-reduce) or `(n - 1) / n` (reduce-scatter, all-gather), the share a
//! ring algorithm sends over each link.
//! The hub moves more than that: rank 0 receives `n - 1` operands and sends `n - 1` results.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use recap_runtime::dist::{self, Collective, Topology};
use recap_runtime::train::optim::BUCKET_ELEMS;

/// The smallest tensor timed, in bytes.
const MIN_BYTES: usize = 4 << 10;
/// Values in an `all_reduce_f64` call: about what the engine sums per reward term or metric.
const F64_VALUES: usize = 8;
/// Warm-up calls before the timed ones, so connections and allocations are in place.
const WARMUP: usize = 2;
/// The repetitions of a size are about this many bytes' worth of calls, within the limits.
const REPS_BYTES: usize = 256 << 20;
const MAX_REPS: usize = 50;

struct Options {
    worlds: Vec<usize>,
    max_bytes: usize,
    min_reps: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        worlds: vec![2, 3],
        max_bytes: BUCKET_ELEMS * 4,
        min_reps: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--worlds" => {
                o.worlds = value
                    .split(',')
                    .map(|w| w.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--worlds `{value}`"))?
            }
            "--max-mib" => o.max_bytes = value.parse::<usize>()? << 20,
            "--min-reps" => o.min_reps = value.parse()?,
            _ => bail!("unknown argument {a} (--worlds 2,3 --max-mib 128 --min-reps 5)"),
        }
    }
    ensure!(o.worlds.iter().all(|&w| w >= 2), "world sizes start at 2");
    ensure!(o.min_reps >= 1, "--min-reps must be at least 1");
    Ok(o)
}

/// The tensor sizes timed: 4 KiB, then four times larger each, and the largest size itself.
fn sizes(max: usize) -> Vec<usize> {
    let mut out: Vec<usize> = std::iter::successors(Some(MIN_BYTES), |s| Some(s * 4))
        .take_while(|&s| s < max)
        .collect();
    out.push(max);
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times `reps` calls of `op` after the warm-up; gives the median and the fastest of the
/// per-call times, each call counted at its slowest rank's time.
fn time_calls(
    comm: &mut dyn Collective,
    reps: usize,
    mut op: impl FnMut(&mut dyn Collective) -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..WARMUP {
        op(comm)?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        comm.barrier()?;
        let t = Instant::now();
        op(comm)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let all = comm.all_gather(&Tensor::from_vec(times, (1, reps), &Device::Cpu)?)?;
    let slowest = all.max(0)?.to_vec1::<f64>()?;
    let fastest = slowest.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((median(slowest), fastest))
}

/// As [`time_calls`], for an operation that gives a tensor: also gives the last call's
/// result, for checking.
fn time_tensor_calls(
    comm: &mut dyn Collective,
    reps: usize,
    mut op: impl FnMut(&mut dyn Collective) -> Result<Tensor>,
) -> Result<((f64, f64), Vec<f32>)> {
    let mut out = None;
    let times = time_calls(comm, reps, |c| {
        out = Some(op(c)?);
        Ok(())
    })?;
    let out = out.context("no call was timed")?.to_vec1::<f32>()?;
    Ok((times, out))
}

/// One row of the table; `bytes` and `bus` (the bus bandwidth factor) are absent for the
/// latency rows.
fn row(op: &str, bytes: Option<usize>, bus: f64, reps: usize, (med, min): (f64, f64)) {
    let (size, alg, busbw) = match bytes {
        Some(b) => {
            let alg = b as f64 / med / 1e9;
            (
                format!("{b:>11}"),
                format!("{alg:>10.3}"),
                format!("{:>10.3}", alg * bus),
            )
        }
        None => (
            format!("{:>11}", "-"),
            format!("{:>10}", "-"),
            format!("{:>10}", "-"),
        ),
    };
    println!(
        "{op:<18} {size} {reps:>5} {:>11.3} {:>11.3} {alg} {busbw}",
        med * 1e3,
        min * 1e3
    );
}

/// The benchmark as one rank of the job the launcher variables describe; rank 0 prints.
fn rank_main(opts: &Options) -> Result<()> {
    let topo = Topology::from_env()?;
    let mut comm = dist::from_env(&Device::Cpu)?;
    let comm = &mut *comm;
    let (rank, n) = (comm.rank(), comm.world());
    let leader = comm.is_leader();
    if leader {
        println!(
            "\nworld {n} ({} ranks as processes on 127.0.0.1, TCP hub at rank 0), load average {}",
            topo.world,
            load_average()
        );
        println!(
            "{:<18} {:>11} {:>5} {:>11} {:>11} {:>10} {:>10}",
            "op", "bytes", "reps", "median ms", "min ms", "algbw GB/s", "busbw GB/s"
        );
    }
    let nf = n as f64;

    let mut values = [0.0f64; F64_VALUES];
    let reps = 200;
    let t = time_calls(comm, reps, |c| {
        values.fill(1.0);
        c.all_reduce_f64(&mut values)
    })?;
    ensure!(
        values.iter().all(|&v| v == nf),
        "all_reduce_f64 gave {values:?}"
    );
    if leader {
        row(&format!("all_reduce_f64 x{F64_VALUES}"), None, 0.0, reps, t);
    }
    let t = time_calls(comm, reps, |c| c.barrier())?;
    if leader {
        row("barrier", None, 0.0, reps, t);
    }

    for bytes in sizes(opts.max_bytes) {
        let reps = (REPS_BYTES / bytes).clamp(opts.min_reps, MAX_REPS.max(opts.min_reps));
        // Rank r passes r + 1 everywhere, so the sum is n (n + 1) / 2 in every element.
        let elems = bytes / 4;
        let t = Tensor::full(rank as f32 + 1.0, elems, &Device::Cpu)?;
        let (times, sum) = time_tensor_calls(comm, reps, |c| c.all_reduce_sum(&t))?;
        let want = (n * (n + 1) / 2) as f32;
        ensure!(
            sum.len() == elems && sum[0] == want && sum[elems - 1] == want,
            "all_reduce_sum of {bytes} bytes gave a wrong sum"
        );
        if leader {
            row(
                "all_reduce_sum",
                Some(bytes),
                2.0 * (nf - 1.0) / nf,
                reps,
                times,
            );
        }

        // ZeRO-2's reduce-scatter of the same tensor: every rank passes all of it and receives
        // the sum of its own segment (the last rank's takes the remainder).
        let mut counts = vec![elems / n; n];
        counts[n - 1] = elems - (n - 1) * (elems / n);
        let (times, part) = time_tensor_calls(comm, reps, |c| c.reduce_scatter_sum(&t, &counts))?;
        ensure!(
            part.len() == counts[rank] && part.iter().all(|x| *x == want),
            "reduce_scatter_sum of {bytes} bytes gave a wrong segment"
        );
        if leader {
            row(
                "reduce_scatter_sum",
                Some(bytes),
                (nf - 1.0) / nf,
                reps,
                times,
            );
        }

        // Each rank passes its share of the gathered tensor, so that the gathered size is the
        // row's size (rounded down to whole f32 elements per rank).
        let share = elems / n;
        let part = Tensor::full(rank as f32, share, &Device::Cpu)?;
        let (times, gathered) = time_tensor_calls(comm, reps, |c| c.all_gather(&part))?;
        ensure!(
            gathered.len() == share * n && (0..n).all(|r| gathered[r * share] == r as f32),
            "all_gather of {bytes} bytes gave a wrong result"
        );
        if leader {
            row(
                "all_gather",
                Some(share * n * 4),
                (nf - 1.0) / nf,
                reps,
                times,
            );
        }
    }
    comm.barrier()
}

/// Starts the ranks of each world size in turn as copies of this program and waits for them.
fn launch(opts: &Options) -> Result<()> {
    let exe = std::env::current_exe()?;
    println!(
        "bench_collective: {} CPUs, load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    for &world in &opts.worlds {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let children = (0..world)
            .map(|rank| {
                Command::new(&exe)
                    .args(std::env::args().skip(1))
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .stdout(if rank == 0 {
                        Stdio::inherit()
                    } else {
                        Stdio::null()
                    })
                    .spawn()
                    .with_context(|| format!("starting rank {rank} of {world}"))
            })
            .collect::<Result<Vec<_>>>()?;
        for (rank, mut child) in children.into_iter().enumerate() {
            let status = child.wait()?;
            ensure!(status.success(), "rank {rank} of {world} failed: {status}");
        }
    }
    println!("\nload average {} at the end", load_average());
    Ok(())
}

fn main() -> Result<()> {
    let opts = options()?;
    if Topology::from_env()?.world > 1 {
        rank_main(&opts)
    } else {
        launch(&opts)
    }
}
