//! Data sources of a plan: takes a `recap_plan::Source` (a JSON Lines or Parquet file, a
//! directory of Parquet shards or a Hugging Face `save_to_disk` dataset, with a prompt template
//! or chat `messages` and field extractors, or one of the seeded offline generators) and gives
//! rows with a prompt, the chat turns before it and a map of named fields, plus a resumable
//! cursor that hands out batches of rows in a seeded order, epoch after epoch.
//!
//! A row that is not a JSON object, or that lacks a field the template, an extractor or the
//! chat form needs, is an error naming the file and the row (the 1-based line of a JSON Lines
//! file): a silent skip would change what the run trains on without anyone noticing. Each
//! error carries a [`DataProblem`], whose code `recapc check` reports before anything runs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recap_plan::{Source, SourceSpec, Template};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::tokenizer::ChatMessage;
use crate::train::verifiers::{apply_extractor, value_text};

mod hf_dataset;
pub use hf_dataset::hf_dataset_files;

/// One example: the prompt text (the user's turn: the template applied, or the last user turn
/// of the row's `messages`; the chat template not yet applied), the turns before it, and the
/// fields verifiers and objectives read (the raw row's fields overlaid with the mapped ones).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// `source:line` for JSON Lines rows, `source:index` (1-based) for Parquet and generated
    /// ones.
    pub id: String,
    pub prompt: String,
    /// The turns before the prompt's: the system prompt and, for chat rows, earlier turns.
    /// Empty for most rows, whose prompt is the whole conversation.
    pub context: Vec<ChatMessage>,
    pub fields: Map<String, Value>,
}

/// What is wrong with a source's data, one kind per diagnostic code of `recapc check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// The file or directory cannot be read as the source's format.
    Unreadable,
    /// A row is not a JSON object.
    BadRow,
    /// A row lacks a field the prompt, an extractor or the chat form reads.
    MissingField,
    /// A field holds a value of a type that cannot be used where it is read.
    WrongType,
    /// A field is present but an extractor finds nothing in it.
    Unextractable,
    /// A row's `messages` is not a conversation that ends with a user turn.
    BadMessages,
    /// The source holds no rows.
    Empty,
    /// Prompts need a chat template (a system prompt, earlier turns, or `messages` rows) and
    /// the policy's tokenizer has none.
    NoChatTemplate,
    /// The policy's chat template does not compile, or fails on a row's prompt.
    BadChatTemplate,
}

impl DataProblem {
    /// Every kind, for listing their codes.
    pub const ALL: [DataProblem; 9] = [
        DataProblem::Unreadable,
        DataProblem::BadRow,
        DataProblem::MissingField,
        DataProblem::WrongType,
        DataProblem::Unextractable,
        DataProblem::BadMessages,
        DataProblem::Empty,
        DataProblem::NoChatTemplate,
        DataProblem::BadChatTemplate,
    ];

    /// The stable diagnostic code.
    pub fn code(self) -> &'static str {
        match self {
            DataProblem::Unreadable => "recap::data::unreadable",
            DataProblem::BadRow => "recap::data::bad_row",
            DataProblem::MissingField => "recap::data::missing_field",
            DataProblem::WrongType => "recap::data::wrong_type",
            DataProblem::Unextractable => "recap::data::unextractable",
            DataProblem::BadMessages => "recap::data::bad_messages",
            DataProblem::Empty => "recap::data::empty",
            DataProblem::NoChatTemplate => "recap::data::no_chat_template",
            DataProblem::BadChatTemplate => "recap::data::bad_chat_template",
        }
    }

    /// The long explanation `recapc explain CODE` prints; its first sentence is the summary
    /// docs/diagnostics.md gives.
    pub fn explanation(self) -> &'static str {
        match self {
            DataProblem::Unreadable => "A source's file or directory cannot be read as its format: it does not exist, is not a regular file, is larger than 64 GiB, is not a Parquet file, or is a directory of Parquet shards with several splits and no `split` named. `recapc check` reads the head of every source before a run, so the run stops here before any model is loaded.",
            DataProblem::BadRow => "A row of a source is not a record: a JSON Lines line that is not valid JSON or is an array, string or number rather than an object. Every line of a JSON Lines file is one JSON object; blank lines are skipped.",
            DataProblem::MissingField => "A row of a source lacks a field that is read from it: a `{placeholder}` of the prompt template, the first `field(...)` of a mapped field such as `answer`, or `messages` for a source without `prompt`. Fix the name in the pipeline, map the data's own field (`question = field(\"problem\")`), or give a `prompt` template for rows that hold a question rather than a conversation.",
            DataProblem::WrongType => "A field of a row holds a value of a type that cannot be used where it is read: a prompt placeholder or a mapped field takes text, a number or a boolean, not a list, an object or null.",
            DataProblem::Unextractable => "A field of a row is present, but the extractor of a mapped field finds nothing in it: an `after(\"####\")` whose marker the text lacks, a `tag(...)` or `last_number()` with nothing to find. The verifier would have no expected answer for that row.",
            DataProblem::BadMessages => "A row's `messages` is not a conversation recap can prompt with: it must be a list of `{\"role\": ..., \"content\": ...}` objects whose roles are `system`, `user`, `assistant` or `tool`, with string contents, ending with a `user` turn (or a user turn and the assistant's answer, which is dropped). Rows in the ShareGPT form (`{\"from\": \"human\", \"value\": ...}`) must be converted to roles and contents first.",
            DataProblem::Empty => "A source holds no rows: an empty file, or a limit of rows that leaves none.",
            DataProblem::NoChatTemplate => "A source's prompts are chat turns, but the policy's tokenizer has no chat template (`chat_template` in `tokenizer_config.json`, or a `chat_template.jinja` beside it). A system prompt (`system = ...`) or a conversation of several turns cannot be written without one, which is an error; `messages` rows of a lone user turn go in as the raw text of that turn, which is a warning. Use a model whose tokenizer has a chat template (an instruct model), or give the source a `prompt` template.",
            DataProblem::BadChatTemplate => "The policy's chat template does not compile, or fails when it renders the prompt of one of a source's first rows: a Jinja syntax error, or the template's own `raise_exception` (many templates refuse a `system` turn, or turns that do not alternate between user and assistant). `recapc check` renders the first rows of each source with the model's template, with the source's `system` prompt, as training renders them.",
        }
    }
}

/// A data error: its kind and the message naming the file and row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DataError {
    pub problem: DataProblem,
    pub message: String,
}

fn problem(kind: DataProblem, message: impl Into<String>) -> DataError {
    DataError {
        problem: kind,
        message: message.into(),
    }
}

type DataResult<T> = std::result::Result<T, DataError>;

/// A loaded source.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub rows: Vec<Row>,
    /// Whether batches are drawn in a seeded shuffled order (otherwise file order).
    pub shuffle: bool,
}

/// Renders a `{field}` template against a row's fields, in one pass over the template: a
/// field's value goes in as it is, so a `{...}` inside it is text, never a placeholder.
fn render(template: &Template, fields: &Map<String, Value>) -> DataResult<String> {
    let mut values = std::collections::HashMap::new();
    for name in &template.placeholders {
        let v = match fields.get(name.as_str()) {
            None | Some(Value::Null) => {
                return Err(problem(
                    DataProblem::MissingField,
                    format!("the prompt template needs field `{name}`, which the row lacks"),
                ))
            }
            Some(v) => value_text(v).ok_or_else(|| {
                problem(
                    DataProblem::WrongType,
                    format!(
                        "the prompt template writes field `{name}`, which is {}; a prompt \
                         takes text, a number or a boolean",
                        kind_of(v)
                    ),
                )
            })?,
        };
        values.insert(name.as_str(), v);
    }
    let mut out = String::with_capacity(template.text.len());
    let mut rest = template.text.as_str();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((values.get(&after[..close])?, close)))
        {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves a path of the plan against the base directory.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl Dataset {
    /// Loads or generates a source; relative file names are resolved against `base`.
    pub fn load(source: &Source, base: &Path) -> Result<Dataset> {
        Ok(Dataset::read(source, base, None)?)
    }

    /// Loads at most `rows` rows of a source, as [`Dataset::load`] reads them, and no more
    /// than the first [`HEAD_BYTES`] of a JSON Lines file: what `recapc check` holds against
    /// the pipeline before anything runs.
    pub fn load_head(source: &Source, base: &Path, rows: usize) -> DataResult<Dataset> {
        Dataset::read(source, base, Some((rows, HEAD_BYTES)))
    }

    /// Reads a source: all of it, or a head of at most so many rows and bytes.
    fn read(source: &Source, base: &Path, head: Option<(usize, u64)>) -> DataResult<Dataset> {
        let head_bytes = head.map(|(_, bytes)| bytes);
        let head = head.map(|(rows, _)| rows);
        let cap = |limit: &Option<u64>| {
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            match (limit, head) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let generated = |count: u64| head.map_or(count, |h| count.min(h as u64));
        let (rows, shuffle) = match &source.spec {
            SourceSpec::Jsonl {
                file,
                prompt,
                limit,
                shuffle,
                system,
            } => {
                let path = resolve_path(base, file);
                let shape = Shape {
                    prompt: prompt.as_ref(),
                    system: system.as_deref(),
                };
                let (rows, cut) = load_jsonl(source, &path, &shape, cap(limit), head_bytes)?;
                // A head read that stopped inside its first row has seen no row, not no data.
                if cut && rows.is_empty() {
                    return Ok(Dataset {
                        name: source.name.to_string(),
                        rows,
                        shuffle: *shuffle,
                    });
                }
                (rows, *shuffle)
            }
            SourceSpec::Parquet(t) | SourceSpec::HfDataset(t) => {
                let root = resolve_path(base, &t.path);
                let shape = Shape {
                    prompt: t.prompt.as_ref(),
                    system: t.system.as_deref(),
                };
                let (split, limit) = (t.split.as_deref(), cap(&t.limit));
                let rows = if let SourceSpec::HfDataset(_) = source.spec {
                    let files = hf_dataset_files(&root, split)?;
                    hf_dataset::load(source, &files.shards, &shape, limit)?
                } else {
                    load_parquet(source, &parquet_files(&root, split)?, &shape, limit)?
                };
                (rows, t.shuffle)
            }
            SourceSpec::Arithmetic {
                count,
                digits,
                ops,
                seed,
            } => (
                gen_arithmetic(source, generated(*count), *digits, ops, *seed)?,
                false,
            ),
            SourceSpec::Sorting {
                count,
                length,
                seed,
            } => (
                gen_sorting(source, generated(*count), *length, *seed)?,
                false,
            ),
            SourceSpec::Copying {
                count,
                length,
                seed,
            } => (
                gen_copying(source, generated(*count), *length, *seed)?,
                false,
            ),
        };
        if rows.is_empty() {
            return Err(problem(
                DataProblem::Empty,
                format!("source `{}` has no rows", source.name),
            ));
        }
        Ok(Dataset {
            name: source.name.to_string(),
            rows,
            shuffle,
        })
    }

    /// Whether any row has chat turns before its prompt (a system prompt, earlier turns), which
    /// only a chat template can write.
    pub fn has_chat_turns(&self) -> bool {
        self.rows.iter().any(|r| !r.context.is_empty())
    }
}

/// How a file source's rows become prompts: through the template, or from `messages`.
struct Shape<'a> {
    prompt: Option<&'a Template>,
    system: Option<&'a str>,
}

/// The largest data file a source reads: far beyond any row count a run can train on, and a
/// clear error rather than the process aborting for want of memory.
pub const MAX_DATA_FILE_BYTES: u64 = 64 << 30;

/// Opens a data file for reading: a regular file (a device such as `/dev/zero`, a pipe or a
/// directory would never end or is not data) of at most [`MAX_DATA_FILE_BYTES`], read no
/// further than that even if it grows meanwhile. The checker reads the first rows through it
/// too, so `check` and `run` stop at the same files.
pub fn open_data_file(path: &Path) -> std::result::Result<std::io::Take<std::fs::File>, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; a data source reads only files",
            path.display()
        ));
    }
    if meta.len() > MAX_DATA_FILE_BYTES {
        return Err(format!(
            "{} holds {} bytes, more than the {} a data file may hold",
            path.display(),
            meta.len(),
            MAX_DATA_FILE_BYTES
        ));
    }
    Ok(file.take(MAX_DATA_FILE_BYTES))
}

/// The most bytes of a JSON Lines file a head read (`recapc check`) takes in, so that a file
/// of one endless line is checked as quickly as any other: a row cut off by this cap is left
/// out rather than reported.
pub const HEAD_BYTES: u64 = 64 << 20;

/// The lines of a JSON Lines file, read as the run and the checker both read them: blank
/// lines skipped, each line with its 1-based number, the line end cut off, and no more than
/// the first `max_bytes` taken in, a line cut off by that cap left out (see [`Self::cut`]).
pub struct JsonLines {
    reader: std::io::BufReader<std::io::Take<std::io::Take<std::fs::File>>>,
    text: String,
    lineno: usize,
    cut: bool,
}

impl JsonLines {
    /// The lines of the data file at `path` (opened by [`open_data_file`]).
    pub fn open(path: &Path, max_bytes: Option<u64>) -> std::result::Result<JsonLines, String> {
        use std::io::Read;
        let file = open_data_file(path)?;
        Ok(JsonLines {
            reader: std::io::BufReader::new(file.take(max_bytes.unwrap_or(u64::MAX))),
            text: String::new(),
            lineno: 0,
            cut: false,
        })
    }

    /// Whether reading stopped at the byte cap inside a line.
    pub fn cut(&self) -> bool {
        self.cut
    }
}

impl Iterator for JsonLines {
    /// A line's number and text, or the number of a line that cannot be read and why.
    type Item = std::result::Result<(usize, String), (usize, std::io::Error)>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        loop {
            self.text.clear();
            self.lineno += 1;
            match self.reader.read_line(&mut self.text) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err((self.lineno, e))),
            }
            if !self.text.ends_with('\n') && self.reader.get_ref().limit() == 0 {
                self.cut = true;
                return None;
            }
            let line = self.text.trim_end_matches(['\n', '\r']);
            if !line.trim().is_empty() {
                return Some(Ok((self.lineno, line.to_string())));
            }
        }
    }
}

/// The rows of a JSON Lines file, and whether a head read stopped at its byte cap inside a
/// row (then too few rows is no sign of an empty file).
fn load_jsonl(
    source: &Source,
    path: &Path,
    shape: &Shape,
    limit: Option<usize>,
    head_bytes: Option<u64>,
) -> DataResult<(Vec<Row>, bool)> {
    let unreadable = |m: String| {
        problem(
            DataProblem::Unreadable,
            format!("source `{}`: {m}", source.name),
        )
    };
    let mut lines = JsonLines::open(path, head_bytes).map_err(unreadable)?;
    let mut rows = Vec::new();
    for line in lines.by_ref() {
        let (lineno, line) = line.map_err(|(lineno, e)| {
            unreadable(format!("{}:{lineno}: cannot read: {e}", path.display()))
        })?;
        if limit.is_some_and(|l| rows.len() >= l) {
            break;
        }
        let at = |e: DataError| {
            problem(
                e.problem,
                format!("{}:{lineno}: {}", path.display(), e.message),
            )
        };
        let raw = row_object(&line).map_err(|m| at(problem(DataProblem::BadRow, m)))?;
        rows.push(make_row(source, format!("{}:{lineno}", source.name), raw, shape).map_err(at)?);
    }
    Ok((rows, lines.cut()))
}

/// The most directory levels searched for Parquet shards below a source's directory: enough
/// for a Hugging Face snapshot (`<config>/<split>/*.parquet`), and an end to a link cycle.
const PARQUET_DEPTH: usize = 4;

/// The split names Hugging Face gives shard files (`train-00000-of-00002.parquet`).
const SPLITS: [&str; 5] = ["train", "test", "validation", "valid", "dev"];

/// The Parquet files of a source: the file itself, or every `.parquet` file under the
/// directory (links followed, hidden folders skipped) in path order, those of `split` only
/// when it is given.
pub fn parquet_files(root: &Path, split: Option<&str>) -> DataResult<Vec<PathBuf>> {
    let unreadable = |m: String| problem(DataProblem::Unreadable, m);
    let meta = std::fs::metadata(root)
        .map_err(|e| unreadable(format!("cannot read {}: {e}", root.display())))?;
    if meta.is_file() {
        if let Some(split) = split {
            return Err(unreadable(format!(
                "{} is one file; `split = \"{split}\"` picks among the files of a directory",
                root.display()
            )));
        }
        return Ok(vec![root.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| unreadable(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| unreadable(format!("cannot read {}: {e}", dir.display())))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() && !name.starts_with('.') && depth < PARQUET_DEPTH {
                dirs.push((path, depth + 1));
            } else if meta.is_file() && name.ends_with(".parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    // The split a shard belongs to: a folder named after one, or its name's first word.
    let split_of = |f: &Path| -> Option<String> {
        let rel = f.strip_prefix(root).unwrap_or(f);
        let mut words: Vec<String> = rel
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let stem = f.file_stem()?.to_string_lossy().into_owned();
        words.push(stem.split(['-', '.', '_']).next().unwrap_or("").to_string());
        words
            .into_iter()
            .find(|w| SPLITS.contains(&w.as_str()) || Some(w.as_str()) == split)
    };
    let mut splits: Vec<String> = files.iter().filter_map(|f| split_of(f)).collect();
    splits.sort();
    splits.dedup();
    match split {
        Some(want) => files.retain(|f| split_of(f).as_deref() == Some(want)),
        None if splits.len() > 1 => {
            return Err(unreadable(format!(
                "{} holds the splits {}; name one with `split = \"...\"`",
                root.display(),
                splits.join(", ")
            )))
        }
        None => {}
    }
    if files.is_empty() {
        let what = match split {
            Some(s) if !splits.is_empty() => format!(
                "no `.parquet` file of split `{s}` (it holds {})",
                splits.join(", ")
            ),
            Some(s) => format!("no `.parquet` file of split `{s}`"),
            None => "no `.parquet` file".to_string(),
        };
        return Err(unreadable(format!("{} holds {what}", root.display())));
    }
    Ok(files)
}

fn load_parquet(
    source: &Source,
    files: &[PathBuf],
    shape: &Shape,
    limit: Option<usize>,
) -> DataResult<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut rows = Vec::new();
    for path in files {
        let unreadable = |m: String| {
            problem(
                DataProblem::Unreadable,
                format!("source `{}`: {m}", source.name),
            )
        };
        let file = open_data_file(path).map_err(unreadable)?.into_inner();
        let not_parquet = |e: parquet::errors::ParquetError| {
            unreadable(format!(
                "{} is not a Parquet file this reader reads: {e}",
                path.display()
            ))
        };
        let reader = SerializedFileReader::new(file).map_err(not_parquet)?;
        for (i, row) in reader.get_row_iter(None).map_err(not_parquet)?.enumerate() {
            if limit.is_some_and(|l| rows.len() >= l) {
                return Ok(rows);
            }
            let at = |e: DataError| {
                problem(
                    e.problem,
                    format!("{} row {}: {}", path.display(), i + 1, e.message),
                )
            };
            let row = row.map_err(|e| at(problem(DataProblem::Unreadable, e.to_string())))?;
            let row = record_row(source, row.to_json_value(), rows.len() + 1, shape);
            rows.push(row.map_err(at)?);
        }
    }
    Ok(rows)
}

/// A record of a columnar file (Parquet, Arrow) as the source's `number`th row (1-based).
fn record_row(source: &Source, record: Value, number: usize, shape: &Shape) -> DataResult<Row> {
    let raw = match record {
        Value::Object(raw) => raw,
        other => {
            return Err(problem(
                DataProblem::BadRow,
                format!("expected a record, found {}", kind_of(&other)),
            ))
        }
    };
    make_row(source, format!("{}:{number}", source.name), raw, shape)
}

/// A row of a file source: the mapped fields, and the prompt from the template or from the
/// row's `messages`, with the source's system prompt before it when the row has none.
fn make_row(
    source: &Source,
    id: String,
    raw: Map<String, Value>,
    shape: &Shape,
) -> DataResult<Row> {
    let fields = map_fields(source, raw)?;
    let (mut context, prompt) = match shape.prompt {
        Some(template) => (Vec::new(), render(template, &fields)?),
        None => chat_turns(&fields)?,
    };
    if let Some(system) = shape.system {
        if context.first().is_none_or(|m| m.role != "system") {
            context.insert(0, ChatMessage::new("system", system));
        }
    }
    Ok(Row {
        id,
        prompt,
        context,
        fields,
    })
}

/// The roles a turn of `messages` may have: those chat templates are written for. Another
/// role (`human`, `gpt`) would go into the template as it is and make a prompt the model was
/// never trained on, so it is refused.
const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The turns of a chat row's `messages` up to its last user turn, and that turn's text. A last
/// `assistant` turn is dropped: it is the turn the policy writes.
fn chat_turns(fields: &Map<String, Value>) -> DataResult<(Vec<ChatMessage>, String)> {
    let bad = |m: String| problem(DataProblem::BadMessages, m);
    let list = match fields.get("messages") {
        None | Some(Value::Null) => {
            return Err(problem(
                DataProblem::MissingField,
                "the row has no field `messages`, which a source without `prompt` reads \
                 (a list of `{\"role\": ..., \"content\": ...}` turns)",
            ))
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(bad(format!(
                "`messages` is {}, not a list of `{{\"role\": ..., \"content\": ...}}` turns",
                kind_of(other)
            )))
        }
    };
    let mut turns = Vec::with_capacity(list.len());
    for (i, turn) in list.iter().enumerate() {
        let text = |key: &str| match turn.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!(
                "turn {} of `messages` has a `{key}` that is {}, not a string",
                i + 1,
                kind_of(other)
            ))),
            None => Err(bad(format!(
                "turn {} of `messages` has no `{key}`{}",
                i + 1,
                if !turn.is_object() {
                    " (it is not an object)"
                } else if turn.get("from").is_some() {
                    " (it is a ShareGPT-style `from`/`value` turn; write `role` and `content`)"
                } else {
                    ""
                }
            ))),
        };
        let role = text("role")?;
        if !CHAT_ROLES.contains(&role.as_str()) {
            return Err(bad(format!(
                "turn {} of `messages` has the role `{role}`; the roles are {}",
                i + 1,
                CHAT_ROLES.map(|r| format!("`{r}`")).join(", ")
            )));
        }
        turns.push(ChatMessage {
            role,
            content: text("content")?,
        });
    }
    if turns.last().is_some_and(|m| m.role == "assistant") {
        turns.pop();
    }
    match turns.pop() {
        Some(last) if last.role == "user" => Ok((turns, last.content)),
        Some(last) => Err(bad(format!(
            "`messages` ends with a `{}` turn; the conversation must end with a `user` turn \
             (or a user turn and the assistant's answer, which is dropped)",
            last.role
        ))),
        None => Err(bad("`messages` holds no user turn".to_string())),
    }
}

/// One line of a JSON Lines file as the object it must be, or why it is not one. `recapc
/// check` reads the first rows of a data file with this too, so check and run say the same.
pub fn row_object(line: &str) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str(line) {
        Ok(Value::Object(raw)) => Ok(raw),
        Ok(other) => Err(format!("expected a JSON object, found {}", kind_of(&other))),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The raw fields overlaid with the source's mapped fields.
fn map_fields(source: &Source, raw: Map<String, Value>) -> DataResult<Map<String, Value>> {
    let mut mapped = Vec::with_capacity(source.fields.len());
    for (name, ex) in &source.fields {
        match apply_extractor(ex, Some(&raw), "") {
            Some(v) => mapped.push((name.to_string(), Value::String(v))),
            None => {
                let read = ex.steps.first().and_then(|s| match s {
                    recap_plan::ExtractStep::Field { name } => Some(name.as_str()),
                    _ => None,
                });
                let (kind, why) = match read.map(|key| (key, raw.get(key))) {
                    Some((key, None | Some(Value::Null))) => (
                        DataProblem::MissingField,
                        format!("the row has no field `{key}`"),
                    ),
                    Some((key, Some(v))) if value_text(v).is_none() => (
                        DataProblem::WrongType,
                        format!("field `{key}` is {}, not text", kind_of(v)),
                    ),
                    _ => (
                        DataProblem::Unextractable,
                        "the extractor finds nothing in it".to_string(),
                    ),
                };
                return Err(problem(
                    kind,
                    format!(
                        "field `{name}` of source `{}` cannot be extracted from this row: {why}",
                        source.name
                    ),
                ));
            }
        }
    }
    let mut fields = raw;
    fields.extend(mapped);
    Ok(fields)
}

fn generated(source: &Source, i: usize, pairs: &[(&str, String)]) -> DataResult<Row> {
    let mut raw = Map::new();
    for (k, v) in pairs {
        raw.insert(k.to_string(), Value::String(v.clone()));
    }
    let fields = map_fields(source, raw)?;
    let prompt = fields
        .get("prompt")
        .and_then(value_text)
        .unwrap_or_default();
    Ok(Row {
        id: format!("{}:{i}", source.name),
        prompt,
        context: Vec::new(),
        fields,
    })
}

fn gen_rows(
    source: &Source,
    count: u64,
    mut make: impl FnMut(usize) -> Vec<(&'static str, String)>,
) -> DataResult<Vec<Row>> {
    (0..count as usize)
        .map(|i| generated(source, i, &make(i)))
        .collect()
}

/// `a+b=` problems with `digits`-digit operands drawn from `ops` (`+`, `-`, `*`).
fn gen_arithmetic(
    source: &Source,
    count: u64,
    digits: u64,
    ops: &str,
    seed: u64,
) -> DataResult<Vec<Row>> {
    let ops: Vec<char> = ops.chars().filter(|c| "+-*".contains(*c)).collect();
    if ops.is_empty() || !(1..=9).contains(&digits) {
        return Err(problem(
            DataProblem::Unreadable,
            format!(
                "source `{}`: arithmetic needs ops from \"+-*\" and digits in 1..=9",
                source.name
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hi = 10i64.pow(digits as u32);
    gen_rows(source, count, |_| {
        let a = rng.random_range(0..hi);
        let b = rng.random_range(0..hi);
        let op = ops[rng.random_range(0..ops.len())];
        let answer = match op {
            '+' => a + b,
            '-' => a - b,
            _ => a * b,
        };
        vec![
            ("prompt", format!("{a}{op}{b}=")),
            ("answer", answer.to_string()),
        ]
    })
}

/// `sort: 5 3 9=` problems over single digits, the answer the digits in ascending order.
fn gen_sorting(source: &Source, count: u64, length: u64, seed: u64) -> DataResult<Vec<Row>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    gen_rows(source, count, |_| {
        let mut xs: Vec<u32> = (0..length).map(|_| rng.random_range(0..10)).collect();
        let join = |v: &[u32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let prompt = format!("sort: {}=", join(&xs));
        xs.sort_unstable();
        vec![("prompt", prompt), ("answer", join(&xs))]
    })
}

/// `copy: abcd=` tasks over lowercase letters; `target` and `answer` are the letters.
fn gen_copying(source: &Source, count: u64, length: u64, seed: u64) -> DataResult<Vec<Row>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    gen_rows(source, count, |_| {
        let s: String = (0..length)
            .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
            .collect();
        vec![
            ("prompt", format!("copy: {s}=")),
            ("target", s.clone()),
            ("answer", s),
        ]
    })
}

/// The resumable read position of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: u64,
    pub pos: u64,
}

/// Hands out batches of row indices: a seeded permutation per epoch (identity when the source
/// is not shuffled); a batch that runs past the end continues in the next epoch.
#[derive(Debug, Clone)]
pub struct Reader {
    seed: u64,
    /// The rows in use: every row of the source, or a coreset's subset.
    rows: Vec<usize>,
    shuffle: bool,
    order: Vec<usize>,
    pub cursor: DataCursor,
}

impl Reader {
    pub fn new(len: usize, shuffle: bool, seed: u64) -> Reader {
        Reader::over((0..len).collect(), shuffle, seed)
    }

    /// A reader of the given rows only (a coreset's subset), in their order or shuffled.
    pub fn over(rows: Vec<usize>, shuffle: bool, seed: u64) -> Reader {
        let mut r = Reader {
            seed,
            rows,
            shuffle,
            order: Vec::new(),
            cursor: DataCursor { epoch: 0, pos: 0 },
        };
        r.reorder();
        r
    }

    fn reorder(&mut self) {
        self.order = self.rows.clone();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.seed ^ self.cursor.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            self.order.shuffle(&mut rng);
        }
    }

    pub fn restore(&mut self, cursor: DataCursor) {
        self.cursor = cursor;
        self.reorder();
    }

    /// The next `n` row indices.
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.cursor.pos as usize >= self.rows.len() {
                self.cursor.epoch += 1;
                self.cursor.pos = 0;
                self.reorder();
            }
            out.push(self.order[self.cursor.pos as usize]);
            self.cursor.pos += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recap_plan::{ExtractStep, Extractor, Fields, TableSource};

    fn src(spec: SourceSpec) -> Source {
        Source {
            name: "s".into(),
            spec,
            fields: Fields::new(),
        }
    }

    /// A `{...}` inside a field's value stays as written: only the template's own placeholders
    /// are filled, once.
    #[test]
    fn templates_do_not_expand_placeholders_inside_values() {
        let template = Template {
            text: "Q: {q} A: {a} {other}".into(),
            placeholders: vec!["q".into(), "a".into()],
        };
        let fields: Map<String, Value> =
            serde_json::from_str(r#"{"q": "what is {a}?", "a": "x{q}y"}"#).unwrap();
        assert_eq!(
            render(&template, &fields).unwrap(),
            "Q: what is {a}? A: x{q}y {other}"
        );
    }

    #[test]
    fn generators_are_seeded_and_correct() {
        let a = Dataset::load(
            &src(SourceSpec::Arithmetic {
                count: 50,
                digits: 2,
                ops: "+-*".into(),
                seed: 4,
            }),
            Path::new("."),
        )
        .unwrap();
        let b = Dataset::load(
            &src(SourceSpec::Arithmetic {
                count: 50,
                digits: 2,
                ops: "+-*".into(),
                seed: 4,
            }),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(a.rows, b.rows);
        for r in &a.rows {
            let p = r.prompt.trim_end_matches('=');
            let op = p.find(['+', '-', '*']).unwrap();
            let (x, y): (i64, i64) = (p[..op].parse().unwrap(), p[op + 1..].parse().unwrap());
            let want = match &p[op..op + 1] {
                "+" => x + y,
                "-" => x - y,
                _ => x * y,
            };
            assert_eq!(
                r.fields["answer"],
                Value::String(want.to_string()),
                "{}",
                r.prompt
            );
        }
        let s = Dataset::load(
            &src(SourceSpec::Sorting {
                count: 5,
                length: 4,
                seed: 1,
            }),
            Path::new("."),
        )
        .unwrap();
        for r in &s.rows {
            let ans: Vec<u32> = r.fields["answer"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(|x| x.parse().unwrap())
                .collect();
            assert!(ans.windows(2).all(|w| w[0] <= w[1]) && ans.len() == 4);
        }
        let c = Dataset::load(
            &src(SourceSpec::Copying {
                count: 5,
                length: 3,
                seed: 1,
            }),
            Path::new("."),
        )
        .unwrap();
        for r in &c.rows {
            let t = r.fields["target"].as_str().unwrap();
            assert_eq!(r.prompt, format!("copy: {t}="));
        }
    }

    #[test]
    fn extractor_chains_apply_in_order() {
        let row: Map<String, Value> =
            serde_json::from_str(r#"{"answer": "so #### 42 ", "n": 7}"#).unwrap();
        let ex = |steps: Vec<ExtractStep>| Extractor { steps };
        let f = |n: &str| ExtractStep::Field { name: n.into() };
        assert_eq!(
            apply_extractor(
                &ex(vec![
                    f("answer"),
                    ExtractStep::After {
                        marker: "####".into()
                    }
                ]),
                Some(&row),
                ""
            ),
            Some("42".into())
        );
        assert_eq!(
            apply_extractor(&ex(vec![f("n")]), Some(&row), ""),
            Some("7".into())
        );
        assert_eq!(
            apply_extractor(&ex(vec![f("missing")]), Some(&row), ""),
            None
        );
        assert_eq!(
            apply_extractor(
                &ex(vec![
                    ExtractStep::Before { marker: "=".into() },
                    ExtractStep::Trim
                ]),
                None,
                " 3+4 = 7"
            ),
            Some("3+4".into())
        );
        assert_eq!(
            apply_extractor(
                &ex(vec![
                    ExtractStep::Tag {
                        name: "answer".into()
                    },
                    ExtractStep::FirstNumber
                ]),
                None,
                "x <answer>12 and 5</answer>"
            ),
            Some("12".into())
        );
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parquet")
    }

    fn template(text: &str, names: &[&str]) -> Option<Template> {
        Some(Template {
            text: text.into(),
            placeholders: names.iter().map(|&n| n.into()).collect(),
        })
    }

    fn parquet(path: &str, split: Option<&str>, prompt: Option<Template>) -> Source {
        src(SourceSpec::Parquet(TableSource {
            path: path.into(),
            split: split.map(Into::into),
            prompt,
            limit: None,
            shuffle: false,
            system: None,
        }))
    }

    fn jsonl(prompt: Option<Template>, system: Option<&str>) -> Source {
        src(SourceSpec::Jsonl {
            file: "d.jsonl".into(),
            prompt,
            limit: None,
            shuffle: false,
            system: system.map(Into::into),
        })
    }

    fn prompts(d: &Dataset) -> Vec<&str> {
        d.rows.iter().map(|r| r.prompt.as_str()).collect()
    }

    #[test]
    fn reads_parquet_files_directories_and_hub_splits() {
        let base = fixtures();
        let q = || template("Q: {question}", &["question"]);
        let file = Dataset::load(&parquet("arith.parquet", None, q()), &base).unwrap();
        assert_eq!(prompts(&file), ["Q: 1+1=", "Q: 2+3=", "Q: 4+4=", "Q: 9-2="]);
        assert_eq!(file.rows[3].fields["answer"], Value::String("7".into()));
        assert_eq!(file.rows[0].id, "s:1");
        // The shards of the train split in name order, across Zstandard and Snappy files.
        let train = Dataset::load(&parquet("hub", Some("train"), q()), &base).unwrap();
        assert_eq!(prompts(&train), ["Q: 1+2=", "Q: 2+2=", "Q: 3+4="]);
        let test = Dataset::load(&parquet("hub", Some("test"), q()), &base).unwrap();
        assert_eq!(prompts(&test), ["Q: 5+5="]);
        let head = Dataset::load_head(&parquet("hub", Some("train"), q()), &base, 2).unwrap();
        assert_eq!(head.rows.len(), 2);
        // A directory of several splits needs one named; a split it lacks is named too.
        let err = Dataset::load_head(&parquet("hub", None, q()), &base, 5).unwrap_err();
        assert_eq!(err.problem, DataProblem::Unreadable);
        assert!(
            err.message.contains("splits test, train"),
            "{}",
            err.message
        );
        let err = Dataset::load_head(&parquet("hub", Some("dev"), q()), &base, 5).unwrap_err();
        assert!(
            err.message.contains("no `.parquet` file of split `dev`"),
            "{}",
            err.message
        );
        let err = Dataset::load_head(&parquet("arith.parquet", Some("train"), q()), &base, 5)
            .unwrap_err();
        assert!(err.message.contains("is one file"), "{}", err.message);
    }

    #[test]
    fn a_file_that_is_not_parquet_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.parquet"), "{\"question\": 1}\n").unwrap();
        let err = Dataset::load_head(&parquet("x.parquet", None, None), dir.path(), 5).unwrap_err();
        assert_eq!(err.problem, DataProblem::Unreadable);
        assert!(
            err.message.contains("is not a Parquet file"),
            "{}",
            err.message
        );
    }

    #[test]
    fn chat_rows_take_their_last_user_turn_as_the_prompt() {
        let chat = Dataset::load(&parquet("chat.parquet", None, None), &fixtures()).unwrap();
        assert_eq!(prompts(&chat), ["1+1=", "2+2="]);
        assert_eq!(
            chat.rows[0].context,
            [ChatMessage::new("system", "Answer with a number.")]
        );
        // The assistant's answer that ends the second conversation is dropped.
        assert!(chat.rows[1].context.is_empty());
        assert!(chat.has_chat_turns());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("d.jsonl"),
            concat!(
                r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "2+2="}]}"#,
                "\n",
                r#"{"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "3+3="}]}"#,
                "\n"
            ),
        )
        .unwrap();
        let d = Dataset::load(&jsonl(None, Some("Be brief.")), dir.path()).unwrap();
        assert_eq!(prompts(&d), ["2+2=", "3+3="]);
        assert_eq!(
            d.rows[0].context,
            [
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "yo")
            ]
        );
        // A row's own system turn is kept rather than the source's.
        assert_eq!(d.rows[1].context, [ChatMessage::new("system", "own")]);
        // A template prompt with a system prompt: the system turn alone is the context.
        std::fs::write(dir.path().join("d.jsonl"), "{\"q\": \"x\"}\n").unwrap();
        let d = Dataset::load(&jsonl(template("{q}", &["q"]), Some("S")), dir.path()).unwrap();
        assert_eq!(d.rows[0].context, [ChatMessage::new("system", "S")]);
        let plain = Dataset::load(&jsonl(template("{q}", &["q"]), None), dir.path()).unwrap();
        assert!(!plain.has_chat_turns());
    }

    /// Each data-shape problem has its own kind (its diagnostic code) and names the row.
    #[test]
    fn data_shape_problems_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let check = |line: &str, source: &Source| {
            std::fs::write(dir.path().join("d.jsonl"), format!("{line}\n")).unwrap();
            let err = Dataset::load_head(source, dir.path(), 20).unwrap_err();
            assert!(err.message.contains("d.jsonl:1: "), "{}", err.message);
            (err.problem, err.message)
        };
        let chat = jsonl(None, None);
        let q = jsonl(template("{q}", &["q"]), None);
        let cases: Vec<(&str, &Source, DataProblem, &str)> = vec![
            ("[1]", &q, DataProblem::BadRow, "expected a JSON object"),
            (
                r#"{"x": 1}"#,
                &q,
                DataProblem::MissingField,
                "needs field `q`",
            ),
            (r#"{"q": [1]}"#, &q, DataProblem::WrongType, "is an array"),
            (
                r#"{"q": "x"}"#,
                &chat,
                DataProblem::MissingField,
                "no field `messages`",
            ),
            (
                r#"{"messages": "hi"}"#,
                &chat,
                DataProblem::BadMessages,
                "is a string",
            ),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                &chat,
                DataProblem::BadMessages,
                "has no `content`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 3}]}"#,
                &chat,
                DataProblem::BadMessages,
                "is a number, not a string",
            ),
            (
                r#"{"messages": [{"role": "system", "content": "s"}]}"#,
                &chat,
                DataProblem::BadMessages,
                "ends with a `system` turn",
            ),
            (
                r#"{"messages": []}"#,
                &chat,
                DataProblem::BadMessages,
                "no user turn",
            ),
            (
                r#"{"messages": [{"role": "human", "content": "hi"}, {"role": "user", "content": "x"}]}"#,
                &chat,
                DataProblem::BadMessages,
                "has the role `human`",
            ),
            (
                r#"{"messages": [{"from": "human", "value": "hi"}]}"#,
                &chat,
                DataProblem::BadMessages,
                "ShareGPT-style",
            ),
        ];
        for (line, source, kind, words) in cases {
            let (problem, message) = check(line, source);
            assert_eq!(problem, kind, "{line}: {message}");
            assert!(message.contains(words), "{line}: {message}");
        }
        let mut mapped = jsonl(template("{q}", &["q"]), None);
        let ex = |steps| recap_plan::Extractor { steps };
        mapped.fields.insert(
            "answer".into(),
            ex(vec![
                ExtractStep::Field { name: "a".into() },
                ExtractStep::After {
                    marker: "####".into(),
                },
            ]),
        );
        let (problem, _) = check(r#"{"q": "x", "a": "no marker"}"#, &mapped);
        assert_eq!(problem, DataProblem::Unextractable);
        let (problem, _) = check(r#"{"q": "x", "a": {"k": 1}}"#, &mapped);
        assert_eq!(problem, DataProblem::WrongType);
        let (problem, message) = check(r#"{"q": "x"}"#, &mapped);
        assert_eq!(problem, DataProblem::MissingField, "{message}");
    }

    /// A head read takes in no more than its bytes: a row cut off by the cap is left out, and
    /// a first row longer than the cap leaves no rows rather than an "empty source".
    #[test]
    fn a_head_read_stops_at_its_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{{\"q\": \"{}\"}}", "x".repeat(100));
        std::fs::write(
            dir.path().join("d.jsonl"),
            format!("{{\"q\": \"a\"}}\n{long}\n[1]\n"),
        )
        .unwrap();
        let q = jsonl(template("{q}", &["q"]), None);
        let head = Dataset::read(&q, dir.path(), Some((20, 50))).unwrap();
        assert_eq!(prompts(&head), ["a"]);
        // With room for the whole file, its third line is read, and is not a row.
        let err = Dataset::read(&q, dir.path(), Some((20, 1000))).unwrap_err();
        assert_eq!(err.problem, DataProblem::BadRow);
        std::fs::write(dir.path().join("d.jsonl"), format!("{long}\n")).unwrap();
        let head = Dataset::read(&q, dir.path(), Some((20, 50))).unwrap();
        assert!(head.rows.is_empty());
    }

    #[test]
    fn reader_wraps_epochs_and_restores() {
        let mut r = Reader::new(5, true, 9);
        let first: Vec<usize> = r.next_batch(5);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        let _ = r.next_batch(3);
        let saved = r.cursor.clone();
        assert_eq!(saved, DataCursor { epoch: 1, pos: 3 });
        let next = r.next_batch(4);
        let mut again = Reader::new(5, true, 9);
        again.restore(saved);
        assert_eq!(again.next_batch(4), next);
        let mut plain = Reader::new(3, false, 9);
        assert_eq!(plain.next_batch(4), vec![0, 1, 2, 0]);
    }
}
