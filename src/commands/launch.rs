//! The ranks of `recapc run`: takes the launcher's environment, gives this process its device
//! and collective ([`join_job`]); and `recapc run --ranks N` (alias `--gpus N`), which starts N
//! ranks of itself on this machine with the variables torchrun would set, so a local job goes
//! through the same code path as one started by torchrun, srun or mpirun.
//!
//! The local launcher forwards every rank's output: rank 0's standard output unchanged (so
//! `recapc run --ranks N > out` holds what a single process would print), everything else with
//! a `[rank i] ` prefix. When a rank fails the others get a short grace to fail on their own
//! (they usually do, since their collectives lose a peer) and are then killed. SIGINT and
//! SIGTERM are forwarded to every rank, which each finish their step and checkpoint as a single
//! run does, and a second signal ends them at once; the ranks sit in their own process group so
//! a terminal's Ctrl-C reaches them once, through the launcher, not twice.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recap_runtime::dist::{self, Collective, Single, Topology};
use recap_runtime::engine;

use super::error_line;
use crate::exit::ExitCode;

/// How long the other ranks may take to end on their own once one rank has failed, or to end
/// at all after a second signal.
const GRACE: Duration = Duration::from_secs(3);

/// How often a second signal is sent again to the ranks still running.
const RESEND: Duration = Duration::from_millis(200);

/// Set in the environment of the ranks `recapc run --ranks` starts: they handle SIGHUP, the
/// signal their launcher's death sends them.
pub const LAUNCHED: &str = "RECAP_LAUNCHED_BY_RECAPC";

/// This process's device and collective: the device named on the command line, with `cuda`
/// meaning `cuda:LOCAL_RANK` in a job of several ranks, and the collective the launcher's
/// variables call for ([`Single`] when none is set). Errors are printed here.
pub fn join_job(device: &str) -> Result<(String, Box<dyn Collective>), ExitCode> {
    let topo = Topology::from_env().map_err(|e| {
        error_line(&format!("the launcher's environment is not usable: {e:#}"));
        ExitCode::Usage
    })?;
    let device = topo.device_name(device);
    if topo.world == 1 {
        return Ok((device, Box::new(Single)));
    }
    let comm = dist::Timeouts::from_env()
        .and_then(|t| Ok((t, engine::parse_device(&device)?)))
        .and_then(|(t, d)| dist::connect(&topo, &d, t))
        .map_err(|e| {
            error_line(&format!("{e:#}"));
            ExitCode::RunFailed
        })?;
    Ok((device, comm))
}

/// `recapc run --ranks N`: runs this command line again as N ranks on this machine and waits
/// for them. The exit code is the first failing rank's (3 for a rank killed by a signal), or
/// theirs when they all end alike; after a second SIGINT or SIGTERM, which ends the ranks at
/// once, it is 128 plus the signal's number, as for a single run.
pub fn run_ranks(ranks: usize, device: &str) -> ExitCode {
    if ranks == 0 {
        error_line("--ranks needs at least one rank");
        return ExitCode::Usage;
    }
    match Topology::from_env() {
        Ok(t) if t.world > 1 => {
            error_line(&format!(
                "--ranks starts its own ranks, but this process is already rank {} of {} under {}: start recapc without --ranks",
                t.rank, t.world, t.launcher
            ));
            return ExitCode::Usage;
        }
        _ => {}
    }
    if ranks > 1 && device != "cpu" && device != "cuda" {
        error_line(&format!(
            "with --ranks, pass `--device cuda` (rank i uses cuda:i) or `--device cpu`; `{device}` would put every rank on one device"
        ));
        return ExitCode::Usage;
    }
    let port = match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => {
            error_line(&format!("cannot find a free port on 127.0.0.1: {e}"));
            return ExitCode::RunFailed;
        }
    };
    let mut signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            error_line(&format!("cannot handle SIGINT and SIGTERM: {e}"));
            return ExitCode::RunFailed;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            error_line(&format!(
                "cannot find the recapc executable to start ranks: {e}"
            ));
            return ExitCode::RunFailed;
        }
    };
    let args = child_args(std::env::args_os().skip(1));
    let threads = cpu_threads_per_rank(ranks, device);
    let mut children = Vec::with_capacity(ranks);
    let mut forwarders = Vec::new();
    for rank in 0..ranks {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", ranks.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", ranks.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(n) = threads {
            cmd.env("RAYON_NUM_THREADS", n.to_string());
        }
        // A rank whose launcher dies (killed outright, so it could not forward a signal) gets
        // SIGHUP and stops at a checkpoint, rather than training on with no one reading it;
        // `run::on_launcher_death` also sends its output, whose pipes are gone, to /dev/null.
        cmd.env(LAUNCHED, "1");
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(2) is async-signal-safe, as code between fork and exec must be.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let prefix = format!("[rank {rank}] ");
                if let Some(out) = child.stdout.take() {
                    let p = if rank == 0 {
                        String::new()
                    } else {
                        prefix.clone()
                    };
                    forwarders.push(forward(out, p, false));
                }
                if let Some(err) = child.stderr.take() {
                    forwarders.push(forward(err, prefix, true));
                }
                children.push(child);
            }
            Err(e) => {
                error_line(&format!("cannot start rank {rank}: {e}"));
                kill_all(&mut children);
                return ExitCode::RunFailed;
            }
        }
    }
    let ended = supervise(&mut children, &mut signals);
    for f in forwarders {
        let _ = f.join();
    }
    match ended {
        Ended::Code(code) => code,
        // The documented status of a run ended by a second signal is outside `ExitCode`, as it
        // is for a single run, whose signal handler exits the same way.
        Ended::AtOnce(sig) => std::process::exit(128 + sig),
    }
}

/// The command line of a rank: the launcher's own, less `--ranks N` (or `--gpus N`).
fn child_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--ranks" || s == "--gpus" {
            skip_value = true;
        } else if !(s.starts_with("--ranks=") || s.starts_with("--gpus=")) {
            out.push(a);
        }
    }
    out
}

/// On the CPU the ranks share this machine's cores; each gets its share unless the user chose
/// a thread count.
fn cpu_threads_per_rank(ranks: usize, device: &str) -> Option<usize> {
    if device != "cpu" || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / ranks).max(1))
}

/// Copies a rank's output line by line to ours, each line with `prefix`.
fn forward(
    from: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let mut text = prefix.as_bytes().to_vec();
            text.extend_from_slice(&line);
            // A closed terminal or pipe of ours is no reason to stop the rank; its output
            // is then lost, as it would be without the launcher.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&text)
            } else {
                std::io::stdout().lock().write_all(&text)
            };
            line.clear();
        }
    })
}

/// Signals the launcher received, to forward to the ranks.
struct Signals {
    received: Arc<AtomicUsize>,
    forwarded: usize,
    last: Arc<AtomicUsize>,
    /// When the second signal was forwarded, after which the ranks must end at once.
    second: Option<Instant>,
    /// When the last signal was sent to the ranks.
    sent: Instant,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        let received = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicUsize::new(0));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let (received, last) = (received.clone(), last.clone());
            // SAFETY: the handler only stores to atomics, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    last.store(sig as usize, Ordering::SeqCst);
                    received.fetch_add(1, Ordering::SeqCst);
                })?;
            }
        }
        Ok(Signals {
            received,
            forwarded: 0,
            last,
            second: None,
            sent: Instant::now(),
        })
    }

    /// Sends each signal received since the last call on to every rank still running. After
    /// the second, the signal is sent again every [`RESEND`] until the ranks end: the kernel
    /// merges a signal into one still pending, so two sent close together can reach a rank as
    /// one, which would then finish its step as after a first signal; any later one finds the
    /// rank's stop flag set and ends it at once.
    fn forward(&mut self, pids: &[u32]) {
        let received = self.received.load(Ordering::SeqCst);
        let repeat =
            self.forwarded == received && self.second.is_some() && self.sent.elapsed() >= RESEND;
        while self.forwarded < received {
            self.forwarded += 1;
            if self.forwarded == 2 {
                self.second = Some(Instant::now());
            }
            self.send(pids);
        }
        if repeat {
            self.send(pids);
        }
    }

    fn send(&mut self, pids: &[u32]) {
        let sig = self.signal();
        for pid in pids {
            // SAFETY: kill(2) on the id of a child this process started and has not yet
            // reaped, so the id cannot belong to another process.
            unsafe {
                libc::kill(*pid as libc::pid_t, sig);
            }
        }
        self.sent = Instant::now();
    }

    fn signal(&self) -> libc::c_int {
        self.last.load(Ordering::SeqCst) as libc::c_int
    }
}

/// How the ranks ended.
enum Ended {
    /// The launcher exits with this code.
    Code(ExitCode),
    /// A second signal ended them at once: the launcher exits as a single run would, with 128
    /// plus this signal's number.
    AtOnce(libc::c_int),
}

/// Waits for the ranks. The first to fail ends the job: the others get [`GRACE`] to end on
/// their own and are then killed. A rank interrupted by a signal (exit code 4) has not failed;
/// after a second signal, which ends the ranks at once, any rank still running after the grace
/// is killed.
fn supervise(children: &mut [Child], signals: &mut Signals) -> Ended {
    let ended = ends_in_order(children);
    let mut done = vec![false; children.len()];
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut failed: Option<(usize, Instant)> = None;
    // Failures seen but not yet named, in the order the ranks ended, and when the first came.
    let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    loop {
        let running: Vec<u32> = children
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| c.id())
            .collect();
        signals.forward(&running);
        let first = ended.recv_timeout(Duration::from_millis(20)).ok();
        for rank in first.into_iter().chain(ended.try_iter()) {
            // The rank has ended, so this reaps it without waiting.
            let status = children[rank].wait().ok();
            (done[rank], statuses[rank]) = (true, status);
            let Some(status) = status else { continue };
            let interrupted = status.code() == Some(ExitCode::Interrupted.as_i32());
            if !status.success() && !interrupted && failed.is_none() && signals.second.is_none() {
                failures.push((rank, status));
                first_failure.get_or_insert_with(Instant::now);
            }
        }
        // The failed rank is named once the ranks that end with it have been seen, and before
        // the others end on their own with errors of their own.
        let settled = first_failure.is_some_and(|at| at.elapsed() >= SETTLE);
        let all_done = done.iter().all(|d| *d);
        if let (None, Some(at), Some((rank, status))) = (failed, first_failure, cause(&failures)) {
            if settled || all_done {
                error_line(&format!(
                    "rank {rank} failed ({}); the other ranks get {} s to end before they are killed",
                    describe(status),
                    GRACE.as_secs()
                ));
                failed = Some((rank, at));
            }
        }
        if all_done {
            break;
        }
        let since = failed.map(|(_, at)| at).or(signals.second);
        if since.is_some_and(|at| at.elapsed() >= GRACE) {
            for (rank, child) in children.iter_mut().enumerate() {
                if !done[rank] {
                    error_line(&format!(
                        "rank {rank} did not end within {} s: killed",
                        GRACE.as_secs()
                    ));
                    let _ = child.kill();
                    statuses[rank] = child.wait().ok();
                }
            }
            break;
        }
    }
    if let Some((rank, _)) = failed {
        return Ended::Code(from_code(statuses[rank].and_then(|s| s.code())));
    }
    if signals.second.is_some() {
        return Ended::AtOnce(signals.signal());
    }
    // Without a failure every rank ended alike, or a signal stopped them: the most serious.
    let worst = statuses
        .iter()
        .map(|s| s.and_then(|s| s.code()).unwrap_or(3));
    Ended::Code(from_code(worst.max()))
}

/// How long after a rank fails the launcher waits for others that end with it before it names
/// the cause: when a rank dies, its peers fail a moment later (their collectives lose it), and
/// on a busy machine the threads of [`ends_in_order`] can report them in either order.
const SETTLE: Duration = Duration::from_millis(300);

/// The failure that caused the others among `failures` (in the order the ranks ended): a rank
/// killed by a signal, which no peer's failure can bring about, before one that exited with an
/// error, which may be its reaction to a peer that left; otherwise the first.
fn cause(failures: &[(usize, ExitStatus)]) -> Option<(usize, ExitStatus)> {
    failures
        .iter()
        .find(|(_, s)| s.signal().is_some())
        .or(failures.first())
        .copied()
}

/// The ranks' indices in the order they end. One thread per rank blocks until its rank has
/// ended, without reaping it (so that its id stays the rank's until [`supervise`] reaps it):
/// polling would see two ranks that end within one interval in rank order, and when a rank
/// dies, its peers fail a moment later (their collectives lose it), so the rank named as the
/// failed one would often be a peer rather than the cause.
fn ends_in_order(children: &[Child]) -> std::sync::mpsc::Receiver<usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    for (rank, child) in children.iter().enumerate() {
        let (pid, tx) = (child.id(), tx.clone());
        std::thread::spawn(move || {
            loop {
                // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid(2) with WNOWAIT only reads the child's state and writes
                // `info`, which outlives the call.
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0 || std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                    break;
                }
            }
            let _ = tx.send(rank);
        });
    }
    rx
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => status.to_string(),
    }
}

/// A rank's exit status as ours: the documented codes pass through; anything else (a rank
/// killed by a signal) is a failed run.
fn from_code(code: Option<i32>) -> ExitCode {
    match code {
        Some(0) => ExitCode::Success,
        Some(1) => ExitCode::Errors,
        Some(2) => ExitCode::Usage,
        Some(4) => ExitCode::Interrupted,
        _ => ExitCode::RunFailed,
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_runs_the_command_line_without_the_ranks_option() {
        let args = [
            "run",
            "job.recap",
            "--ranks",
            "2",
            "--device",
            "cpu",
            "--gpus=3",
            "--out",
            "x",
        ]
        .map(OsString::from);
        let got = child_args(args.into_iter());
        assert_eq!(
            got,
            ["run", "job.recap", "--device", "cpu", "--out", "x"].map(OsString::from)
        );
    }

    /// A rank killed by a signal is the cause, not a peer that exited with an error after it.
    #[test]
    fn a_signal_kill_is_the_cause_of_the_failures_around_it() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(cause(&[(0, exited(3)), (1, killed)]).map(|c| c.0), Some(1));
        assert_eq!(
            cause(&[(1, exited(2)), (0, exited(3))]).map(|c| c.0),
            Some(1)
        );
        assert_eq!(cause(&[]).map(|c| c.0), None);
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(from_code(Some(4)), ExitCode::Interrupted);
        assert_eq!(from_code(Some(3)), ExitCode::RunFailed);
        assert_eq!(from_code(None), ExitCode::RunFailed);
        assert_eq!(from_code(Some(130)), ExitCode::RunFailed);
    }
}
