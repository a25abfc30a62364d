//! Warnings of what is silently wrong in a run (issue 16, item 3): a reward no completion can
//! earn with the policy's tokenizer, groups that never disagree, a half dtype on the CPU.

mod common;

use recap_compiler::{check, AssumeFilesExist, CheckOptions};
use recap_runtime::engine::{run, ProgressMode, RunOptions, RunSummary};

/// Compiles `text` and runs it in a new temporary directory; gives the summary and the run's
/// `metrics.jsonl` records.
fn run_text(text: &str) -> (RunSummary, Vec<serde_json::Value>) {
    let out = check("w.recap", text, &CheckOptions::default(), &AssumeFilesExist);
    let plan = match out.plan {
        Some(p) => p,
        None => panic!("the pipeline does not compile: {:#?}", out.diagnostics),
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        base_dir: dir.path().to_path_buf(),
        progress: ProgressMode::Quiet,
        ..RunOptions::default()
    };
    let summary = run(&plan, &opts).unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("runs/w/metrics.jsonl")).unwrap();
    let records = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, records)
}

/// A GRPO job of `steps` steps on a `tiny()` policy rewarded by `regex(pattern)` alone.
fn regex_job(pattern: &str, steps: u64) -> String {
    format!(
        r#"
model policy = tiny(layers = 1, hidden = 16, heads = 2, seed = 7)
source sums = arithmetic(ops = "+", digits = 1, count = 50, seed = 1)
verifier tagged = regex("{pattern}")
objective sharpen = grpo(sums) {{ rewards = [tagged], group = 2, max_tokens = 2 }}
train {{ steps = {steps}, prompts_per_step = 2, seed = 1, out = "runs/w" }}
"#
    )
}

/// `tiny()`'s tokenizer has no `<`, so `<answer>` never appears: the run says so at load, and
/// every group's rewards stay equal (all 0), which the step records say after ten steps.
#[test]
fn an_unreachable_format_and_flat_groups_are_warned_of() {
    let (summary, records) = run_text(&regex_job("<answer>[0-9]+</answer>", 10));
    let w = &summary.warnings;
    assert!(
        w[0].starts_with("verifier `tagged`: no completion can ever match `<answer>[0-9]+</answer>`: it needs \"<>\", which the policy's tokenizer cannot produce"),
        "{w:?}"
    );
    let flat = "no learning signal: every group's rewards were equal for 10 steps";
    assert!(w[1].starts_with(flat), "{w:?}");
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(records.len(), 10);
    assert!(records[..9].iter().all(|r| r.get("warnings").is_none()));
    let last = records[9]["warnings"][0].as_str().unwrap();
    assert!(last.starts_with(flat), "{last}");
}

/// A pattern the tokenizer can produce, in any of its branches' common characters, earns no
/// warning at load.
#[test]
fn a_reachable_format_is_not_warned_of() {
    let (summary, _) = run_text(&regex_job("([0-9]+|x?<b>)", 1));
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
}

/// `dtype = bf16` on the CPU leaves the model in f32, and the run says so.
#[test]
fn a_half_dtype_on_the_cpu_is_warned_of() {
    let fixture = common::fixture();
    let (summary, _) = run_text(&format!(
        r#"
model policy = hf("{}", dtype = bf16)
source sums = arithmetic(ops = "+", digits = 1, count = 50, seed = 1)
objective learn = sft(sums)
train {{ steps = 1, prompts_per_step = 1, seed = 1, out = "runs/w" }}
"#,
        fixture.display()
    ));
    assert_eq!(
        summary.warnings,
        ["model `policy`: dtype = bf16 is ignored on the CPU: its weights and arithmetic stay f32 \
          (a half dtype is a compute dtype, used on CUDA only)"]
    );
}
