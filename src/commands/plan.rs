//! `recapc plan FILE [--set k=v]`: takes a pipeline, gives its checked plan as JSON on stdout,
//! with the sha256 and size of every data and weight file the plan names that exists. The
//! compiler is pure and never reads those files, so hashing them is the CLI's part. The output
//! is the plan with two more top-level fields: `file_hashes` (path, bytes, sha256 of each file;
//! a model directory contributes each file directly inside it, a Parquet source's directory
//! each shard the source reads, and a saved dataset its layout files and the shards of the
//! split read) and `inputs_hash` (one sha256 over the plan's `content_hash` and every file
//! hash), so two runs can be compared and a run reproduced.

use std::io;
use std::path::{Path, PathBuf};

use recap_plan::{ModelSpec, Plan, SourceSpec, TableSource};
use recap_runtime::engine::data::hf_dataset_files;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{compile_for_plan, error_line, write_json};
use crate::cli::PlanArgs;
use crate::exit::ExitCode;
use crate::host::FsHost;

/// The hash of one file the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileHash {
    /// The path as written in the pipeline (for a model directory or a directory of Parquet
    /// shards: the directory joined with the file's path inside it).
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

pub fn run(args: &PlanArgs) -> ExitCode {
    let (compiled, plan) = match compile_for_plan(&args.file, args.set.pairs(), false) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let named = [
        named_files(&plan, &compiled.host),
        dataset_files(&compiled.host, &plan),
    ]
    .concat();
    let hashes = match hash_files(&compiled.host, &named) {
        Ok(h) => h,
        Err(message) => {
            error_line(&message);
            return ExitCode::Usage;
        }
    };
    let inputs_hash = inputs_hash(&plan.content_hash, &hashes);
    let mut value = match serde_json::to_value(&plan) {
        Ok(v) => v,
        Err(e) => {
            error_line(&format!(
                "internal error, please report: the plan does not serialise: {e}"
            ));
            return ExitCode::Usage;
        }
    };
    // Extra top-level fields: the plan crate ignores unknown fields when reading, so the
    // runtime reads this document as the plan itself.
    if let Value::Object(map) = &mut value {
        map.insert("inputs_hash".to_string(), Value::String(inputs_hash));
        map.insert(
            "file_hashes".to_string(),
            serde_json::to_value(&hashes).unwrap_or(Value::Null),
        );
    }
    write_json(&value)
}

/// Every file or directory the plan reads, as written in the pipeline, sorted and without
/// repeats: model directories and files, tokenizers, data files, and each Parquet shard a
/// source reads from a directory (the directory joined with the shard's path inside it).
pub fn named_files(plan: &Plan, host: &FsHost) -> Vec<String> {
    let mut out = Vec::new();
    for model in &plan.models {
        match &model.spec {
            ModelSpec::Hf { dir, .. } => out.push(dir.to_string()),
            ModelSpec::Gguf {
                file, tokenizer, ..
            } => {
                out.push(file.to_string());
                out.extend(tokenizer.as_ref().map(|t| t.to_string()));
            }
            ModelSpec::Tiny { tokenizer, .. } => {
                out.extend(tokenizer.as_ref().map(|t| t.to_string()))
            }
            ModelSpec::Init {
                config, tokenizer, ..
            } => {
                out.push(config.to_string());
                out.extend(tokenizer.as_ref().map(|t| t.to_string()));
            }
            ModelSpec::Frozen { .. } | ModelSpec::Lora { .. } => {}
        }
    }
    for source in &plan.sources {
        match &source.spec {
            SourceSpec::Jsonl { file, .. } => out.push(file.to_string()),
            SourceSpec::Parquet(t) => out.extend(parquet_shards(host, &t.path, t.split.as_deref())),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The shards a `parquet(path, split)` source reads, found as the run finds them, each named
/// as the directory joined with its path inside; the path itself when it is one file or names
/// no shard the run could read (the checker and the run say why).
fn parquet_shards(host: &FsHost, path: &str, split: Option<&str>) -> Vec<String> {
    let root = host.resolve(path);
    let Ok(files) = recap_runtime::engine::data::parquet_files(&root, split) else {
        return vec![path.to_string()];
    };
    files
        .iter()
        .map(|f| match f.strip_prefix(&root) {
            Ok(inside) if !inside.as_os_str().is_empty() => {
                let inside: Vec<String> = inside
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                format!("{}/{}", path.trim_end_matches('/'), inside.join("/"))
            }
            _ => path.to_string(),
        })
        .collect()
}

/// The files each `hf_dataset(...)` source reads, as paths under its directory as written in
/// the pipeline: the layout's JSON files and the Arrow shards of the split it reads, so a
/// shard changed since the plan was made is caught like any other data file. A layout that
/// cannot be read adds nothing; loading the source reports what is wrong with it.
pub fn dataset_files(host: &FsHost, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for source in &plan.sources {
        let SourceSpec::HfDataset(TableSource { path, split, .. }) = &source.spec else {
            continue;
        };
        let root = host.resolve(path);
        let Ok(files) = hf_dataset_files(&root, split.as_deref()) else {
            continue;
        };
        for file in files.metadata.iter().chain(&files.shards) {
            if let Ok(rel) = file.strip_prefix(&root) {
                let dir = path.trim_end_matches('/');
                out.push(format!("{dir}/{}", rel.to_string_lossy()));
            }
        }
    }
    out
}

/// One hash over the plan and the contents of every file it reads: equal inputs hashes mean
/// the same job on the same data and weights.
pub fn inputs_hash(content_hash: &str, files: &[FileHash]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(content_hash.as_bytes());
    for f in files {
        hasher.update(format!("\n{}\t{}\t{}", f.path, f.bytes, f.sha256).as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a file directly inside a model directory is one a Hugging Face model directory
/// holds (weights, configuration, tokenizer). Only those are hashed, so `hf("/etc")` neither
/// reads nor prints anything else there, and `hf("/proc")` never opens a file that blocks.
fn is_model_file(name: &str) -> bool {
    const NAMED: &[&str] = &[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
    ];
    NAMED.contains(&name)
        || name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
}

/// Hashes each named path that exists: a regular file itself, or the model files directly
/// inside a directory (a Hugging Face model directory, see `is_model_file`), in name order.
/// Missing paths and anything else (devices, pipes) are skipped: the checker has already
/// warned about missing ones.
pub fn hash_files(host: &FsHost, named: &[String]) -> Result<Vec<FileHash>, String> {
    let mut out = Vec::new();
    for name in named {
        let path = host.resolve(name);
        if path.is_file() {
            out.push(hash_one(name.clone(), &path)?);
        } else if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot list `{}`: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .is_some_and(|n| is_model_file(&n.to_string_lossy()))
                })
                .collect();
            entries.sort();
            for entry in entries {
                let file_name = entry.file_name().unwrap_or_default().to_string_lossy();
                let shown = format!("{}/{file_name}", name.trim_end_matches('/'));
                out.push(hash_one(shown, &entry)?);
            }
        }
    }
    Ok(out)
}

fn hash_one(shown: String, path: &Path) -> Result<FileHash, String> {
    let fail = |e: io::Error| format!("cannot read `{}` to hash it: {e}", path.display());
    let file = std::fs::File::open(path).map_err(fail)?;
    // No further than the size the file had when opened, so a file that grows without end
    // (a log, a device behind a regular name) is hashed as it was rather than for ever.
    let size = file.metadata().map_err(fail)?.len();
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut io::Read::take(file, size), &mut hasher).map_err(fail)?;
    let sha256 = hex(&hasher.finalize());
    Ok(FileHash {
        path: shown,
        bytes,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shard of the split a `parquet` source reads is hashed, and only those: a changed
    /// shard changes the hashes as a changed JSON Lines file does.
    #[test]
    fn parquet_shards_are_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path().join("hub/data");
        std::fs::create_dir_all(&hub).unwrap();
        for name in [
            "train-00000-of-00002",
            "train-00001-of-00002",
            "test-00000-of-00001",
        ] {
            std::fs::write(hub.join(format!("{name}.parquet")), name).unwrap();
        }
        std::fs::write(dir.path().join("one.parquet"), "x").unwrap();
        let host = FsHost::for_pipeline(&dir.path().join("p.recap"));
        let shards = parquet_shards(&host, "hub/", Some("train"));
        assert_eq!(
            shards,
            [
                "hub/data/train-00000-of-00002.parquet",
                "hub/data/train-00001-of-00002.parquet"
            ]
        );
        assert_eq!(parquet_shards(&host, "one.parquet", None), ["one.parquet"]);
        // A directory of several splits and no split named: the run refuses it, and the
        // plan names the directory as written.
        assert_eq!(parquet_shards(&host, "hub", None), ["hub"]);
        let before = hash_files(&host, &shards).unwrap();
        assert_eq!(before.len(), 2);
        std::fs::write(hub.join("train-00001-of-00002.parquet"), "changed").unwrap();
        let after = hash_files(&host, &shards).unwrap();
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1].sha256, after[1].sha256);
    }

    #[test]
    fn hashes_files_and_directories_relative_to_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "abc").unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/config.json"), "").unwrap();
        // Not a model file: never read, never named in the output.
        std::fs::write(dir.path().join("m/shadow"), "secret").unwrap();
        let host = FsHost::for_pipeline(&dir.path().join("p.recap"));
        let named = vec!["a.jsonl".to_string(), "m".to_string(), "gone".to_string()];
        let hashes = hash_files(&host, &named).unwrap();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0].path, "a.jsonl");
        assert_eq!(hashes[0].bytes, 3);
        // sha256("abc") and sha256("") are the standard test vectors.
        assert_eq!(
            hashes[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hashes[1].path, "m/config.json");
        assert_eq!(
            hashes[1].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
