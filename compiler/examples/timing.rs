//! `timing FILE [K]`: checks a pipeline file K times (1 by default) and prints only its count of
//! diagnostics, so that `valgrind` counts the instructions and cache misses of K checks: the
//! difference between K = 2 and K = 1 is one check without the start-up
//! (`scripts/check-traffic.sh` does that for the benchmark's files). Times are for the
//! `bench_check` example.
use recap_compiler::{check, AssumeFilesExist, CheckOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: timing FILE [K]");
        std::process::exit(2)
    };
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("timing: cannot read {path}: {e}");
        std::process::exit(2)
    });
    let times = args
        .next()
        .and_then(|k| k.parse::<usize>().ok())
        .unwrap_or(1);
    let _ = recap_compiler::stdlib::stdlib();
    let mut diagnostics = 0;
    for _ in 0..times {
        let out = check(&path, &src, &CheckOptions::default(), &AssumeFilesExist);
        diagnostics = out.diagnostics.len();
    }
    println!("{path}: {diagnostics} diagnostics");
}
