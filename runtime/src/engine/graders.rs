//! External graders: the `exec(...)` and `http(...)` verifiers, which score a whole batch of
//! completions outside recap. Takes the plan's verifier and the batch (prompt, completion, the
//! row's fields); gives one outcome per completion and, for a batch that failed, the reason.
//!
//! The protocol (docs/rewards.md): each completion is one JSON object, `{"id", "sample",
//! "prompt", "completion", "answer", "fields", "tokens"}`, where `id` is its index in the batch
//! and `answer` is the extractor chain's result (present only when the verifier has one). An
//! `exec` program reads these as JSON lines on stdin and writes `{"id": ..., "reward": ...}`
//! lines on stdout; an `http` endpoint gets `{"items": [...]}` and answers `{"rewards": [...]}`.
//!
//! A grader is user code, so nothing it does may end the run: a batch whose program hangs,
//! crashes, runs out of memory or prints something that is not a reward scores 0 for each of
//! its completions, and the reason is reported once for the batch. An `exec` program runs with
//! a clean environment, an address-space limit, a timeout that kills its whole process group,
//! and (where the kernel has Landlock) a file system view of the system's libraries and
//! programs, read only, plus a fresh working directory, the only place it may write.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
};
use recap_plan::{Extractor, VerifierSpec};
use serde_json::{json, Map, Value};

use super::rewards::Judged;
use crate::train::verifiers::{apply_extractor, Outcome};

/// The PATH a grader gets, and where a bare program name is looked up.
const GRADER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What a grader may read (and run) besides its working directory and the files its command
/// names: the system's programs and libraries, and the few files of `/etc` the dynamic loader
/// and the C library read. The rest of `/etc`, `/home`, `/root`, `/proc` and `/tmp` stay
/// closed, so neither the user's files nor another process's environment can be read.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

/// The most an `exec` grader may print on stdout for one batch; more is a failure, not a
/// reason to fill the memory of the run.
const MAX_OUTPUT: usize = 64 << 20;

/// How much of a grader's stderr a failure report quotes (its end, where the error is).
const STDERR_TAIL: usize = 600;

/// The first wait between two tries of an `http` request; it doubles each time, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The largest answer an `http` endpoint may give for one batch.
const MAX_RESPONSE: u64 = 64 << 20;

/// A built external grader.
#[derive(Debug)]
pub struct External {
    name: String,
    extract: Extractor,
    batch: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Exec(Exec),
    Http(Http),
}

#[derive(Debug)]
struct Exec {
    program: PathBuf,
    args: Vec<OsString>,
    /// Files the command names (the program, a script), which the grader may read.
    readable: Vec<PathBuf>,
    timeout: Duration,
    memory_bytes: u64,
}

#[derive(Debug)]
struct Http {
    url: String,
    timeout: Duration,
    retries: u64,
    agent: ureq::Agent,
}

/// The largest CA file an `http` verifier's `ca` may name: a bundle of every public root is
/// a few hundred kilobytes.
const MAX_CA_FILE: u64 = 16 << 20;

/// The certificates of a PEM file, which an `http` verifier trusts instead of the Mozilla
/// roots (a private CA, or a judge's self-signed certificate).
fn ca_roots(name: &str, path: &Path) -> Result<ureq::tls::RootCerts> {
    let fail = |why: String| anyhow!("verifier `{name}`: the `ca` file {}: {why}", path.display());
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE).read_to_end(&mut pem))
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| fail(format!("is not PEM: {e}")))? {
            ureq::tls::PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(fail("holds no `BEGIN CERTIFICATE` block".into()));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// The TLS error of a request refused because the server's certificate is not trusted (an
/// unknown issuer, expired, for another name). rustls reports it during the handshake, which
/// ureq passes on as an I/O error wrapping it, or as its own.
fn untrusted_certificate(e: &ureq::Error) -> Option<&rustls::Error> {
    let tls = match e {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    matches!(tls, rustls::Error::InvalidCertificate(_)).then_some(tls)
}

/// Whether this kernel enforces Landlock, so that an `exec` grader can be confined to its
/// working directory.
pub fn landlock_available() -> bool {
    ruleset(&[], &[], None).is_ok_and(|fd| fd.is_some())
}

/// The Landlock ruleset of a grader: read (and run) `SYSTEM_READ` and `files`, read and write
/// `work`. `None` when the kernel has no Landlock.
fn ruleset(dirs: &[&Path], files: &[PathBuf], work: Option<&Path>) -> Result<Option<OwnedFd>> {
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let read_file = AccessFs::ReadFile | AccessFs::Execute;
    let mut rs = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?;
    for p in SYSTEM_READ
        .iter()
        .map(Path::new)
        .chain(dirs.iter().copied())
    {
        // A path this system lacks needs no rule.
        let Ok(fd) = PathFd::new(p) else { continue };
        let access = if p.is_dir() { read } else { read_file };
        rs = rs.add_rule(PathBeneath::new(fd, access))?;
    }
    for f in files {
        if let Ok(fd) = PathFd::new(f) {
            rs = rs.add_rule(PathBeneath::new(fd, read_file))?;
        }
    }
    if let Ok(fd) = PathFd::new("/dev/null") {
        rs = rs.add_rule(PathBeneath::new(
            fd,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?;
    }
    if let Some(w) = work {
        rs = rs.add_rule(PathBeneath::new(PathFd::new(w)?, AccessFs::from_all(abi)))?;
    }
    Ok(rs.into())
}

impl External {
    /// The grader of `v` when it is an external one (`None` for the built-in verifiers).
    /// `base` is the pipeline's directory, which the command's file arguments are relative
    /// to; an `exec` grader is refused unless `allow_exec`.
    pub fn new(v: &recap_plan::Verifier, base: &Path, allow_exec: bool) -> Result<Option<Self>> {
        let name = v.name.to_string();
        let (extract, batch, kind) = match &v.spec {
            VerifierSpec::Exec {
                command,
                timeout,
                memory_mb,
                batch,
                extract,
            } => {
                let shown = command.join(" ");
                if !allow_exec {
                    bail!(
                        "verifier `{name}` runs a program (`{shown}`), and this run is not allowed to run programs: pass `--allow-exec` to `recapc run` to allow it"
                    );
                }
                let exec = Exec::new(&name, command, *timeout, *memory_mb, base)?;
                (extract, *batch, Kind::Exec(exec))
            }
            VerifierSpec::Http {
                url,
                timeout,
                batch,
                retries,
                ca,
                extract,
            } => {
                if !(timeout.is_finite() && *timeout > 0.0) {
                    bail!("verifier `{name}`: the timeout must be above 0 s, got {timeout}");
                }
                let timeout = Duration::from_secs_f64(*timeout);
                let roots = match ca {
                    Some(file) => ca_roots(&name, &base.join(file.as_str()))?,
                    None => ureq::tls::RootCerts::WebPki,
                };
                let config = ureq::Agent::config_builder()
                    .timeout_global(Some(timeout))
                    .http_status_as_error(false)
                    .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
                    .build();
                let http = Http {
                    url: url.to_string(),
                    timeout,
                    retries: *retries,
                    agent: config.into(),
                };
                (extract, *batch, Kind::Http(http))
            }
            _ => return Ok(None),
        };
        Ok(Some(External {
            name,
            extract: extract.clone(),
            batch: (batch as usize).max(1),
            kind,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The outcome of every item, and one line per batch that failed (its items score 0).
    pub fn score(&self, items: &[Judged]) -> (Vec<Outcome>, Vec<String>) {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut failures = Vec::new();
        for chunk in items.chunks(self.batch) {
            let objects: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, it)| self.request_item(i, it))
                .collect();
            let got = match &self.kind {
                Kind::Exec(e) => e.call(&objects),
                Kind::Http(h) => h.call(&objects),
            };
            match got {
                Ok(scores) => outcomes.extend(scores),
                Err(why) => {
                    let first = chunk.first().map_or("", |it| it.id);
                    failures.push(format!(
                        "grader `{}` failed on a batch of {} completions (from sample {first}); they score 0: {why}",
                        self.name,
                        chunk.len()
                    ));
                    outcomes.extend(chunk.iter().map(|_| Outcome::Score(0.0)));
                }
            }
        }
        (outcomes, failures)
    }

    /// One completion as the grader reads it.
    fn request_item(&self, id: usize, it: &Judged) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(id));
        o.insert("sample".into(), json!(it.id));
        o.insert("prompt".into(), json!(it.prompt));
        o.insert("completion".into(), json!(it.completion));
        if !self.extract.steps.is_empty() {
            let answer = apply_extractor(&self.extract, Some(it.fields), it.completion);
            o.insert("answer".into(), json!(answer));
        }
        o.insert("fields".into(), Value::Object(it.fields.clone()));
        o.insert("tokens".into(), json!(it.tokens));
        Value::Object(o)
    }
}

/// A grader's reward as an outcome: a finite number scores, `null` is "not applicable".
fn reward_outcome(v: &Value) -> Result<Outcome, String> {
    match v {
        Value::Null => Ok(Outcome::NotApplicable("the grader gave no reward".into())),
        Value::Number(n) => match n.as_f64() {
            Some(r) if r.is_finite() => Ok(Outcome::Score(r)),
            _ => Err(format!("the reward {n} is not a finite number")),
        },
        other => Err(format!(
            "the reward {} is not a number",
            excerpt(&other.to_string())
        )),
    }
}

/// At most 80 characters of `s`, for messages.
fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(80).collect();
    if e.len() < s.len() {
        e.push_str("...");
    }
    e
}

impl Exec {
    fn new(
        name: &str,
        command: &[recap_plan::Name],
        timeout: f64,
        mb: u64,
        base: &Path,
    ) -> Result<Self> {
        let Some((program, args)) = command.split_first().filter(|(p, _)| !p.trim().is_empty())
        else {
            bail!("verifier `{name}`: the command names no program");
        };
        if !(timeout.is_finite() && timeout > 0.0) {
            bail!("verifier `{name}`: the timeout must be above 0 s, got {timeout}");
        }
        let program = if program.contains('/') {
            let p = base.join(program.as_str());
            if !p.is_file() {
                bail!(
                    "verifier `{name}`: the program {} does not exist",
                    p.display()
                );
            }
            p
        } else {
            GRADER_PATH
                .split(':')
                .map(|d| Path::new(d).join(program.as_str()))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow!("verifier `{name}`: no program `{program}` in {GRADER_PATH}")
                })?
        };
        let program = program.canonicalize()?;
        let mut readable = vec![program.clone()];
        // An argument that names a file (a script, a test list) is passed as its absolute path,
        // since the grader runs elsewhere, and becomes readable to it; nothing beside it does.
        let args = args
            .iter()
            .map(|a| {
                let p = base.join(a.as_str());
                match p.is_file().then(|| p.canonicalize()) {
                    Some(Ok(abs)) => {
                        readable.push(abs.clone());
                        abs.into_os_string()
                    }
                    _ => OsString::from(a.as_str()),
                }
            })
            .collect();
        Ok(Exec {
            program,
            args,
            readable,
            timeout: Duration::from_secs_f64(timeout),
            memory_bytes: mb.saturating_mul(1 << 20),
        })
    }

    /// Runs the program once on `items`: their rewards, or why there are none.
    fn call(&self, items: &[Value]) -> Result<Vec<Outcome>, String> {
        let mut input = Vec::new();
        for it in items {
            serde_json::to_writer(&mut input, it).map_err(|e| e.to_string())?;
            input.push(b'\n');
        }
        let work = tempfile::Builder::new()
            .prefix("recap-grader-")
            .tempdir()
            .map_err(|e| format!("cannot make its working directory: {e}"))?;
        let (stdout, status, stderr) = self.run_in(work.path(), input)?;
        let tail = stderr_tail(&stderr);
        if !status.success() {
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("it exited with status {c}"),
                (None, Some(libc::SIGKILL)) => {
                    "it was killed (SIGKILL), perhaps for memory".to_string()
                }
                (None, Some(s)) => format!("it was killed by signal {s}"),
                _ => format!("it ended with {status}"),
            };
            return Err(format!("{how}{tail}"));
        }
        parse_lines(&stdout, items.len()).map_err(|e| format!("{e}{tail}"))
    }

    /// Starts the program in `work` with the limits, feeds it `input`, and waits up to the
    /// timeout: its stdout, exit status and stderr.
    fn run_in(
        &self,
        work: &Path,
        input: Vec<u8>,
    ) -> Result<(Vec<u8>, ExitStatus, Vec<u8>), String> {
        let landlock = ruleset(&[], &self.readable, Some(work))
            .map_err(|e| format!("cannot build its Landlock ruleset: {e}"))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(work)
            .env_clear()
            .env("PATH", GRADER_PATH)
            .env("HOME", work)
            .env("TMPDIR", work)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let memory = self.memory_bytes as libc::rlim_t;
        let fd = landlock.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure runs in the child between fork and exec, so it may only make
        // async-signal-safe calls: it makes three system calls and allocates nothing (the
        // ruleset was built in the parent; its descriptor closes at exec).
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: memory,
                    rlim_max: memory,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = fd {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        drop(landlock);
        let group = child.id() as libc::pid_t;
        let kill_group = move || {
            // SAFETY: a plain system call; the group is the grader's own (process_group(0)).
            unsafe { libc::kill(-group, libc::SIGKILL) };
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            // A grader that exits without reading all of its input closes the pipe; that is
            // its business, and its output tells.
            let _ = stdin.write_all(&input);
        });
        let out = reader(
            child.stdout.take().expect("stdout is piped"),
            MAX_OUTPUT,
            kill_group,
        );
        let err = reader(
            child.stderr.take().expect("stderr is piped"),
            1 << 20,
            kill_group,
        );
        let status = wait_until(&mut child, Instant::now() + self.timeout);
        // Whatever the grader left running in its group ends with it.
        kill_group();
        let status = match status {
            Some(s) => s,
            None => {
                let _ = child.wait();
                let stderr = err.recv_timeout(Duration::from_secs(1)).ok();
                return Err(format!(
                    "it did not finish within {:.1} s and was killed{}",
                    self.timeout.as_secs_f64(),
                    stderr_tail(&stderr.and_then(Result::ok).unwrap_or_default())
                ));
            }
        };
        // A process that left the group could still hold the pipes open; its output is not
        // waited for.
        let wait = Duration::from_secs(2);
        let stdout = out
            .recv_timeout(wait)
            .map_err(|_| "a process it started kept its output open".to_string())?
            .map_err(|e| e.to_string())?;
        let stderr = err.recv_timeout(wait).ok().and_then(Result::ok);
        Ok((stdout, status, stderr.unwrap_or_default()))
    }
}

/// Reads `r` to its end on a thread, up to `cap` bytes; past that it kills the grader.
fn reader(
    mut r: impl Read + Send + 'static,
    cap: usize,
    kill: impl Fn() + Send + 'static,
) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let got = (&mut r).take(cap as u64 + 1).read_to_end(&mut buf);
        let got = match got {
            Ok(_) if buf.len() > cap => {
                kill();
                Err(std::io::Error::other(format!(
                    "it printed more than {} MiB",
                    cap >> 20
                )))
            }
            Ok(_) => Ok(buf),
            Err(e) => Err(e),
        };
        let _ = tx.send(got);
    });
    rx
}

/// The child's exit status, or `None` when it is still running at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            _ => return None,
        }
    }
}

/// The end of a grader's stderr, as the tail of a failure message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map_or(0, |(i, _)| i);
    format!("; its stderr ends: {}", &text[start..])
}

/// The rewards of `n` items from a grader's stdout: one `{"id", "reward"}` object per line.
/// Any other line fails the batch, since a grader that prints other things cannot be trusted
/// to have paired rewards and ids; an id left out fails it too.
fn parse_lines(stdout: &[u8], n: usize) -> Result<Vec<Outcome>, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "its output is not UTF-8".to_string())?;
    let mut got: Vec<Option<Outcome>> = vec![None; n];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |why: &str| format!("line {} of its output {why}: `{}`", i + 1, excerpt(line));
        let v: Value = serde_json::from_str(line).map_err(|_| bad("is not JSON"))?;
        let id = v
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("has no integer `id`"))? as usize;
        let reward = v.get("reward").ok_or_else(|| bad("has no `reward`"))?;
        let slot = got
            .get_mut(id)
            .ok_or_else(|| bad(&format!("names id {id}, not one of the batch's 0..{n}")))?;
        if slot.is_some() {
            return Err(bad(&format!("gives id {id} a second time")));
        }
        *slot = Some(reward_outcome(reward).map_err(|e| bad(&e))?);
    }
    let missing = got.iter().filter(|o| o.is_none()).count();
    if missing > 0 {
        return Err(format!(
            "it gave no reward for {missing} of {n} completions"
        ));
    }
    Ok(got.into_iter().flatten().collect())
}

impl Http {
    /// POSTs `items` and reads their rewards, trying again after a failure; why there are none.
    fn call(&self, items: &[Value]) -> Result<Vec<Outcome>, String> {
        let body = serde_json::to_vec(&json!({ "items": items })).map_err(|e| e.to_string())?;
        let mut wait = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let (why, retry) = match self.post(&body, items.len()) {
                Ok(scores) => return Ok(scores),
                Err(e) => e,
            };
            if !retry || tries > self.retries {
                return Err(if tries > 1 {
                    format!("{why} (tried {tries} times)")
                } else {
                    why
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    /// One request: the rewards, or why not and whether trying again could help (a refused
    /// connection, a timeout or a server error could; a client error or a bad answer not).
    fn post(&self, body: &[u8], n: usize) -> Result<Vec<Outcome>, (String, bool)> {
        let mut resp = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| {
                // A certificate the client does not trust will not become trusted by trying
                // again; the message says what to give.
                if let Some(why) = untrusted_certificate(&e) {
                    let why = format!(
                        "{}: the server's TLS certificate is not trusted ({why}); for a private \
                         CA or a self-signed certificate, name its PEM file with `ca = \"...\"`",
                        self.url
                    );
                    return (why, false);
                }
                match e {
                    ureq::Error::Timeout(_) => (
                        format!(
                            "{} did not answer within {:.1} s",
                            self.url,
                            self.timeout.as_secs_f64()
                        ),
                        true,
                    ),
                    other => (format!("{}: {other}", self.url), true),
                }
            })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(|e| (format!("{}: reading the answer: {e}", self.url), true))?;
        if status != 200 {
            let why = format!("{} answered {status}: {}", self.url, excerpt(text.trim()));
            return Err((why, status >= 500 || status == 429));
        }
        let bad = |why: &str| {
            (
                format!("{}'s answer {why}: `{}`", self.url, excerpt(&text)),
                false,
            )
        };
        let v: Value = serde_json::from_str(&text).map_err(|_| bad("is not JSON"))?;
        let rewards = v
            .get("rewards")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("has no `rewards` list"))?;
        if rewards.len() != n {
            return Err(bad(&format!(
                "has {} rewards for {n} completions",
                rewards.len()
            )));
        }
        rewards
            .iter()
            .map(|r| reward_outcome(r).map_err(|e| bad(&e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_lines_pair_ids_and_refuse_anything_else() {
        let ok = parse_lines(
            b"{\"id\": 1, \"reward\": 0.5}\n\n{\"id\": 0, \"reward\": null}\n",
            2,
        )
        .unwrap();
        assert_eq!(ok[1], Outcome::Score(0.5));
        assert!(matches!(ok[0], Outcome::NotApplicable(_)));
        let err = |s: &str| parse_lines(s.as_bytes(), 2).unwrap_err();
        assert!(err("hello\n").contains("line 1 of its output is not JSON"));
        assert!(err("{\"id\": 0, \"reward\": 1}\n").contains("no reward for 1 of 2"));
        assert!(err("{\"id\": 5, \"reward\": 1}\n").contains("not one of the batch's"));
        assert!(err("{\"id\": 0, \"reward\": 1}\n{\"id\": 0, \"reward\": 1}").contains("second"));
        assert!(err("{\"id\": 0, \"reward\": \"1\"}\n").contains("not a number"));
        assert!(err("{\"id\": 0}\n").contains("no `reward`"));
    }
}
