//! A small reader of TensorBoard event files for the tests, written apart from the runtime's
//! writer so that the two cannot share a mistake: TFRecord framing with both masked CRC32Cs
//! checked, and the few protobuf fields of `Event`, `Summary` and `Summary.Value` decoded by
//! hand.

use std::path::{Path, PathBuf};

/// One event: its step, wall time, file version (the first event) and scalars.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub step: i64,
    pub wall_time: f64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
}

fn masked(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

/// The fields of a message: (number, wire type, bytes of the value).
fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let (num, wire) = (key >> 3, key & 7);
        let start = i;
        let len = match wire {
            0 => {
                varint(b, &mut i);
                0
            }
            1 => 8,
            5 => 4,
            2 => varint(b, &mut i) as usize,
            w => panic!("wire type {w}"),
        };
        let from = if wire == 0 { start } else { i };
        let to = if wire == 0 { i } else { i + len };
        out.push((num, wire, &b[from..to]));
        i = to;
    }
    out
}

fn decode(data: &[u8]) -> Event {
    let mut e = Event {
        step: 0,
        wall_time: 0.0,
        file_version: None,
        scalars: Vec::new(),
    };
    for (num, _, v) in fields(data) {
        match num {
            1 => e.wall_time = f64::from_le_bytes(v.try_into().unwrap()),
            2 => e.step = varint(v, &mut 0) as i64,
            3 => e.file_version = Some(String::from_utf8(v.to_vec()).unwrap()),
            5 => {
                for (n, _, value) in fields(v) {
                    assert_eq!(n, 1, "a summary holds only values");
                    let (mut tag, mut x) = (None, None);
                    for (m, wire, f) in fields(value) {
                        match (m, wire) {
                            (1, 2) => tag = Some(String::from_utf8(f.to_vec()).unwrap()),
                            (2, 5) => x = Some(f32::from_le_bytes(f.try_into().unwrap())),
                            other => panic!("unexpected summary value field {other:?}"),
                        }
                    }
                    e.scalars
                        .push((tag.expect("a tag"), x.expect("a simple value")));
                }
            }
            n => panic!("unexpected event field {n}"),
        }
    }
    e
}

/// Every event of `bytes`; panics on a bad checksum or a cut record.
pub fn read(bytes: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let len_crc = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
        assert_eq!(masked(len_bytes), len_crc, "length checksum at byte {i}");
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = &bytes[i + 12..i + 12 + len];
        let crc = u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap());
        assert_eq!(masked(data), crc, "data checksum at byte {i}");
        events.push(decode(data));
        i += 16 + len;
    }
    events
}

/// The one event file in `run`.
pub fn file(run: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}
