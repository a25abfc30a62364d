//! `recapc report` and `recapc compare` on committed metrics fixtures (tests/data/report: two
//! runs; tests/data/compare: two variants x three seeds). Every expected number below was
//! computed by hand from those files; the p-values come from scipy, as noted beside them.

mod common;

use std::path::{Path, PathBuf};

use common::{recapc, stderr, stdout};
use recapc::report::{compare, load_run, summary};

fn data(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
        .display()
        .to_string()
}

const CHARTS: [&str; 7] = [
    "rewards",
    "lambda",
    "convergence",
    "instability",
    "kl",
    "loss",
    "probes",
];

#[test]
fn report_on_two_runs_writes_every_chart_and_a_checked_summary() {
    let out = tempfile::tempdir().unwrap();
    let o = recapc(
        &[
            "report",
            &data("report/run-a"),
            &data("report/run-b"),
            "--out",
            &out.path().display().to_string(),
        ],
        out.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for chart in CHARTS {
        let png = std::fs::read(out.path().join(format!("{chart}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{chart}.png");
        // A blank 1000x560 image compresses to a few kilobytes; axes, text and lines do not.
        assert!(png.len() > 10_000, "{chart}.png is {} bytes", png.len());
        let svg = std::fs::read_to_string(out.path().join(format!("{chart}.svg"))).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{chart}.svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        assert!(texts.contains(&"step"), "{chart}.svg: {texts:?}");
        // Steps are whole numbers, each tick label once.
        let mut ticks: Vec<&str> = texts.iter().copied().filter(|t| t.len() == 1).collect();
        let n = ticks.len();
        ticks.dedup();
        assert_eq!(ticks.len(), n, "{chart}.svg: {texts:?}");
    }
    // Two runs on one chart: each line is labelled with its run.
    let probes = std::fs::read_to_string(out.path().join("probes.svg")).unwrap();
    for label in [
        "run-a: sums_probe.correct",
        "run-a: copy_probe.copied",
        "run-b: sums_probe.correct",
    ] {
        assert!(probes.contains(label), "{label}");
    }
    let md = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    // run-a: 6 steps of 0.5+1+0.5+1.5+0.5+1 = 5.0 s; 100+200+60 = 360 tokens generated in the
    // 3.5 s of steps 2, 4 and 6: 102.86 tokens/s. copy_probe logs 0.75, 0.5, null: final 0.5 at
    // step 4 (the null is skipped), best 0.75 at step 2.
    for line in [
        "## run-a",
        "- steps: 6",
        "- wall time (sum of step times): 5.0 s",
        "- generated tokens/s: 103",
        "| copy_probe.copied | 0.500 | 4 | 0.750 | 2 |",
        "| sums_probe.correct | 0.625 | 6 | 0.875 | 4 |",
        // run-b: 4 SFT steps of 0.25 s; sums_probe 0.25 twice: the best is first reached at 2.
        "## run-b",
        "- steps: 4",
        "- wall time (sum of step times): 1.0 s",
        "- generated tokens/s: n/a (no step generated tokens)",
        "| sums_probe.correct | 0.250 | 4 | 0.250 | 2 |",
    ] {
        assert!(md.lines().any(|l| l == line), "missing `{line}` in\n{md}");
    }
}

#[test]
fn report_format_and_default_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run-b");
    std::fs::create_dir(&run).unwrap();
    std::fs::copy(
        data("report/run-b/metrics.jsonl"),
        run.join("metrics.jsonl"),
    )
    .unwrap();
    let o = recapc(&["report", "run-b", "--format", "svg"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(run.join("report"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // run-b is SFT only: no rewards and no KL, so those charts are left out.
    assert_eq!(
        names,
        [
            "convergence.svg",
            "instability.svg",
            "lambda.svg",
            "loss.svg",
            "probes.svg",
            "summary.md"
        ]
    );
}

#[test]
fn the_terminal_summary_reads_the_same_numbers() {
    let run = load_run(Path::new(&data("report/run-a"))).unwrap();
    assert_eq!(
        summary::terminal(&summary::summarise(&run)),
        "summary: 6 steps, 5.0 s of steps, 103 generated tokens/s\n\
         \x20 copy_probe.copied   final 0.500 (step 4), best 0.750 (step 2)\n\
         \x20 sums_probe.correct  final 0.625 (step 6), best 0.875 (step 4)\n"
    );
}

fn compare_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    for variant in ["recap", "reasoning"] {
        for seed in 1..=3 {
            dirs.push(data(&format!("compare/{variant}/seed-{seed}")));
        }
    }
    dirs
}

// The p-values of Welch's test on the end values, from scipy 1.17.1:
// scipy.stats.ttest_ind([0.50, 0.56, 0.44], [0.76, 0.74, 0.78], equal_var=False).pvalue
// = 0.010927269269693876 (t = -7.1204, df = 2.439), and
// scipy.stats.ttest_ind([0.62, 0.64, 0.66], [0.60, 0.66, 0.63], equal_var=False).pvalue
// = 0.6595297252735691 (t = 0.4804, df = 3.485).
const P_GENERAL: f64 = 0.010927269269693876;
const P_MATH: f64 = 0.6595297252735691;

#[test]
fn compare_gives_mean_std_and_welch_p_per_variant() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.md");
    let mut args = vec!["compare".to_string()];
    args.extend(compare_dirs());
    args.extend(["--baseline", "recap", "--out"].map(String::from));
    args.push(table.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = recapc(&args, dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // recap general.ok: start 0.80, 0.82, 0.78 (mean 0.80, std 0.02), end 0.76, 0.74, 0.78;
    // math.correct end 0.60, 0.66, 0.63 (mean 0.63, std 0.03). reasoning general.ok start
    // 0.80, 0.81, 0.79 (std 0.01), end 0.50, 0.56, 0.44 (mean 0.50, std 0.06).
    let expected = "\
| variant | probe | n | start | end | p (end vs recap) |
|---|---|---:|---:|---:|---:|
| recap | general.ok | 3 | 0.800 ± 0.020 | 0.760 ± 0.020 | baseline |
| recap | math.correct | 3 | 0.300 ± 0.020 | 0.630 ± 0.030 | baseline |
| reasoning | general.ok | 3 | 0.800 ± 0.010 | 0.500 ± 0.060 | 0.011 |
| reasoning | math.correct | 3 | 0.300 ± 0.010 | 0.640 ± 0.020 | 0.660 |
";
    assert_eq!(stdout(&o), expected);
    assert_eq!(std::fs::read_to_string(&table).unwrap(), expected);

    let runs: Vec<_> = compare_dirs()
        .iter()
        .map(|d| load_run(Path::new(d)).unwrap())
        .collect();
    let c = compare::compare(&runs, Some("recap")).unwrap();
    let row = |v: &str, p: &str| {
        c.rows
            .iter()
            .find(|r| r.variant == v && r.probe == p)
            .unwrap()
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let g = row("reasoning", "general.ok");
    assert!(
        close(g.end.mean, 0.50) && close(g.end.std.unwrap(), 0.06),
        "{g:?}"
    );
    assert!(
        close(g.p.unwrap(), P_GENERAL),
        "{} vs {P_GENERAL}",
        g.p.unwrap()
    );
    let m = row("reasoning", "math.correct");
    assert!(close(m.p.unwrap(), P_MATH), "{} vs {P_MATH}", m.p.unwrap());
    assert_eq!(row("recap", "general.ok").p, None);
}

#[test]
fn compare_json_and_the_layout_convention() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["compare".to_string()];
    args.extend(compare_dirs());
    // A directory not named seed-N is a variant of its own.
    args.push(data("report/run-b"));
    args.extend(["--format", "json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = recapc(&args, dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["schema"], "recap-compare");
    assert_eq!(v["version"], 1);
    let names: Vec<&str> = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["recap", "reasoning", "run-b"]);
    assert_eq!(v["variants"][0]["runs"].as_array().unwrap().len(), 3);
    let rows = v["rows"].as_array().unwrap();
    let b = rows.iter().find(|r| r["variant"] == "run-b").unwrap();
    // One seed: a mean, no standard deviation, and no p-value without a baseline.
    assert_eq!(b["n"], 1);
    assert_eq!(b["end"]["mean"], 0.25);
    assert!(b["end"]["std"].is_null() && b["p"].is_null());
    assert_eq!(
        compare::variant_of(Path::new("study/recap/seed-3")),
        "recap"
    );
    assert_eq!(compare::variant_of(Path::new("runs/lwf")), "lwf");
}

#[test]
fn welch_is_undefined_without_spread_or_seeds() {
    assert_eq!(compare::welch_p(&[0.5], &[0.4, 0.6]), None);
    assert_eq!(compare::welch_p(&[0.5, 0.5], &[0.4, 0.4]), None);
    // Spread on one side only is enough.
    assert!(compare::welch_p(&[0.5, 0.5], &[0.4, 0.6]).is_some());
}

/// Runs a command that must fail with exit code 2 and a message containing `needle`.
fn fails_with(args: &[&str], dir: &Path, needle: &str) {
    let o = recapc(args, dir);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mk = |name: &str, text: &str| {
        std::fs::create_dir(d.join(name)).unwrap();
        std::fs::write(d.join(name).join("metrics.jsonl"), text).unwrap();
    };
    mk("empty", "");
    mk("corrupt", "{\"step\":1}\n{\"step\":2,\"loss\":\n");
    mk("nostep", "{\"loss\":1.0}\n");
    mk("noprobes", "{\"step\":1,\"loss\":1.0}\n");
    std::fs::create_dir(d.join("nometrics")).unwrap();
    for cmd in ["report", "compare"] {
        fails_with(&[cmd, "missing"], d, "`missing` is not a run directory");
        fails_with(&[cmd, "nometrics"], d, "cannot read");
        fails_with(&[cmd, "empty"], d, "has no records");
        fails_with(&[cmd, "corrupt"], d, "line 2: not a JSON record");
        fails_with(
            &[cmd, "nostep"],
            d,
            "line 1: the record has no whole-number `step`",
        );
    }
    fails_with(&["compare", "noprobes"], d, "has no probe records");
    let good = data("compare/recap/seed-1");
    fails_with(
        &["compare", &good, "--baseline", "lwf"],
        d,
        "--baseline `lwf` is not one of the variants: recap",
    );
    // A run without probes still has charts worth drawing.
    let o = recapc(&["report", "noprobes", "--out", "r"], d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let md = std::fs::read_to_string(d.join("r/summary.md")).unwrap();
    assert!(md.contains("Charts: `loss.png`, `loss.svg`."), "{md}");
    assert!(md.contains("No probe records."), "{md}");
    // Records with a step and nothing to plot give a summary that says so.
    mk("bare", "{\"step\":1}\n");
    let o = recapc(&["report", "bare", "--out", "b"], d);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let md = std::fs::read_to_string(d.join("b/summary.md")).unwrap();
    assert!(
        md.contains("No charts: the metrics have no rewards"),
        "{md}"
    );
    assert!(md.contains("- steps: 1\n"), "{md}");
}

#[test]
fn run_ends_with_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.recap");
    let o = recapc(
        &[
            "run",
            &pipeline.display().to_string(),
            "--set",
            "warmup_steps=25",
            "--set",
            "rl_steps=25",
            "--out",
            "run",
            "--progress",
            "quiet",
            "--samples-every",
            "0",
        ],
        dir.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // The RL stage generates tokens; each stage's two probes run once, at its step 25.
    assert!(
        err.contains("summary: 50 steps, ") && err.contains(" generated tokens/s\n"),
        "{err}"
    );
    for probe in [
        "copy_probe.copied ",
        "sums_probe.correct ",
        "copy_probe_rl.copied ",
        "sums_probe_rl.correct ",
    ] {
        let line = err.lines().find(|l| l.trim_start().starts_with(probe));
        let line = line.unwrap_or_else(|| panic!("no `{probe}` line in\n{err}"));
        let step = if probe.contains("_rl") { 50 } else { 25 };
        assert!(line.contains(&format!("(step {step}), best")), "{line}");
    }
}
