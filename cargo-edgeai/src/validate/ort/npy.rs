//! NumPy `.npy` arrays and `.npz` archives (stored or deflated), read into raw little-endian
//! tensors for ONNX Runtime. Bounded: every length is checked against the bytes present.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Element types the validator feeds to ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// NumPy's `descr` for little-endian data (`<f4`), as written by `np.save`.
    fn from_descr(d: &str) -> Option<Dtype> {
        Some(match d {
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            "<f2" => Dtype::F16,
            "<i8" => Dtype::I64,
            "<i4" => Dtype::I32,
            "|i1" => Dtype::I8,
            "|u1" => Dtype::U8,
            "|b1" => Dtype::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The ONNX spelling (`float32`, `int64`), used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }
}

/// One array: shape and little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Array {
    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Array {
        Array {
            dtype: Dtype::I64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn bad(path: &Path, message: String) -> Error {
    Error::Usage {
        message: format!("{}: {message}", path.display()),
        help: "inputs are NumPy files written by np.save (.npy) or np.savez / np.savez_compressed (.npz), little-endian, C order".into(),
    }
}

/// Parse one `.npy` file's bytes (`what` names it in errors).
pub fn parse_npy(bytes: &[u8], what: &Path) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(what, "not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(what, format!("unsupported .npy version {major}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| bad(what, "truncated .npy header".into()))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad(what, ".npy header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| bad(what, "no descr in the .npy header".into()))?;
    let dtype = Dtype::from_descr(descr).ok_or_else(|| {
        bad(
            what,
            format!("dtype `{descr}` is not supported (float32/64/16, int64/32/8, uint8, bool, little-endian)"),
        )
    })?;
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad(what, "Fortran-order arrays are not supported".into()));
    }
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| bad(what, "no shape in the .npy header".into()))?;
    let mut shape = Vec::new();
    for part in shape_text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| bad(what, format!("bad dimension `{part}` in the shape")))?,
        );
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(what, "shape overflows".into()))?;
    if bytes.len() - end != count {
        return Err(bad(
            what,
            format!(
                "shape {shape:?} of {} needs {count} data bytes but the file has {}",
                dtype.name(),
                bytes.len() - end
            ),
        ));
    }
    Ok(Array {
        dtype,
        shape,
        data: bytes[end..].to_vec(),
    })
}

/// Read a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

fn le16(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
}
fn le32(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Read a `.npz` archive: (array name without `.npy`, array), in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Array)>> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = || bad(path, "not a readable .npz (zip) archive".into());
    // End of central directory: the last PK\x05\x06 within the final 64 KiB + 22 bytes.
    let from = b.len().saturating_sub(65_557);
    let eocd = (from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| &b[i..i + 4] == b"PK\x05\x06")
        .ok_or_else(corrupt)?;
    let entries = le16(&b, eocd + 10).ok_or_else(corrupt)?;
    let mut at = le32(&b, eocd + 16).ok_or_else(corrupt)?;
    let mut out = Vec::new();
    for _ in 0..entries {
        if b.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(corrupt());
        }
        let method = le16(&b, at + 10).ok_or_else(corrupt)?;
        let mut csize = le32(&b, at + 20).ok_or_else(corrupt)?;
        let mut usize_ = le32(&b, at + 24).ok_or_else(corrupt)?;
        let name_len = le16(&b, at + 28).ok_or_else(corrupt)?;
        let extra_len = le16(&b, at + 30).ok_or_else(corrupt)?;
        let comment_len = le16(&b, at + 32).ok_or_else(corrupt)?;
        let mut local = le32(&b, at + 42).ok_or_else(corrupt)?;
        let name = b
            .get(at + 46..at + 46 + name_len)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .ok_or_else(corrupt)?;
        // numpy writes zip64 extra fields for large members (force_zip64 or > 4 GiB).
        let extra = b
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(corrupt)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = le16(extra, e).unwrap_or(0);
            let len = le16(extra, e + 2).unwrap_or(0);
            if id == 1 {
                let mut f = e + 4;
                let mut take = |v: &mut usize| {
                    if *v == 0xFFFF_FFFF {
                        if let Some(s) = extra.get(f..f + 8) {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(s);
                            *v = u64::from_le_bytes(a) as usize;
                        }
                        f += 8;
                    }
                };
                take(&mut usize_);
                take(&mut csize);
                take(&mut local);
            }
            e += 4 + len;
        }
        at += 46 + name_len + extra_len + comment_len;
        if b.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(corrupt());
        }
        let lname = le16(&b, local + 26).ok_or_else(corrupt)?;
        let lextra = le16(&b, local + 28).ok_or_else(corrupt)?;
        let data_at = local + 30 + lname + lextra;
        let raw = b
            .get(data_at..data_at.checked_add(csize).ok_or_else(corrupt)?)
            .ok_or_else(corrupt)?;
        let member = Path::new(&name);
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut v = Vec::with_capacity(usize_.min(1 << 30));
                flate2::read::DeflateDecoder::new(raw)
                    .take(usize_ as u64 + 1)
                    .read_to_end(&mut v)
                    .map_err(|_| bad(path, format!("member {name}: corrupt deflate data")))?;
                v
            }
            m => {
                return Err(bad(
                    path,
                    format!("member {name}: zip compression method {m} is not supported"),
                ))
            }
        };
        let shown = path.join(member);
        let array = parse_npy(&data, &shown)?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((key, array));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_npy_header_and_checks_size() {
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut header = h.to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        f.extend((header.len() as u16).to_le_bytes());
        f.extend(header.as_bytes());
        f.extend([0u8; 24]);
        let a = parse_npy(&f, Path::new("x.npy")).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.dtype, Dtype::F32);
        f.pop();
        assert!(parse_npy(&f, Path::new("x.npy")).is_err());
    }
}
