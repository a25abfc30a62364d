//! Reading pipeline files: takes a path from the command line, gives its text together with the
//! name diagnostics should show, or an error message that names the path and says what went
//! wrong (missing, a directory, not UTF-8, no permission).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A pipeline file read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user wrote it (shown in diagnostics).
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl SourceFile {
    /// The name shown in diagnostics: the path as given, with `/` separators.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// A file that could not be read, with the path it concerns.
#[derive(Debug)]
pub struct InputError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read `{}`: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for InputError {}

/// Whether a path on the command line means standard input (`-`).
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Reads a pipeline file as UTF-8 text; the path `-` reads standard input (to its end), which
/// diagnostics then name `<stdin>`, and whose relative paths are taken from the current
/// directory.
pub fn read_source(path: &Path) -> Result<SourceFile, InputError> {
    let fail = |reason: String| InputError {
        path: path.to_path_buf(),
        reason,
    };
    let stdin = is_stdin(path);
    if !stdin && path.is_dir() {
        return Err(fail("it is a directory, not a pipeline file".into()));
    }
    let bytes = if stdin {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::stdin().lock(), &mut bytes)
            .map_err(|e| fail(describe_io_error(&e)))?;
        bytes
    } else {
        std::fs::read(path).map_err(|e| fail(describe_io_error(&e)))?
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        fail(format!(
            "the file is not valid UTF-8 (first bad byte at offset {at})"
        ))
    })?;
    Ok(SourceFile {
        path: if stdin {
            PathBuf::from("<stdin>")
        } else {
            path.to_path_buf()
        },
        text,
    })
}

/// Plain words for the IO errors a user meets most.
pub fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}
