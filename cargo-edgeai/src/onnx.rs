//! ONNX header reading: a small hand-written protobuf wire-format reader.
//!
//! Only the structure of the model is read (ModelProto, GraphProto, node op types, initializer
//! names/shapes/types, graph inputs and outputs). Tensor payloads (`raw_data` and the typed
//! `*_data` fields) are skipped with a seek and never buffered. Every nested message is parsed
//! within the byte range its length prefix declares, and every length is checked against the
//! bytes left in its parent before anything is read or allocated.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek};
use std::path::Path;

use serde::Serialize;

use crate::facts::{dominant_dtype, ModelClass, ModelFacts, ModelFormat, TensorFact};
use crate::{Error, Result};

/// Deepest nesting of subgraphs (If/Loop/Scan bodies) this reader follows.
pub const MAX_GRAPH_DEPTH: u32 = 32;

const HELP_CORRUPT: &str = "the file is incomplete or not an ONNX model; re-download it, or re-export it (torch.onnx.export, optimum-cli export onnx)";

/// One tensor (an initializer, or a Constant node's value) as declared in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnnxTensor {
    /// Tensor name.
    pub name: String,
    /// Dimensions, outermost first.
    pub dims: Vec<u64>,
    /// ONNX `TensorProto.DataType` code.
    pub data_type: i32,
    /// Whether the payload lives in an external file (`data_location = EXTERNAL`).
    pub external: bool,
    /// Bytes of `raw_data` in this file (0 when the payload is typed fields or external).
    pub raw_data_len: u64,
}

impl OnnxTensor {
    /// Number of elements (saturating).
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The tensor as a [`TensorFact`].
    pub fn to_fact(&self) -> TensorFact {
        TensorFact {
            name: self.name.clone(),
            shape: self.dims.clone(),
            dtype: onnx_dtype_name(self.data_type),
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OnnxDim {
    /// A fixed size.
    Value(i64),
    /// A symbolic size ("batch", "sequence_length").
    Param(String),
    /// Neither is set.
    Unknown,
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnnxValueInfo {
    /// Name.
    pub name: String,
    /// Element type code when the value is a tensor.
    pub elem_type: Option<i32>,
    /// Shape when declared.
    pub shape: Option<Vec<OnnxDim>>,
}

/// A graph (the main graph, or a subgraph of an If/Loop/Scan node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OnnxGraph {
    /// Graph name.
    pub name: String,
    /// Initializers (weights).
    pub initializers: Vec<OnnxTensor>,
    /// Tensors held in node attributes (e.g. `Constant` nodes' `value`).
    pub constants: Vec<OnnxTensor>,
    /// Inputs.
    pub inputs: Vec<OnnxValueInfo>,
    /// Outputs.
    pub outputs: Vec<OnnxValueInfo>,
    /// How often each op type occurs in this graph (not counting subgraphs).
    pub op_counts: BTreeMap<String, u64>,
    /// Subgraphs held in node attributes.
    pub subgraphs: Vec<OnnxGraph>,
}

impl OnnxGraph {
    /// Visit this graph and every subgraph, depth first.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a OnnxGraph)) {
        f(self);
        for g in &self.subgraphs {
            g.walk(f);
        }
    }
}

/// The parsed structure of an ONNX model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OnnxModel {
    /// `ir_version`.
    pub ir_version: Option<i64>,
    /// `producer_name` ("pytorch", "onnx.quantize", ...).
    pub producer_name: String,
    /// `producer_version`.
    pub producer_version: String,
    /// `(domain, version)` of each imported opset; the default domain is "".
    pub opset_import: Vec<(String, i64)>,
    /// `metadata_props` in file order.
    pub metadata: Vec<(String, String)>,
    /// The main graph.
    pub graph: OnnxGraph,
    /// Size of the file.
    pub file_size: u64,
}

impl OnnxModel {
    /// Whether any tensor keeps its payload in an external data file.
    pub fn has_external_data(&self) -> bool {
        let mut ext = false;
        self.graph.walk(&mut |g| {
            ext |= g
                .initializers
                .iter()
                .chain(&g.constants)
                .any(|t| t.external);
        });
        ext
    }

    /// The metadata value for `key`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The normalised name of an ONNX `TensorProto.DataType` code (1 -> "F32", 10 -> "F16", ...).
pub fn onnx_dtype_name(code: i32) -> String {
    let name = match code {
        0 => "UNDEFINED",
        1 => "F32",
        2 => "U8",
        3 => "I8",
        4 => "U16",
        5 => "I16",
        6 => "I32",
        7 => "I64",
        8 => "STRING",
        9 => "BOOL",
        10 => "F16",
        11 => "F64",
        12 => "U32",
        13 => "U64",
        14 => "C64",
        15 => "C128",
        16 => "BF16",
        17 => "F8_E4M3",
        18 => "F8_E4M3FNUZ",
        19 => "F8_E5M2",
        20 => "F8_E5M2FNUZ",
        21 => "U4",
        22 => "I4",
        23 => "F4",
        24 => "F8_E8M0",
        other => return format!("ONNX_TYPE_{other}"),
    };
    name.to_string()
}

/// Read the structure of the ONNX model at `path` (tensor payloads are skipped).
pub fn read_model(path: &Path) -> Result<OnnxModel> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_model_from(file, len, path)
}

/// Read an ONNX model from `reader` (positioned at the start); `file_len` is the size of the
/// whole model and `path` names it in errors.
pub fn read_model_from<R: Read + Seek>(reader: R, file_len: u64, path: &Path) -> Result<OnnxModel> {
    let mut pb = Pb {
        r: BufReader::with_capacity(1 << 16, reader),
        pos: 0,
        path,
    };
    let mut model = pb.model(file_len)?;
    model.file_size = file_len;
    Ok(model)
}

/// Read the facts of the ONNX model at `path`.
pub fn read_facts(path: &Path) -> Result<ModelFacts> {
    let model = read_model(path)?;
    Ok(model_facts(&model, path))
}

/// Build [`ModelFacts`] from a parsed model.
pub fn model_facts(model: &OnnxModel, path: &Path) -> ModelFacts {
    let architecture = ["model_type", "architecture"]
        .iter()
        .find_map(|k| model.metadata_value(k))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| Some(model.producer_name.clone()).filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "onnx".to_string());

    let inputs = &model.graph.inputs;
    let has_ids = inputs.iter().any(|i| i.name == "input_ids");
    let past: Vec<&OnnxValueInfo> = inputs
        .iter()
        .filter(|i| i.name.starts_with("past_key_values"))
        .collect();
    let class = match (has_ids, past.is_empty()) {
        (true, false) => ModelClass::DecoderLlm,
        (true, true) => ModelClass::Encoder,
        _ => ModelClass::Other,
    };

    // Weights are initializers, or (in some exporters, e.g. spox) named Constant-node values;
    // unnamed constants are shape helpers and are left out.
    let mut tensors = Vec::new();
    model.graph.walk(&mut |g| {
        tensors.extend(g.initializers.iter().map(OnnxTensor::to_fact));
        tensors.extend(
            g.constants
                .iter()
                .filter(|t| !t.name.is_empty())
                .map(OnnxTensor::to_fact),
        );
    });
    let parameters = tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.elements()));
    let dtype = dominant_dtype(&tensors).unwrap_or_else(|| "unknown".to_string());

    // Decoder exports name their cache inputs past_key_values.{layer}.{key|value} with shape
    // [batch, kv_heads, past_seq, head_dim].
    let mut layers = None;
    let (mut kv_heads, mut head_dim) = (None, None);
    if class == ModelClass::DecoderLlm {
        let mut idx: Vec<u64> = past
            .iter()
            .filter_map(|i| i.name.split('.').nth(1)?.parse().ok())
            .collect();
        idx.sort_unstable();
        idx.dedup();
        layers = Some(idx.len() as u64).filter(|&n| n > 0);
        if let Some(Some(shape)) = past.first().map(|i| &i.shape) {
            let fixed = |d: Option<&OnnxDim>| match d {
                Some(OnnxDim::Value(v)) => u64::try_from(*v).ok().filter(|&v| v > 0),
                _ => None,
            };
            if shape.len() == 4 {
                kv_heads = fixed(shape.get(1));
                head_dim = fixed(shape.get(3));
            }
        }
    }
    let vocab_size = if class == ModelClass::DecoderLlm {
        model
            .graph
            .outputs
            .iter()
            .find(|o| o.name == "logits")
            .and_then(|o| match o.shape.as_ref()?.last()? {
                OnnxDim::Value(v) => u64::try_from(*v).ok(),
                _ => None,
            })
    } else {
        None
    };

    ModelFacts {
        path: path.to_path_buf(),
        format: ModelFormat::Onnx,
        architecture,
        class,
        parameters,
        dtype,
        layers,
        hidden_size: None,
        heads: None,
        kv_heads,
        head_dim,
        vocab_size,
        max_context: None,
        tied_embeddings: false,
        tensors,
    }
}

// ---- wire format -------------------------------------------------------------------------

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

struct Pb<'p, R> {
    r: BufReader<R>,
    pos: u64,
    path: &'p Path,
}

impl<R: Read + Seek> Pb<'_, R> {
    fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        Error::model(
            self.path,
            format!("corrupt ONNX protobuf: {what} at byte {}", self.pos),
            HELP_CORRUPT,
        )
    }

    fn io(&self, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::UnexpectedEof {
            self.corrupt("the file ended early")
        } else {
            Error::io(self.path, e)
        }
    }

    fn byte(&mut self, end: u64) -> Result<u8> {
        if self.pos >= end {
            return Err(self.corrupt("a value runs past the end of its message"));
        }
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b).map_err(|e| self.io(e))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte(end)?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("a varint longer than 10 bytes"))
    }

    fn key(&mut self, end: u64) -> Result<(u64, u8)> {
        let k = self.varint(end)?;
        let field = k >> 3;
        if field == 0 {
            return Err(self.corrupt("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    /// Read a length prefix and return the end of the field it announces, checked against the
    /// end of the enclosing message.
    fn len_field(&mut self, end: u64) -> Result<u64> {
        let n = self.varint(end)?;
        let left = end - self.pos;
        if n > left {
            return Err(self.corrupt(format!(
                "a field of {n} bytes where only {left} remain in its message"
            )));
        }
        Ok(self.pos + n)
    }

    fn seek_to(&mut self, target: u64) -> Result<()> {
        let delta = i64::try_from(target - self.pos)
            .map_err(|_| self.corrupt("a field too large to skip"))?;
        self.r.seek_relative(delta).map_err(|e| self.io(e))?;
        self.pos = target;
        Ok(())
    }

    fn skip(&mut self, wt: u8, end: u64) -> Result<()> {
        let target = match wt {
            WT_VARINT => return self.varint(end).map(drop),
            WT_I64 => self.pos + 8,
            WT_I32 => self.pos + 4,
            WT_LEN => self.len_field(end)?,
            other => return Err(self.corrupt(format!("unsupported wire type {other}"))),
        };
        if target > end {
            return Err(self.corrupt("a fixed-size value runs past the end of its message"));
        }
        self.seek_to(target)
    }

    fn string(&mut self, end: u64) -> Result<String> {
        let sub = self.len_field(end)?;
        let n = usize::try_from(sub - self.pos).map_err(|_| self.corrupt("a string too large"))?;
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos = sub;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Run `f` over each field of the message that ends at `end`; unknown fields are skipped.
    fn fields(
        &mut self,
        end: u64,
        mut f: impl FnMut(&mut Self, u64, u8) -> Result<bool>,
    ) -> Result<()> {
        while self.pos < end {
            let (field, wt) = self.key(end)?;
            if !f(self, field, wt)? {
                self.skip(wt, end)?;
            }
        }
        Ok(())
    }

    fn model(&mut self, end: u64) -> Result<OnnxModel> {
        let mut m = OnnxModel::default();
        let mut graph = None;
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_VARINT) => m.ir_version = Some(p.varint(end)? as i64),
                (2, WT_LEN) => m.producer_name = p.string(end)?,
                (3, WT_LEN) => m.producer_version = p.string(end)?,
                (7, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    graph = Some(p.graph(sub, 0)?);
                }
                (8, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    m.opset_import.push(p.opset(sub)?);
                }
                (14, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    m.metadata.push(p.string_entry(sub)?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        m.graph = graph.ok_or_else(|| {
            Error::model(
                self.path,
                "not an ONNX model: the protobuf has no graph",
                HELP_CORRUPT,
            )
        })?;
        Ok(m)
    }

    fn opset(&mut self, end: u64) -> Result<(String, i64)> {
        let (mut domain, mut version) = (String::new(), 0i64);
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_LEN) => domain = p.string(end)?,
                (2, WT_VARINT) => version = p.varint(end)? as i64,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((domain, version))
    }

    fn string_entry(&mut self, end: u64) -> Result<(String, String)> {
        let (mut k, mut v) = (String::new(), String::new());
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_LEN) => k = p.string(end)?,
                (2, WT_LEN) => v = p.string(end)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok((k, v))
    }

    fn graph(&mut self, end: u64, depth: u32) -> Result<OnnxGraph> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(self.corrupt(format!("subgraphs nested more than {MAX_GRAPH_DEPTH} deep")));
        }
        let mut g = OnnxGraph::default();
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    p.node(sub, depth, &mut g)?;
                }
                (2, WT_LEN) => g.name = p.string(end)?,
                (5, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    g.initializers.push(p.tensor(sub)?);
                }
                (11, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    g.inputs.push(p.value_info(sub)?);
                }
                (12, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    g.outputs.push(p.value_info(sub)?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(g)
    }

    fn node(&mut self, end: u64, depth: u32, g: &mut OnnxGraph) -> Result<()> {
        let mut op_type = String::new();
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (4, WT_LEN) => op_type = p.string(end)?,
                (5, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    p.attribute(sub, depth, g)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        *g.op_counts.entry(op_type).or_insert(0) += 1;
        Ok(())
    }

    fn attribute(&mut self, end: u64, depth: u32, g: &mut OnnxGraph) -> Result<()> {
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                // t, tensors
                (5 | 10, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    g.constants.push(p.tensor(sub)?);
                }
                // g, graphs
                (6 | 11, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    g.subgraphs.push(p.graph(sub, depth + 1)?);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn tensor(&mut self, end: u64) -> Result<OnnxTensor> {
        let mut t = OnnxTensor {
            name: String::new(),
            dims: Vec::new(),
            data_type: 0,
            external: false,
            raw_data_len: 0,
        };
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_VARINT) => {
                    let d = p.varint(end)?;
                    t.dims.push(p.dim(d)?);
                }
                (1, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    while p.pos < sub {
                        let d = p.varint(sub)?;
                        t.dims.push(p.dim(d)?);
                    }
                }
                (2, WT_VARINT) => t.data_type = p.varint(end)? as i32,
                (8, WT_LEN) => t.name = p.string(end)?,
                (9, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    t.raw_data_len = sub - p.pos;
                    p.seek_to(sub)?;
                }
                (13, WT_LEN) => {
                    t.external = true;
                    return Ok(false);
                }
                (14, WT_VARINT) => t.external |= p.varint(end)? == 1,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(t)
    }

    fn dim(&self, raw: u64) -> Result<u64> {
        if raw > i64::MAX as u64 {
            return Err(self.corrupt(format!("negative tensor dimension {}", raw as i64)));
        }
        Ok(raw)
    }

    fn value_info(&mut self, end: u64) -> Result<OnnxValueInfo> {
        let mut v = OnnxValueInfo {
            name: String::new(),
            elem_type: None,
            shape: None,
        };
        self.fields(end, |p, field, wt| {
            match (field, wt) {
                (1, WT_LEN) => v.name = p.string(end)?,
                (2, WT_LEN) => {
                    let sub = p.len_field(end)?;
                    p.type_proto(sub, &mut v)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(v)
    }

    /// TypeProto: only `tensor_type` (1) is read.
    fn type_proto(&mut self, end: u64, v: &mut OnnxValueInfo) -> Result<()> {
        self.fields(end, |p, field, wt| {
            if (field, wt) != (1, WT_LEN) {
                return Ok(false);
            }
            let sub = p.len_field(end)?;
            p.fields(sub, |p, field, wt| {
                match (field, wt) {
                    (1, WT_VARINT) => v.elem_type = Some(p.varint(sub)? as i32),
                    (2, WT_LEN) => {
                        let shape_end = p.len_field(sub)?;
                        v.shape = Some(p.shape(shape_end)?);
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Ok(true)
        })
    }

    fn shape(&mut self, end: u64) -> Result<Vec<OnnxDim>> {
        let mut dims = Vec::new();
        self.fields(end, |p, field, wt| {
            if (field, wt) != (1, WT_LEN) {
                return Ok(false);
            }
            let sub = p.len_field(end)?;
            let mut dim = OnnxDim::Unknown;
            p.fields(sub, |p, field, wt| {
                match (field, wt) {
                    (1, WT_VARINT) => dim = OnnxDim::Value(p.varint(sub)? as i64),
                    (2, WT_LEN) => dim = OnnxDim::Param(p.string(sub)?),
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            dims.push(dim);
            Ok(true)
        })?;
        Ok(dims)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Cursor, SeekFrom};
    use std::rc::Rc;

    use super::*;

    /// Protobuf encoder for test messages.
    #[derive(Default, Clone)]
    struct M(Vec<u8>);

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    impl M {
        fn int(mut self, field: u64, v: i64) -> M {
            varint(&mut self.0, field << 3);
            varint(&mut self.0, v as u64);
            self
        }
        fn bytes(mut self, field: u64, b: &[u8]) -> M {
            varint(&mut self.0, (field << 3) | 2);
            varint(&mut self.0, b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, field: u64, s: &str) -> M {
            self.bytes(field, s.as_bytes())
        }
        fn msg(self, field: u64, m: M) -> M {
            self.bytes(field, &m.0)
        }
        fn packed(self, field: u64, vals: &[u64]) -> M {
            let mut p = Vec::new();
            for &v in vals {
                varint(&mut p, v);
            }
            self.bytes(field, &p)
        }
    }

    fn value_info(name: &str, elem: i64, dims: &[Result<i64, &str>]) -> M {
        let mut shape = M::default();
        for d in dims {
            let dim = match d {
                Ok(v) => M::default().int(1, *v),
                Err(p) => M::default().str(2, p),
            };
            shape = shape.msg(1, dim);
        }
        let tensor_type = M::default().int(1, elem).msg(2, shape);
        M::default()
            .str(1, name)
            .msg(2, M::default().msg(1, tensor_type))
    }

    /// A decoder-like model: 2 layers of KV cache, 2 initializers (one with 1 MiB raw_data),
    /// one external initializer, a Constant node, an If node with a subgraph. The graph comes
    /// last so that every strict prefix is incomplete.
    fn decoder_model(raw: usize) -> Vec<u8> {
        let w = M::default()
            .packed(1, &[256, 1024])
            .int(2, 10)
            .str(8, "model.embed_tokens.weight")
            .bytes(9, &vec![7u8; raw]);
        let b = M::default()
            .int(1, 3)
            .int(2, 1)
            .str(8, "bias")
            .bytes(4, &[0; 12]);
        let ext = M::default()
            .int(1, 4)
            .int(2, 1)
            .str(8, "ext")
            .msg(13, M::default().str(1, "location").str(2, "weights.bin"))
            .int(14, 1);
        let constant = M::default().str(4, "Constant").msg(
            5,
            M::default().str(1, "value").msg(
                5,
                M::default()
                    .int(1, 2)
                    .int(2, 7)
                    .str(8, "shape_const")
                    .bytes(9, &[0; 16]),
            ),
        );
        let sub = M::default()
            .str(2, "then")
            .msg(1, M::default().str(4, "Identity"))
            .msg(
                5,
                M::default()
                    .int(1, 5)
                    .int(2, 1)
                    .str(8, "sub_w")
                    .bytes(9, &[0; 20]),
            );
        let if_node = M::default()
            .str(4, "If")
            .msg(5, M::default().str(1, "then_branch").int(20, 5).msg(6, sub));
        let graph = M::default()
            .str(2, "main")
            .msg(1, M::default().str(1, "x").str(2, "y").str(4, "MatMul"))
            .msg(1, M::default().str(4, "MatMul"))
            .msg(1, constant)
            .msg(1, if_node)
            .msg(5, w)
            .msg(5, b)
            .msg(5, ext)
            .msg(11, value_info("input_ids", 7, &[Err("batch"), Err("seq")]))
            .msg(
                11,
                value_info("attention_mask", 7, &[Err("batch"), Err("seq")]),
            )
            .msg(
                11,
                value_info(
                    "past_key_values.0.key",
                    1,
                    &[Err("batch"), Ok(2), Err("past"), Ok(64)],
                ),
            )
            .msg(
                11,
                value_info(
                    "past_key_values.0.value",
                    1,
                    &[Err("batch"), Ok(2), Err("past"), Ok(64)],
                ),
            )
            .msg(
                11,
                value_info(
                    "past_key_values.1.key",
                    1,
                    &[Err("batch"), Ok(2), Err("past"), Ok(64)],
                ),
            )
            .msg(
                12,
                value_info("logits", 1, &[Err("batch"), Err("seq"), Ok(256)]),
            );
        M::default()
            .int(1, 9)
            .str(2, "optimum")
            .str(3, "1.0")
            .msg(8, M::default().str(1, "").int(2, 17))
            .msg(8, M::default().str(1, "com.microsoft").int(2, 1))
            .msg(14, M::default().str(1, "model_type").str(2, "qwen2"))
            .msg(7, graph)
            .0
    }

    fn parse(bytes: &[u8]) -> Result<OnnxModel> {
        read_model_from(Cursor::new(bytes), bytes.len() as u64, Path::new("t.onnx"))
    }

    fn message(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(Error::InvalidModel { message, path, .. }) => {
                assert_eq!(path, Path::new("t.onnx"));
                message
            }
            other => panic!("expected InvalidModel, got {other:?}"),
        }
    }

    #[test]
    fn reads_structure() {
        let bytes = decoder_model(64);
        let m = parse(&bytes).unwrap();
        assert_eq!(m.ir_version, Some(9));
        assert_eq!(m.producer_name, "optimum");
        assert_eq!(m.producer_version, "1.0");
        assert_eq!(
            m.opset_import,
            vec![("".into(), 17), ("com.microsoft".into(), 1)]
        );
        assert_eq!(m.metadata_value("model_type"), Some("qwen2"));
        let g = &m.graph;
        assert_eq!(g.name, "main");
        assert_eq!(g.op_counts.get("MatMul"), Some(&2));
        assert_eq!(g.op_counts.get("If"), Some(&1));
        assert_eq!(g.initializers.len(), 3);
        let w = &g.initializers[0];
        assert_eq!(
            (w.dims.clone(), w.data_type, w.raw_data_len),
            (vec![256, 1024], 10, 64)
        );
        assert_eq!(g.initializers[1].dims, vec![3], "unpacked dims");
        assert!(g.initializers[2].external && m.has_external_data());
        assert_eq!(g.constants[0].name, "shape_const");
        assert_eq!(g.subgraphs.len(), 1);
        assert_eq!(g.subgraphs[0].initializers[0].name, "sub_w");
        assert_eq!(
            g.inputs[2].shape,
            Some(vec![
                OnnxDim::Param("batch".into()),
                OnnxDim::Value(2),
                OnnxDim::Param("past".into()),
                OnnxDim::Value(64)
            ])
        );
    }

    #[test]
    fn facts_of_a_decoder() {
        let bytes = decoder_model(64);
        let m = parse(&bytes).unwrap();
        let f = model_facts(&m, Path::new("t.onnx"));
        assert_eq!(f.format, ModelFormat::Onnx);
        assert_eq!(f.architecture, "qwen2");
        assert_eq!(f.class, ModelClass::DecoderLlm);
        assert_eq!(f.layers, Some(2));
        assert_eq!((f.kv_heads, f.head_dim), (Some(2), Some(64)));
        assert_eq!(f.vocab_size, Some(256));
        // 256*1024 + 3 + 4 + 5 (subgraph) + 2 (named constant)
        assert_eq!(f.parameters, 262_144 + 3 + 4 + 5 + 2);
        assert_eq!(f.dtype, "F16");
    }

    #[test]
    fn classes_from_inputs() {
        let graph = |inputs: &[&str]| {
            let mut g = M::default();
            for i in inputs {
                g = g.msg(11, value_info(i, 7, &[]));
            }
            let m = parse(&M::default().msg(7, g).0).unwrap();
            model_facts(&m, Path::new("t.onnx"))
        };
        let enc = graph(&["input_ids", "attention_mask", "token_type_ids"]);
        assert_eq!(
            (enc.class, enc.architecture.as_str()),
            (ModelClass::Encoder, "onnx")
        );
        assert_eq!(graph(&["pixel_values"]).class, ModelClass::Other);
    }

    /// A reader that counts the bytes handed out.
    struct Counting {
        inner: Cursor<Vec<u8>>,
        read: Rc<Cell<u64>>,
    }
    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }
    impl Seek for Counting {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn raw_data_is_skipped_not_read() {
        let bytes = decoder_model(8 << 20);
        let len = bytes.len() as u64;
        let read = Rc::new(Cell::new(0));
        let r = Counting {
            inner: Cursor::new(bytes),
            read: read.clone(),
        };
        let m = read_model_from(r, len, Path::new("t.onnx")).unwrap();
        assert_eq!(m.graph.initializers[0].raw_data_len, 8 << 20);
        assert!(read.get() < 300_000, "read {} of {len} bytes", read.get());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = decoder_model(100);
        for cut in 0..bytes.len() {
            let msg = message(&bytes[..cut]);
            assert!(msg.contains("ONNX"), "cut {cut}: {msg}");
        }
        // A reader shorter than the declared length.
        let r = read_model_from(
            Cursor::new(&bytes[..50]),
            bytes.len() as u64,
            Path::new("t.onnx"),
        );
        assert!(matches!(r, Err(Error::InvalidModel { .. })));
    }

    #[test]
    fn hostile_inputs_are_errors() {
        // Length far beyond the file.
        let mut huge = vec![(7 << 3) | 2];
        varint(&mut huge, u64::MAX >> 1);
        assert!(message(&huge).contains("only 0 remain"));
        // An 11-byte varint.
        assert!(
            message(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
                .contains("varint")
        );
        // Group wire type and field 0.
        assert!(message(&[0x0b]).contains("wire type 3"));
        assert!(message(&[0x00, 0x00]).contains("field number 0"));
        // Negative dimension.
        let t = M::default().int(1, -5).str(8, "t");
        let m = M::default().msg(7, M::default().msg(5, t)).0;
        assert!(message(&m).contains("negative tensor dimension -5"));
        // A fixed64 field that runs past its message.
        let g = M(vec![(9 << 3) | 1, 1, 2]);
        assert!(message(&M::default().msg(7, g).0).contains("runs past"));
        // No graph.
        assert!(message(&M::default().int(1, 8).0).contains("no graph"));
        assert!(message(b"").contains("no graph"));
    }

    #[test]
    fn deep_subgraph_nesting_is_bounded() {
        let mut g = M::default().str(2, "leaf");
        for _ in 0..200 {
            let node = M::default().msg(5, M::default().msg(6, g));
            g = M::default().msg(1, node);
        }
        let msg = message(&M::default().msg(7, g).0);
        assert!(msg.contains("nested more than"), "{msg}");
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = decoder_model(40);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut m = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            let cut = (next() % (m.len() as u64 + 1)) as usize;
            let _ = parse(&m[..cut]);
            let _ = parse(&m);
        }
    }

    #[test]
    fn dtype_names() {
        assert_eq!(onnx_dtype_name(1), "F32");
        assert_eq!(onnx_dtype_name(10), "F16");
        assert_eq!(onnx_dtype_name(16), "BF16");
        assert_eq!(onnx_dtype_name(3), "I8");
        assert_eq!(onnx_dtype_name(2), "U8");
        assert_eq!(onnx_dtype_name(22), "I4");
        assert_eq!(onnx_dtype_name(21), "U4");
        assert_eq!(onnx_dtype_name(99), "ONNX_TYPE_99");
    }
}
