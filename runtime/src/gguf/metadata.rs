//! Typed access to GGUF metadata: takes candle's `key -> Value` map and gives integers, floats,
//! strings and arrays, with errors that name the file and the key. Also a small walk over a GGUF
//! header that finds the tensor stored in a type candle cannot parse, for a precise error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::{GgufError, Result};

/// The metadata of one GGUF file, with the file's path for error messages.
pub(crate) struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl<'a> Meta<'a> {
    pub(crate) fn new(path: &'a Path, map: &'a HashMap<String, Value>) -> Self {
        Meta { path, map }
    }

    pub(crate) fn path(&self) -> &Path {
        self.path
    }

    fn err(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.err(key, "missing"))
    }

    /// An unsigned integer of any width; `None` when the key is absent.
    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(value) = self.map.get(key) else {
            return Ok(None);
        };
        as_u64(value).map(Some).ok_or_else(|| {
            self.err(
                key,
                format!("expected a non-negative integer, found {}", describe(value)),
            )
        })
    }

    pub(crate) fn u64(&self, key: &str) -> Result<u64> {
        let value = self.opt_u64(key)?;
        self.required(key, value)
    }

    /// A float. f32 values are given as the shortest decimal that reads back as the same f32
    /// (1e-5, not 9.999999747378752e-6), which is what the HF config held before conversion.
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(value) = self.map.get(key) else {
            return Ok(None);
        };
        let float = match value {
            Value::F32(v) => v.to_string().parse::<f64>().ok(),
            Value::F64(v) => Some(*v),
            other => as_u64(other).map(|v| v as f64),
        };
        float
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected a number, found {}", describe(value))))
    }

    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.err(key, format!("expected a string, found {}", describe(other))))
            }
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<String> {
        let value = self.opt_string(key)?;
        self.required(key, value)
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(
                key,
                format!("expected a boolean, found {}", describe(other)),
            )),
        }
    }

    /// An array of strings; `None` when the key is absent.
    pub(crate) fn opt_strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(value) = self.map.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.err(
                key,
                format!("expected an array of strings, found {}", describe(value)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.err(
                    key,
                    format!("element {i}: expected a string, found {}", describe(other)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers of any width and sign; `None` when the key is absent.
    pub(crate) fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(value) = self.map.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.err(
                key,
                format!("expected an array of integers, found {}", describe(value)),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                as_i64(item).ok_or_else(|| {
                    self.err(
                        key,
                        format!("element {i}: expected an integer, found {}", describe(item)),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An error about `key` with a free-form message, for checks made by the callers.
    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> GgufError {
        self.err(key, message)
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::I8(v) => Some(*v as i64),
        Value::I16(v) => Some(*v as i64),
        Value::I32(v) => Some(*v as i64),
        Value::I64(v) => Some(*v),
        other => as_u64(other).and_then(|v| i64::try_from(v).ok()),
    }
}

/// A short description of a value for error messages (arrays by length, not content).
fn describe(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("an array of {} elements", items.len()),
        Value::String(s) => format!("the string {s:?}"),
        other => format!("{other:?}"),
    }
}

/// The ggml type codes that candle's GGUF reader accepts.
const KNOWN_DTYPE_CODES: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// Walks the header of the GGUF file at `path` and gives the first tensor whose storage type code
/// candle does not know, with that code. Used only after candle's reader failed, to say which
/// tensor is at fault; any problem with the walk itself gives `Ok(None)` or an error, and the
/// caller then reports candle's own message.
pub(crate) fn find_unknown_dtype(path: &Path) -> std::io::Result<Option<(String, u32)>> {
    let mut r = BufReader::new(File::open(path)?);
    let magic = read_u32(&mut r)?;
    if magic != 0x4655_4747 {
        return Ok(None);
    }
    let version = read_u32(&mut r)?;
    // Version 1 used 32-bit lengths and counts; later versions use 64-bit ones.
    let wide = version >= 2;
    let tensor_count = read_len(&mut r, wide)?;
    let kv_count = read_len(&mut r, wide)?;
    for _ in 0..kv_count {
        skip_string(&mut r, wide)?;
        let value_type = read_u32(&mut r)?;
        skip_value(&mut r, value_type, wide, 0)?;
    }
    for _ in 0..tensor_count {
        let name = read_string(&mut r, wide)?;
        let dims = read_u32(&mut r)?;
        for _ in 0..dims {
            read_len(&mut r, wide)?;
        }
        let dtype = read_u32(&mut r)?;
        let _offset = read_u64(&mut r)?;
        if !KNOWN_DTYPE_CODES.contains(&dtype) {
            return Ok(Some((name, dtype)));
        }
    }
    Ok(None)
}

fn bad(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_string())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_len(r: &mut impl Read, wide: bool) -> std::io::Result<u64> {
    if wide {
        read_u64(r)
    } else {
        read_u32(r).map(u64::from)
    }
}

fn skip_bytes(r: &mut impl Read, n: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    if copied != n {
        return Err(bad("truncated header"));
    }
    Ok(())
}

fn skip_string(r: &mut impl Read, wide: bool) -> std::io::Result<()> {
    let len = read_len(r, wide)?;
    skip_bytes(r, len)
}

fn read_string(r: &mut impl Read, wide: bool) -> std::io::Result<String> {
    let len = read_len(r, wide)?;
    if len > 1 << 20 {
        return Err(bad("tensor name too long"));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn skip_value(r: &mut impl Read, value_type: u32, wide: bool, depth: u32) -> std::io::Result<()> {
    match value_type {
        0 | 1 | 7 => skip_bytes(r, 1),
        2 | 3 => skip_bytes(r, 2),
        4..=6 => skip_bytes(r, 4),
        10..=12 => skip_bytes(r, 8),
        8 => skip_string(r, wide),
        9 => {
            if depth > 8 {
                return Err(bad("arrays nested too deeply"));
            }
            let item_type = read_u32(r)?;
            let len = read_len(r, wide)?;
            for _ in 0..len {
                skip_value(r, item_type, wide, depth + 1)?;
            }
            Ok(())
        }
        _ => Err(bad("unknown metadata value type")),
    }
}
