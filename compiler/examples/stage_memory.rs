//! Takes a pipeline file; prints, after each stage of `check`, the heap bytes still live and
//! the allocations made so far, and the time the stage took (a measurement aid for the
//! checker's memory use; not a benchmark).
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
    if let Some(n) = std::env::args()
        .nth(2)
        .and_then(|a| a.parse::<usize>().ok())
    {
        repeated(&source, n.max(1));
        return;
    }
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
    let v = validate::validate(&res, &typed, &options, &AssumeFilesExist, &mut diags);
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

/// Times `f` `n` times and gives the median in milliseconds; each result is dropped untimed.
fn median<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = f();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(out);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// Times each stage `n` times on the same input and prints the medians, to tell which stages
/// grow faster than linearly.
fn repeated(source: &str, n: usize) {
    let options = CheckOptions::default();
    let parse_ms = median(n, || parse::parse_partial(source));
    let (file, _) = parse::parse_partial(source);
    let resolve_ms = median(n, || resolve::resolve(&file, &[], true, &mut Vec::new()));
    let res = resolve::resolve(&file, &[], true, &mut Vec::new());
    let typecheck_ms = median(n, || typecheck::typecheck(&res, &mut Vec::new()));
    let typed = typecheck::typecheck(&res, &mut Vec::new());
    let validate_ms = median(n, || {
        validate::validate(&res, &typed, &options, &AssumeFilesExist, &mut Vec::new())
    });
    let v = validate::validate(&res, &typed, &options, &AssumeFilesExist, &mut Vec::new());
    let lower_ms = median(n, || lower::lower("x", &res, &typed, &v));
    let plan = lower::lower("x", &res, &typed, &v).expect("lowers");
    let dag_ms = median(n, || recap_compiler::dag::build(&plan));
    let hash_ms = median(n, || plan.compute_hash());
    println!(
        "parse {parse_ms:.2}  resolve {resolve_ms:.2}  typecheck {typecheck_ms:.2}  validate {validate_ms:.2}  lower {lower_ms:.2} (dag {dag_ms:.2}, hash {hash_ms:.2}) ms"
    );
}
