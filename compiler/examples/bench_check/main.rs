//! The checker benchmark: takes sizes in lines and pipeline files, gives a table of
//! `recap_compiler::check` times on generated pipelines of those sizes and on the files (median
//! of several rounds), the parse stage alone, and with `--stages` each checker stage alone. Not
//! a test: figures depend on the machine, so they are reported, not asserted. Run it with a
//! release build:
//!
//! `cargo run --release -p recap-compiler --example bench_check -- [--lines 1000,10000]
//! [--runs 7] [--keep DIR] [--stages] [FILE...]`
//!
//! Without `--lines` and without files it times pipelines of 1,000 and 10,000 lines; `--keep`
//! writes the generated pipelines into DIR (`scripts/check-traffic.sh` reads them there).

mod generate;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use recap_compiler::{AssumeFilesExist, CheckOptions, Diagnostic, Severity};

use generate::generate;

/// What the command line asks for.
#[derive(Debug, PartialEq)]
struct Args {
    lines: Vec<usize>,
    runs: usize,
    keep: Option<PathBuf>,
    stages: bool,
    files: Vec<PathBuf>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        lines: Vec::new(),
        runs: 7,
        keep: None,
        stages: false,
        files: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--lines" => {
                out.lines = value("--lines")?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--lines takes sizes such as 1000,10000: {e}"))?;
            }
            "--runs" => {
                out.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs takes a number: {e}"))?;
            }
            "--keep" => out.keep = Some(PathBuf::from(value("--keep")?)),
            "--stages" => out.stages = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option `{flag}`")),
            file => out.files.push(PathBuf::from(file)),
        }
    }
    if out.lines.is_empty() && out.files.is_empty() {
        out.lines = vec![1_000, 10_000];
    }
    Ok(out)
}

/// One pipeline to time: a generated size or a file.
struct Workload {
    name: String,
    source: String,
}

/// The result of timing one workload.
struct Measurement {
    /// The time of each round, in round order (see `measure_all`).
    rounds: Vec<Duration>,
    /// Median time of the parse stage alone (`recap_compiler::parse`), part of a check.
    parse: Duration,
    /// The diagnostics of one check.
    diagnostics: Vec<Diagnostic>,
}

/// Times `check` on each workload in `runs` rounds. A round checks every workload once, in the
/// order given, each timed check right after an untimed one of the same workload (so every
/// timed run starts as a run in a series of identical checks would). Interleaving the workloads
/// gives them the same machine: on a shared machine the load drifts over the seconds a
/// benchmark takes.
fn measure_all(workloads: &[Workload], runs: usize) -> Vec<Measurement> {
    let options = CheckOptions::default();
    let check = |w: &Workload| {
        recap_compiler::check(&w.name, &w.source, &options, &AssumeFilesExist).diagnostics
    };
    let mut rounds: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); workloads.len()];
    for _ in 0..runs.max(1) {
        for (w, times) in workloads.iter().zip(&mut rounds) {
            drop(check(w));
            let start = Instant::now();
            // The output is dropped inside the timing, as a caller pays for it.
            drop(check(w));
            times.push(start.elapsed());
        }
    }
    workloads
        .iter()
        .zip(rounds)
        .map(|(w, rounds)| Measurement {
            rounds,
            parse: median_of(runs, || recap_compiler::parse(&w.source)),
            diagnostics: check(w),
        })
        .collect()
}

/// Median times of each checker stage alone on one input, in stage order; each stage runs on
/// the output of the one before, computed once untimed. Times include dropping the stage's
/// result, as `check` does. `None` when `source` does not check cleanly (later stages need the
/// earlier ones' results).
fn measure_stages(source: &str, runs: usize) -> Option<[(&'static str, Duration); 7]> {
    use recap_compiler::{dag, lower, parse, resolve, typecheck, validate};
    let options = CheckOptions::default();
    let clean = |d: &[Diagnostic]| d.iter().all(|d| d.severity != Severity::Error);
    let parse_t = median_of(runs, || parse::parse_partial(source));
    let (file, mut diags) = parse::parse_partial(source);
    // `check` stops before validation after a syntax error; so does this.
    if !clean(&diags) {
        return None;
    }
    let resolve_t = median_of(runs, || resolve::resolve(&file, &[], true, &mut Vec::new()));
    let res = resolve::resolve(&file, &[], true, &mut diags);
    let typecheck_t = median_of(runs, || typecheck::typecheck(&res, &mut Vec::new()));
    let typed = typecheck::typecheck(&res, &mut diags);
    let validate_t = median_of(runs, || {
        validate::validate(
            &res,
            &typed,
            &options,
            &AssumeFilesExist,
            true,
            &mut Vec::new(),
        )
    });
    let validated = validate::validate(&res, &typed, &options, &AssumeFilesExist, true, &mut diags);
    if !clean(&diags) {
        return None;
    }
    let lower_t = median_of(runs, || {
        lower::lower("bench.recap", &res, &typed, &validated)
    });
    let plan = lower::lower("bench.recap", &res, &typed, &validated).ok()?;
    let graph_t = median_of(runs, || dag::build(&plan));
    // The plan comes sealed; with its hash emptied, `compute_hash` hashes it in place, as
    // `lower` does, instead of copying it first.
    let mut unsealed = plan;
    unsealed.content_hash.clear();
    let hash_t = median_of(runs, || unsealed.compute_hash());
    Some([
        ("parse", parse_t),
        ("resolve", resolve_t),
        ("typecheck", typecheck_t),
        ("validate", validate_t),
        ("lower", lower_t),
        ("  graph", graph_t),
        ("  hash", hash_t),
    ])
}

/// The median duration of `runs` calls of `f` (at least one); results are dropped inside the
/// timing.
fn median_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            drop(f());
            start.elapsed()
        })
        .collect();
    median(times)
}

/// The middle of `times` once sorted (the upper middle of an even count; zero when empty).
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("bench_check: {e}");
        std::process::exit(2)
    });
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; figures are only meaningful with --release");
    }
    let mut workloads = Vec::new();
    for &lines in &args.lines {
        let source = generate(lines);
        if let Some(dir) = &args.keep {
            let path = dir.join(format!("bench-{lines}.recap"));
            if let Err(e) =
                std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &source))
            {
                eprintln!("bench_check: cannot write `{}`: {e}", path.display());
                std::process::exit(2)
            }
        }
        workloads.push(Workload {
            name: format!("{lines} lines"),
            source,
        });
    }
    for path in &args.files {
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| {
            eprintln!("bench_check: cannot read `{}`: {e}", path.display());
            std::process::exit(2)
        });
        workloads.push(Workload {
            name: path.display().to_string(),
            source,
        });
    }
    // Builds the embedded stdlib, once per process, outside every timing.
    let _ = recap_compiler::stdlib::stdlib();
    let results = measure_all(&workloads, args.runs);
    let mut out = format!(
        "{:<24} {:>8} {:>10} {:>10} {:>10} {:>7} {:>9}\n",
        "pipeline", "lines", "bytes", "median ms", "parse ms", "errors", "warnings"
    );
    for (w, m) in workloads.iter().zip(&results) {
        let errors = m
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        out.push_str(&format!(
            "{:<24} {:>8} {:>10} {:>10.3} {:>10.3} {:>7} {:>9}\n",
            w.name,
            w.source.lines().count(),
            w.source.len(),
            ms(median(m.rounds.clone())),
            ms(m.parse),
            errors,
            m.diagnostics.len() - errors
        ));
    }
    if args.stages {
        let stages: Vec<_> = workloads
            .iter()
            .filter_map(|w| Some((&w.name, measure_stages(&w.source, args.runs)?)))
            .collect();
        if let Some((_, first)) = stages.first() {
            out.push_str("\nmedian ms per stage alone\n");
            out.push_str(&format!("{:<10}", "stage"));
            for (name, _) in &stages {
                out.push_str(&format!(" {name:>12}"));
            }
            out.push('\n');
            for (row, (stage, _)) in first.iter().enumerate() {
                out.push_str(&format!("{stage:<10}"));
                for (_, times) in &stages {
                    let t = times.get(row).map_or(0.0, |(_, d)| ms(*d));
                    out.push_str(&format!(" {t:>12.3}"));
                }
                out.push('\n');
            }
        }
    }
    print!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Result<Args, String> {
        parse_args(text.split_whitespace().map(String::from))
    }

    #[test]
    fn options_and_files_are_read_and_sizes_default_only_without_either() {
        let a = args("--lines 100,2000 --runs 3 --keep out --stages f.recap").unwrap();
        assert_eq!(a.lines, vec![100, 2000]);
        assert_eq!((a.runs, a.stages), (3, true));
        assert_eq!(a.keep, Some(PathBuf::from("out")));
        assert_eq!(a.files, vec![PathBuf::from("f.recap")]);
        assert_eq!(args("").unwrap().lines, vec![1_000, 10_000]);
        assert!(args("f.recap").unwrap().lines.is_empty());
        assert!(args("--lines 1k").is_err());
        assert!(args("--runs").is_err());
        assert!(args("--split 4").is_err());
    }

    #[test]
    fn generated_sizes_are_close_to_the_request() {
        for target in [1_000, 10_000] {
            let n = generate(target).lines().count();
            assert!(n.abs_diff(target) <= 23, "asked {target}, got {n}");
        }
        assert!(generate(0).contains("objective reasoning_0"));
    }

    #[test]
    fn every_workload_is_timed_once_per_round() {
        let workloads = [100, 400].map(|n| Workload {
            name: format!("{n}"),
            source: generate(n),
        });
        let m = measure_all(&workloads, 3);
        assert_eq!(m.len(), 2);
        for x in &m {
            assert_eq!(x.rounds.len(), 3);
            assert!(x.diagnostics.iter().all(|d| d.severity != Severity::Error));
        }
    }

    #[test]
    fn every_stage_is_timed_on_a_clean_pipeline_and_none_on_a_broken_one() {
        let times = measure_stages(&generate(200), 1).expect("the generated pipeline checks");
        assert!(times.iter().all(|(_, t)| *t > Duration::ZERO));
        assert!(measure_stages("model policy = nothing(1)", 1).is_none());
    }
}
