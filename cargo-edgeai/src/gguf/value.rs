//! Typed GGUF metadata values.

use serde::Serialize;

/// The on-disk type tag of a GGUF metadata value (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u32)]
pub enum GgufValueType {
    /// `uint8`.
    U8 = 0,
    /// `int8`.
    I8 = 1,
    /// `uint16`.
    U16 = 2,
    /// `int16`.
    I16 = 3,
    /// `uint32`.
    U32 = 4,
    /// `int32`.
    I32 = 5,
    /// `float32`.
    F32 = 6,
    /// `bool` (one byte, 0 or 1).
    Bool = 7,
    /// Length-prefixed UTF-8 string.
    String = 8,
    /// Typed array: element type, count, elements.
    Array = 9,
    /// `uint64`.
    U64 = 10,
    /// `int64`.
    I64 = 11,
    /// `float64`.
    F64 = 12,
}

impl GgufValueType {
    /// The type with on-disk tag `id`.
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk tag.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<u64> {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type can occupy on disk (a string's length prefix,
    /// an array's type tag and count). Used to bound allocations by the bytes left in the file.
    pub fn min_size(self, version: u32) -> u64 {
        let len = if version == 1 { 4 } else { 8 };
        match self {
            GgufValueType::String => len,
            GgufValueType::Array => 4 + len,
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

/// One metadata value.
///
/// Strings that are valid UTF-8 are [`GgufValue::String`]; llama.cpp treats strings as opaque
/// bytes, so the rare string that is not valid UTF-8 is kept verbatim as
/// [`GgufValue::RawString`] (both have the on-disk type `string`), which lets a file be
/// rewritten byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// String.
    String(String),
    /// Array of one element type.
    Array(GgufArray),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
    /// A `string` whose bytes are not valid UTF-8, kept verbatim (serialized lossily).
    #[serde(serialize_with = "lossy")]
    RawString(Vec<u8>),
}

/// A typed GGUF array. Numeric arrays are stored packed (one Rust value per file value) so that
/// memory stays proportional to the bytes in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GgufArray {
    /// `uint8[]`.
    U8(Vec<u8>),
    /// `int8[]`.
    I8(Vec<i8>),
    /// `uint16[]`.
    U16(Vec<u16>),
    /// `int16[]`.
    I16(Vec<i16>),
    /// `uint32[]`.
    U32(Vec<u32>),
    /// `int32[]`.
    I32(Vec<i32>),
    /// `float32[]`.
    F32(Vec<f32>),
    /// `bool[]`.
    Bool(Vec<bool>),
    /// `string[]`.
    String(Vec<String>),
    /// Array of arrays; the inner arrays may each have their own element type.
    Array(Vec<GgufArray>),
    /// `uint64[]`.
    U64(Vec<u64>),
    /// `int64[]`.
    I64(Vec<i64>),
    /// `float64[]`.
    F64(Vec<f64>),
    /// `string[]` with at least one element that is not valid UTF-8: every element kept
    /// verbatim (serialized lossily). Arrays whose strings are all UTF-8 are
    /// [`GgufArray::String`].
    #[serde(serialize_with = "lossy_vec")]
    RawString(Vec<Vec<u8>>),
}

fn lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

fn lossy_vec<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b)))
}

impl GgufValue {
    /// The on-disk type tag of this value.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) | GgufValue::RawString(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(u64::from(v)),
            GgufValue::U16(v) => Some(u64::from(v)),
            GgufValue::U32(v) => Some(u64::from(v)),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(f64::from(v)),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(f64::from(v)),
            GgufValue::I16(v) => Some(f64::from(v)),
            GgufValue::I32(v) => Some(f64::from(v)),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string of valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes of a string value, whether or not they are valid UTF-8.
    pub fn as_str_bytes(&self) -> Option<&[u8]> {
        match self {
            GgufValue::String(s) => Some(s.as_bytes()),
            GgufValue::RawString(b) => Some(b),
            _ => None,
        }
    }

    /// A string value from raw bytes: [`GgufValue::String`] when they are UTF-8, else
    /// [`GgufValue::RawString`].
    pub fn from_str_bytes(bytes: Vec<u8>) -> GgufValue {
        match String::from_utf8(bytes) {
            Ok(s) => GgufValue::String(s),
            Err(e) => GgufValue::RawString(e.into_bytes()),
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufArray {
    /// The element type.
    pub fn elem_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) | GgufArray::RawString(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::RawString(v) => v.len(),
        }
    }

    /// A string array from raw elements: [`GgufArray::String`] when every element is UTF-8,
    /// else [`GgufArray::RawString`] with every element verbatim.
    pub fn from_str_bytes(elems: Vec<Vec<u8>>) -> GgufArray {
        if elems.iter().all(|b| std::str::from_utf8(b).is_ok()) {
            // Every element was just checked, so the conversion cannot fail; `from_utf8`
            // reuses each allocation.
            let strings: Vec<String> = elems
                .into_iter()
                .filter_map(|b| String::from_utf8(b).ok())
                .collect();
            GgufArray::String(strings)
        } else {
            GgufArray::RawString(elems)
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as unsigned integers, if this is an integer array whose elements are all
    /// non-negative.
    pub fn to_u64_vec(&self) -> Option<Vec<u64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<u64>) -> Option<Vec<u64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            GgufArray::U8(v) => conv(v, |x| Some(u64::from(x))),
            GgufArray::U16(v) => conv(v, |x| Some(u64::from(x))),
            GgufArray::U32(v) => conv(v, |x| Some(u64::from(x))),
            GgufArray::U64(v) => Some(v.clone()),
            GgufArray::I8(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I16(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I32(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I64(v) => conv(v, |x| u64::try_from(x).ok()),
            _ => None,
        }
    }
}
