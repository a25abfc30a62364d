//! Data sources of a plan: takes a `recap_plan::Source` (a JSON Lines file with a prompt
//! template and field extractors, or one of the seeded offline generators) and gives rows with
//! a rendered prompt and a map of named fields, plus a resumable cursor that hands out batches
//! of rows in a seeded order, epoch after epoch.
//!
//! A JSON Lines line that is not a JSON object, or that lacks a field the template or an
//! extractor needs, is an error naming the file and the 1-based line number: a silent skip would
//! change what the run trains on without anyone noticing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recap_plan::{Source, SourceSpec, Template};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::train::verifiers::{apply_extractor, value_text};

/// One example: the prompt text (template applied, chat template not yet applied) and the
/// fields verifiers and objectives read (the raw row's fields overlaid with the mapped ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `source:line` for JSON Lines rows, `source:index` for generated ones.
    pub id: String,
    pub prompt: String,
    pub fields: Map<String, Value>,
}

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
fn render(template: &Template, fields: &Map<String, Value>) -> std::result::Result<String, String> {
    let mut values = std::collections::HashMap::new();
    for name in &template.placeholders {
        let Some(v) = fields.get(name.as_str()).and_then(value_text) else {
            return Err(format!(
                "the prompt template needs field `{name}`, which the row lacks"
            ));
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
        let (rows, shuffle) = match &source.spec {
            SourceSpec::Jsonl {
                file,
                prompt,
                limit,
                shuffle,
            } => {
                let path = resolve_path(base, file);
                (load_jsonl(source, &path, prompt, *limit)?, *shuffle)
            }
            SourceSpec::Arithmetic {
                count,
                digits,
                ops,
                seed,
            } => (gen_arithmetic(source, *count, *digits, ops, *seed)?, false),
            SourceSpec::Sorting {
                count,
                length,
                seed,
            } => (gen_sorting(source, *count, *length, *seed)?, false),
            SourceSpec::Copying {
                count,
                length,
                seed,
            } => (gen_copying(source, *count, *length, *seed)?, false),
        };
        if rows.is_empty() {
            bail!("source `{}` has no rows", source.name);
        }
        Ok(Dataset {
            name: source.name.to_string(),
            rows,
            shuffle,
        })
    }
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

fn load_jsonl(
    source: &Source,
    path: &Path,
    prompt: &Template,
    limit: Option<u64>,
) -> Result<Vec<Row>> {
    use std::io::Read;
    let mut text = String::new();
    open_data_file(path)
        .and_then(|mut f| {
            f.read_to_string(&mut text)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .map_err(|m| anyhow::anyhow!("source `{}`: {m}", source.name))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|l| rows.len() as u64 >= l) {
            break;
        }
        let at = || format!("{}:{lineno}", path.display());
        let raw = row_object(line).map_err(|m| anyhow::anyhow!("{}: {m}", at()))?;
        let fields = map_fields(source, &raw).map_err(|m| anyhow::anyhow!("{}: {m}", at()))?;
        let prompt = render(prompt, &fields).map_err(|m| anyhow::anyhow!("{}: {m}", at()))?;
        rows.push(Row {
            id: format!("{}:{lineno}", source.name),
            prompt,
            fields,
        });
    }
    Ok(rows)
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
fn map_fields(
    source: &Source,
    raw: &Map<String, Value>,
) -> std::result::Result<Map<String, Value>, String> {
    let mut fields = raw.clone();
    for (name, ex) in &source.fields {
        match apply_extractor(ex, Some(raw), "") {
            Some(v) => {
                fields.insert(name.to_string(), Value::String(v));
            }
            None => {
                return Err(format!(
                    "field `{name}` of source `{}` cannot be extracted from this row",
                    source.name
                ))
            }
        }
    }
    Ok(fields)
}

fn generated(
    source: &Source,
    i: usize,
    pairs: &[(&str, String)],
) -> std::result::Result<Row, String> {
    let mut raw = Map::new();
    for (k, v) in pairs {
        raw.insert(k.to_string(), Value::String(v.clone()));
    }
    let fields = map_fields(source, &raw)?;
    let prompt = fields
        .get("prompt")
        .and_then(value_text)
        .unwrap_or_default();
    Ok(Row {
        id: format!("{}:{i}", source.name),
        prompt,
        fields,
    })
}

fn gen_rows(
    source: &Source,
    count: u64,
    mut make: impl FnMut(usize) -> Vec<(&'static str, String)>,
) -> Result<Vec<Row>> {
    (0..count as usize)
        .map(|i| generated(source, i, &make(i)).map_err(|m| anyhow::anyhow!("{m}")))
        .collect()
}

/// `a+b=` problems with `digits`-digit operands drawn from `ops` (`+`, `-`, `*`).
fn gen_arithmetic(
    source: &Source,
    count: u64,
    digits: u64,
    ops: &str,
    seed: u64,
) -> Result<Vec<Row>> {
    let ops: Vec<char> = ops.chars().filter(|c| "+-*".contains(*c)).collect();
    if ops.is_empty() || !(1..=9).contains(&digits) {
        bail!(
            "source `{}`: arithmetic needs ops from \"+-*\" and digits in 1..=9",
            source.name
        );
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
fn gen_sorting(source: &Source, count: u64, length: u64, seed: u64) -> Result<Vec<Row>> {
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
fn gen_copying(source: &Source, count: u64, length: u64, seed: u64) -> Result<Vec<Row>> {
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
    use recap_plan::{ExtractStep, Extractor, Fields};

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
