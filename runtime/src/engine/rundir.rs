//! The run directory: takes the directory a run writes to and whether it starts afresh (with or
//! without leave to overwrite) or resumes; gives the directory prepared for this run, or a
//! [`RunDirError`] saying why it cannot be used. A run directory is recognised by its marker
//! `run.json`, which names the run; checkpoints carry the same name, so a run only ever reads
//! or prunes its own. A fresh run takes only a missing or empty directory; with `overwrite` it
//! first removes the files an earlier run wrote there, by their names, and nothing else. The run
//! holds an exclusive lock on `.recap-lock` for as long as it lives, so a second run into the
//! same directory is refused rather than interleaving its output with the first. Files are
//! written here by [`replace_file`], never through a symbolic link.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The marker naming the run a directory holds.
pub const MARKER: &str = "run.json";

/// The lock file; it stays when the run ends, since removing it would race with a run taking it.
pub const LOCK: &str = ".recap-lock";

/// The files a run writes at the top of its directory, besides the marker.
const OWN_FILES: &[&str] = &["plan.json", "metrics.jsonl", "samples.jsonl", "metrics.csv"];

/// A run directory that cannot be used as asked: the command line reports it as a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunDirError(pub String);

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    run_id: String,
}

const MARKER_FORMAT: u32 = 1;

/// A run directory prepared for this run.
pub struct RunDir {
    pub path: PathBuf,
    /// The name of this run, written into each of its checkpoints.
    pub run_id: String,
    /// Holds the directory's lock until the run ends.
    _lock: File,
}

/// How a run uses its directory.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Fresh { overwrite: bool },
    Resume,
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(RunDirError(msg).into())
}

fn read_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(MARKER);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(None);
    };
    // The marker names the run whose checkpoints may be resumed and pruned: one read through a
    // link would let another directory's marker decide that.
    if !meta.is_file() {
        return refuse(format!(
            "{} is not a regular file; recap reads a run's marker only from its directory",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m: Marker = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run marker", path.display()))?;
    Ok(Some(m))
}

/// A name unlikely to repeat: the time in nanoseconds and the process id.
fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Whether `dir` holds anything besides the lock file.
fn is_empty(dir: &Path) -> Result<bool> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        if e?.file_name() != LOCK {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes the exclusive lock of run directory `dir`, or says which directory another run holds.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return refuse(format!(
            "{} is not a regular file; recap will not lock through it",
            path.display()
        ));
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => refuse(format!(
            "{} is in use by another run (it holds {}); wait for it to end or choose another \
             directory",
            dir.display(),
            path.display()
        )),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Removes what an earlier run wrote in `dir`, by name: its top-level files, `final/`, and the
/// `step-NNNNNN` checkpoints (and their temporaries) under `checkpoints/`. A symbolic link with
/// one of these names is removed as a link; what it points to is left alone.
fn remove_earlier_run(dir: &Path) -> Result<()> {
    let remove = |p: &Path| -> Result<()> {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return Ok(());
        };
        if meta.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        }
        .with_context(|| format!("removing {}", p.display()))
    };
    for name in OWN_FILES.iter().chain(&[MARKER]) {
        remove(&dir.join(name))?;
    }
    // TensorBoard's event files, named by the time and host that wrote them.
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let name = name.strip_prefix(".tmp-").unwrap_or(&name);
        if name.starts_with(super::metrics_log::EVENTS_PREFIX) {
            remove(&e.path())?;
        }
    }
    remove(&dir.join("final"))?;
    remove(&dir.join(".tmp-final"))?;
    let root = dir.join("checkpoints");
    if std::fs::symlink_metadata(&root).is_ok_and(|m| m.file_type().is_symlink()) {
        remove(&root)?;
    } else if std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        for e in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix(".tmp-").unwrap_or(&name);
            if step
                .strip_prefix("step-")
                .is_some_and(|n| n.parse::<u64>().is_ok())
            {
                remove(&e.path())?;
            }
        }
        // The directory goes only if nothing of anyone else's is left in it.
        if is_empty(&root)? {
            std::fs::remove_dir(&root).with_context(|| format!("removing {}", root.display()))?;
        }
    }
    Ok(())
}

/// Makes a rename in `dir` durable. Only Unix can open a directory to sync it; elsewhere the
/// rename is left to the file system.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

/// Syncs every regular file under `dir`, then `dir` and its subdirectories, so a directory
/// built in a temporary place is on disk whole before a rename publishes it.
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot inspect {}", entry.path().display()))?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", entry.path().display()))?;
        }
    }
    sync_dir(dir)
}

/// The error of a failed write of `path`: a full disk (ENOSPC) is said in those words with the
/// path, since the bare OS message names neither the file nor what to do; any other failure
/// keeps its own message under the path.
pub(crate) fn write_error(e: std::io::Error, path: &Path) -> anyhow::Error {
    if e.kind() == ErrorKind::StorageFull {
        anyhow::anyhow!(
            "no space left on device while writing {}; what was written before is kept. Free \
             some space, then resume the run",
            path.display()
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    }
}

/// Appends `bytes` to `file` (the run directory's `path`) with one write.
pub(crate) fn append(file: &mut File, bytes: &[u8], path: &Path) -> Result<()> {
    file.write_all(bytes).map_err(|e| write_error(e, path))
}

/// Writes `dir/name` afresh with `bytes` and gives it open for appending. The bytes go to a
/// temporary file created new (so never opened through a link), synced, and renamed over `name`:
/// a kill leaves the old file or the new one, never a cut one, and a link at `name` is replaced
/// rather than written through. The directory is synced after the rename.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<File> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let dst = dir.join(name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", tmp.display()))
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        // The partial copy gives its space back; the file it was to replace is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(e, &dst));
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Refuses a run directory whose `checkpoints` or `final` is a symbolic link: the run would
/// write its checkpoints or weights wherever the link points.
fn refuse_linked_dirs(dir: &Path) -> Result<()> {
    for name in ["checkpoints", "final"] {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return refuse(format!(
                "{} is a symbolic link; recap writes a run's files only inside its directory",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The id of the run in run directory `path`, read without taking its lock: the other ranks of
/// a data-parallel job read it after the leader has taken the lock and checked the directory.
pub fn run_id(path: &Path) -> Result<String> {
    match read_marker(path)? {
        Some(m) => Ok(m.run_id),
        None => refuse(format!(
            "{} is not a recap run directory (it has no {MARKER})",
            path.display()
        )),
    }
}

/// Prepares `path` for a run started as `start`.
pub fn open(path: &Path, start: Start) -> Result<RunDir> {
    let shown = path.display();
    match start {
        Start::Resume => {
            if !path.is_dir() {
                return refuse(format!("{shown} is not a directory; nothing to resume"));
            }
            let lock = lock(path)?;
            refuse_linked_dirs(path)?;
            let Some(m) = read_marker(path)? else {
                return refuse(format!(
                    "{shown} is not a recap run directory (it has no {MARKER}); nothing to resume"
                ));
            };
            Ok(RunDir {
                path: path.to_path_buf(),
                run_id: m.run_id,
                _lock: lock,
            })
        }
        Start::Fresh { overwrite } => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create run directory {shown}"))?;
            let lock = lock(path)?;
            if !is_empty(path)? {
                if !overwrite {
                    return match read_marker(path) {
                        Ok(Some(_)) => refuse(format!(
                            "{shown} holds an earlier run: continue it with `--resume {shown}`, \
                             or start afresh with `--overwrite` (which removes that run's files)"
                        )),
                        _ => refuse(format!(
                            "{shown} is not empty and holds no recap run: choose an empty \
                             directory, or pass `--overwrite` (recap then replaces only the \
                             files it writes itself)"
                        )),
                    };
                }
                remove_earlier_run(path)?;
            }
            let run_id = new_run_id();
            let marker = Marker {
                format: MARKER_FORMAT,
                run_id: run_id.clone(),
            };
            let text = serde_json::to_string_pretty(&marker)? + "\n";
            replace_file(path, MARKER, text.as_bytes())?;
            Ok(RunDir {
                path: path.to_path_buf(),
                run_id,
                _lock: lock,
            })
        }
    }
}
