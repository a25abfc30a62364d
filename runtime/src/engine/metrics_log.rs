//! The metrics of a run in the formats `train { log }` asks for besides `metrics.jsonl`: takes
//! each step's record (a JSON object) and gives `metrics.csv` and a TensorBoard event file
//! (`events.out.tfevents.<time>.<host>`) in the run directory.
//!
//! A record is flattened to `/`-joined names (`keys/math.accuracy/lambda`, `eval/probe/accuracy`):
//! every leaf is a CSV column (numbers as JSON writes them, strings as they are, lists as JSON,
//! nothing for null) and every number a TensorBoard scalar at the record's step. Both files are
//! derived from `metrics.jsonl`, which is written first: when a run starts or resumes they are
//! rebuilt from the lines it kept and replace the old ones by a rename, so a resumed run's
//! files hold each kept step once, whatever a kill left half written. Each line or event is
//! then appended with one write.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use recap_plan::LogFormat;
use serde_json::Value;

use super::rundir::{append, replace_file};

/// The CSV file's name.
pub const CSV: &str = "metrics.csv";

/// How TensorBoard's event files are named; the time and host follow.
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// The leaves of a record under `/`-joined names, in the record's order.
pub fn flatten(rec: &Value) -> Vec<(String, &Value)> {
    fn walk<'v>(prefix: &str, v: &'v Value, out: &mut Vec<(String, &'v Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}/{k}")
                    };
                    walk(&name, x, out);
                }
            }
            _ => out.push((prefix.to_string(), v)),
        }
    }
    let mut out = Vec::new();
    walk("", rec, &mut out);
    out
}

fn step_of(rec: &Value) -> Option<u64> {
    rec.get("step").and_then(Value::as_u64)
}

/// `metrics.csv`: one row per step under a header of every column seen so far.
struct CsvLog {
    dir: PathBuf,
    file: File,
    /// `step` first, then the others in the order they first appeared.
    columns: Vec<String>,
}

/// Adds the columns of `rec` not yet in `columns`; says whether any was new.
fn add_columns(columns: &mut Vec<String>, rec: &Value) -> bool {
    let before = columns.len();
    for (name, _) in flatten(rec) {
        if !columns.contains(&name) {
            columns.push(name);
        }
    }
    columns.len() > before
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The CSV text of `rows` (the header first when `header`) under `columns`.
fn csv_text(columns: &[String], rows: &[&Value], header: bool) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(columns)?;
    }
    for rec in rows {
        let leaves = flatten(rec);
        w.write_record(columns.iter().map(|c| {
            leaves
                .iter()
                .find(|(name, _)| name == c)
                .map(|(_, v)| cell(v))
                .unwrap_or_default()
        }))?;
    }
    w.into_inner().context("formatting metrics.csv")
}

impl CsvLog {
    /// Writes `metrics.csv` afresh from `kept`.
    fn open(dir: &Path, kept: &[Value]) -> Result<CsvLog> {
        let mut columns = vec!["step".to_string()];
        for rec in kept {
            add_columns(&mut columns, rec);
        }
        let rows: Vec<&Value> = kept.iter().collect();
        let file = replace_file(dir, CSV, &csv_text(&columns, &rows, true)?)?;
        Ok(CsvLog {
            dir: dir.to_path_buf(),
            file,
            columns,
        })
    }

    /// Appends `rec`'s row. A record with a column not seen before (a probe's first result)
    /// rewrites the file under the wider header from `metrics.jsonl`, which already holds
    /// `rec`, so that every row sits under the header that names its cells.
    fn append(&mut self, rec: &Value) -> Result<()> {
        if add_columns(&mut self.columns, rec) {
            let all = read_records(&self.dir)?;
            let rows: Vec<&Value> = all.iter().collect();
            self.file = replace_file(&self.dir, CSV, &csv_text(&self.columns, &rows, true)?)?;
            return Ok(());
        }
        let line = csv_text(&self.columns, &[rec], false)?;
        append(&mut self.file, &line, &self.dir.join(CSV))
    }
}

/// The records of `dir/metrics.jsonl`, skipping a line a kill cut short.
fn read_records(dir: &Path) -> Result<Vec<Value>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The messages of TensorBoard's `event.proto` and `summary.proto` that a scalar log needs,
/// with their field numbers.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(oneof = "What", tags = "3, 5")]
        pub what: Option<What>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(Summary),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<SummaryValue>,
    }

    /// `Summary.Value` with its `simple_value` member of the `value` oneof; optional, so that
    /// a scalar of 0 is written rather than left out as a default.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SummaryValue {
        #[prost(string, tag = "1")]
        pub tag: String,
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
    }
}

/// TFRecord's checksum: the CRC32C of `bytes`, rotated and offset so that a CRC of data that
/// holds CRCs stays well distributed.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: the length, its masked CRC, the data and the data's masked CRC.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a TFRecord file up to the first record that is cut short or fails its
/// checksums (a kill in the middle of a write), and whether the whole file was read.
pub fn read_events(bytes: &[u8]) -> (Vec<proto::Event>, bool) {
    use prost::Message;
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let record = (|| {
            let len_bytes: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            let len_crc = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
            if masked_crc(&len_bytes) != len_crc {
                return None;
            }
            let len = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
            let end = 12usize.checked_add(len)?;
            let data = rest.get(12..end)?;
            let crc = u32::from_le_bytes(rest.get(end..end + 4)?.try_into().ok()?);
            if masked_crc(data) != crc {
                return None;
            }
            let event = proto::Event::decode(data).ok()?;
            Some((event, end + 4))
        })();
        match record {
            Some((event, used)) => {
                events.push(event);
                rest = &rest[used..];
            }
            None => return (events, false),
        }
    }
    (events, true)
}

fn event_bytes(event: &proto::Event) -> Vec<u8> {
    use prost::Message;
    frame(&event.encode_to_vec())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The scalar event of a record: every number in it, at its step. TensorBoard's scalars are
/// 32-bit floats.
fn scalar_event(rec: &Value, wall_time: f64) -> proto::Event {
    let value = flatten(rec)
        .into_iter()
        .filter(|(name, _)| name != "step")
        .filter_map(|(tag, v)| {
            v.as_f64().map(|x| proto::SummaryValue {
                tag,
                simple_value: Some(x as f32),
            })
        })
        .collect();
    proto::Event {
        wall_time,
        step: step_of(rec).unwrap_or(0) as i64,
        what: Some(proto::What::Summary(proto::Summary { value })),
    }
}

/// The run's TensorBoard event file.
struct EventLog {
    path: PathBuf,
    file: File,
}

/// The event file a run directory holds already (the first by name, if a copy left several).
fn existing_event_file(dir: &Path) -> Result<Option<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(EVENTS_PREFIX))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

impl EventLog {
    /// Writes the event file afresh: the events an earlier life of the run wrote for the kept
    /// steps (their wall times kept), then an event for each kept step they lack. A fresh run,
    /// or a run that logs to TensorBoard for the first time, names a new file.
    fn open(dir: &Path, kept: &[Value], resuming: bool) -> Result<EventLog> {
        let existing = if resuming {
            existing_event_file(dir)?
        } else {
            None
        };
        let last_kept = kept.iter().filter_map(step_of).max();
        let mut bytes = Vec::new();
        let mut have: Option<i64> = None;
        let name = match existing {
            Some(name) => {
                let path = dir.join(&name);
                let old = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                for e in read_events(&old).0 {
                    let keep = match &e.what {
                        Some(proto::What::Summary(_)) => {
                            last_kept.is_some_and(|l| e.step >= 0 && e.step as u64 <= l)
                        }
                        _ => true,
                    };
                    if keep {
                        if matches!(e.what, Some(proto::What::Summary(_))) {
                            have = Some(have.map_or(e.step, |h| h.max(e.step)));
                        }
                        bytes.extend(event_bytes(&e));
                    }
                }
                name
            }
            None => {
                let host = gethostname::gethostname().to_string_lossy().into_owned();
                let host: String = host
                    .chars()
                    .map(|c| if c == '/' { '_' } else { c })
                    .collect();
                format!("{EVENTS_PREFIX}{}.{host}", now() as u64)
            }
        };
        if bytes.is_empty() {
            bytes.extend(event_bytes(&proto::Event {
                wall_time: now(),
                step: 0,
                what: Some(proto::What::FileVersion("brain.Event:2".into())),
            }));
        }
        for rec in kept {
            let step = step_of(rec).unwrap_or(0) as i64;
            if have.is_none_or(|h| step > h) {
                bytes.extend(event_bytes(&scalar_event(rec, now())));
            }
        }
        let file = replace_file(dir, &name, &bytes)?;
        Ok(EventLog {
            path: dir.join(name),
            file,
        })
    }

    fn append(&mut self, rec: &Value) -> Result<()> {
        append(
            &mut self.file,
            &event_bytes(&scalar_event(rec, now())),
            &self.path,
        )
    }
}

/// The logs `train { log }` asks for.
pub struct MetricLogs {
    csv: Option<CsvLog>,
    events: Option<EventLog>,
}

impl MetricLogs {
    /// Opens the logs of `formats` in `dir`, rebuilt from the records `metrics.jsonl` kept.
    pub fn open(
        dir: &Path,
        formats: &[LogFormat],
        kept: &[Value],
        resuming: bool,
    ) -> Result<MetricLogs> {
        Ok(MetricLogs {
            csv: match formats.contains(&LogFormat::Csv) {
                true => Some(CsvLog::open(dir, kept)?),
                false => None,
            },
            events: match formats.contains(&LogFormat::Tensorboard) {
                true => Some(EventLog::open(dir, kept, resuming)?),
                false => None,
            },
        })
    }

    /// Appends a step's record to each log.
    pub fn record(&mut self, rec: &Value) -> Result<()> {
        if let Some(c) = &mut self.csv {
            c.append(rec)?;
        }
        if let Some(e) = &mut self.events {
            e.append(rec)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The CRC32C check value of "123456789" is 0xe3069283 (RFC 3720); TFRecord masks it by
    /// a right rotation of 15 bits and an offset of 0xa282ead8, which gives 0xc78ab0e5
    /// (worked by hand).
    #[test]
    fn the_checksum_is_tfrecords_masked_crc32c() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    /// A record cut short, or with a flipped byte, ends the reading there.
    #[test]
    fn a_cut_or_damaged_record_ends_the_events() {
        let rec = json!({ "step": 3, "loss": 0.5, "keys": { "a": { "lambda": 0.0 } } });
        let mut bytes = event_bytes(&scalar_event(&rec, 1.0));
        let one = bytes.len();
        bytes.extend(event_bytes(&scalar_event(&rec, 2.0)));
        let (events, whole) = read_events(&bytes);
        assert!(whole);
        assert_eq!(events.len(), 2);
        let Some(proto::What::Summary(s)) = &events[0].what else {
            panic!("no summary");
        };
        let tags: Vec<(&str, Option<f32>)> = s
            .value
            .iter()
            .map(|v| (v.tag.as_str(), v.simple_value))
            .collect();
        assert_eq!(tags, [("keys/a/lambda", Some(0.0)), ("loss", Some(0.5))]);
        let (events, whole) = read_events(&bytes[..bytes.len() - 3]);
        assert!(!whole);
        assert_eq!(events.len(), 1);
        bytes[one + 14] ^= 1;
        assert_eq!(read_events(&bytes).0.len(), 1);
    }

    /// A column first seen in a later record widens the header, and the rows written before
    /// it are rewritten under it with the new cell empty.
    #[test]
    fn a_new_column_rewrites_the_file_under_the_wider_header() {
        let dir = tempfile::tempdir().unwrap();
        let recs = [
            json!({ "step": 1, "loss": 0.5, "stage": "a,b", "kl": null }),
            json!({ "step": 2, "loss": 0.25, "stage": "a,b", "kl": null, "eval": { "p": { "acc": 1.0 } } }),
            json!({ "step": 3, "loss": 0.125, "stage": "a,b", "kl": 0.5 }),
        ];
        let mut log = CsvLog::open(dir.path(), &[]).unwrap();
        let mut lines = String::new();
        for r in &recs {
            lines.push_str(&format!("{r}\n"));
            std::fs::write(dir.path().join("metrics.jsonl"), &lines).unwrap();
            log.append(r).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(CSV)).unwrap();
        assert_eq!(
            text,
            "step,kl,loss,stage,eval/p/acc\n1,,0.5,\"a,b\",\n2,,0.25,\"a,b\",1.0\n3,0.5,0.125,\"a,b\",\n"
        );
        // Opened again from the same records, the file is the same.
        CsvLog::open(dir.path(), &recs).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(CSV)).unwrap(), text);
    }
}
