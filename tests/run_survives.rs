//! Runs that survive: real `recapc run` processes stopped by SIGINT, SIGTERM and SIGKILL, then
//! resumed, must end with the same weights and metrics as a run that was never stopped.

mod common;
#[path = "common/tfevents.rs"]
mod tfevents;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{lines_written, wait_for_steps};

/// A job of quick steps on the tiny model (GRPO and SFT on one source) that checkpoints every
/// `every` steps, keeping two, and logs to TensorBoard and CSV besides `metrics.jsonl`.
fn grpo_sft_job(steps: u64, every: u64) -> String {
    format!(
        "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 64, seed = 1)
verifier correct = numeric(extract = first_number)
objective rl = grpo(sums) {{ rewards = [correct], group = 4, max_tokens = 3 }}
objective learn = sft(sums)
train {{
  steps = {steps}
  prompts_per_step = 4
  optimizer = adamw(lr = 1e-3)
  seed = 3
  checkpoint = every({every}, keep = 2)
  out = \"runs/job\"
  log = [tensorboard, csv]
}}
"
    )
}

fn job_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Many steps, so that a signal sent once a few are written lands in the middle of the run.
    std::fs::write(dir.path().join("job.recap"), grpo_sft_job(610, 50)).unwrap();
    dir
}

fn args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "job.recap", "--progress", "quiet"];
    a.extend_from_slice(extra);
    if !extra.contains(&"--resume") {
        a.extend_from_slice(&["--out", out]);
    }
    a
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_recapc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the recapc binary starts")
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{name} failed");
}

fn finish(child: Child) -> (ExitStatus, String) {
    let o = child.wait_with_output().unwrap();
    (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn run_to_end(dir: &Path, args: &[&str]) -> String {
    let (status, err) = finish(spawn(dir, args));
    assert_eq!(status.code(), Some(0), "{err}");
    err
}

/// The metrics of a run without the fields that measure time.
fn metrics(run: &Path) -> Vec<Value> {
    common::metrics_without_timing(run)
}

/// Whether a metric measures time (and so differs between two runs of one job).
fn timed(name: &str) -> bool {
    ["seconds", "tokens_per_s"].contains(&name) || name.starts_with("time/")
}

/// The rows of `metrics.csv` without the columns that measure time, the header first.
fn csv_rows(run: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(run.join("metrics.csv"))
        .unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let keep: Vec<bool> = rows[0].iter().map(|c| !timed(c)).collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| c.to_string())
                .collect()
        })
        .collect()
}

/// The scalar events of the run's TensorBoard file as (step, tag, value), without wall times
/// and the scalars that measure time.
fn scalar_events(run: &Path) -> Vec<(i64, String, f32)> {
    let events = tfevents::read(&std::fs::read(tfevents::file(run)).unwrap());
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    events[1..]
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|(t, _)| !timed(t))
                .map(|(t, x)| (e.step, t.clone(), *x))
        })
        .collect()
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/model.safetensors")).unwrap()
}

/// The checkpoint directories of a run, by name.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The run directory an uninterrupted run of the 610-step job gives, under `dir`.
fn reference(dir: &Path) -> PathBuf {
    run_to_end(dir, &args("full", &[]));
    dir.join("full")
}

/// SIGINT and SIGTERM each stop the run after its step with a checkpoint of that step, a line
/// saying how to resume and exit code 4; the resumed run ends as the uninterrupted one did. The
/// run also checkpoints at its end, as `every` promises, beside `final/`.
#[test]
fn sigint_and_sigterm_stop_at_a_checkpoint_that_resumes_to_the_same_end() {
    let dir = job_dir();
    let full = reference(dir.path());
    assert_eq!(
        checkpoints(&full),
        ["step-000600", "step-000610"],
        "a checkpoint at the end of the run"
    );
    for (name, out) in [("INT", "int"), ("TERM", "term")] {
        let run = dir.path().join(out);
        let mut child = spawn(dir.path(), &args(out, &[]));
        wait_for_steps(&mut child, &run, 5);
        signal(&child, name);
        let (status, err) = finish(child);
        assert_eq!(status.code(), Some(4), "SIG{name}: {err}");
        assert!(err.contains("interrupted after step"), "{err}");
        assert!(err.contains("--resume"), "{err}");
        let step = lines_written(&run);
        assert!(step < 610, "SIG{name} came too late to test anything");
        assert!(
            checkpoints(&run).contains(&format!("step-{step:06}")),
            "SIG{name}: no checkpoint of step {step}: {:?}",
            checkpoints(&run)
        );
        assert!(!run.join("final").exists());
        let run_arg = run.display().to_string();
        run_to_end(dir.path(), &args(out, &["--resume", &run_arg]));
        assert_eq!(metrics(&run), metrics(&full), "SIG{name}: metrics differ");
        assert!(weights(&run) == weights(&full), "SIG{name}: weights differ");
    }
}

/// A second SIGINT does not wait for the step: the process ends at once with 130. Its steps
/// are long (a wider model, 256 prompts), so the second signal lands within the step the first
/// one let finish. The kernel merges a signal into one still pending, so on a loaded machine
/// two signals sent close together can arrive as one; the test therefore repeats the signal
/// until the process ends, and each repeat after the first delivery must end it at once.
#[test]
fn a_second_sigint_ends_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = "\
model policy = tiny(layers = 4, hidden = 512, heads = 8, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 256, seed = 1)
objective learn = sft(sums)
train { steps = 1000, prompts_per_step = 256, out = \"out\" }
";
    std::fs::write(dir.path().join("job.recap"), job).unwrap();
    let run = dir.path().join("out");
    let mut child = spawn(dir.path(), &args("out", &[]));
    wait_for_steps(&mut child, &run, 1);
    // A step has just ended: signalling a little later lands the first SIGINT early in the
    // next step, so the second arrives before that step's end, where the first alone would
    // stop the run at a checkpoint (exit 4) instead. The signals go straight through kill(2)
    // rather than a `kill` process, whose start a loaded machine can delay past the step.
    std::thread::sleep(Duration::from_millis(50));
    let pid = child.id() as libc::pid_t;
    let interrupt = || {
        // SAFETY: kill(2) only sends a signal to the child's process id.
        unsafe { libc::kill(pid, libc::SIGINT) };
    };
    interrupt();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "SIGINT did not end the run"
        );
        interrupt();
    }
    let (status, err) = finish(child);
    // 130, not 4: the repeated signal ended the run without waiting for a step. On a loaded
    // machine the repeat can come only after the step the first signal let finish, while its
    // checkpoint is being written (atomically, so never half of one: see
    // `twenty_sigkills_at_random_moments_lose_nothing`), so a checkpoint may exist; the run
    // never reaches its end.
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!run.join("final").exists());
}

/// A job that reads a data file, for the input-hash checks.
const DATA_JOB: &str = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 1)
source rows = jsonl(\"rows.jsonl\") { prompt = \"{q}\", target = field(\"t\") }
objective o = sft(rows)
train { steps = 4, prompts_per_step = 2, checkpoint = every(2), out = \"runs/data\" }
";

/// Gives the data file of [`DATA_JOB`] other contents.
fn change_data(dir: &Path) {
    std::fs::write(dir.join("rows.jsonl"), "{\"q\":\"1+2=\",\"t\":\"3\"}\n").unwrap();
}

/// Runs `recapc` with `base` and then `extra` arguments.
fn recapc_with(dir: &Path, base: &[&str], extra: &[&str]) -> std::process::Output {
    let all: Vec<&str> = base.iter().chain(extra).copied().collect();
    common::recapc(&all, dir)
}

fn data_job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.recap"), DATA_JOB).unwrap();
    std::fs::write(
        dir.path().join("rows.jsonl"),
        "{\"q\":\"1+1=\",\"t\":\"2\"}\n",
    )
    .unwrap();
    dir
}

/// `run PLAN.json` holds the files against the hashes `recapc plan` recorded: a data file
/// changed since is refused, naming it, unless `--allow-changed-inputs`.
#[test]
fn a_saved_plan_whose_data_changed_is_refused_naming_the_file() {
    let dir = data_job();
    let o = common::recapc(&["plan", "job.recap"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    std::fs::write(dir.path().join("plan.json"), common::stdout(&o)).unwrap();
    change_data(dir.path());
    let base = ["run", "plan.json", "--progress", "quiet", "--out", "out"];
    let run = |extra: &[&str]| recapc_with(dir.path(), &base, extra);
    let o = run(&[]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`rows.jsonl` (its contents) changed since the plan"),
        "{err}"
    );
    assert!(err.contains("--allow-changed-inputs"), "{err}");
    assert!(
        !dir.path().join("out").exists(),
        "refused before the run starts"
    );
    let o = run(&["--allow-changed-inputs"]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: `rows.jsonl` (its contents) changed"),
        "{err}"
    );
}

/// `--resume` holds the files against the hashes the run recorded in its `plan.json` when it
/// started: a data file changed or removed since is refused, naming it.
#[test]
fn a_resume_whose_data_changed_is_refused_naming_the_file() {
    let dir = data_job();
    let o = common::recapc(
        &["run", "job.recap", "--progress", "quiet", "--out", "out"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let plan: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/plan.json")).unwrap()).unwrap();
    assert_eq!(plan["file_hashes"][0]["path"], "rows.jsonl");
    change_data(dir.path());
    let base = ["run", "job.recap", "--progress", "quiet", "--resume", "out"];
    let resume = |extra: &[&str]| recapc_with(dir.path(), &base, extra);
    let o = resume(&[]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`rows.jsonl` (its contents) changed since the run in `out` started"),
        "{err}"
    );
    let o = resume(&["--allow-changed-inputs"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
}

/// At lr = 1e3 the tiny model collapses (its gradient is exactly zero from the third step, the
/// loss stuck at ln(vocab)); the run used to go on to exit 0. It now stops after `bad_steps`
/// bad steps with exit 3 and a line saying so, its newest checkpoint the last good one.
#[test]
fn a_collapsed_run_stops_keeping_its_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // The warm-up gives step 1 a zero learning rate, so step 1 is good and checkpointed.
    let job = "\
model policy = tiny(layers = 1, hidden = 32, heads = 2, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 64, seed = 1)
objective learn = sft(sums)
train {
  steps = 20
  prompts_per_step = 4
  optimizer = adamw(lr = 1e3)
  schedule = constant(warmup = 2)
  bad_steps = 4
  checkpoint = every(1)
  out = \"out\"
}
";
    std::fs::write(dir.path().join("c.recap"), job).unwrap();
    let o = common::recapc(&["run", "c.recap", "--progress", "plain"], dir.path());
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("the run collapsed: 4 bad steps in a row, the last at step 5"),
        "{err}"
    );
    assert!(err.contains("step-000001, predates them"), "{err}");
    assert!(err.contains("warning: step 2 is bad"), "{err}");
    assert_eq!(checkpoints(&dir.path().join("out")), ["step-000001"]);
    assert!(!dir.path().join("out/final").exists());
}

/// The step of a run's newest complete checkpoint.
fn newest_step(run: &Path) -> u64 {
    checkpoints(run)
        .iter()
        .filter_map(|c| c.strip_prefix("step-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A small seeded generator (xorshift64*), so the moments of the kills repeat from run to run.
struct Moments(u64);

impl Moments {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Twenty SIGKILLs at seeded random moments of a CPU run, each life resumed from the newest
/// complete checkpoint: the run ends with the metrics and final weights of an uninterrupted one.
/// What each kill left half written is counted and printed.
#[test]
fn twenty_sigkills_at_random_moments_lose_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint every 4 steps, so that many kills land while a checkpoint (or the metrics
    // line beside it) is being written.
    std::fs::write(dir.path().join("job.recap"), grpo_sft_job(240, 4)).unwrap();
    let t = Instant::now();
    run_to_end(dir.path(), &args("full", &[]));
    let full_ms = t.elapsed().as_millis() as u64;
    let full = dir.path().join("full");

    let run = dir.path().join("cut");
    let run_arg = run.display().to_string();
    // The first life runs until its first checkpoint, so that every later life has one to
    // resume from.
    let mut child = spawn(dir.path(), &args("cut", &[]));
    let first = Instant::now();
    while checkpoints(&run).iter().all(|c| c.starts_with('.')) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before a checkpoint"
        );
        assert!(first.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut moments = Moments(0x5eed_0fc0_ffee);
    let (mut kills, mut half_written, mut before_the_end) = (0, 0, 0);
    while kills < 20 {
        // Each life is killed a few milliseconds after it has written a seeded number of steps
        // (1 to 8) past its checkpoint: so twenty lives end well before the run's, however
        // fast the machine, and the kills fall in steps, metrics lines and checkpoint writes
        // (and in start-up, while the old metrics still hold that many lines).
        let from = newest_step(&run);
        let steps = (from + 1 + moments.next_below(8)) as usize;
        let started = Instant::now();
        while lines_written(&run) < steps && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(moments.next_below(5)));
        if child.try_wait().unwrap().is_none() {
            let unfinished = !run.join("final").exists();
            child.kill().unwrap();
            kills += 1;
            before_the_end += usize::from(unfinished);
        }
        let (status, err) = finish(child);
        assert!(
            status.code().is_none() || status.success(),
            "life ended with {status}: {err}"
        );
        let temporaries = checkpoints(&run).iter().any(|c| c.starts_with(".tmp-"))
            || std::fs::read_dir(&run).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            });
        half_written += usize::from(temporaries);
        child = spawn(dir.path(), &args("cut", &["--resume", &run_arg]));
    }
    assert_eq!(before_the_end, 20, "some kills came after the run's end");
    let (status, err) = finish(child);
    assert_eq!(status.code(), Some(0), "the last life: {err}");
    assert_eq!(
        metrics(&run),
        metrics(&full),
        "metrics differ after 20 kills"
    );
    assert!(
        weights(&run) == weights(&full),
        "weights differ after 20 kills"
    );
    // The logs besides metrics.jsonl hold each step once, as the uninterrupted run's do.
    assert_eq!(csv_rows(&run), csv_rows(&full), "metrics.csv differs");
    assert_eq!(csv_rows(&full).len(), 241);
    let events = scalar_events(&full);
    assert_eq!(scalar_events(&run), events, "the TensorBoard events differ");
    assert_eq!(events.last().map(|e| e.0), Some(240));
    eprintln!(
        "20 kills, {before_the_end} before the run's end, {half_written} leaving a file half \
         written; uninterrupted run {full_ms} ms, test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Sizes without bounds are clear errors, never an allocation that aborts the process: a tiny
/// model a billion wide and a trillion generated rows at compile time, a data source at
/// `/dev/zero` when the data is checked, before the run.
#[test]
fn sizes_without_bounds_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let job = |model: &str, source: &str| {
        format!(
            "model policy = {model}\nsource sums = {source}\nobjective learn = sft(sums)\n\
             train {{ steps = 1, out = \"out\" }}\n"
        )
    };
    let tiny = "tiny(layers = 1, hidden = 32, heads = 2)";
    let sums = "arithmetic(count = 10)";
    for (name, text, code, says) in [
        ("wide", job("tiny(hidden = 1e9)", sums), 1, "hidden"),
        ("rows", job(tiny, "arithmetic(count = 1e12)"), 1, "count"),
        (
            "zero",
            job(
                tiny,
                "jsonl(\"/dev/zero\") { prompt = \"{q}\", target = field(\"t\") }",
            ),
            1,
            "/dev/zero is not a regular file",
        ),
    ] {
        std::fs::write(dir.path().join(format!("{name}.recap")), text).unwrap();
        let file = format!("{name}.recap");
        let o = common::recapc(&["run", &file, "--progress", "quiet"], dir.path());
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
    }
}

/// `--out` beside `--resume` is refused rather than ignored: a resumed run stays in its own
/// directory.
#[test]
fn out_beside_resume_is_refused() {
    let dir = data_job();
    let o = common::recapc(
        &["run", "job.recap", "--resume", "a", "--out", "b"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("--out"),
        "{}",
        common::stderr(&o)
    );
}

/// Two real runs into one directory: while the first runs, a second one, fresh or resuming, is
/// refused by the lock (exit 2, naming the directory), and the first run's metrics stay whole.
#[test]
fn a_second_process_into_a_running_runs_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = "\
model policy = tiny(layers = 4, hidden = 256, heads = 4, seed = 7)
source sums = arithmetic(ops = \"+\", digits = 1, count = 64, seed = 1)
objective learn = sft(sums)
train { steps = 1000, prompts_per_step = 64, checkpoint = every(1), out = \"out\" }
";
    std::fs::write(dir.path().join("job.recap"), job).unwrap();
    let run = dir.path().join("out");
    let mut first = spawn(dir.path(), &args("out", &[]));
    wait_for_steps(&mut first, &run, 1);
    for extra in [["--out", "out"], ["--resume", "out"]] {
        let o = recapc_with(
            dir.path(),
            &["run", "job.recap", "--progress", "quiet"],
            &extra,
        );
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("in use by another run"), "{extra:?}: {err}");
    }
    assert!(first.try_wait().unwrap().is_none(), "the first run goes on");
    signal(&first, "TERM");
    let (status, err) = finish(first);
    assert_eq!(status.code(), Some(4), "{err}");
    let lines = metrics(&run);
    let steps: Vec<u64> = lines.iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
}
