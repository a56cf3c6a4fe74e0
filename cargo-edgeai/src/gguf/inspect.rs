//! `cargo edgeai inspect FILE.gguf`: everything in a GGUF model (metadata, tensors, bits per
//! weight, totals) as a serializable report and as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use super::file::GgufModel;
use super::value::{GgufArray, GgufValue, GgufValueType};
use crate::Result;

/// Arrays longer than this are summarised: type, length and the first [`ARRAY_HEAD`] items.
pub const ARRAY_SUMMARY_LEN: usize = 16;
/// Items shown of a summarised array.
pub const ARRAY_HEAD: usize = 8;

/// The full description of a GGUF model.
#[derive(Debug, Clone, Serialize)]
pub struct GgufInspect {
    /// The file inspected (the first split of a split model).
    pub path: PathBuf,
    /// Every file of the model, in split order.
    pub files: Vec<PathBuf>,
    /// GGUF version of the first file.
    pub version: u32,
    /// Data alignment of the first file.
    pub alignment: u64,
    /// Absolute offset of the first file's data section.
    pub data_offset: u64,
    /// Metadata of the first file, in file order.
    pub metadata: Vec<MetadataEntry>,
    /// Every tensor, split by split, in file order.
    pub tensors: Vec<TensorEntry>,
    /// Tensors and bytes per ggml type, by type name.
    pub types: BTreeMap<String, TypeTotals>,
    /// Totals over the whole model.
    pub totals: Totals,
}

/// One metadata pair.
#[derive(Debug, Clone, Serialize)]
pub struct MetadataEntry {
    /// The key.
    pub key: String,
    /// llama.cpp's type name: `u8` ... `f64`, `bool`, `str`, `arr[ELEM]`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Number of elements, for arrays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<usize>,
    /// The value; for arrays longer than [`ARRAY_SUMMARY_LEN`], only the first
    /// [`ARRAY_HEAD`] items.
    pub value: Json,
    /// Whether `value` shows only the start of an array.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// ggml type name.
    #[serde(rename = "type")]
    pub ty: String,
    /// Shape, outermost dimension first (the row length is last).
    pub shape: Vec<u64>,
    /// Elements.
    pub parameters: u64,
    /// Bytes of data.
    pub bytes: u64,
    /// Split file index (0 for an unsplit model).
    pub split: usize,
    /// Absolute offset of the data in its file.
    pub offset: u64,
    /// Bits of storage per element (`None` for an empty tensor).
    pub bits_per_weight: Option<f64>,
}

/// Tensors and bytes of one ggml type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeTotals {
    /// Number of tensors.
    pub tensors: usize,
    /// Elements.
    pub parameters: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// Whole-model totals.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Number of tensors.
    pub tensors: usize,
    /// Elements in all tensors.
    pub parameters: u64,
    /// Bytes of tensor data (without padding).
    pub data_bytes: u64,
    /// Bytes of all files.
    pub file_bytes: u64,
    /// `data_bytes * 8 / parameters` (`None` without parameters).
    pub bits_per_weight: Option<f64>,
}

/// Open (and fully validate) the GGUF model at `path`, following splits, and describe it.
pub fn inspect_gguf(path: &Path) -> Result<GgufInspect> {
    let model = GgufModel::open(path)?;
    Ok(inspect_model(&model))
}

/// Describe an opened model.
pub fn inspect_model(model: &GgufModel) -> GgufInspect {
    let first = &model.splits()[0];
    let header = first.header();
    let metadata = header
        .metadata
        .iter()
        .map(|(k, v)| metadata_entry(k, v))
        .collect();
    let mut types: BTreeMap<String, TypeTotals> = BTreeMap::new();
    let mut tensors = Vec::with_capacity(model.tensors().len());
    for &loc in model.tensors() {
        let t = model.info(loc);
        let split_header = model.splits()[loc.split].header();
        let parameters = t.n_elements();
        let bytes = t.size_bytes();
        let e = types.entry(t.ggml_type.name().to_string()).or_default();
        e.tensors += 1;
        e.parameters = e.parameters.saturating_add(parameters);
        e.bytes = e.bytes.saturating_add(bytes);
        tensors.push(TensorEntry {
            name: t.name.clone(),
            ty: t.ggml_type.name().to_string(),
            shape: t.shape(),
            parameters,
            bytes,
            split: loc.split,
            offset: split_header.data_range(t).start,
            bits_per_weight: bpw(bytes, parameters),
        });
    }
    let parameters = tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.parameters));
    let data_bytes = tensors.iter().fold(0u64, |a, t| a.saturating_add(t.bytes));
    GgufInspect {
        path: first.path().to_path_buf(),
        files: model
            .splits()
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect(),
        version: header.version,
        alignment: header.alignment,
        data_offset: header.data_offset,
        metadata,
        totals: Totals {
            tensors: tensors.len(),
            parameters,
            data_bytes,
            file_bytes: model.file_bytes(),
            bits_per_weight: bpw(data_bytes, parameters),
        },
        tensors,
        types,
    }
}

fn bpw(bytes: u64, elements: u64) -> Option<f64> {
    (elements > 0).then(|| bytes as f64 * 8.0 / elements as f64)
}

/// llama.cpp's short name of a value type (`GGUF_TYPE_NAME`).
fn type_name(t: GgufValueType) -> &'static str {
    match t {
        GgufValueType::U8 => "u8",
        GgufValueType::I8 => "i8",
        GgufValueType::U16 => "u16",
        GgufValueType::I16 => "i16",
        GgufValueType::U32 => "u32",
        GgufValueType::I32 => "i32",
        GgufValueType::F32 => "f32",
        GgufValueType::Bool => "bool",
        GgufValueType::String => "str",
        GgufValueType::Array => "arr",
        GgufValueType::U64 => "u64",
        GgufValueType::I64 => "i64",
        GgufValueType::F64 => "f64",
    }
}

fn array_type_name(a: &GgufArray) -> String {
    match a {
        GgufArray::Array(inner) => {
            // Nested arrays may mix element types; name the first one's for orientation.
            let elem = inner
                .first()
                .map_or_else(|| "arr".to_string(), array_type_name);
            format!("arr[{elem}]")
        }
        _ => format!("arr[{}]", type_name(a.elem_type())),
    }
}

fn metadata_entry(key: &str, v: &GgufValue) -> MetadataEntry {
    match v {
        GgufValue::Array(a) => {
            let truncated = a.len() > ARRAY_SUMMARY_LEN;
            let keep = if truncated { ARRAY_HEAD } else { a.len() };
            MetadataEntry {
                key: key.to_string(),
                ty: array_type_name(a),
                len: Some(a.len()),
                value: array_json(a, keep),
                truncated,
            }
        }
        _ => MetadataEntry {
            key: key.to_string(),
            ty: type_name(v.value_type()).to_string(),
            len: None,
            value: match v {
                GgufValue::F32(x) => f32_json(*x),
                _ => serde_json::to_value(v).unwrap_or(Json::Null),
            },
            truncated: false,
        },
    }
}

/// The first `keep` items of `a` as JSON (non-finite floats become null, as serde_json does).
fn array_json(a: &GgufArray, keep: usize) -> Json {
    fn head<T: Serialize>(v: &[T], keep: usize) -> Json {
        serde_json::to_value(&v[..keep.min(v.len())]).unwrap_or(Json::Null)
    }
    match a {
        GgufArray::U8(v) => head(v, keep),
        GgufArray::I8(v) => head(v, keep),
        GgufArray::U16(v) => head(v, keep),
        GgufArray::I16(v) => head(v, keep),
        GgufArray::U32(v) => head(v, keep),
        GgufArray::I32(v) => head(v, keep),
        GgufArray::F32(v) => Json::Array(v.iter().take(keep).map(|&x| f32_json(x)).collect()),
        GgufArray::Bool(v) => head(v, keep),
        GgufArray::String(v) => head(v, keep),
        GgufArray::U64(v) => head(v, keep),
        GgufArray::I64(v) => head(v, keep),
        GgufArray::F64(v) => head(v, keep),
        GgufArray::RawString(v) => Json::Array(
            v.iter()
                .take(keep)
                .map(|b| Json::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
        GgufArray::Array(v) => Json::Array(
            v.iter()
                .take(keep)
                .map(|inner| {
                    let k = if inner.len() > ARRAY_SUMMARY_LEN {
                        ARRAY_HEAD
                    } else {
                        inner.len()
                    };
                    array_json(inner, k)
                })
                .collect(),
        ),
    }
}

/// An f32 as the shortest decimal that reads back as the same f32 (1e-5, not the f64
/// widening 9.999999747378752e-6); non-finite values become null, as in serde_json.
fn f32_json(x: f32) -> Json {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// The report as text: summary, metadata (one line each, long values cut), types, and with
/// `tensors` every tensor.
pub fn render_gguf_inspect(r: &GgufInspect, tensors: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", r.path.display());
    if r.files.len() > 1 {
        let _ = writeln!(s, "  split over {} files", r.files.len());
    }
    let _ = writeln!(
        s,
        "  GGUF v{}, alignment {}, data at byte {}",
        r.version, r.alignment, r.data_offset
    );
    let t = &r.totals;
    let _ = writeln!(
        s,
        "  {} tensors, {} parameters, {} of tensor data, {} on disk, {}",
        t.tensors,
        crate::plan::human_count(t.parameters),
        crate::plan::human_bytes(t.data_bytes),
        crate::plan::human_bytes(t.file_bytes),
        fmt_bpw(t.bits_per_weight)
    );

    let _ = writeln!(s, "\nmetadata ({} keys):", r.metadata.len());
    let key_w = r.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
    for m in &r.metadata {
        let mut value = match &m.value {
            Json::String(v) => format!("{v:?}"),
            other => other.to_string(),
        };
        if m.truncated {
            // Show the summarised array as its head with a marker.
            if value.ends_with(']') {
                value.pop();
                value.push_str(",...]");
            }
        }
        let ty = match m.len {
            Some(n) => format!("{}×{n}", m.ty),
            None => m.ty.clone(),
        };
        let _ = writeln!(s, "  {:key_w$}  {ty:<16} {}", m.key, cut(&value, 100));
    }

    let _ = writeln!(s, "\ntypes:");
    for (name, tt) in &r.types {
        let _ = writeln!(
            s,
            "  {name:<8} {:>5} tensors  {:>10} parameters  {:>10}  {}",
            tt.tensors,
            crate::plan::human_count(tt.parameters),
            crate::plan::human_bytes(tt.bytes),
            fmt_bpw(bpw(tt.bytes, tt.parameters))
        );
    }

    if tensors {
        let name_w = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        let _ = writeln!(s, "\ntensors:");
        for t in &r.tensors {
            let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
            let split = if r.files.len() > 1 {
                format!("  split {}", t.split + 1)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:name_w$}  {:<7} [{}]  {} @ {}  {}{split}",
                t.name,
                t.ty,
                shape.join(", "),
                crate::plan::human_bytes(t.bytes),
                t.offset,
                fmt_bpw(t.bits_per_weight)
            );
        }
    } else {
        let _ = writeln!(
            s,
            "\n(pass --tensors to list all {} tensors)",
            r.tensors.len()
        );
    }
    s
}

fn fmt_bpw(b: Option<f64>) -> String {
    b.map_or_else(|| "- bpw".to_string(), |b| format!("{b:.2} bpw"))
}

/// `text` cut to `max` characters with an ellipsis; newlines shown escaped so each entry stays
/// on one line (the value is already Debug-quoted for strings).
fn cut(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', "\\n");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}
