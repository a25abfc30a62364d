//! `recapc new NAME [--template T] [--dir]`: takes a name and a template, gives a new pipeline
//! file `NAME.recap` (or a project directory `NAME/` with `main.recap`, a `data/` folder and a
//! `.gitignore` for run outputs). Never overwrites: an existing target is an error (exit 2).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error_line;
use crate::cli::NewArgs;
use crate::exit::ExitCode;
use crate::input::describe_io_error;
use crate::templates::{self, TEMPLATES};

pub fn run(args: &NewArgs) -> ExitCode {
    let Some(template) = templates::find(&args.template) else {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        error_line(&format!(
            "unknown template `{}`; the templates are: {} (see `recapc templates`)",
            args.template,
            names.join(", ")
        ));
        return ExitCode::Usage;
    };
    let name = args.name.trim_end_matches('/');
    let stem = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() || stem.starts_with('.') {
        error_line(&format!("`{}` is not a usable pipeline name", args.name));
        return ExitCode::Usage;
    }
    let text = template.instantiate(&stem);
    let result = if args.dir {
        create_project(Path::new(name), &text)
    } else {
        let file = if name.ends_with(".recap") {
            PathBuf::from(name)
        } else {
            PathBuf::from(format!("{name}.recap"))
        };
        create_new_file(&file, &text).map(|()| file)
    };
    match result {
        Ok(main) => {
            eprintln!(
                "created `{}` from template `{}`; next: recapc check {}",
                main.display(),
                template.name,
                main.display()
            );
            ExitCode::Success
        }
        Err(message) => {
            error_line(&message);
            ExitCode::Usage
        }
    }
}

/// Creates `dir/` with `main.recap`, `data/` and a `.gitignore`; refuses an existing `dir`.
fn create_project(dir: &Path, text: &str) -> Result<PathBuf, String> {
    if dir.exists() {
        return Err(format!(
            "`{}` already exists; recapc new never overwrites (choose another name)",
            dir.display()
        ));
    }
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| format!("cannot create `{}`: {}", p.display(), describe_io_error(&e)))
    };
    mkdir(dir)?;
    mkdir(&dir.join("data"))?;
    let main = dir.join("main.recap");
    create_new_file(&main, text)?;
    create_new_file(&dir.join(".gitignore"), "runs/\n")?;
    Ok(main)
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
