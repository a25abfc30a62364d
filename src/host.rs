//! The file-system `Host` of the compiler: takes paths as written in a pipeline, gives whether
//! they exist, the field names of a data file's first rows and a model directory's context
//! length, resolving relative paths against the directory of the pipeline file (not the
//! current directory), so a pipeline checks the same wherever `recapc` is started.

use std::path::{Path, PathBuf};

use recap_compiler::{DataRow, Host};
use recap_runtime::engine::data;

/// Answers the compiler's file questions from the file system.
#[derive(Debug, Clone)]
pub struct FsHost {
    base: PathBuf,
}

impl FsHost {
    /// A host for the pipeline file at `pipeline`: relative paths resolve against its directory.
    pub fn for_pipeline(pipeline: &Path) -> Self {
        let base = match pipeline.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        FsHost { base }
    }

    /// Where a path named in the pipeline lies on disk.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// How many rows of a data file the checker looks at: enough to catch a misnamed field, few
/// enough that checking a pipeline with thousands of sources stays quick.
pub const ROWS_CHECKED: usize = 20;

impl Host for FsHost {
    fn file_exists(&self, path: &str) -> bool {
        // An empty path never names a file; `Path::join("")` would give the directory itself.
        !path.is_empty() && self.resolve(path).exists()
    }

    fn model_context(&self, dir: &str) -> Option<u64> {
        if dir.is_empty() {
            return None;
        }
        // Read as the runtime reads it (defaults and aliases included), so the checker's
        // context is the one generation is held to.
        let path = self.resolve(dir).join("config.json");
        let config = recap_runtime::model::ModelConfig::from_file(&path).ok()?;
        u64::try_from(config.max_position_embeddings).ok()
    }

    fn jsonl_rows(&self, path: &str) -> Option<Vec<DataRow>> {
        // An empty path never names a file; `resolve("")` would give the directory itself.
        if path.is_empty() {
            return None;
        }
        jsonl_head(&self.resolve(path), data::HEAD_BYTES)
    }
}

/// The first rows of a JSON Lines file, read as the run's head read reads them: no more than
/// `max_bytes`, so a file of one endless line is checked as quickly as any other.
fn jsonl_head(path: &Path, max_bytes: u64) -> Option<Vec<DataRow>> {
    let mut rows = Vec::new();
    for line in data::JsonLines::open(path, Some(max_bytes)).ok()? {
        let Ok((line, text)) = line else { break };
        // The runtime's data loader's own test, so check and run say the same.
        let fields = data::row_object(&text).map(|map| map.keys().cloned().collect());
        rows.push(DataRow { line, fields });
        if rows.len() >= ROWS_CHECKED {
            break;
        }
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_to_the_pipeline_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/x.jsonl"), "{}\n").unwrap();
        let host = FsHost::for_pipeline(&dir.path().join("p.recap"));
        assert!(host.file_exists("data/x.jsonl"));
        assert!(!host.file_exists("data/y.jsonl"));
        assert!(!host.file_exists(""));
        let abs = dir.path().join("data/x.jsonl");
        assert!(host.file_exists(abs.to_str().unwrap()));
    }

    #[test]
    fn reads_data_rows_and_model_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..30)
            .map(|i| format!("{{\"q\": {i}, \"a{i}\": 1}}"))
            .collect();
        std::fs::write(
            dir.path().join("d.jsonl"),
            format!("\n[1]\n{}\n", lines.join("\n")),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(
            dir.path().join("m/config.json"),
            r#"{"model_type": "qwen2", "vocab_size": 64, "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 2048}"#,
        )
        .unwrap();
        let host = FsHost::for_pipeline(&dir.path().join("p.recap"));
        let rows = host.jsonl_rows("d.jsonl").expect("readable");
        // Blank lines are skipped; line numbers count them. A line that is not an object is a
        // row that says why.
        assert_eq!(rows.len(), ROWS_CHECKED);
        assert_eq!(rows[0].line, 2);
        assert_eq!(
            rows[0].fields,
            Err("expected a JSON object, found an array".to_string())
        );
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].fields, Ok(vec!["a0".to_string(), "q".to_string()]));
        assert!(host.jsonl_rows("none.jsonl").is_none());
        assert_eq!(host.model_context("m"), Some(2048));
        // A config the runtime could not load says nothing about the context.
        std::fs::create_dir(dir.path().join("half")).unwrap();
        std::fs::write(
            dir.path().join("half/config.json"),
            r#"{"max_position_embeddings": 2048}"#,
        )
        .unwrap();
        assert_eq!(host.model_context("half"), None);
        assert_eq!(host.model_context("none"), None);
        assert_eq!(host.model_context(""), None);
    }

    /// The rows are read no further than the byte cap: a line it cuts is left out, and the
    /// rest of a file of one endless line is never read.
    #[test]
    fn data_rows_are_read_no_further_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            format!("{{\"q\": 1}}\n{{\"q\": \"{}\"}}\n", "x".repeat(64)),
        )
        .unwrap();
        let rows = jsonl_head(&path, 30).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].fields, Ok(vec!["q".to_string()]));
        assert_eq!(jsonl_head(&path, 1000).unwrap().len(), 2);
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_current_directory() {
        let host = FsHost::for_pipeline(Path::new("p.recap"));
        assert_eq!(host.resolve("a.jsonl"), PathBuf::from("./a.jsonl"));
    }
}
