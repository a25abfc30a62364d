//! `recapc new NAME [--template T] [--dir]` (or `recapc new --list`, the templates): takes a name and a template, gives a new pipeline
//! file `NAME.recap` (or a project directory `NAME/` with `main.recap`, a `data/` folder and a
//! `.gitignore` for run outputs), and beside it the files the template reads (its data, its
//! grader), so the new pipeline runs as is. Never overwrites: an existing pipeline or project
//! directory is an error (exit 2), and so is an existing template file with other contents; one
//! with the same contents is kept as it is, so two pipelines from one template can share a
//! directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error_line;
use crate::cli::NewArgs;
use crate::exit::ExitCode;
use crate::input::describe_io_error;
use crate::templates::{self, File, Template, TEMPLATES};

pub fn run(args: &NewArgs) -> ExitCode {
    let Some(name) = &args.name else {
        // Only `--list` leaves the name out (clap requires it otherwise).
        return super::list_templates::run();
    };
    let Some(template) = templates::find(&args.template) else {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        error_line(&format!(
            "unknown template `{}`; the templates are: {} (see `recapc templates`)",
            args.template,
            names.join(", ")
        ));
        return ExitCode::Usage;
    };
    let trimmed = name.trim_end_matches('/');
    let stem = Path::new(trimmed)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() || stem.starts_with('.') {
        error_line(&format!("`{name}` is not a usable pipeline name"));
        return ExitCode::Usage;
    }
    let text = template.instantiate(&stem);
    let result = if args.dir {
        create_project(Path::new(trimmed), &text, template.files)
    } else {
        let file = if trimmed.ends_with(".recap") {
            PathBuf::from(trimmed)
        } else {
            PathBuf::from(format!("{trimmed}.recap"))
        };
        create_beside(&file, &text, template.files).map(|written| (file, written))
    };
    match result {
        Ok((main, written)) => {
            eprintln!(
                "created `{}` from template `{}`{}",
                main.display(),
                template.name,
                files_note(template, &written)
            );
            eprintln!("next: {}", next_steps(template, &main));
            ExitCode::Success
        }
        Err(message) => {
            error_line(&message);
            ExitCode::Usage
        }
    }
}

/// The commands to try the new pipeline: check it, then run it (allowed to run its grader).
fn next_steps(template: &Template, main: &Path) -> String {
    let flag = if template.allow_exec {
        " --allow-exec"
    } else {
        ""
    };
    format!(
        "recapc check {0}, then recapc run {0}{flag}",
        main.display()
    )
}

/// ", with data/a.jsonl, ... (kept: ...)" naming the template's files written and kept.
fn files_note(template: &Template, written: &[&str]) -> String {
    if template.files.is_empty() {
        return String::new();
    }
    let kept: Vec<&str> = template
        .files
        .iter()
        .map(|(path, _)| *path)
        .filter(|p| !written.contains(p))
        .collect();
    let mut note = String::new();
    if !written.is_empty() {
        note.push_str(&format!(", with {}", written.join(", ")));
    }
    if !kept.is_empty() {
        note.push_str(&format!(
            " ({} already there with the same contents, kept)",
            kept.join(", ")
        ));
    }
    note
}

/// Creates `dir/` with `main.recap`, `data/`, a `.gitignore` and the template's files; refuses
/// an existing `dir`.
fn create_project(
    dir: &Path,
    text: &str,
    files: &'static [File],
) -> Result<(PathBuf, Vec<&'static str>), String> {
    if dir.exists() {
        return Err(format!(
            "`{}` already exists; recapc new never overwrites (choose another name)",
            dir.display()
        ));
    }
    mkdir(dir)?;
    mkdir(&dir.join("data"))?;
    let main = dir.join("main.recap");
    create_new_file(&main, text)?;
    create_new_file(&dir.join(".gitignore"), "runs/\n")?;
    let mut written = Written::default();
    write_files(dir, files, &mut written)?;
    Ok((main, written.names))
}

/// Creates the pipeline `file` and the template's files beside it. Every file is looked at
/// before anything is written, and a failure part-way removes what this call wrote, so a
/// refusal leaves the directory as it was.
fn create_beside(
    file: &Path,
    text: &str,
    files: &'static [File],
) -> Result<Vec<&'static str>, String> {
    let root = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut missing = Vec::new();
    for file @ (path, contents) in files {
        let target = root.join(path);
        match std::fs::read(&target) {
            Ok(bytes) if bytes == contents.as_bytes() => {}
            Ok(_) => {
                return Err(format!(
                    "`{}` already exists with other contents; recapc new never overwrites \
                     (use --dir for a project directory of its own, or another directory)",
                    target.display()
                ))
            }
            // Not there, or not readable: writing it says which, and undoes this call.
            Err(_) => missing.push(*file),
        }
    }
    create_new_file(file, text)?;
    let mut written = Written {
        paths: vec![file.to_path_buf()],
        ..Written::default()
    };
    match write_files(root, &missing, &mut written) {
        Ok(()) => Ok(written.names),
        Err(message) => {
            written.remove();
            Err(message)
        }
    }
}

/// What one `recapc new` wrote: the files (and the folders it made for them), to undo a
/// failed call, and the template paths, to report.
#[derive(Default)]
struct Written {
    paths: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    names: Vec<&'static str>,
}

impl Written {
    /// Removes the files and then the folders this call made, newest first; a folder that
    /// something else has since filled stays.
    fn remove(&self) {
        for path in self.paths.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Writes each file under `root`, making the folders it needs.
fn write_files(root: &Path, files: &[File], written: &mut Written) -> Result<(), String> {
    for (path, contents) in files {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            let mut new_dirs: Vec<PathBuf> = parent
                .ancestors()
                .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                .map(Path::to_path_buf)
                .collect();
            mkdir(parent)?;
            new_dirs.reverse();
            written.dirs.extend(new_dirs);
        }
        create_new_file(&target, contents)?;
        written.paths.push(target);
        written.names.push(path);
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p)
        .map_err(|e| format!("cannot create `{}`: {}", p.display(), describe_io_error(&e)))
}

/// Writes a file that must not exist yet (checked atomically by the OS).
fn create_new_file(path: &Path, text: &str) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "`{}` already exists; recapc new never overwrites (choose another name)",
                    path.display()
                )
            } else {
                format!(
                    "cannot create `{}`: {}",
                    path.display(),
                    describe_io_error(&e)
                )
            }
        })?;
    file.write_all(text.as_bytes()).map_err(|e| {
        format!(
            "cannot write `{}`: {}",
            path.display(),
            describe_io_error(&e)
        )
    })
}
