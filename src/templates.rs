//! The templates behind `recapc new`: the pipelines at the top of `pipelines/` and the files they
//! read (data under `pipelines/data/`, the grader under `pipelines/graders/`), embedded in the
//! binary with `include_str!` so `recapc new` works anywhere and the new pipeline runs as is.
//! Takes a template name, gives its text, its files and a one-line description (the file's first
//! comment line). The benchmark pipelines in `pipelines/bench/` name files beside the repository
//! and so are not templates; a test checks that every other file in `pipelines/` is listed here.

/// One embedded template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// The name `recapc new --template NAME` takes: the file name without `.recap`.
    pub name: &'static str,
    /// The path of the file inside the repository.
    pub path: &'static str,
    /// The file's text.
    pub text: &'static str,
    /// The files the pipeline reads, as (path relative to the pipeline, contents): `recapc new`
    /// writes them beside the new pipeline, at the same relative paths.
    pub files: &'static [File],
    /// Whether the pipeline has an `exec(...)` verifier, so `recapc run` needs `--allow-exec`.
    pub allow_exec: bool,
}

/// A file a template ships: its path relative to the pipeline and its contents.
pub type File = (&'static str, &'static str);

/// A file under `pipelines/`, shipped at the same path relative to the pipeline, so what runs
/// in the repository's `pipelines/` is what a new pipeline gets.
macro_rules! shipped {
    ($path:literal) => {
        ($path, include_str!(concat!("../pipelines/", $path)))
    };
}

const GSM8K_TRAIN: File = shipped!("data/gsm8k-train.jsonl");
const GSM8K_TEST: File = shipped!("data/gsm8k-test.jsonl");
const GENERAL: File = shipped!("data/general.jsonl");
const CODE_TRAIN: File = shipped!("data/code-train.jsonl");
const CODE_TEST: File = shipped!("data/code-test.jsonl");
/// `pipelines/graders/code_exec.py` is a link to `examples/graders/code_exec.py`, so the
/// repository's copy of the template runs in place and there is one grader to maintain.
const CODE_GRADER: File = shipped!("graders/code_exec.py");

/// The template `pipelines/NAME.recap` with the files it ships.
macro_rules! template {
    ($name:literal, $files:expr, allow_exec = $allow_exec:literal) => {
        Template {
            name: $name,
            path: concat!("pipelines/", $name, ".recap"),
            text: include_str!(concat!("../pipelines/", $name, ".recap")),
            files: $files,
            allow_exec: $allow_exec,
        }
    };
}

/// Every template, the default (`quickstart`) first.
pub const TEMPLATES: &[Template] = &[
    template!("quickstart", &[], allow_exec = false),
    template!("gsm8k", &[GSM8K_TRAIN, GSM8K_TEST], allow_exec = false),
    template!(
        "code-exec",
        &[CODE_TRAIN, CODE_TEST, CODE_GRADER],
        allow_exec = true
    ),
    template!(
        "gsm8k-recap",
        &[GSM8K_TRAIN, GSM8K_TEST, GENERAL],
        allow_exec = false
    ),
];

impl Template {
    /// The first line of the leading comment, without `#`, as a description.
    pub fn description(&self) -> &'static str {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .and_then(|l| l.strip_prefix('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .unwrap_or("")
    }

    /// The template's text for a new pipeline called `name`: its output directory
    /// `runs/<template>` becomes `runs/<name>`, so two pipelines do not share a run directory.
    pub fn instantiate(&self, name: &str) -> String {
        self.text.replace(
            &format!("\"runs/{}\"", self.name),
            &format!("\"runs/{name}\""),
        )
    }
}

/// Finds a template by name (`quickstart`, or with `.recap`).
pub fn find(name: &str) -> Option<&'static Template> {
    let name = name.strip_suffix(".recap").unwrap_or(name);
    TEMPLATES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_top_level_pipeline_is_a_template() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "recap"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = TEMPLATES.iter().map(|t| t.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "pipelines/*.recap and TEMPLATES differ");
        for t in TEMPLATES {
            assert_eq!(t.path, format!("pipelines/{}.recap", t.name));
            assert!(!t.description().is_empty(), "{} has no description", t.name);
            assert_eq!(t.allow_exec, t.text.contains("exec("), "{}", t.name);
        }
    }

    /// Each shipped file is one its template names, and the grader is the example grader.
    #[test]
    fn shipped_files_are_named_by_their_template() {
        for t in TEMPLATES {
            for (path, _) in t.files {
                assert!(
                    t.text.contains(&format!("\"{path}\"")),
                    "{} never names {path}",
                    t.name
                );
            }
        }
        assert_eq!(
            CODE_GRADER.1,
            include_str!("../examples/graders/code_exec.py")
        );
    }

    /// The shipped rows are written in the characters of the `tiny` model's tokenizer, which
    /// the templates train: a character outside it would reach the model as `<unk>`.
    #[test]
    fn shipped_data_fits_the_tiny_tokenizer() {
        let tok = recap_runtime::tokenizer::TextTokenizer::arithmetic().unwrap();
        let unk = tok.token_to_id("<unk>").unwrap();
        for t in TEMPLATES {
            for (path, text) in t.files.iter().filter(|(p, _)| p.ends_with(".jsonl")) {
                for line in text.lines() {
                    let row: serde_json::Value = serde_json::from_str(line).unwrap();
                    for key in ["question", "answer", "solution", "input", "target"] {
                        let Some(value) = row.get(key).and_then(|v| v.as_str()) else {
                            continue;
                        };
                        let ids = tok.encode(value, false).unwrap();
                        assert!(
                            !ids.contains(&unk),
                            "{path}: `{value}` has a character the tokenizer lacks"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn instantiate_renames_the_run_directory() {
        let t = find("quickstart").unwrap();
        assert!(t.text.contains("\"runs/quickstart\""));
        let text = t.instantiate("mine");
        assert!(text.contains("\"runs/mine\""));
        assert!(!text.contains("\"runs/quickstart\""));
        assert!(find("quickstart.recap").is_some());
        assert!(find("nope").is_none());
    }
}
