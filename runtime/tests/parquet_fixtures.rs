//! The Parquet files under `tests/data/parquet/`, which the data loader's tests and the CLI's
//! end-to-end tests read: this test checks that each still holds what the writer below puts
//! there, and regenerates them all when run with `RECAP_WRITE_FIXTURES=1`:
//!
//!     RECAP_WRITE_FIXTURES=1 cargo test -p recap-runtime --test parquet_fixtures
//!
//! They are written with the `parquet` crate's own writer (Snappy for some, Zstandard for the
//! others), so the loader is tested on both codecs without a Python toolchain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parquet")
}

/// One column's values with their repetition and definition levels.
struct Column {
    values: Vec<&'static str>,
    rep: Option<Vec<i16>>,
    def: Option<Vec<i16>>,
}

fn flat(values: Vec<&'static str>) -> Column {
    Column {
        values,
        rep: None,
        def: None,
    }
}

fn write(path: &Path, schema: &str, codec: Compression, columns: Vec<Column>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut columns = columns.into_iter();
    while let Some(mut col) = group.next_column().unwrap() {
        let c = columns.next().expect("a column per leaf");
        let values: Vec<ByteArray> = c.values.iter().map(|v| ByteArray::from(*v)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, c.def.as_deref(), c.rep.as_deref())
            .unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

const QA: &str = "message schema {
  REQUIRED BYTE_ARRAY question (UTF8);
  REQUIRED BYTE_ARRAY answer (UTF8);
}";

/// `messages` as Hugging Face writes a list of `{role, content}` structs.
const CHAT: &str = "message schema {
  REQUIRED group messages (LIST) {
    REPEATED group list {
      REQUIRED group element {
        REQUIRED BYTE_ARRAY role (UTF8);
        REQUIRED BYTE_ARRAY content (UTF8);
      }
    }
  }
  REQUIRED BYTE_ARRAY answer (UTF8);
}";

fn snappy() -> Compression {
    Compression::SNAPPY
}

fn zstd() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// Writes one fixture at the path it is given.
type Writer = Box<dyn Fn(&Path)>;

/// Every fixture: its path under `tests/data/parquet/` and how it is written.
fn fixtures() -> Vec<(&'static str, Writer)> {
    vec![
        (
            "arith.parquet",
            Box::new(|p: &Path| {
                write(
                    p,
                    QA,
                    snappy(),
                    vec![
                        flat(vec!["1+1=", "2+3=", "4+4=", "9-2="]),
                        flat(vec!["2", "5", "8", "7"]),
                    ],
                )
            }),
        ),
        (
            "hub/data/train-00000-of-00002.parquet",
            Box::new(|p: &Path| write(p, QA, zstd(), vec![flat(vec!["1+2="]), flat(vec!["3"])])),
        ),
        (
            "hub/data/train-00001-of-00002.parquet",
            Box::new(|p: &Path| {
                write(
                    p,
                    QA,
                    snappy(),
                    vec![flat(vec!["2+2=", "3+4="]), flat(vec!["4", "7"])],
                )
            }),
        ),
        (
            "hub/data/test-00000-of-00001.parquet",
            Box::new(|p: &Path| write(p, QA, zstd(), vec![flat(vec!["5+5="]), flat(vec!["10"])])),
        ),
        (
            "chat.parquet",
            Box::new(|p: &Path| {
                // Row 1: system, user; row 2: user, assistant (the answer, dropped).
                let rep = Some(vec![0, 1, 0, 1]);
                let def = Some(vec![1, 1, 1, 1]);
                write(
                    p,
                    CHAT,
                    snappy(),
                    vec![
                        Column {
                            values: vec!["system", "user", "user", "assistant"],
                            rep: rep.clone(),
                            def: def.clone(),
                        },
                        Column {
                            values: vec!["Answer with a number.", "1+1=", "2+2=", "4"],
                            rep,
                            def,
                        },
                        flat(vec!["2", "4"]),
                    ],
                )
            }),
        ),
    ]
}

/// What each fixture holds, row by row, as the record reader gives it.
fn expected(name: &str) -> Vec<Value> {
    let qa = |rows: &[(&str, &str)]| {
        rows.iter()
            .map(|(q, a)| json!({"question": q, "answer": a}))
            .collect()
    };
    match name {
        "arith.parquet" => qa(&[("1+1=", "2"), ("2+3=", "5"), ("4+4=", "8"), ("9-2=", "7")]),
        "hub/data/train-00000-of-00002.parquet" => qa(&[("1+2=", "3")]),
        "hub/data/train-00001-of-00002.parquet" => qa(&[("2+2=", "4"), ("3+4=", "7")]),
        "hub/data/test-00000-of-00001.parquet" => qa(&[("5+5=", "10")]),
        "chat.parquet" => vec![
            json!({"messages": [{"role": "system", "content": "Answer with a number."},
                                {"role": "user", "content": "1+1="}], "answer": "2"}),
            json!({"messages": [{"role": "user", "content": "2+2="},
                                {"role": "assistant", "content": "4"}], "answer": "4"}),
        ],
        other => panic!("no expectation for {other}"),
    }
}

fn rows(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = SerializedFileReader::new(file).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| r.unwrap().to_json_value())
        .collect()
}

#[test]
fn committed_fixtures_hold_what_the_writer_writes() {
    let regenerate = std::env::var_os("RECAP_WRITE_FIXTURES").is_some();
    let scratch = tempfile::tempdir().unwrap();
    for (name, write) in fixtures() {
        // The writer's output is checked in a scratch directory first, so a broken writer
        // never overwrites good fixtures.
        let fresh = scratch.path().join(name);
        write(&fresh);
        assert_eq!(rows(&fresh), expected(name), "{name} as written now");
        let committed = dir().join(name);
        if regenerate {
            std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
            std::fs::copy(&fresh, &committed).unwrap();
        }
        assert_eq!(
            rows(&committed),
            expected(name),
            "{name}: regenerate with RECAP_WRITE_FIXTURES=1"
        );
    }
}
