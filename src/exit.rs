//! Exit codes of `recapc`: takes the outcome of a command, gives the process status. These
//! numbers are part of the documented interface (README.md, docs/diagnostics.md), so scripts
//! and editors may rely on them.

/// The process exit status of a `recapc` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// No errors (warnings allowed).
    Success = 0,
    /// At least one diagnostic of severity error.
    Errors = 1,
    /// Bad command line, or a file that cannot be read or written.
    Usage = 2,
    /// The pipeline compiled, but the job failed while running (a model that does not load, a
    /// device that cannot be opened, a malformed data line).
    RunFailed = 3,
    /// `run` was stopped by SIGINT or SIGTERM: the step under way finished and a checkpoint
    /// was written, so `--resume` continues the run.
    Interrupted = 4,
}

impl ExitCode {
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The more serious of two outcomes, for commands that handle several files: a usage or IO
    /// problem outranks compile errors, which outrank a clean result.
    pub fn worst(self, other: ExitCode) -> ExitCode {
        self.max(other)
    }
}
