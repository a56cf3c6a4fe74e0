//! safetensors header reading.
//!
//! A safetensors file is an 8-byte little-endian header length `N`, `N` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`), then the data area.
//! Only the length and the JSON are read; the length is checked against the file size and a
//! 100 MB cap before anything is allocated, and every tensor's extent is checked against the data
//! area.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::facts::TensorFact;
use crate::{Error, Result};

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

const HELP_CORRUPT: &str =
    "the file is incomplete or not a safetensors file; re-download it, or re-save the weights with the safetensors library";

/// One tensor entry of the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetensorsTensor {
    /// Tensor name.
    pub name: String,
    /// Element type as written in the file ("F32", "BF16", "F8_E4M3", ...).
    pub dtype: String,
    /// Shape, outermost dimension first.
    pub shape: Vec<u64>,
    /// Byte range `[begin, end)` relative to the start of the data area.
    pub data_offsets: (u64, u64),
}

impl SafetensorsTensor {
    /// Number of elements (checked for overflow when the header was read).
    pub fn elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The tensor as a [`TensorFact`].
    pub fn to_fact(&self) -> TensorFact {
        TensorFact {
            name: self.name.clone(),
            shape: self.shape.clone(),
            dtype: self.dtype.clone(),
        }
    }
}

/// The parsed header of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetensorsHeader {
    /// Length of the JSON header in bytes.
    pub header_len: u64,
    /// `__metadata__` entries in file order (non-string values are kept as their JSON text).
    pub metadata: Vec<(String, String)>,
    /// Tensors in header order.
    pub tensors: Vec<SafetensorsTensor>,
    /// Size of the whole file.
    pub file_size: u64,
}

impl SafetensorsHeader {
    /// Absolute file offset of the data area.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&SafetensorsTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Bits per element of a safetensors dtype, or `None` for a dtype this reader does not know.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Read the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_header_from(BufReader::new(file), len, path)
}

/// Read a safetensors header from `reader` (positioned at the start of the file); `file_len` is
/// the size of the whole file and `path` names it in errors.
pub fn read_header_from<R: Read>(
    mut reader: R,
    file_len: u64,
    path: &Path,
) -> Result<SafetensorsHeader> {
    let eof = |e: std::io::Error| {
        if e.kind() == ErrorKind::UnexpectedEof {
            Error::model(
                path,
                "truncated safetensors file: the header ended early",
                HELP_CORRUPT,
            )
        } else {
            Error::io(path, e)
        }
    };
    if file_len < 8 {
        return Err(Error::model(
            path,
            format!("a file of {file_len} bytes is too short to be safetensors (8-byte header length missing)"),
            HELP_CORRUPT,
        ));
    }
    let mut len_bytes = [0u8; 8];
    reader.read_exact(&mut len_bytes).map_err(eof)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 {
        return Err(Error::model(
            path,
            format!("safetensors header length {header_len} is beyond the file size {file_len}"),
            HELP_CORRUPT,
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(Error::model(
            path,
            format!(
                "safetensors header length {header_len} is over the {MAX_HEADER_LEN}-byte limit"
            ),
            HELP_CORRUPT,
        ));
    }
    // Both checks above bound the allocation by the file size and 100 MB.
    let mut json = vec![0u8; header_len as usize];
    reader.read_exact(&mut json).map_err(eof)?;
    let data_len = file_len - 8 - header_len;
    parse_json(&json, header_len, data_len, file_len, path)
}

fn parse_json(
    json: &[u8],
    header_len: u64,
    data_len: u64,
    file_size: u64,
    path: &Path,
) -> Result<SafetensorsHeader> {
    let bad = |msg: String| Error::model(path, msg, HELP_CORRUPT);
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| bad(format!("safetensors header is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bad("safetensors header is not a JSON object".to_string()));
    };
    let mut metadata = Vec::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            let Value::Object(m) = entry else {
                return Err(bad(
                    "safetensors `__metadata__` is not a JSON object".to_string()
                ));
            };
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                metadata.push((k, v));
            }
            continue;
        }
        tensors.push(parse_tensor(name, &entry, data_len, &bad)?);
    }
    Ok(SafetensorsHeader {
        header_len,
        metadata,
        tensors,
        file_size,
    })
}

fn parse_tensor(
    name: String,
    entry: &Value,
    data_len: u64,
    bad: &dyn Fn(String) -> Error,
) -> Result<SafetensorsTensor> {
    let dtype = entry
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("safetensors tensor `{name}` has no string `dtype`")))?
        .to_string();
    let bits = dtype_bits(&dtype).ok_or_else(|| {
        bad(format!(
            "safetensors tensor `{name}` has unknown dtype `{dtype}`"
        ))
    })?;
    let shape_json = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("safetensors tensor `{name}` has no `shape` array")))?;
    let mut shape = Vec::with_capacity(shape_json.len());
    let mut elements = 1u64;
    for d in shape_json {
        let d = d.as_u64().ok_or_else(|| {
            bad(format!(
                "safetensors tensor `{name}` has a shape entry {d} that is not a non-negative integer"
            ))
        })?;
        elements = elements.checked_mul(d).ok_or_else(|| {
            bad(format!(
                "safetensors tensor `{name}` has an impossibly large shape"
            ))
        })?;
        shape.push(d);
    }
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| {
            bad(format!(
                "safetensors tensor `{name}` has no `data_offsets` pair of non-negative integers"
            ))
        })?;
    let (begin, end) = offsets;
    if begin > end || end > data_len {
        return Err(bad(format!(
            "safetensors tensor `{name}` has data_offsets [{begin}, {end}] outside the data area of {data_len} bytes"
        )));
    }
    let bits_total = elements.checked_mul(bits).ok_or_else(|| {
        bad(format!(
            "safetensors tensor `{name}` has an impossibly large shape"
        ))
    })?;
    if bits_total % 8 != 0 || bits_total / 8 != end - begin {
        return Err(bad(format!(
            "safetensors tensor `{name}` ({dtype} {shape:?}) needs {} bytes but data_offsets [{begin}, {end}] hold {}",
            bits_total.div_ceil(8),
            end - begin
        )));
    }
    Ok(SafetensorsTensor {
        name,
        dtype,
        shape,
        data_offsets: offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }

    fn parse(bytes: &[u8]) -> Result<SafetensorsHeader> {
        read_header_from(bytes, bytes.len() as u64, Path::new("t.safetensors"))
    }

    fn message(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(Error::InvalidModel {
                message,
                path,
                help,
            }) => {
                assert_eq!(path, Path::new("t.safetensors"));
                assert!(!help.is_empty());
                message
            }
            other => panic!("expected InvalidModel, got {other:?}"),
        }
    }

    const VALID: &str = r#"{"b":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"__metadata__":{"format":"pt","n":3},"a":{"dtype":"F4","shape":[4],"data_offsets":[12,14]},"s":{"dtype":"I64","shape":[],"data_offsets":[14,22]}}"#;

    #[test]
    fn reads_a_valid_header_in_order() {
        let bytes = file(VALID, 22);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.header_len, VALID.len() as u64);
        assert_eq!(h.data_start(), 8 + VALID.len() as u64);
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "s"]);
        assert_eq!(
            h.metadata,
            vec![("format".into(), "pt".into()), ("n".into(), "3".into())]
        );
        let b = h.tensor("b").unwrap();
        assert_eq!(
            (b.dtype.as_str(), b.shape.clone(), b.data_offsets),
            ("F16", vec![2, 3], (0, 12))
        );
        assert_eq!(
            h.tensor("s").unwrap().elements(),
            1,
            "a scalar has one element"
        );
        assert_eq!(h.tensor("a").unwrap().to_fact().dtype, "F4");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = file(VALID, 22);
        for cut in 0..bytes.len() {
            let _ = message(&bytes[..cut]);
        }
        // A reader that yields less than the declared size.
        let r = read_header_from(&bytes[..20], bytes.len() as u64, Path::new("t.safetensors"));
        assert!(matches!(r, Err(Error::InvalidModel { .. })));
    }

    #[test]
    fn header_length_is_checked_before_allocating() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert_eq!(
            message(&bytes),
            "safetensors header length 18446744073709551615 is beyond the file size 10"
        );
        // Within a (claimed) huge file, but over the 100 MB cap.
        let mut big = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        let r = read_header_from(&big[..], 1 << 40, Path::new("t.safetensors"));
        match r {
            Err(Error::InvalidModel { message, .. }) => {
                assert!(message.contains("limit"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(message(b"\x02\0\0").contains("too short"));
    }

    #[test]
    fn bad_entries_are_rejected() {
        let cases = [
            (r#"[1,2]"#, 0, "not a JSON object"),
            (r#"{"a":"#, 0, "not valid JSON"),
            (r#"{"__metadata__":[]}"#, 0, "`__metadata__` is not"),
            (
                r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#,
                1,
                "unknown dtype `Q9`",
            ),
            (
                r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#,
                1,
                "no string `dtype`",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                1,
                "not a non-negative integer",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}"#,
                1,
                "no `shape` array",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#,
                1,
                "no `data_offsets`",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}"#,
                1,
                "outside the data area",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#,
                1,
                "outside the data area",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                8,
                "needs 8 bytes",
            ),
            (
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                8,
                "needs 2 bytes",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,1]}}"#,
                1,
                "impossibly large",
            ),
            (
                r#"{"a":{"dtype":"F64","shape":[4294967296,4294967295],"data_offsets":[0,1]}}"#,
                1,
                "impossibly large",
            ),
        ];
        for (json, data, want) in cases {
            let msg = message(&file(json, data));
            assert!(msg.contains(want), "{json}: want {want:?} in {msg:?}");
        }
    }

    #[test]
    fn dtype_table() {
        assert_eq!(dtype_bits("BF16"), Some(16));
        assert_eq!(dtype_bits("F8_E4M3"), Some(8));
        assert_eq!(dtype_bits("BOOL"), Some(8));
        assert_eq!(dtype_bits("F6_E2M3"), Some(6));
        assert_eq!(dtype_bits("bf16"), None);
    }
}
