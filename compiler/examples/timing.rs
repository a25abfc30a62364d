//! Times `check` on generated pipelines of about 1k, 10k and 100k lines (a quick measurement
//! aid for development; the project's benchmark command is `recapc`'s).
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
    // `timing N` checks one generated pipeline of N lines once and prints nothing else, so
    // `valgrind --tool=callgrind` can count the instructions of one check.
    if let Some(n) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<usize>().ok())
    {
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
        let t = std::time::Instant::now();
        let _ = recap_compiler::parse::pest_only(&src);
        println!("pest alone {:?}", t.elapsed());
        println!(
            "{lines:>7} lines ({:>8} bytes): check {:?}, of which parse about {parse:?}",
            src.len(),
            best
        );
    }
}
