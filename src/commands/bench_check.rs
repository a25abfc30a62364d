//! `recapc bench-check [--lines 1000,10000,100000] [--runs 7] [--keep DIR] [--stages]
//! [--split PARTS]` (hidden): takes sizes, gives a table of `check` times on generated pipelines
//! of those sizes (timed in interleaved rounds, see `bench::measure_all`), the median and range
//! of the per-round 100k/10k ratios, with `--stages` the time of each checker stage alone, and
//! with `--split` the time of the largest pipeline checked as that many files. Run it with a
//! release build: `cargo run --release -- bench-check`.

use super::{error_line, write_stdout};
use crate::bench::{
    generate, generate_split, measure_all, measure_stages, round_ratios, StageTimes,
};
use crate::cli::BenchArgs;
use crate::exit::ExitCode;

pub fn run(args: &BenchArgs) -> ExitCode {
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; figures are only meaningful with --release");
    }
    let mut stages: Vec<(usize, StageTimes)> = Vec::new();
    let mut out = format!(
        "{:>8} {:>10} {:>12} {:>14} {:>10} {:>7} {:>9}\n",
        "lines", "bytes", "median ms", "lines/s", "parse ms", "errors", "warnings"
    );
    // Writes a generated file into `--keep`'s directory, when given.
    let keep = |name: String, source: &str| -> Result<(), ExitCode> {
        let Some(dir) = &args.keep else {
            return Ok(());
        };
        let path = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, source))
            .map_err(|e| {
                error_line(&format!("cannot write `{}`: {e}", path.display()));
                ExitCode::Usage
            })
    };
    // One workload of one file per size, then the split pipeline's files when asked for.
    let mut workloads: Vec<Vec<String>> = Vec::with_capacity(args.lines.len() + 1);
    for &lines in &args.lines {
        let source = generate(lines);
        if let Err(code) = keep(format!("bench-{lines}.recap"), &source) {
            return code;
        }
        workloads.push(vec![source]);
    }
    let largest = args.lines.iter().copied().max();
    let mut split_parts = None;
    if let (Some(parts), Some(lines)) = (args.split, largest) {
        let files = generate_split(lines, usize::from(parts));
        for (i, f) in files.iter().enumerate() {
            if let Err(code) = keep(format!("bench-{lines}-part{i}.recap"), f) {
                return code;
            }
        }
        split_parts = Some(files.len());
        workloads.push(files);
    }
    let mut results = measure_all(&workloads, args.runs);
    let split = split_parts.and_then(|files| Some((results.pop()?, files)));
    for (m, files) in results.iter().zip(&workloads) {
        if args.stages {
            if let Some(t) = files.first().and_then(|f| measure_stages(f, args.runs)) {
                stages.push((m.lines, t));
            }
        }
        out.push_str(&format!(
            "{:>8} {:>10} {:>12.2} {:>14.0} {:>10.2} {:>7} {:>9}\n",
            m.lines,
            m.bytes,
            m.median().as_secs_f64() * 1e3,
            m.lines_per_second(),
            m.parse_median.as_secs_f64() * 1e3,
            m.errors,
            m.warnings
        ));
        if let Some(first) = &m.first_error {
            eprintln!(
                "note: the {}-line pipeline has errors (the generator is out of step with \
                 the language), first: {first}",
                m.lines
            );
        }
    }
    let find = |n: usize| results.iter().find(|m| near(m.lines, n));
    if let (Some(small), Some(large)) = (find(10_000), find(100_000)) {
        let ratios = round_ratios(small, large);
        if let (Some(lo), Some(mid), Some(hi)) =
            (ratios.first(), ratios.get(ratios.len() / 2), ratios.last())
        {
            // The generated names carry one more digit from domain 1000 on, so the larger
            // pipeline has slightly longer lines: both ratios of the input are printed, since
            // a checker linear in its input follows the bytes.
            out.push_str(&format!(
                "100k / 10k time ratio: {mid:.2}, median of {} rounds ({lo:.2} to {hi:.2}); \
                 the input grew {:.2}x in lines and {:.2}x in bytes\n",
                ratios.len(),
                large.lines as f64 / small.lines.max(1) as f64,
                large.bytes as f64 / small.bytes.max(1) as f64,
            ));
        }
    }
    if let (Some((m, files)), Some(lines)) = (&split, largest) {
        out.push_str(&format!(
            "the {lines}-line pipeline as {files} files checked one after another: {:.2} ms \
             ({} lines, {} bytes in all)\n",
            m.median().as_secs_f64() * 1e3,
            m.lines,
            m.bytes
        ));
        if let Some(small) = find(10_000).filter(|_| near(lines, 100_000)) {
            let ratios = round_ratios(small, m);
            if let Some(mid) = ratios.get(ratios.len() / 2) {
                out.push_str(&format!(
                    "  its time over the 10k time: {mid:.2}, median of {} rounds\n",
                    ratios.len()
                ));
            }
        }
        if m.errors > 0 {
            eprintln!(
                "note: the split pipeline has errors, first: {}",
                m.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    if let Some((_, first)) = stages.first() {
        out.push_str("\nmedian ms per stage alone\n");
        out.push_str(&format!("{:<10}", "lines"));
        for (lines, _) in &stages {
            out.push_str(&format!(" {lines:>9}"));
        }
        out.push('\n');
        for (row, (name, _)) in first.rows().iter().enumerate() {
            out.push_str(&format!("{name:<10}"));
            for (_, t) in &stages {
                let ms = t
                    .rows()
                    .get(row)
                    .map_or(0.0, |(_, d)| d.as_secs_f64() * 1e3);
                out.push_str(&format!(" {ms:>9.2}"));
            }
            out.push('\n');
        }
    }
    write_stdout(&out)
}

/// Whether a generated pipeline of `lines` lines is the size `target` asked for (generated
/// sizes land within a domain of the request; a tenth is room enough).
fn near(lines: usize, target: usize) -> bool {
    lines.abs_diff(target) <= target / 10
}
