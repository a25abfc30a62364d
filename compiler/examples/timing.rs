//! Times `check` on generated pipelines of about 1k, 10k and 100k lines (a quick measurement
//! aid for development; the project's benchmark command is `recapc`'s), or checks a given file
//! K times and prints only its count of diagnostics (for `valgrind`: see `main`).
use recap_compiler::{check, AssumeFilesExist, CheckOptions};

fn generated(lines: usize) -> String {
    let mut s = String::from("model policy = hf(\"m\")\nmodel base = frozen(policy)\n");
    let mut i = 0;
    let mut n = 2;
    while n < lines {
        s.push_str(&format!(
            "source s{i} = jsonl(\"data/{i}.jsonl\") {{\n  prompt = \"{{question}} #{i}\"\n  answer = field(\"answer\").after(\"####\")\n}}\n\
             verifier v{i} = numeric(extract = tag(\"answer\"), tolerance = 0.001 * 2)\n\
             objective o{i} = grpo(s{i}) {{\n  rewards = [v{i}, 0.5 * v{i}]\n  group = 8\n  kl = kl(base, coef = 0.01)\n}}\n"
        ));
        n += 10;
        i += 1;
    }
    s.push_str("reweight recap(window = 10)\nmix uniform\ntrain { steps = 100, schedule = linear(warmup = 10%) }\n");
    s
}

fn main() {
    // `timing FILE [K]` checks a pipeline file K times (1 by default) and prints only the count
    // of diagnostics, so that `valgrind` counts the instructions and cache misses of K checks:
    // the difference between K = 2 and K = 1 is one check without the start-up
    // (`scripts/check-traffic.sh` does that for the benchmark's files).
    let mut args = std::env::args().skip(1);
    let first = args.next();
    match first.as_deref().map(|a| (a, a.parse::<usize>())) {
        Some((path, Err(_))) => {
            let src = std::fs::read_to_string(path).unwrap_or_else(|e| {
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
                let out = check(path, &src, &CheckOptions::default(), &AssumeFilesExist);
                diagnostics = out.diagnostics.len();
            }
            println!("{path}: {diagnostics} diagnostics");
            return;
        }
        // `timing N` checks one generated pipeline of N lines once and prints nothing else,
        // so `valgrind --tool=callgrind` can count the instructions of one check.
        Some((_, Ok(n))) => {
            let src = generated(n);
            let out = check(
                "gen.recap",
                &src,
                &CheckOptions::default(),
                &AssumeFilesExist,
            );
            println!("{n} lines: {} diagnostics", out.diagnostics.len());
            return;
        }
        None => {}
    }
    for lines in [1_000, 10_000, 100_000] {
        let src = generated(lines);
        let mut best = std::time::Duration::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let out = check(
                "gen.recap",
                &src,
                &CheckOptions::default(),
                &AssumeFilesExist,
            );
            best = best.min(t.elapsed());
            assert!(!out.has_errors());
        }
        let t = std::time::Instant::now();
        let _ = recap_compiler::parse(&src);
        let parse = t.elapsed();
        println!(
            "{lines:>7} lines ({:>8} bytes): check {:?}, of which parse about {parse:?}",
            src.len(),
            best
        );
    }
}
