//! Takes a pipeline file; prints, after each stage of `check`, the heap bytes still live and
//! the allocations made so far, and the time the stage took (a measurement aid for the
//! checker's memory use; not a benchmark: the `bench_check` example's `--stages` times the
//! stages).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use recap_compiler::{lower, parse, resolve, typecheck, validate, AssumeFilesExist, CheckOptions};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        CALLS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let live = LIVE.fetch_add(new, Relaxed) + new - layout.size();
        LIVE.fetch_sub(layout.size(), Relaxed);
        PEAK.fetch_max(live, Relaxed);
        CALLS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let path = std::env::args().nth(1).expect("usage: stage_memory FILE");
    let source = std::fs::read_to_string(path).expect("readable file");
    let _ = recap_compiler::stdlib::stdlib();
    let base = LIVE.load(Relaxed);
    let mut t = Instant::now();
    let mut calls = CALLS.load(Relaxed);
    let mut report = |stage: &str| {
        let now = CALLS.load(Relaxed);
        println!(
            "{stage:<10} live {:>7.1} MB  peak {:>7.1} MB  allocations {:>8}  {:>6.1} ms",
            (LIVE.load(Relaxed) - base) as f64 / 1e6,
            (PEAK.load(Relaxed) - base) as f64 / 1e6,
            now - calls,
            t.elapsed().as_secs_f64() * 1e3
        );
        calls = now;
        t = Instant::now();
    };
    let mut diags = Vec::new();
    let (file, d) = parse::parse_partial(&source);
    diags.extend(d);
    report("parse");
    let res = resolve::resolve(&file, &[], true, &mut diags);
    report("resolve");
    let typed = typecheck::typecheck(&res, &mut diags);
    report("typecheck");
    let options = CheckOptions::default();
    let v = validate::validate(&res, &typed, &options, &AssumeFilesExist, true, &mut diags);
    report("validate");
    let plan = lower::lower("x", &res, &typed, &v).expect("lowers");
    report("lower");
    drop(plan);
    report("drop plan");
    drop(typed);
    report("drop typed");
    drop(res);
    report("drop res");
    drop(file);
    report("drop ast");
}
