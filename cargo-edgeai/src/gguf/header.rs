//! The GGUF header reader: magic, version, metadata, tensor infos, data offset.
//!
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated for it, so a hostile header costs at most a small multiple of the file's real size
//! and never panics. Tensor data is never read; only its extent is checked against the file size.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use serde::Serialize;

use super::types::{removed_ggml_type_name, GgmlType};
use super::value::{GgufArray, GgufValue, GgufValueType};
use crate::{Error, Result};

/// `GGUF` as the first four bytes of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside arrays this reader accepts.
pub const MAX_ARRAY_NESTING: u32 = 16;

const HELP_CORRUPT: &str =
    "the file is incomplete or not a GGUF file; re-download it or re-export it with llama.cpp";

/// One tensor as declared in the GGUF tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GgufTensorInfo {
    /// Tensor name ("blk.0.attn_q.weight").
    pub name: String,
    /// Dimensions in ggml order: `ne[0]` is the row length (innermost).
    pub ne: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from [`GgufHeader::data_offset`].
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements. The reader has checked that this does not overflow.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Bytes of tensor data. The reader has checked that this does not overflow and that the
    /// row length is a whole number of blocks.
    pub fn size_bytes(&self) -> u64 {
        self.ggml_type
            .bytes_for(self.n_elements())
            .unwrap_or(u64::MAX)
    }

    /// Shape outermost dimension first (ggml's `ne` reversed), so `shape().last()` is the row
    /// length, as in safetensors and ONNX.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
}

/// Everything before the tensor data of a GGUF file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs in file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Alignment of the data section (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute file offset where tensor data starts.
    pub data_offset: u64,
    /// Size of the file the header was read from.
    pub file_size: u64,
}

impl GgufHeader {
    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The metadata value for `key` as an unsigned integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    /// The metadata value for `key` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Absolute byte range of `tensor`'s data in the file (checked to lie inside the file when
    /// the header was read).
    pub fn data_range(&self, tensor: &GgufTensorInfo) -> std::ops::Range<u64> {
        let start = self.data_offset.saturating_add(tensor.offset);
        start..start.saturating_add(tensor.size_bytes())
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Encode the header back to bytes (magic through the padding before the data section).
    /// The tensor infos keep their offsets; the caller is responsible for placing the data.
    pub fn encode(&self) -> Vec<u8> {
        encode_header(self.version, &self.metadata, &self.tensors, self.alignment)
    }
}

/// Encode a GGUF header as llama.cpp's `gguf_write_out` does: magic, version, tensor count,
/// metadata count, the metadata pairs in order, the tensor infos in order (`ne` and offsets as
/// given), then zero bytes up to the next multiple of `alignment` (also when there are no
/// tensors, as llama.cpp does).
pub(super) fn encode_header(
    version: u32,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorInfo],
    alignment: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key.as_bytes());
        out.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut out, value);
    }
    for t in tensors {
        put_str(&mut out, t.name.as_bytes());
        out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    let align = usize::try_from(alignment.max(1)).unwrap_or(usize::MAX);
    out.resize(out.len().next_multiple_of(align), 0);
    out
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_value(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => put_str(out, s.as_bytes()),
        GgufValue::RawString(b) => put_str(out, b),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => {
            for s in v {
                put_str(out, s.as_bytes());
            }
        }
        GgufArray::RawString(v) => {
            for s in v {
                put_str(out, s);
            }
        }
        GgufArray::Array(v) => {
            for inner in v {
                put_array(out, inner);
            }
        }
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
    }
}

/// Read the header of the GGUF file at `path`. Reads only the header; tensor data is never
/// touched, but its extent is checked against the file size.
pub fn read_header(path: &Path) -> Result<GgufHeader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_header_from(BufReader::with_capacity(1 << 16, file), len, path)
}

/// Read a GGUF header from `reader`, which must yield the file's bytes from offset 0;
/// `file_len` is the file's full size (every declared length is checked against it) and `path`
/// names the file in errors.
pub fn read_header_from<R: Read>(reader: R, file_len: u64, path: &Path) -> Result<GgufHeader> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        len: file_len,
        path,
    };
    r.read_header()
}

struct Reader<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

/// Fewest bytes one tensor info can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// Fewest bytes one metadata pair can take: key length, type, one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;

impl<R: Read> Reader<'_, R> {
    fn corrupt(&self, what: impl std::fmt::Display, at: u64) -> Error {
        Error::model(
            self.path,
            format!("truncated or corrupt GGUF header: {what} at byte {at}"),
            HELP_CORRUPT,
        )
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fail unless `n` more bytes exist in the file.
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(self.corrupt(
                format!(
                    "{} needs {n} bytes but only {} remain",
                    what(),
                    self.remaining()
                ),
                self.pos,
            ));
        }
        Ok(())
    }

    fn read_bytes(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        self.need(buf.len() as u64, what)?;
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                Err(self.corrupt(format!("{} (the file ended early)", what()), self.pos))
            }
            Err(e) => Err(Error::io(self.path, e)),
        }
    }

    fn read_vec(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        self.need(n, what)?;
        let n = usize::try_from(n).map_err(|_| self.corrupt(what(), self.pos))?;
        let mut buf = vec![0u8; n];
        self.read_bytes(&mut buf, what)?;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.read_bytes(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A key or tensor name. These are ASCII in every known file; an invalid UTF-8 sequence is
    /// replaced with U+FFFD (such a file does not round-trip byte for byte).
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let bytes = self.string_bytes(what)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A length-prefixed string's raw bytes.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let at = self.pos;
        let n = self.u64(&|| format!("length of {}", what()))?;
        if n > self.remaining() {
            return Err(self.corrupt(
                format!(
                    "{} declares a string of {n} bytes but only {} remain",
                    what(),
                    self.remaining()
                ),
                at,
            ));
        }
        self.read_vec(n, what)
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<GgufValueType> {
        let at = self.pos;
        let id = self.u32(&|| format!("type of {}", what()))?;
        GgufValueType::from_id(id)
            .ok_or_else(|| self.corrupt(format!("unknown value type {id} for {}", what()), at))
    }

    fn value(&mut self, ty: GgufValueType, what: &dyn Fn() -> String) -> Result<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            GgufValueType::Bool => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            GgufValueType::String => GgufValue::from_str_bytes(self.string_bytes(what)?),
            GgufValueType::Array => GgufValue::Array(self.array_value(0, what)?),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    /// A packed array of `count` fixed-size elements of `N` bytes each.
    fn packed<const N: usize, T>(
        &mut self,
        count: u64,
        conv: fn([u8; N]) -> T,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<T>> {
        let bytes = count.saturating_mul(N as u64);
        let raw = self.read_vec(bytes, what)?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn array_value(&mut self, depth: u32, what: &dyn Fn() -> String) -> Result<GgufArray> {
        let at = self.pos;
        if depth >= MAX_ARRAY_NESTING {
            return Err(self.corrupt(
                format!("{} nests arrays more than {MAX_ARRAY_NESTING} deep", what()),
                at,
            ));
        }
        let elem = self.value_type(&|| format!("array element type of {}", what()))?;
        let count_at = self.pos;
        let count = self.u64(&|| format!("array length of {}", what()))?;
        // Bound the count by the bytes left before allocating anything for it.
        let min = elem.min_size(3);
        if count.saturating_mul(min) > self.remaining() {
            return Err(self.corrupt(
                format!(
                    "{} declares an array of {count} elements but only {} bytes remain",
                    what(),
                    self.remaining()
                ),
                count_at,
            ));
        }
        // `count * min <= remaining`, so `count` fits in memory terms of the file size.
        let cap = usize::try_from(count).unwrap_or(0);
        Ok(match elem {
            GgufValueType::U8 => GgufArray::U8(self.read_vec(count, what)?),
            GgufValueType::I8 => GgufArray::I8(self.packed(count, i8::from_le_bytes, what)?),
            GgufValueType::U16 => GgufArray::U16(self.packed(count, u16::from_le_bytes, what)?),
            GgufValueType::I16 => GgufArray::I16(self.packed(count, i16::from_le_bytes, what)?),
            GgufValueType::U32 => GgufArray::U32(self.packed(count, u32::from_le_bytes, what)?),
            GgufValueType::I32 => GgufArray::I32(self.packed(count, i32::from_le_bytes, what)?),
            GgufValueType::F32 => GgufArray::F32(self.packed(count, f32::from_le_bytes, what)?),
            GgufValueType::U64 => GgufArray::U64(self.packed(count, u64::from_le_bytes, what)?),
            GgufValueType::I64 => GgufArray::I64(self.packed(count, i64::from_le_bytes, what)?),
            GgufValueType::F64 => GgufArray::F64(self.packed(count, f64::from_le_bytes, what)?),
            GgufValueType::Bool => {
                GgufArray::Bool(self.packed(count, |[b]: [u8; 1]| b != 0, what)?)
            }
            GgufValueType::String => {
                let mut v = Vec::with_capacity(cap);
                for i in 0..count {
                    v.push(self.string_bytes(&|| format!("element {i} of {}", what()))?);
                }
                GgufArray::from_str_bytes(v)
            }
            GgufValueType::Array => {
                let mut v = Vec::with_capacity(cap);
                for i in 0..count {
                    v.push(self.array_value(depth + 1, &|| format!("element {i} of {}", what()))?);
                }
                GgufArray::Array(v)
            }
        })
    }

    fn read_header(&mut self) -> Result<GgufHeader> {
        let magic: [u8; 4] = self.array(&|| "the GGUF magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(bad_magic(self.path, magic));
        }
        let version = self.u32(&|| "the version".to_string())?;
        check_version(self.path, version)?;

        let n_tensors_at = self.pos;
        let n_tensors = self.u64(&|| "the tensor count".to_string())?;
        let n_kv_at = self.pos;
        let n_kv = self.u64(&|| "the metadata count".to_string())?;
        if n_kv.saturating_mul(MIN_KV) > self.remaining() {
            return Err(self.corrupt(
                format!(
                    "metadata count {n_kv} cannot fit in the {} bytes left",
                    self.remaining()
                ),
                n_kv_at,
            ));
        }
        if n_tensors.saturating_mul(MIN_TENSOR_INFO) > self.remaining() {
            return Err(self.corrupt(
                format!(
                    "tensor count {n_tensors} cannot fit in the {} bytes left",
                    self.remaining()
                ),
                n_tensors_at,
            ));
        }

        let mut metadata = Vec::with_capacity(usize::try_from(n_kv).unwrap_or(0));
        let mut seen = HashSet::new();
        for i in 0..n_kv {
            let key_at = self.pos;
            let key = self.string(&|| format!("metadata key #{i}"))?;
            let ty = self.value_type(&|| format!("metadata `{key}`"))?;
            let value = self.value(ty, &|| format!("metadata `{key}`"))?;
            if !seen.insert(key.clone()) {
                return Err(self.corrupt(format!("duplicate metadata key `{key}`"), key_at));
            }
            metadata.push((key, value));
        }

        let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let info_at = self.pos;
            let name = self.string(&|| format!("name of tensor #{i}"))?;
            let dims_at = self.pos;
            let n_dims = self.u32(&|| format!("n_dims of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(self.corrupt(
                    format!(
                        "tensor `{name}` has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
                    ),
                    dims_at,
                ));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            let mut elements = 1u64;
            for d in 0..n_dims {
                let at = self.pos;
                let v = self.u64(&|| format!("dimension {d} of tensor `{name}`"))?;
                elements = match elements.checked_mul(v) {
                    Some(e) if v <= i64::MAX as u64 && e <= i64::MAX as u64 => e,
                    _ => {
                        return Err(self.corrupt(
                            format!("tensor `{name}` has an impossible dimension {v}"),
                            at,
                        ))
                    }
                };
                ne.push(v);
            }
            let type_at = self.pos;
            let type_id = self.u32(&|| format!("type of tensor `{name}`"))?;
            let ggml_type = match GgmlType::from_id(type_id) {
                Some(t) => t,
                None => return Err(unknown_type(self.path, &name, type_id, type_at)),
            };
            let row = ne.first().copied().unwrap_or(1);
            if row % ggml_type.block_size() != 0 {
                return Err(self.corrupt(
                    format!(
                        "tensor `{name}` has rows of {row} elements, not a multiple of the {} block size {}",
                        ggml_type,
                        ggml_type.block_size()
                    ),
                    dims_at,
                ));
            }
            if ggml_type.bytes_for(elements).is_none() {
                return Err(self.corrupt(format!("tensor `{name}` is impossibly large"), dims_at));
            }
            let offset = self.u64(&|| format!("data offset of tensor `{name}`"))?;
            if !names.insert(name.clone()) {
                return Err(self.corrupt(format!("duplicate tensor name `{name}`"), info_at));
            }
            tensors.push(GgufTensorInfo {
                name,
                ne,
                ggml_type,
                offset,
            });
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(Error::model(
                        self.path,
                        format!("GGUF `general.alignment` is {v:?}, not a power of two"),
                        HELP_CORRUPT,
                    ))
                }
            },
        };
        let data_offset = self
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.corrupt("the data section offset overflows", self.pos))?;

        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(Error::model(
                    self.path,
                    format!(
                        "corrupt GGUF header: tensor `{}` data offset {} is not a multiple of the alignment {alignment}",
                        t.name, t.offset
                    ),
                    HELP_CORRUPT,
                ));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size_bytes()));
            match (start, end) {
                (Some(_), Some(end)) if end <= self.len => {}
                (start, _) => {
                    return Err(Error::model(
                        self.path,
                        format!(
                            "truncated GGUF file: tensor `{}` needs bytes {}..+{} but the file has only {} bytes",
                            t.name,
                            start.map_or_else(|| "(overflow)".to_string(), |s| s.to_string()),
                            t.size_bytes(),
                            self.len
                        ),
                        "the file is incomplete (an interrupted download or copy?); re-download it or re-export it with llama.cpp",
                    ));
                }
            }
        }

        // With tensors, the checks above already place the data section inside the file. A
        // header without tensors must still be followed by its alignment padding (llama.cpp
        // and gguf-py always write it): otherwise an absurd `general.alignment` would make
        // the data section start far past the end of the file, and re-encoding the header
        // would allocate that padding.
        if data_offset > self.len {
            return Err(Error::model(
                self.path,
                format!(
                    "truncated GGUF file: the header ends at byte {} and its padding to the alignment {alignment} runs to byte {data_offset}, past the end of the file ({} bytes)",
                    self.pos, self.len
                ),
                "the file is incomplete (an interrupted download or copy?) or its general.alignment is corrupt; re-download it or re-export it with llama.cpp",
            ));
        }

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size: self.len,
        })
    }
}

fn bad_magic(path: &Path, magic: [u8; 4]) -> Error {
    let legacy = matches!(&magic, b"lmgg" | b"fmgg" | b"tjgg" | b"algg");
    if legacy {
        Error::model(
            path,
            "this is a pre-GGUF GGML/GGJT file, which llama.cpp no longer loads",
            "convert it with llama.cpp's convert_llama_ggml_to_gguf.py, or download a .gguf build of the model",
        )
    } else {
        Error::model(
            path,
            format!(
                "not a GGUF file: it starts with {:02x?} instead of the magic `GGUF`",
                magic
            ),
            HELP_CORRUPT,
        )
    }
}

fn check_version(path: &Path, version: u32) -> Result<()> {
    match version {
        2 | 3 => Ok(()),
        1 => Err(Error::model(
            path,
            "GGUF version 1 is not supported",
            "GGUF v1 files predate llama.cpp's August 2023 format change; re-convert the model with a current llama.cpp (convert_hf_to_gguf.py) or download a newer .gguf",
        )),
        v if v != 0 && v & 0xFFFF == 0 => Err(Error::model(
            path,
            format!(
                "this looks like a big-endian GGUF file (version field {v:#010x}), which is not supported"
            ),
            "re-export the model as a little-endian GGUF with llama.cpp (the default)",
        )),
        v => Err(Error::model(
            path,
            format!("unsupported GGUF version {v} (cargo-edgeai reads versions 2 and 3)"),
            "re-export the model with llama.cpp as GGUF v3, or update cargo-edgeai",
        )),
    }
}

fn unknown_type(path: &Path, name: &str, id: u32, at: u64) -> Error {
    match removed_ggml_type_name(id) {
        Some(old) => Error::model(
            path,
            format!("tensor `{name}` uses ggml type {id} ({old}), which llama.cpp has removed (at byte {at})"),
            "re-quantize the model from its original weights with a current llama.cpp",
        ),
        None => Error::model(
            path,
            format!("truncated or corrupt GGUF header: tensor `{name}` has unknown ggml type {id} at byte {at}"),
            "the file is corrupt or uses a ggml type newer than cargo-edgeai knows; re-download it, or update cargo-edgeai",
        ),
    }
}
