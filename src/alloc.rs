//! The heap allocator of the `recapc` binary: takes every allocation request of the process and
//! gives blocks under 4 KiB from mimalloc and larger ones from the C library's `malloc`.
//!
//! Why two: checking a large pipeline makes and frees about a million small blocks (syntax tree
//! nodes, names, typed values, plan strings). glibc spends a third of such a check in
//! `malloc_consolidate` and `unlink_chunk`, walking its free lists through memory long since
//! out of cache; mimalloc frees into per-page lists and checks a 100k-line pipeline about 30%
//! faster. Training, on the other hand, allocates and frees the same large activation buffers
//! every step: glibc, tuned by `recap_runtime::alloc::tune_allocator`, recycles them in place,
//! while mimalloc alone kept 1.7x the memory resident on the benchmark fixture (211 MB against
//! 122 MB) or, told to return it sooner, paid page faults that slowed each step by half.
//! Splitting by size gives each workload the allocator that suits it: with the split, training
//! keeps glibc's speed at 129 MB. (4 KiB served both best of the thresholds tried: 1, 4 and
//! 64 KiB.)
//!
//! The split is sound because Rust passes the block's layout to every `dealloc` and `realloc`:
//! the same size test that chose the allocator of a block finds it again.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this many bytes or more come from the C library.
pub const LARGE: usize = 4 << 10;

/// Small blocks from mimalloc, large ones from the system allocator.
pub struct SplitAlloc;

fn is_large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: each block is allocated and freed by the same allocator, chosen by its size, which
// `GlobalAlloc` callers must pass unchanged to `dealloc` and `realloc`. A `realloc` that moves a
// block across the threshold allocates in the other allocator, copies the smaller of the two
// sizes and frees the old block, as `GlobalAlloc::realloc`'s default does.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        unsafe {
            if is_large(layout.size()) {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if is_large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the block came from the allocator its size selects (see `alloc`).
        unsafe {
            if is_large(layout.size()) {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_large, now_large) = (is_large(layout.size()), is_large(new_size));
        // SAFETY: the block came from the allocator its old size selects; when both sizes
        // select the same allocator, that allocator resizes it.
        unsafe {
            match (was_large, now_large) {
                (true, true) => return System.realloc(ptr, layout, new_size),
                (false, false) => return MiMalloc.realloc(ptr, layout, new_size),
                _ => {}
            }
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `new_layout` has a non-zero size, as `realloc`'s contract requires of
        // `new_size`. The copy stays within both blocks, which do not overlap, and the old
        // block is freed by the allocator it came from.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks keep their bytes and alignment when they grow and shrink across the threshold.
    #[test]
    fn blocks_keep_contents_across_the_threshold() {
        let a = SplitAlloc;
        for align in [1, 8, 64, 4096] {
            let small = Layout::from_size_align(100, align).unwrap();
            // SAFETY: layouts are valid and non-zero; every pointer is used within its size
            // and freed once with the layout it has at that time.
            unsafe {
                let p = a.alloc(small);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                for i in 0..100 {
                    *p.add(i) = i as u8;
                }
                let big = a.realloc(p, small, 3 * LARGE);
                assert!(!big.is_null() && (big as usize).is_multiple_of(align));
                *big.add(3 * LARGE - 1) = 7;
                let big_layout = Layout::from_size_align(3 * LARGE, align).unwrap();
                let back = a.realloc(big, big_layout, 50);
                assert!(!back.is_null() && (back as usize).is_multiple_of(align));
                for i in 0..50 {
                    assert_eq!(*back.add(i), i as u8);
                }
                a.dealloc(back, Layout::from_size_align(50, align).unwrap());
                let z = a.alloc_zeroed(big_layout);
                assert!((0..3 * LARGE).all(|i| *z.add(i) == 0));
                a.dealloc(z, big_layout);
            }
        }
    }
}
