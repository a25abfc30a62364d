//! Hugging Face datasets saved with `datasets`' `save_to_disk`, as `load_from_disk` reads them.
//!
//! A saved Dataset is a directory holding `state.json` (its `_data_files` list names the shards
//! in order), `dataset_info.json` and the shards `data-00000-of-00001.arrow`, each an Arrow IPC
//! *stream*. A saved DatasetDict is a directory holding `dataset_dict.json` (its `splits` list)
//! and one such directory per split. Each record batch becomes the JSON rows a JSON Lines file
//! would hold through arrow-json's writer, so a list or struct column reads as the same JSON a
//! `jsonl` row carries, and the rows go through the same `make_row` as every file source.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_json::writer::JsonArray;
use recap_plan::Source;
use serde_json::Value;

use super::{open_data_file, problem, record_row, DataError, DataProblem, DataResult, Row, Shape};

/// The files a saved dataset's source reads, in the order it reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfDatasetFiles {
    /// The layout's JSON files: `dataset_dict.json` of a DatasetDict, and the split's
    /// `state.json` and `dataset_info.json` (where present).
    pub metadata: Vec<PathBuf>,
    /// The Arrow shards of the split, in the order `state.json` lists them.
    pub shards: Vec<PathBuf>,
}

/// The most bytes a layout's JSON file may hold: far beyond what `datasets` writes (a feature
/// description and a list of shard names), and a clear error for anything else.
const MAX_LAYOUT_JSON_BYTES: u64 = 16 << 20;

/// A file name inside the layout's directory: not empty, no separator, not `.` or `..`, so a
/// `state.json` or `dataset_dict.json` cannot make the source read outside its directory.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

fn unreadable(message: String) -> DataError {
    problem(DataProblem::Unreadable, message)
}

fn read_json(path: &Path) -> DataResult<Value> {
    use std::io::Read;
    let mut text = String::new();
    open_data_file(path)
        .map_err(unreadable)?
        .take(MAX_LAYOUT_JSON_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| unreadable(format!("{} is not valid JSON: {e}", path.display())))
}

/// The names of a string list at `key` of a layout's JSON file: the `splits` of
/// `dataset_dict.json`, the `filename`s of `state.json`'s `_data_files`.
fn names(path: &Path, value: &Value, key: &str, inner: Option<&str>) -> DataResult<Vec<String>> {
    let bad = |what: &str| {
        unreadable(format!(
            "{} is not a `save_to_disk` layout file: its `{key}` {what}",
            path.display()
        ))
    };
    let list = value
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| bad("is missing or not a list"))?;
    list.iter()
        .map(|item| {
            let name = match inner {
                Some(field) => item.get(field),
                None => Some(item),
            };
            match name.and_then(Value::as_str) {
                Some(name) if is_plain_name(name) => Ok(name.to_string()),
                Some(name) => Err(bad(&format!(
                    "names `{name}`, which is not a file name inside its directory"
                ))),
                None => Err(bad("holds an entry that is not a name")),
            }
        })
        .collect()
}

/// The files of the saved dataset at `root`: a Dataset directory, or the directory of one split
/// of a DatasetDict (`split`, or its only split). A DatasetDict of several splits without
/// `split`, or a split it lacks, is an error listing its splits.
pub fn hf_dataset_files(root: &Path, split: Option<&str>) -> DataResult<HfDatasetFiles> {
    let meta = std::fs::metadata(root)
        .map_err(|e| unreadable(format!("cannot read {}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(unreadable(format!(
            "{} is not a directory; a dataset saved with `save_to_disk` is a directory \
             holding `state.json` or `dataset_dict.json`",
            root.display()
        )));
    }
    let mut metadata = Vec::new();
    let dict_path = root.join("dataset_dict.json");
    let dir = if dict_path.is_file() {
        let splits = names(&dict_path, &read_json(&dict_path)?, "splits", None)?;
        let pick = match split {
            Some(want) if splits.iter().any(|s| s == want) => want.to_string(),
            Some(want) => {
                return Err(unreadable(format!(
                    "{} has no split `{want}` (it holds {})",
                    root.display(),
                    splits.join(", ")
                )))
            }
            None if splits.len() == 1 => splits[0].clone(),
            None if splits.is_empty() => {
                return Err(unreadable(format!(
                    "{} lists no splits",
                    dict_path.display()
                )))
            }
            None => {
                return Err(unreadable(format!(
                    "{} holds the splits {}; name one with `split = \"...\"`",
                    root.display(),
                    splits.join(", ")
                )))
            }
        };
        metadata.push(dict_path);
        root.join(pick)
    } else {
        root.to_path_buf()
    };
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        let message = if dir == root {
            let parquet = std::fs::read_dir(root).is_ok_and(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            });
            format!(
                "{} is not a dataset saved with `save_to_disk`: it holds neither \
                 `dataset_dict.json` nor `state.json`{}",
                root.display(),
                if parquet {
                    "; its `.parquet` files are read by `parquet(...)`"
                } else {
                    ""
                }
            )
        } else {
            format!(
                "{} holds no `state.json`, which each split of a saved DatasetDict has",
                dir.display()
            )
        };
        return Err(unreadable(message));
    }
    let state = read_json(&state_path)?;
    if let Some(want) = split.filter(|_| dir == root) {
        // A Dataset saved alone holds one split, which `state.json` may name.
        let holds = state.get("_split").and_then(Value::as_str);
        if holds != Some(want) {
            return Err(unreadable(format!(
                "{} is one saved Dataset{}, not a DatasetDict; `split = \"{want}\"` picks \
                 among the splits of a DatasetDict",
                root.display(),
                holds
                    .map(|s| format!(" (of split `{s}`)"))
                    .unwrap_or_default()
            )));
        }
    }
    let shards: Vec<PathBuf> = names(&state_path, &state, "_data_files", Some("filename"))?
        .into_iter()
        .map(|name| dir.join(name))
        .collect();
    if shards.is_empty() {
        return Err(unreadable(format!(
            "{} lists no data files",
            state_path.display()
        )));
    }
    metadata.push(state_path);
    let info = dir.join("dataset_info.json");
    if info.is_file() {
        metadata.push(info);
    }
    Ok(HfDatasetFiles { metadata, shards })
}

/// The rows of a record batch as JSON objects, nulls written out as a JSON Lines row would
/// hold them.
fn json_rows(batch: &RecordBatch) -> Result<Vec<Value>, String> {
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    serde_json::from_slice(&writer.into_inner()).map_err(|e| e.to_string())
}

/// Reads the rows of the shards in order, at most `limit` of them, each through the source's
/// prompt or chat form and field mapping; an error names the shard and the row (1-based within
/// the shard).
pub(super) fn load(
    source: &Source,
    shards: &[PathBuf],
    shape: &Shape,
    limit: Option<usize>,
) -> DataResult<Vec<Row>> {
    let mut rows = Vec::new();
    for path in shards {
        let unreadable = |m: String| unreadable(format!("source `{}`: {m}", source.name));
        let not_arrow = |e: String| {
            unreadable(format!(
                "{} is not an Arrow IPC stream this reader reads: {e}",
                path.display()
            ))
        };
        let file = open_data_file(path).map_err(unreadable)?;
        let reader = arrow_ipc::reader::StreamReader::try_new_buffered(file, None)
            .map_err(|e| not_arrow(e.to_string()))?;
        let mut index = 0;
        for batch in reader {
            let left = limit.map_or(usize::MAX, |l| l.saturating_sub(rows.len()));
            if left == 0 {
                return Ok(rows);
            }
            let batch = batch.map_err(|e| not_arrow(e.to_string()))?;
            let batch = batch.slice(0, batch.num_rows().min(left));
            for record in json_rows(&batch).map_err(not_arrow)? {
                index += 1;
                let at = |e: DataError| {
                    problem(
                        e.problem,
                        format!("{} row {index}: {}", path.display(), e.message),
                    )
                };
                let row = record_row(source, record, rows.len() + 1, shape);
                rows.push(row.map_err(at)?);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::{DataProblem, Dataset};
    use super::*;
    use crate::tokenizer::ChatMessage;
    use recap_plan::{Fields, SourceSpec, TableSource, Template};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf_dataset")
    }

    fn source(path: &str, split: Option<&str>, prompt: Option<&str>) -> Source {
        Source {
            name: "s".into(),
            spec: SourceSpec::HfDataset(TableSource {
                path: path.into(),
                split: split.map(Into::into),
                prompt: prompt.map(|text| Template {
                    text: text.into(),
                    placeholders: text
                        .split('{')
                        .skip(1)
                        .filter_map(|p| Some(p.split_once('}')?.0.into()))
                        .collect(),
                }),
                limit: None,
                shuffle: false,
                system: None,
            }),
            fields: Fields::new(),
        }
    }

    fn prompts(d: &Dataset) -> Vec<&str> {
        d.rows.iter().map(|r| r.prompt.as_str()).collect()
    }

    fn error(source: &Source, base: &Path) -> DataError {
        Dataset::load_head(source, base, 20).unwrap_err()
    }

    #[test]
    fn reads_the_splits_of_a_dataset_dict_in_shard_order() {
        let base = fixtures();
        let q = Some("Q: {question}");
        let train = Dataset::load(&source("dict", Some("train"), q), &base).unwrap();
        // Two record batches of the first shard, then the second shard.
        assert_eq!(
            prompts(&train),
            ["Q: 1+2=", "Q: 2+2=", "Q: 3+4=", "Q: 9-2="]
        );
        assert_eq!(train.rows[3].id, "s:4");
        assert_eq!(train.rows[3].fields["answer"], Value::String("7".into()));
        // A struct column reads as the JSON object a JSON Lines row would hold.
        assert_eq!(
            train.rows[2].fields["meta"],
            serde_json::json!({"source": "gen", "level": 2})
        );
        let test = Dataset::load(&source("dict", Some("test"), q), &base).unwrap();
        assert_eq!(prompts(&test), ["Q: 5+5="]);
        // A head across the batches of one shard and past a cut inside a batch.
        for n in [1, 2, 3, 4] {
            let head = Dataset::load_head(&source("dict", Some("train"), q), &base, n).unwrap();
            assert_eq!(prompts(&head), prompts(&train)[..n]);
        }
    }

    #[test]
    fn a_dict_of_several_splits_needs_one_it_holds() {
        let base = fixtures();
        let err = error(&source("dict", None, Some("{question}")), &base);
        assert_eq!(err.problem, DataProblem::Unreadable);
        assert!(
            err.message
                .contains("holds the splits train, test; name one"),
            "{}",
            err.message
        );
        let err = error(&source("dict", Some("dev"), Some("{question}")), &base);
        assert!(
            err.message
                .contains("has no split `dev` (it holds train, test)"),
            "{}",
            err.message
        );
        // A Dataset saved alone takes the split it was saved from, and no other.
        assert!(Dataset::load(&source("chat", Some("train"), None), &base).is_ok());
        let err = error(&source("chat", Some("test"), None), &base);
        assert!(
            err.message
                .contains("is one saved Dataset (of split `train`), not a DatasetDict"),
            "{}",
            err.message
        );
    }

    #[test]
    fn chat_rows_of_a_saved_dataset_take_their_last_user_turn() {
        let chat = Dataset::load(&source("chat", None, None), &fixtures()).unwrap();
        assert_eq!(prompts(&chat), ["1+1=", "2+2="]);
        assert_eq!(
            chat.rows[0].context,
            [ChatMessage::new("system", "Answer with a number.")]
        );
        assert!(chat.rows[1].context.is_empty());
    }

    #[test]
    fn the_files_are_the_layout_of_the_split_read() {
        let base = fixtures();
        let files = hf_dataset_files(&base.join("dict"), Some("train")).unwrap();
        let names = |paths: &[PathBuf]| -> Vec<String> {
            paths
                .iter()
                .map(|p| {
                    let rel = p.strip_prefix(&base).unwrap();
                    rel.to_string_lossy().into_owned()
                })
                .collect()
        };
        assert_eq!(
            names(&files.metadata),
            [
                "dict/dataset_dict.json",
                "dict/train/state.json",
                "dict/train/dataset_info.json"
            ]
        );
        assert_eq!(
            names(&files.shards),
            [
                "dict/train/data-00000-of-00002.arrow",
                "dict/train/data-00001-of-00002.arrow"
            ]
        );
    }

    #[test]
    fn what_is_not_a_saved_dataset_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let check = |path: &str, words: &str| {
            let err = error(&source(path, None, Some("{question}")), root);
            assert_eq!(err.problem, DataProblem::Unreadable, "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        };
        std::fs::create_dir(root.join("hub")).unwrap();
        std::fs::write(root.join("hub/train.parquet"), "").unwrap();
        check("hub", "are read by `parquet(...)`");
        check("hub/train.parquet", "is not a directory");
        check("gone", "cannot read");
        // A shard that is not an Arrow stream, and a state that names a file elsewhere.
        std::fs::create_dir(root.join("bad")).unwrap();
        let state = |file: &str| {
            serde_json::json!({"_data_files": [{"filename": file}], "_split": null}).to_string()
        };
        std::fs::write(root.join("bad/state.json"), state("data.arrow")).unwrap();
        std::fs::write(root.join("bad/data.arrow"), "{\"question\": 1}\n").unwrap();
        check("bad", "data.arrow is not an Arrow IPC stream");
        std::fs::write(root.join("bad/state.json"), state("../hub/train.parquet")).unwrap();
        check("bad", "not a file name inside its directory");
        std::fs::write(root.join("bad/state.json"), "{\"_data_files\": []}").unwrap();
        check("bad", "lists no data files");
        std::fs::write(root.join("bad/state.json"), "[").unwrap();
        check("bad", "is not valid JSON");
    }

    /// A row that lacks a field the prompt reads names the shard and its row.
    #[test]
    fn a_data_shape_problem_names_the_shard_and_row() {
        let err = error(&source("dict", Some("test"), Some("{prompt}")), &fixtures());
        assert_eq!(err.problem, DataProblem::MissingField);
        assert!(
            err.message
                .contains("test/data-00000-of-00001.arrow row 1: the prompt template needs"),
            "{}",
            err.message
        );
    }
}
