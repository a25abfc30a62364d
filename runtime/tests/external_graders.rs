//! External graders (`exec(...)` and `http(...)` verifiers) misbehaving: each failure costs
//! its batch's rewards (0, with the reason reported once), never the run. The `exec` tests need
//! `python3` (they print SKIPPED without it); the `http` tests serve canned answers from a
//! thread, or run `examples/graders/judge_server.py`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recap_plan::{Extractor, Verifier, VerifierSpec};
use recap_runtime::engine::graders::{landlock_available, External};
use recap_runtime::engine::rewards::Judged;
use recap_runtime::train::verifiers::Outcome;
use serde_json::{json, Map, Value};

mod common;

fn python() -> bool {
    let ok = Path::new("/usr/bin/python3").is_file() || Path::new("/bin/python3").is_file();
    if !ok {
        println!("SKIPPED: no python3 in /usr/bin or /bin");
    }
    ok
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/graders")
}

fn exec_spec(command: &[&str], timeout: f64, memory_mb: u64, batch: u64) -> Verifier {
    Verifier {
        name: "grader".into(),
        spec: VerifierSpec::Exec {
            command: command.iter().map(|c| (*c).into()).collect(),
            timeout,
            memory_mb,
            batch,
            extract: Extractor { steps: vec![] },
        },
    }
}

/// An `exec` grader of `script` (Python source, written to `dir/grader.py`).
fn script_grader(dir: &Path, script: &str, timeout: f64, memory_mb: u64) -> External {
    std::fs::write(dir.join("grader.py"), script).unwrap();
    let v = exec_spec(&["python3", "grader.py"], timeout, memory_mb, 64);
    External::new(&v, dir, true).unwrap().unwrap()
}

struct Rows {
    fields: Vec<Map<String, Value>>,
    completions: Vec<String>,
}

impl Rows {
    fn new(pairs: &[(&str, Value)]) -> Rows {
        Rows {
            completions: pairs.iter().map(|(c, _)| c.to_string()).collect(),
            fields: pairs
                .iter()
                .map(|(_, f)| f.as_object().unwrap().clone())
                .collect(),
        }
    }

    fn items(&self) -> Vec<Judged<'_>> {
        (0..self.fields.len())
            .map(|i| Judged {
                id: "rows:0",
                prompt: "p",
                completion: &self.completions[i],
                fields: &self.fields[i],
                tokens: 3,
            })
            .collect()
    }
}

fn two_rows() -> Rows {
    Rows::new(&[("a", json!({"answer": "1"})), ("b", json!({"answer": "2"}))])
}

/// A batch that failed: every completion scores 0 and one reason is given, which contains
/// `why`.
fn assert_failed(got: (Vec<Outcome>, Vec<String>), n: usize, why: &str) {
    let (outcomes, failures) = got;
    assert_eq!(outcomes, vec![Outcome::Score(0.0); n]);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains(why), "{:?} lacks {why:?}", failures[0]);
}

#[test]
fn the_code_execution_example_runs_each_completion_against_its_tests() {
    if !python() {
        return;
    }
    let v = exec_spec(
        &["python3", "code_exec.py", "--timeout", "2"],
        30.0,
        1024,
        2,
    );
    let g = External::new(&v, &examples(), true).unwrap().unwrap();
    let tests = json!({"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]});
    let rows = Rows::new(&[
        (
            "```python\ndef add(a, b):\n    return a + b\n```",
            tests.clone(),
        ),
        ("def add(a, b):\n    return a * b", tests.clone()),
        (
            "def add(a, b):\n    while True:\n        pass",
            tests.clone(),
        ),
        ("import os\nos._exit(0)", json!({})),
        ("def add(a, b): return b + a", tests),
    ]);
    let (outcomes, failures) = g.score(&rows.items());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes[0], Outcome::Score(1.0));
    assert_eq!(outcomes[1], Outcome::Score(0.0));
    // The endless loop runs into the example's own per-completion limit.
    assert_eq!(outcomes[2], Outcome::Score(0.0));
    // A row without tests has no reward, rather than a made-up one.
    assert!(matches!(outcomes[3], Outcome::NotApplicable(_)));
    assert_eq!(outcomes[4], Outcome::Score(1.0));
}

#[test]
fn a_grader_gets_the_protocol_fields_and_the_extracted_answer() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Echoes what it was given into the reward, so each field can be checked.
    let script = r#"
import json, sys
for line in sys.stdin:
    o = json.loads(line)
    ok = (o["prompt"] == "p" and o["sample"] == "rows:0" and o["tokens"] == 3
          and o["answer"] == o["fields"]["answer"] and o["completion"].endswith(o["answer"]))
    print(json.dumps({"id": o["id"], "reward": 1.0 if ok else 0.0}))
"#;
    std::fs::write(dir.path().join("grader.py"), script).unwrap();
    let mut v = exec_spec(&["python3", "grader.py"], 10.0, 1024, 64);
    if let VerifierSpec::Exec { extract, .. } = &mut v.spec {
        extract.steps = vec![recap_plan::ExtractStep::LastNumber];
    }
    let g = External::new(&v, dir.path(), true).unwrap().unwrap();
    let rows = Rows::new(&[
        ("x = 1", json!({"answer": "1"})),
        ("y 2", json!({"answer": "2"})),
    ]);
    assert_eq!(
        g.score(&rows.items()),
        (vec![Outcome::Score(1.0), Outcome::Score(1.0)], vec![])
    );
}

#[test]
fn a_hung_grader_is_killed_with_its_children_at_the_timeout() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A child that keeps the output pipe open, then the grader itself hangs.
    let script = r#"
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
time.sleep(120)
"#;
    let g = script_grader(dir.path(), script, 1.0, 1024);
    let t = Instant::now();
    assert_failed(
        g.score(&two_rows().items()),
        2,
        "did not finish within 1.0 s",
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_crashing_grader_costs_its_batch_with_its_stderr_quoted() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = "import json\nprint(json.dumps({'id': 0, 'reward': 1.0}))\nraise RuntimeError('grader bug')\n";
    let g = script_grader(dir.path(), script, 10.0, 1024);
    let (outcomes, failures) = g.score(&two_rows().items());
    assert_failed((outcomes, failures.clone()), 2, "exited with status 1");
    assert!(failures[0].contains("grader bug"), "{failures:?}");
}

#[test]
fn a_grader_over_its_memory_limit_fails_its_batch() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 512 MiB under a 128 MiB address-space limit.
    let script = "import json, sys\nblock = bytearray(512 << 20)\nfor l in sys.stdin:\n    print(json.dumps({'id': json.loads(l)['id'], 'reward': 1.0}))\n";
    let g = script_grader(dir.path(), script, 10.0, 128);
    let (outcomes, failures) = g.score(&two_rows().items());
    assert_failed((outcomes, failures.clone()), 2, "exited with status 1");
    assert!(failures[0].contains("MemoryError"), "{failures:?}");
    // The same program within a larger limit scores.
    let g = script_grader(dir.path(), script, 10.0, 2048);
    assert_eq!(g.score(&two_rows().items()).1, Vec::<String>::new());
}

#[test]
fn a_grader_printing_garbage_fails_its_batch() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = script_grader(dir.path(), "print('reward: 1')\n", 10.0, 1024);
    assert_failed(
        g.score(&two_rows().items()),
        2,
        "line 1 of its output is not JSON",
    );
    let g = script_grader(
        dir.path(),
        "print('{\"id\": 0, \"reward\": 1}')\n",
        10.0,
        1024,
    );
    assert_failed(g.score(&two_rows().items()), 2, "no reward for 1 of 2");
    // Ten MiB of one line, then nothing: not a reward either, and no harm done.
    let g = script_grader(dir.path(), "print('x' * (10 << 20))\n", 10.0, 1024);
    assert_failed(g.score(&two_rows().items()), 2, "is not JSON");
}

#[test]
fn a_grader_cannot_leave_its_working_directory() {
    if !python() {
        return;
    }
    if !landlock_available() {
        println!("SKIPPED: this kernel has no Landlock");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    let outside = dir.path().join("escaped.txt");
    // Reward 1 only when it can use its own directory and every way out fails.
    let script = format!(
        r#"
import json, os, sys
escapes = []
def attempt(name, f):
    try:
        f()
        escapes.append(name)
    except OSError:
        pass
attempt("read secret", lambda: open({secret:?}).read())
attempt("read parent secret", lambda: open("../{dirname}/secret.txt").read())
attempt("write outside", lambda: open({outside:?}, "w").write("x"))
attempt("write parent", lambda: open("../escaped.txt", "w").write("x"))
attempt("list home", lambda: os.listdir("/root"))
attempt("read environ", lambda: open("/proc/{pid}/environ").read())
with open("own.txt", "w") as f:
    f.write("mine")
own = open("own.txt").read() == "mine"
sys.stderr.write("escapes: %s\n" % escapes)
for line in sys.stdin:
    o = json.loads(line)
    print(json.dumps({{"id": o["id"], "reward": 1.0 if own and not escapes else 0.0}}))
"#,
        secret = secret.to_str().unwrap(),
        outside = outside.to_str().unwrap(),
        pid = std::process::id(),
        dirname = dir.path().file_name().unwrap().to_str().unwrap(),
    );
    let g = script_grader(dir.path(), &script, 10.0, 1024);
    let got = g.score(&two_rows().items());
    assert_eq!(got, (vec![Outcome::Score(1.0); 2], vec![]));
    assert!(!outside.exists());
}

#[test]
fn a_grader_does_not_inherit_the_environment() {
    if !python() {
        return;
    }
    // Set in this process only; no other test here reads it.
    std::env::set_var("RECAP_TEST_SECRET_TOKEN", "hunter2");
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, os, sys
clean = ("RECAP_TEST_SECRET_TOKEN" not in os.environ
         and os.environ["HOME"] == os.getcwd()
         and os.environ["PATH"] == "/usr/local/bin:/usr/bin:/bin")
sys.stderr.write("environment: %s\n" % sorted(os.environ))
for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["id"], "reward": 1.0 if clean else 0.0}))
"#;
    let g = script_grader(dir.path(), script, 10.0, 1024);
    assert_eq!(
        g.score(&two_rows().items()),
        (vec![Outcome::Score(1.0); 2], vec![])
    );
}

#[test]
fn batches_fail_alone() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Fails on the batch holding a completion "crash"; batches of two.
    let script = r#"
import json, sys
items = [json.loads(l) for l in sys.stdin]
if any(o["completion"] == "crash" for o in items):
    sys.exit(2)
for o in items:
    print(json.dumps({"id": o["id"], "reward": 0.5}))
"#;
    std::fs::write(dir.path().join("grader.py"), script).unwrap();
    let v = exec_spec(&["python3", "grader.py"], 10.0, 1024, 2);
    let g = External::new(&v, dir.path(), true).unwrap().unwrap();
    let f = json!({});
    let rows = Rows::new(&[
        ("a", f.clone()),
        ("b", f.clone()),
        ("crash", f.clone()),
        ("d", f),
    ]);
    let (outcomes, failures) = g.score(&rows.items());
    let half = Outcome::Score(0.5);
    let zero = Outcome::Score(0.0);
    assert_eq!(outcomes, vec![half.clone(), half, zero.clone(), zero]);
    assert_eq!(failures.len(), 1);
}

#[test]
fn exec_is_refused_without_the_allow_flag() {
    let v = exec_spec(&["python3", "grader.py"], 10.0, 1024, 64);
    let err = External::new(&v, Path::new("."), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("verifier `grader`"), "{err}");
    assert!(err.contains("--allow-exec"), "{err}");
    let missing = exec_spec(&["./no-such-grader"], 10.0, 1024, 64);
    let err = External::new(&missing, Path::new("."), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// http

fn http_spec(url: &str, timeout: f64, retries: u64, batch: u64) -> External {
    let v = Verifier {
        name: "judge".into(),
        spec: VerifierSpec::Http {
            url: url.into(),
            timeout,
            batch,
            retries,
            ca: None,
            extract: Extractor { steps: vec![] },
        },
    };
    External::new(&v, Path::new("."), false).unwrap().unwrap()
}

/// Serves each connection with `answer(request number, request body)` (status, body, delay),
/// on a thread; gives the address and the count of requests served.
fn stub(
    answer: impl Fn(usize, &Value) -> (u16, String, Duration) + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let served = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Some(body) = common::http_request_body(&mut reader) else {
                continue;
            };
            let n = served.fetch_add(1, Ordering::SeqCst);
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, text, delay) = answer(n, &request);
            std::thread::sleep(delay);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, count)
}

/// A reward per item: its index / 10.
fn rewards_of(request: &Value) -> String {
    let n = request["items"].as_array().map_or(0, Vec::len);
    json!({"rewards": (0..n).map(|i| i as f64 / 10.0).collect::<Vec<_>>()}).to_string()
}

#[test]
fn http_retries_a_failing_endpoint_until_it_answers() {
    let (url, count) = stub(|n, req| match n {
        0 | 1 => (503, "{\"error\": \"busy\"}".into(), Duration::ZERO),
        _ => (200, rewards_of(req), Duration::ZERO),
    });
    let g = http_spec(&url, 5.0, 3, 64);
    let (outcomes, failures) = g.score(&two_rows().items());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes, vec![Outcome::Score(0.0), Outcome::Score(0.1)]);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn http_gives_up_after_its_retries_and_the_batch_scores_zero() {
    let (url, count) = stub(|_, _| (500, "{}".into(), Duration::ZERO));
    let g = http_spec(&url, 5.0, 1, 64);
    assert_failed(g.score(&two_rows().items()), 2, "answered 500");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // A client error is not tried again.
    let (url, count) = stub(|_, _| (400, "{\"error\": \"bad\"}".into(), Duration::ZERO));
    assert_failed(
        http_spec(&url, 5.0, 3, 64).score(&two_rows().items()),
        2,
        "answered 400",
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_slow_endpoint_runs_into_the_timeout() {
    let (url, _) = stub(|_, req| (200, rewards_of(req), Duration::from_secs(3)));
    let g = http_spec(&url, 0.3, 0, 64);
    let t = Instant::now();
    assert_failed(
        g.score(&two_rows().items()),
        2,
        "did not answer within 0.3 s",
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn http_answers_of_the_wrong_shape_fail_their_batch() {
    let (url, _) = stub(|_, _| (200, "{\"rewards\": [1.0]}".into(), Duration::ZERO));
    assert_failed(
        http_spec(&url, 5.0, 0, 64).score(&two_rows().items()),
        2,
        "has 1 rewards for 2",
    );
    let (url, _) = stub(|_, _| (200, "<html>".into(), Duration::ZERO));
    assert_failed(
        http_spec(&url, 5.0, 0, 64).score(&two_rows().items()),
        2,
        "is not JSON",
    );
    // Nobody listening: refused, tried again, then given up.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    assert_failed(
        http_spec(&url, 5.0, 1, 64).score(&two_rows().items()),
        2,
        "tried 2 times",
    );
}

#[test]
fn http_batches_split_the_completions() {
    let (url, count) = stub(|_, req| (200, rewards_of(req), Duration::ZERO));
    let f = json!({});
    let rows = Rows::new(&[("a", f.clone()), ("b", f.clone()), ("c", f)]);
    let (outcomes, _) = http_spec(&url, 5.0, 0, 2).score(&rows.items());
    // Two requests: two items, then one; each numbered from 0.
    assert_eq!(
        outcomes,
        vec![
            Outcome::Score(0.0),
            Outcome::Score(0.1),
            Outcome::Score(0.0)
        ]
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn the_stub_judge_server_example_scores_and_is_retried() {
    if !python() {
        return;
    }
    let mut server = Command::new("python3")
        .arg(examples().join("judge_server.py"))
        .args(["--fail-first", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.trim().trim_start_matches("listening on ").to_string();
    let rows = Rows::new(&[
        ("so it is 42", json!({"answer": "42"})),
        ("7", json!({"answer": "8"})),
        ("?", json!({})),
    ]);
    let got = http_spec(&url, 5.0, 2, 64).score(&rows.items());
    server.kill().unwrap();
    let _ = server.wait();
    let (outcomes, failures) = got;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes[..2], [Outcome::Score(1.0), Outcome::Score(0.0)]);
    assert!(matches!(outcomes[2], Outcome::NotApplicable(_)));
}
