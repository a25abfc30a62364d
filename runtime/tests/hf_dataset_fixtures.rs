//! The Hugging Face `save_to_disk` layouts under `tests/data/hf_dataset/`, which the data
//! loader's tests and the CLI's tests read: this test checks that each still holds what the
//! writer below puts there, and regenerates them all when run with `RECAP_WRITE_FIXTURES=1`:
//!
//!     RECAP_WRITE_FIXTURES=1 cargo test -p recap-runtime --test hf_dataset_fixtures
//!
//! The shards are Arrow IPC streams written with arrow's own stream writer, as `datasets`
//! writes them with pyarrow's, so the loader is tested without a Python toolchain:
//! - `dict/`: a DatasetDict with the splits `train` (two shards, the first of two record
//!   batches) and `test`, each row a question, an answer and a nested struct `meta`;
//! - `chat/`: a Dataset saved alone (split `train`) whose `messages` column is a list of
//!   `{role, content}` structs, as chat datasets on the Hub hold it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::{ArrayRef, Int64Array, ListArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf_dataset")
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn meta_fields() -> Fields {
    Fields::from(vec![
        Field::new("source", DataType::Utf8, true),
        Field::new("level", DataType::Int64, true),
    ])
}

/// A batch of question-answer rows, each with `meta: {source, level}`.
fn qa(rows: &[(&str, &str, i64)]) -> RecordBatch {
    let meta = StructArray::new(
        meta_fields(),
        vec![
            strings(&rows.iter().map(|_| "gen").collect::<Vec<_>>()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
        None,
    );
    let schema = Schema::new(vec![
        Field::new("question", DataType::Utf8, true),
        Field::new("answer", DataType::Utf8, true),
        Field::new("meta", DataType::Struct(meta_fields()), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            strings(&rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            strings(&rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Arc::new(meta),
        ],
    )
    .unwrap()
}

/// A batch of chat rows: `messages` (a list of `{role, content}`) and `answer`.
fn chat(rows: &[(&[(&str, &str)], &str)]) -> RecordBatch {
    let turn = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    let turns: Vec<&(&str, &str)> = rows.iter().flat_map(|r| r.0.iter()).collect();
    let values = StructArray::new(
        turn.clone(),
        vec![
            strings(&turns.iter().map(|t| t.0).collect::<Vec<_>>()),
            strings(&turns.iter().map(|t| t.1).collect::<Vec<_>>()),
        ],
        None,
    );
    let mut offsets = OffsetBufferBuilder::new(rows.len());
    for r in rows {
        offsets.push_length(r.0.len());
    }
    let item = Arc::new(Field::new("item", DataType::Struct(turn), true));
    let messages = ListArray::new(item.clone(), offsets.finish(), Arc::new(values), None);
    let schema = Schema::new(vec![
        Field::new("messages", DataType::List(item), true),
        Field::new("answer", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(messages),
            strings(&rows.iter().map(|r| r.1).collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

/// Writes record batches as one Arrow IPC stream.
fn write_stream(path: &Path, batches: &[RecordBatch]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        arrow_ipc::writer::StreamWriter::try_new(file, batches[0].schema().as_ref()).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
}

/// `state.json` as `datasets` writes it, naming the shards in order.
fn state(shards: &[&str], split: &str) -> String {
    let files: Vec<Value> = shards.iter().map(|f| json!({"filename": f})).collect();
    let state = json!({
        "_data_files": files,
        "_fingerprint": "0123456789abcdef",
        "_format_columns": null,
        "_format_kwargs": {},
        "_format_type": null,
        "_output_all_columns": false,
        "_split": split,
    });
    serde_json::to_string_pretty(&state).unwrap() + "\n"
}

/// The layout files: each text file's contents, and each shard's record batches.
enum Content {
    Text(String),
    Arrow(Vec<RecordBatch>),
}

fn info(description: &str) -> Content {
    Content::Text(json!({"citation": "", "description": description}).to_string() + "\n")
}

/// Every file of the fixtures, by its path under `tests/data/hf_dataset/`.
fn fixtures() -> Vec<(&'static str, Content)> {
    use Content::{Arrow, Text};
    vec![
        (
            "dict/dataset_dict.json",
            Text("{\"splits\": [\"train\", \"test\"]}".into()),
        ),
        ("dict/train/dataset_info.json", info("arithmetic")),
        (
            "dict/train/state.json",
            Text(state(
                &["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"],
                "train",
            )),
        ),
        (
            "dict/train/data-00000-of-00002.arrow",
            Arrow(vec![
                qa(&[("1+2=", "3", 1), ("2+2=", "4", 1)]),
                qa(&[("3+4=", "7", 2)]),
            ]),
        ),
        (
            "dict/train/data-00001-of-00002.arrow",
            Arrow(vec![qa(&[("9-2=", "7", 3)])]),
        ),
        ("dict/test/dataset_info.json", info("arithmetic")),
        (
            "dict/test/state.json",
            Text(state(&["data-00000-of-00001.arrow"], "test")),
        ),
        (
            "dict/test/data-00000-of-00001.arrow",
            Arrow(vec![qa(&[("5+5=", "10", 1)])]),
        ),
        ("chat/dataset_info.json", info("chat")),
        (
            "chat/state.json",
            Text(state(&["data-00000-of-00001.arrow"], "train")),
        ),
        (
            "chat/data-00000-of-00001.arrow",
            Arrow(vec![chat(&[
                (
                    &[("system", "Answer with a number."), ("user", "1+1=")],
                    "2",
                ),
                (&[("user", "2+2="), ("assistant", "4")], "4"),
            ])]),
        ),
    ]
}

/// Writes the whole layout under `root`.
fn write_all(root: &Path) {
    for (name, content) in fixtures() {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match content {
            Content::Text(text) => std::fs::write(&path, text).unwrap(),
            Content::Arrow(batches) => write_stream(&path, &batches),
        }
    }
}

/// What each shard holds, row by row, as JSON.
fn expected(name: &str) -> Vec<Value> {
    let qa = |rows: &[(&str, &str, i64)]| {
        rows.iter()
            .map(|(q, a, l)| json!({"question": q, "answer": a, "meta": {"source": "gen", "level": l}}))
            .collect()
    };
    match name {
        "dict/train/data-00000-of-00002.arrow" => {
            qa(&[("1+2=", "3", 1), ("2+2=", "4", 1), ("3+4=", "7", 2)])
        }
        "dict/train/data-00001-of-00002.arrow" => qa(&[("9-2=", "7", 3)]),
        "dict/test/data-00000-of-00001.arrow" => qa(&[("5+5=", "10", 1)]),
        "chat/data-00000-of-00001.arrow" => vec![
            json!({"messages": [{"role": "system", "content": "Answer with a number."},
                                {"role": "user", "content": "1+1="}], "answer": "2"}),
            json!({"messages": [{"role": "user", "content": "2+2="},
                                {"role": "assistant", "content": "4"}], "answer": "4"}),
        ],
        other => panic!("no expectation for {other}"),
    }
}

/// A shard's rows, read back with arrow's stream reader and JSON writer.
fn rows(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = arrow_ipc::reader::StreamReader::try_new(file, None).unwrap();
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
    serde_json::from_slice(&writer.into_inner()).unwrap()
}

#[test]
fn committed_fixtures_hold_what_the_writer_writes() {
    let regenerate = std::env::var_os("RECAP_WRITE_FIXTURES").is_some();
    // The writer's output is checked in a scratch directory first, so a broken writer never
    // overwrites good fixtures.
    let scratch = tempfile::tempdir().unwrap();
    write_all(scratch.path());
    for (name, content) in fixtures() {
        if let Content::Arrow(_) = content {
            let fresh = scratch.path().join(name);
            assert_eq!(rows(&fresh), expected(name), "{name} as written now");
        }
    }
    if regenerate {
        write_all(&dir());
    }
    for (name, content) in fixtures() {
        let (fresh, committed) = (scratch.path().join(name), dir().join(name));
        let hint = format!("{name}: regenerate with RECAP_WRITE_FIXTURES=1");
        match content {
            Content::Text(_) => assert_eq!(
                std::fs::read_to_string(&committed).unwrap(),
                std::fs::read_to_string(&fresh).unwrap(),
                "{hint}"
            ),
            Content::Arrow(_) => assert_eq!(rows(&committed), expected(name), "{hint}"),
        }
    }
}
