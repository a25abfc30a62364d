//! Allocator and thread-pool tuning for tensor workloads: takes nothing, gives a process whose
//! glibc `malloc` keeps freed tensor buffers for reuse instead of returning them to the kernel
//! ([`tune_allocator`], and [`keep_freed`] for a run that trains on the CPU) and whose CPU work
//! runs on one pool of threads ([`tune_threads`]).
//!
//! candle allocates a fresh buffer for every op's output, and a training step frees and
//! allocates again its activations and a whole set of gradients. With glibc's defaults, large
//! buffers are mmap'ed and unmapped each time and the heap's free top is given back to the
//! kernel, so every step pays page faults and page zeroing for all of them (a third of the
//! backward pass on the fixture benchmark). [`tune_allocator`] raises the mmap and trim
//! thresholds; [`keep_freed`] goes further for a run whose tensors live in host memory: the
//! heap never gives memory back and serves every buffer (glibc's mmap threshold is capped at
//! 32 MiB, less than one gradient of a real model's embedding), so a step reuses what the step
//! before freed and the resident memory is the run's peak, which the dry run estimates. A run on
//! a GPU does not call it: there the host's large buffers (weights read from disk, checkpoints
//! on their way out) are transient and should go back to the kernel, since several ranks share
//! one host. glibc also gives threads their own arenas, and a buffer freed in one arena is not
//! reused by another thread's next allocation, so the chunks of a training pass that run side
//! by side each kept their own pool of freed activations above what the step holds
//! (docs/performance.md has the figures); one arena shares them. Call [`tune_allocator`] once
//! at program start, before worker threads exist.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_TRIM_THRESHOLD: i32 = -1;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_TOP_PAD: i32 = -2;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_MMAP_THRESHOLD: i32 = -3;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_MMAP_MAX: i32 = -4;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_ARENA_MAX: i32 = -8;

/// Raises glibc's mmap and trim thresholds and keeps one arena (unless `MALLOC_ARENA_MAX` is
/// set, which glibc reads itself); returns whether the settings were applied (false on other C
/// libraries, where it does nothing).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        // SAFETY: mallopt only changes allocator parameters; glibc documents it as safe to call
        // at any time, and these values are within its documented ranges.
        unsafe {
            let a = mallopt(M_MMAP_THRESHOLD, 32 << 20);
            let b = mallopt(M_TRIM_THRESHOLD, 256 << 20);
            let c = mallopt(M_TOP_PAD, 16 << 20);
            let d = std::env::var_os("MALLOC_ARENA_MAX").is_some() || mallopt(M_ARENA_MAX, 1) == 1;
            a == 1 && b == 1 && c == 1 && d
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// For a run that trains on the CPU: glibc's heap gives no memory back to the kernel and serves
/// every request, however large, so that each step reuses what the step before freed. Returns
/// whether the settings were applied (false on other C libraries, where it does nothing).
pub fn keep_freed() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: as in `tune_allocator`; a trim threshold of -1 turns trimming off, and an mmap
        // maximum of 0 serves every request from the heap (glibc still falls back to mmap when
        // the heap cannot grow).
        unsafe { mallopt(M_TRIM_THRESHOLD, -1) == 1 && mallopt(M_MMAP_MAX, 0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Sets how candle's CPU thread pools are used, unless the user set the variables: candle's
/// barrier pool (element-wise ops) gets no worker threads (`CANDLE_NUM_THREADS=1`) and would
/// not spin (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`); matrix multiplies and the fused kernels still
/// run on all cores through rayon's pool. With a barrier-pool worker, every large element-wise
/// op (each gradient accumulation of the backward pass among them) made the calling thread spin
/// until the parked worker woke, which cost more CPU time than the parallelism gained (see
/// docs/performance.md). Call it at program start, before any
/// candle op runs (the pool reads the variables once) and before other threads exist (it sets
/// environment variables). Returns whether candle's pool was left without workers.
pub fn tune_threads() -> bool {
    // candle asks for its thread count on every matmul; unless RAYON_NUM_THREADS is set, that
    // re-reads /proc/cpuinfo each time (num_cpus' physical-core count), a measurable share of a
    // training step's CPU time. Pinning the variable to the count candle computes keeps the
    // same thread count and makes the lookup a plain environment read.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    match std::env::var_os("CANDLE_NUM_THREADS") {
        Some(v) => v == "1",
        None => {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
            true
        }
    }
}
