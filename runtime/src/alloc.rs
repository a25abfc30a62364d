//! Allocator tuning for tensor workloads: takes nothing, gives a process whose glibc `malloc`
//! keeps freed tensor buffers for reuse instead of returning them to the kernel.
//!
//! candle allocates a fresh buffer for every op's output. With glibc's defaults, buffers above
//! the (dynamic) mmap threshold are mmap'ed and unmapped each time, so every training step pays
//! page faults and page zeroing for all its activations and gradients (a third of the backward
//! pass on the fixture benchmark). Raising the mmap and trim thresholds lets the heap recycle
//! them. Call [`tune_allocator`] once at program start, before worker threads exist.

/// Raises glibc's mmap and trim thresholds; returns whether the settings were applied (false on
/// other C libraries, where it does nothing).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets; larger tensors
        // are still mmap'ed, which is fine since they are rare and the page cost amortises.
        // SAFETY: mallopt only changes allocator parameters; glibc documents it as safe to call
        // at any time, and these values are within its documented ranges.
        unsafe {
            let a = mallopt(M_MMAP_THRESHOLD, 32 << 20);
            let b = mallopt(M_TRIM_THRESHOLD, 256 << 20);
            let c = mallopt(M_TOP_PAD, 16 << 20);
            a == 1 && b == 1 && c == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
