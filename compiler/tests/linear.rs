//! The checker's work grows linearly with the pipeline: a deterministic guard against
//! accidentally quadratic code. Wall time is for the benchmark (the `bench_check` example); this
//! test counts what does not depend on the machine, the allocations of one check and the bytes
//! they ask for, on the benchmark's generated pipelines of about 2k and 20k lines. A stage that
//! copied a growing list per item, or rebuilt a table per lookup, would multiply them by far
//! more than ten.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use recap_compiler::{AssumeFilesExist, CheckOptions};

#[path = "../examples/bench_check/generate.rs"]
mod generate;

/// Counts allocations and requested bytes per thread (tests run side by side), then hands
/// every request to the system allocator unchanged.
struct Counting;

thread_local! {
    static CALLS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    // `try_with` because the allocator also serves threads that are shutting down.
    let _ = CALLS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|b| b.set(b.get() + size as u64));
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's layout is passed on as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the block came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the block came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes of one check of `source`.
fn cost(source: &str) -> (u64, u64) {
    let (calls, bytes) = (CALLS.with(Cell::get), BYTES.with(Cell::get));
    let out = recap_compiler::check(
        "linear.recap",
        source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    assert!(!out.has_errors(), "{:?}", out.diagnostics.first());
    assert!(out.plan.is_some());
    drop(out);
    (CALLS.with(Cell::get) - calls, BYTES.with(Cell::get) - bytes)
}

#[test]
fn check_allocates_in_proportion_to_the_pipeline() {
    let small = generate::generate(2_000);
    let large = generate::generate(20_000);
    // The first check builds the embedded stdlib, once per process.
    cost(&small);
    let (small_calls, small_bytes) = cost(&small);
    let (large_calls, large_bytes) = cost(&large);
    let size = large.len() as f64 / small.len() as f64;
    let calls = large_calls as f64 / small_calls as f64;
    let bytes = large_bytes as f64 / small_bytes as f64;
    eprintln!(
        "input x{size:.2}: allocations {small_calls} -> {large_calls} (x{calls:.2}), bytes {small_bytes} -> {large_bytes} (x{bytes:.2})"
    );
    // Linear work grows like the input (about x10). Vectors that double as they grow may add a
    // little; anything quadratic would add a factor of ten.
    assert!(
        calls < size * 1.2 && bytes < size * 1.3,
        "allocations x{calls:.2} and bytes x{bytes:.2} for an input x{size:.2}"
    );
}

/// Allocations and bytes of one check of `source`, which has errors.
fn cost_with_errors(source: &str) -> (u64, u64) {
    let (calls, bytes) = (CALLS.with(Cell::get), BYTES.with(Cell::get));
    let out = recap_compiler::check(
        "linear.recap",
        source,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    assert!(out.has_errors());
    drop(out);
    (CALLS.with(Cell::get) - calls, BYTES.with(Cell::get) - bytes)
}

/// A file full of errors, as an editor checks it on every keystroke, costs in proportion too:
/// an unknown name in every domain (did-you-mean reads every declared name for each), and a
/// syntax error in every domain (each broken item is read again after its error, and the name
/// it declares is unknown where it is used).
#[test]
fn a_file_full_of_errors_allocates_in_proportion() {
    let unknown = |s: String| s.replace("expected = task_", "expected = tsk_");
    let no_eq = |s: String| s.replace(" = regex(", " regex(");
    for (what, spoil) in [
        ("unknown names", &unknown as &dyn Fn(String) -> String),
        ("syntax errors", &no_eq),
    ] {
        let small = spoil(generate::generate(2_000));
        let large = spoil(generate::generate(20_000));
        cost_with_errors(&small);
        let (small_calls, small_bytes) = cost_with_errors(&small);
        let (large_calls, large_bytes) = cost_with_errors(&large);
        let size = large.len() as f64 / small.len() as f64;
        let calls = large_calls as f64 / small_calls as f64;
        let bytes = large_bytes as f64 / small_bytes as f64;
        eprintln!("{what}: input x{size:.2}: allocations x{calls:.2}, bytes x{bytes:.2}");
        assert!(
            calls < size * 1.3 && bytes < size * 1.3,
            "{what}: allocations x{calls:.2} and bytes x{bytes:.2} for an input x{size:.2}"
        );
    }
}
