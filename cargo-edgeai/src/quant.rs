//! Quantization schemes of every framework and their exact storage cost, tensor by tensor.
//!
//! The planner never guesses a model's size from an average bits-per-weight: it walks the
//! model's tensors and asks, for each, which storage type the framework's tool would choose
//! (llama-quantize's mixture rules for Q4_K_M and friends, mlx-lm's quantization predicate,
//! NNCF's backup precision for embeddings, ...) and what that type costs in bytes for that shape.
//! The same per-tensor choice is what the quantizers use when they run, so plan and result agree.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::facts::{ModelFacts, TensorFact};

/// A runtime/framework a plan can target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub enum Framework {
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
    #[serde(rename = "onnxruntime")]
    OnnxRuntime,
    #[serde(rename = "olive")]
    Olive,
    #[serde(rename = "openvino")]
    OpenVino,
    #[serde(rename = "mlx")]
    Mlx,
    #[serde(rename = "qnn")]
    Qnn,
}

impl Framework {
    /// Every framework.
    pub const ALL: [Framework; 6] = [
        Framework::LlamaCpp,
        Framework::OnnxRuntime,
        Framework::Olive,
        Framework::OpenVino,
        Framework::Mlx,
        Framework::Qnn,
    ];

    /// The name used on the command line, in the matrix and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::LlamaCpp => "llama.cpp",
            Framework::OnnxRuntime => "onnxruntime",
            Framework::Olive => "olive",
            Framework::OpenVino => "openvino",
            Framework::Mlx => "mlx",
            Framework::Qnn => "qnn",
        }
    }

    /// Parse a framework name (accepts `llama-cpp`/`llamacpp`/`gguf` for llama.cpp, `ort` for
    /// onnxruntime).
    pub fn parse(name: &str) -> Option<Framework> {
        match name.to_ascii_lowercase().as_str() {
            "llama.cpp" | "llama-cpp" | "llamacpp" | "gguf" => Some(Framework::LlamaCpp),
            "onnxruntime" | "onnx-runtime" | "ort" | "onnx" => Some(Framework::OnnxRuntime),
            "olive" => Some(Framework::Olive),
            "openvino" | "ov" => Some(Framework::OpenVino),
            "mlx" => Some(Framework::Mlx),
            "qnn" => Some(Framework::Qnn),
            _ => None,
        }
    }
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tensor does in the network, recognised from llama.cpp (GGUF) or Hugging Face names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    TokenEmbedding,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnQkv,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Position or token-type embeddings: never quantized by llama.cpp.
    AuxEmbedding,
    Norm,
    Other,
}

/// Role and block index of a tensor from its name.
pub fn tensor_role(name: &str) -> (TensorRole, Option<u64>) {
    let layer = layer_index(name);
    let n = name.to_ascii_lowercase();
    let has = |s: &str| n.contains(s);
    let role = if has("norm") || has("layernorm") || has("ln_") {
        TensorRole::Norm
    } else if n == "token_embd.weight"
        || has("embed_tokens")
        || has("word_embeddings")
        || has("wte.")
        || n.ends_with("tok_embeddings.weight")
    {
        TensorRole::TokenEmbedding
    } else if has("position_embeddings")
        || has("token_type_embeddings")
        || n.starts_with("position_embd")
        || n.starts_with("token_types")
    {
        TensorRole::AuxEmbedding
    } else if n == "output.weight" || n == "lm_head.weight" || n.ends_with(".lm_head.weight") {
        TensorRole::Output
    } else if has("attn_qkv") || has("qkv_proj") || has("query_key_value") {
        TensorRole::AttnQkv
    } else if has("attn_q.") || has("q_proj") || has("attention.self.query") {
        TensorRole::AttnQ
    } else if has("attn_k.") || has("k_proj") || has("attention.self.key") {
        TensorRole::AttnK
    } else if has("attn_v.") || has("v_proj") || has("attention.self.value") {
        TensorRole::AttnV
    } else if has("attn_output") || has("o_proj") || has("attention.output.dense") {
        TensorRole::AttnOutput
    } else if has("ffn_gate") || has("gate_proj") || has("gate_up_proj") {
        TensorRole::FfnGate
    } else if has("ffn_up") || has("up_proj") || has("intermediate.dense") {
        TensorRole::FfnUp
    } else if has("ffn_down") || has("down_proj") || has("output.dense") {
        TensorRole::FfnDown
    } else {
        TensorRole::Other
    };
    (role, layer)
}

/// The block number in `blk.N.`, `layers.N.`, `layer.N.` or `h.N.`.
fn layer_index(name: &str) -> Option<u64> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "blk" | "layers" | "layer" | "h" | "block" | "blocks" => w[1].parse().ok(),
        _ => None,
    })
}

/// Storage of one ggml tensor type: elements per block and bytes per block.
pub fn ggml_block(type_name: &str) -> Option<(u64, u64)> {
    Some(match type_name {
        "F32" => (1, 4),
        "F16" | "BF16" => (1, 2),
        "Q4_0" | "IQ4_NL" => (32, 18),
        "Q4_1" => (32, 20),
        "Q5_0" => (32, 22),
        "Q5_1" => (32, 24),
        "Q8_0" => (32, 34),
        "MXFP4" => (32, 17),
        "Q2_K" => (256, 84),
        "Q3_K" => (256, 110),
        "Q4_K" => (256, 144),
        "Q5_K" => (256, 176),
        "Q6_K" => (256, 210),
        "Q8_K" => (256, 292),
        _ => return None,
    })
}

/// llama-quantize file types (`--type`), as the planner and quantizer know them.
pub const GGUF_FILE_TYPES: [&str; 22] = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q2_K_S",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "IQ4_NL",
    "MXFP4_MOE",
    "Q4_K",
    "Q5_K",
];

/// A quantization scheme of one framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// A llama-quantize file type such as `Q4_K_M`.
    Gguf(String),
    /// MLX affine quantization.
    MlxAffine { bits: u32, group: u32 },
    /// MLX microscaled FP4 (group 32, uint8 power-of-two scales).
    MlxMxfp4,
    /// mlx-lm mixed recipe `mixed_LOW_HIGH`.
    MlxMixed { low: u32, high: u32 },
    /// ONNX Runtime INT8 dynamic quantization of MatMul/Gather weights.
    OnnxInt8Dynamic,
    /// ONNX Runtime INT8 static QDQ quantization (needs calibration data).
    OnnxInt8Static,
    /// ONNX Runtime INT4 weight-only blockwise (MatMulNBits).
    OnnxInt4 { block: u32, symmetric: bool },
    /// Unquantized ONNX at 16 or 32 bits.
    OnnxFloat { bits: u32 },
    /// OpenVINO/NNCF INT4 weight compression.
    OpenVinoInt4 { symmetric: bool, group: u32 },
    /// OpenVINO/NNCF INT8 weight compression (asymmetric per channel).
    OpenVinoInt8,
    /// OpenVINO IR at FP16.
    OpenVinoFp16,
    /// QNN QDQ with 8-bit weights and 16- or 8-bit activations.
    Qnn { activation_bits: u32 },
}

impl Scheme {
    /// Parse `name` as a quantization of `framework`; None when the framework has no such scheme.
    pub fn parse(framework: Framework, name: &str) -> Option<Scheme> {
        match framework {
            Framework::LlamaCpp => {
                let upper = name.to_ascii_uppercase();
                GGUF_FILE_TYPES
                    .contains(&upper.as_str())
                    .then_some(Scheme::Gguf(upper))
            }
            Framework::Mlx => {
                if name == "mxfp4" {
                    return Some(Scheme::MlxMxfp4);
                }
                if let Some(rest) = name.strip_prefix("mixed_") {
                    let (low, high) = rest.split_once('_')?;
                    let (low, high) = (low.parse().ok()?, high.parse().ok()?);
                    return (low < high && [2, 3, 4, 5, 6, 8].contains(&high))
                        .then_some(Scheme::MlxMixed { low, high });
                }
                let rest = name.strip_prefix("affine-")?;
                let (bits, group) = rest.split_once("bit-g")?;
                let (bits, group) = (bits.parse().ok()?, group.parse().ok()?);
                ([2, 3, 4, 5, 6, 8].contains(&bits) && [32, 64, 128].contains(&group))
                    .then_some(Scheme::MlxAffine { bits, group })
            }
            Framework::OnnxRuntime | Framework::Olive => match name {
                "int8-dynamic" => Some(Scheme::OnnxInt8Dynamic),
                "int8-static" => Some(Scheme::OnnxInt8Static),
                "fp16" => Some(Scheme::OnnxFloat { bits: 16 }),
                "fp32" => Some(Scheme::OnnxFloat { bits: 32 }),
                _ => {
                    let rest = name.strip_prefix("int4-")?;
                    let (rest, symmetric) = match rest.strip_suffix("-asym") {
                        Some(r) => (r, false),
                        None => (rest, true),
                    };
                    let block: u32 = rest.strip_prefix('g')?.parse().ok()?;
                    [32, 64, 128]
                        .contains(&block)
                        .then_some(Scheme::OnnxInt4 { block, symmetric })
                }
            },
            Framework::OpenVino => match name {
                "int8" => Some(Scheme::OpenVinoInt8),
                "fp16" => Some(Scheme::OpenVinoFp16),
                _ => {
                    let rest = name.strip_prefix("int4-")?;
                    let (mode, group) = rest.split_once("-g")?;
                    let symmetric = match mode {
                        "sym" => true,
                        "asym" => false,
                        _ => return None,
                    };
                    let group: u32 = group.parse().ok()?;
                    [32, 64, 128]
                        .contains(&group)
                        .then_some(Scheme::OpenVinoInt4 { symmetric, group })
                }
            },
            Framework::Qnn => match name {
                "w8a16" => Some(Scheme::Qnn {
                    activation_bits: 16,
                }),
                "w8a8" => Some(Scheme::Qnn { activation_bits: 8 }),
                _ => None,
            },
        }
    }

    /// Example names for error messages.
    pub fn examples(framework: Framework) -> &'static str {
        match framework {
            Framework::LlamaCpp => "Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, IQ4_NL, F16",
            Framework::Mlx => {
                "affine-4bit-g64 (bits 2,3,4,5,6,8; groups 32,64,128), mxfp4, mixed_3_6"
            }
            Framework::OnnxRuntime | Framework::Olive => {
                "int8-dynamic, int8-static, int4-g32 (g64, g128; -asym), fp16, fp32"
            }
            Framework::OpenVino => "int4-sym-g128, int4-asym-g64, int8, fp16",
            Framework::Qnn => "w8a16, w8a8",
        }
    }
}

/// Bytes of weights under a scheme, with the per-type breakdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WeightEstimate {
    /// Total bytes of all tensors as stored.
    pub bytes: u64,
    /// Bytes read per generated token: all weights except untied lookup-only embeddings.
    pub bytes_per_token: u64,
    /// Storage type -> tensors and bytes.
    pub by_type: BTreeMap<String, TypeCount>,
}

/// Tensors and bytes of one storage type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    pub tensors: u64,
    pub bytes: u64,
}

impl WeightEstimate {
    fn add(&mut self, type_name: &str, bytes: u64, read_per_token: bool) {
        self.bytes += bytes;
        if read_per_token {
            self.bytes_per_token += bytes;
        }
        let entry = self.by_type.entry(type_name.to_string()).or_default();
        entry.tensors += 1;
        entry.bytes += bytes;
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third in between.
pub fn use_more_bits(i: u64, n: u64) -> bool {
    crate::llama_quant::use_more_bits(
        i64::try_from(i).unwrap_or(i64::MAX),
        i64::try_from(n).unwrap_or(i64::MAX),
    )
}

/// The per-tensor GGUF types of a model for the planner: llama-quantize's exact choice
/// ([`crate::llama_quant::TypeChooser`], the code `cargo edgeai quantize` runs), computed once
/// per file type over the whole model in llama.cpp's tensor order.
#[derive(Debug)]
pub struct GgufMixState {
    /// Whether the model has its own output projection (`output.weight` / `lm_head`).
    pub has_output: bool,
    /// Whether the facts come from a GGUF file (names and types as llama-quantize sees them).
    is_gguf: bool,
    /// (original name, GGUF name, ggml `ne`, stored type), in llama.cpp's order.
    tensors: Vec<(String, String, Vec<u64>, crate::gguf::GgmlType)>,
    params: crate::llama_quant::ModelParams,
    /// File type -> original tensor name -> chosen type name.
    cache: BTreeMap<String, BTreeMap<String, String>>,
}

impl GgufMixState {
    /// The tensors of `facts` as llama-quantize would meet them.
    pub fn new(facts: &ModelFacts) -> Self {
        use crate::facts::ModelFormat;
        use crate::gguf::GgmlType;
        let is_gguf = facts.format == ModelFormat::Gguf;
        let mut tensors: Vec<_> = facts
            .tensors
            .iter()
            .map(|t| {
                let gguf_name = if is_gguf {
                    t.name.clone()
                } else {
                    gguf_name_of(&t.name)
                };
                let ne: Vec<u64> = t.shape.iter().rev().copied().collect();
                let ty = GgmlType::from_name(&t.dtype).unwrap_or(GgmlType::F32);
                (t.name.clone(), gguf_name, ne, ty)
            })
            .collect();
        tensors.sort_by(|a, b| crate::llama_quant::weight_order(&a.1, &b.1));
        let has_output = tensors.iter().any(|t| {
            crate::llama_quant::Category::of(&t.1) == crate::llama_quant::Category::Output
        });
        let max_layer = tensors
            .iter()
            .filter_map(|t| crate::llama_quant::blk_layer(&t.1))
            .max()
            .map_or(1, |l| l + 1);
        let n_head = facts.heads.unwrap_or(0);
        let params = crate::llama_quant::ModelParams {
            arch: facts.architecture.clone(),
            n_layer: facts
                .layers
                .and_then(|l| i64::try_from(l).ok())
                .unwrap_or(max_layer)
                .max(1),
            n_head,
            n_head_kv: facts.kv_heads.unwrap_or(n_head),
            n_expert: 0,
        };
        GgufMixState {
            has_output,
            is_gguf,
            tensors,
            params,
            cache: BTreeMap::new(),
        }
    }

    /// The chosen type of every tensor for `ftype`, by original name.
    fn types_for(&mut self, ftype: &str) -> &BTreeMap<String, String> {
        use crate::llama_quant::{choose_types, FileType, TypeOptions};
        if !self.cache.contains_key(ftype) {
            let file_type = FileType::parse(ftype).unwrap_or(FileType::Q8_0);
            let list: Vec<_> = self
                .tensors
                .iter()
                .map(|(_, name, ne, ty)| (name.clone(), ne.clone(), *ty))
                .collect();
            let opts = TypeOptions {
                quantize_output_tensor: true,
                ..TypeOptions::default()
            };
            let types = choose_types(file_type, self.params.clone(), opts, &list)
                .map(|(t, _)| t)
                .unwrap_or_else(|_| vec![file_type.default_type(); list.len()]);
            let map = self
                .tensors
                .iter()
                .zip(types)
                .map(|((orig, gguf_name, ne, cur), ty)| {
                    let quantized = crate::llama_quant::tensor_allows_quantization(
                        gguf_name,
                        ne,
                        &self.params.arch,
                        true,
                    );
                    let name = if quantized || self.is_gguf {
                        ty.name().to_string()
                    } else if crate::llama_quant::ggml_n_dims(ne) < 2 {
                        // The converters store 1-D tensors (norms, biases) as F32.
                        "F32".to_string()
                    } else {
                        match cur {
                            crate::gguf::GgmlType::F16
                            | crate::gguf::GgmlType::BF16
                            | crate::gguf::GgmlType::F32 => cur.name().to_string(),
                            _ => "F32".to_string(),
                        }
                    };
                    (orig.clone(), name)
                })
                .collect();
            self.cache.insert(ftype.to_string(), map);
        }
        &self.cache[ftype]
    }
}

/// The llama.cpp (GGUF) name of a Hugging Face tensor name, from its role and block number
/// ("model.layers.3.self_attn.v_proj.weight" -> "blk.3.attn_v.weight"); names without a known
/// role are kept.
fn gguf_name_of(name: &str) -> String {
    let (role, layer) = tensor_role(name);
    let blk = |suffix: &str| match layer {
        Some(i) => format!("blk.{i}.{suffix}"),
        None => name.to_string(),
    };
    match role {
        TensorRole::TokenEmbedding => "token_embd.weight".into(),
        TensorRole::Output => "output.weight".into(),
        TensorRole::AuxEmbedding if name.contains("position") => "position_embd.weight".into(),
        TensorRole::AuxEmbedding => "token_types.weight".into(),
        TensorRole::AttnQ => blk("attn_q.weight"),
        TensorRole::AttnK => blk("attn_k.weight"),
        TensorRole::AttnV => blk("attn_v.weight"),
        TensorRole::AttnQkv => blk("attn_qkv.weight"),
        TensorRole::AttnOutput => blk("attn_output.weight"),
        TensorRole::FfnGate => blk("ffn_gate.weight"),
        TensorRole::FfnUp => blk("ffn_up.weight"),
        TensorRole::FfnDown => blk("ffn_down.weight"),
        TensorRole::Norm | TensorRole::Other => name.to_string(),
    }
}

/// The ggml type llama-quantize stores `tensor` in for file type `ftype` (exactly: this is
/// [`crate::llama_quant::TypeChooser`], with llama.cpp's tensor order and counters).
pub fn gguf_tensor_type(ftype: &str, tensor: &TensorFact, state: &mut GgufMixState) -> String {
    state
        .types_for(ftype)
        .get(&tensor.name)
        .cloned()
        .unwrap_or_else(|| "F32".to_string())
}

/// llama-quantize's fallback when a row is not a whole number of blocks of the chosen type.
pub fn gguf_row_fallback(ty: &str, row_len: u64) -> String {
    crate::gguf::GgmlType::from_name(ty)
        .and_then(|t| crate::llama_quant::row_fallback(t, row_len))
        .map_or_else(|| "F16".to_string(), |t| t.name().to_string())
}

/// Bytes of `elements` stored as ggml type `ty` in rows of `row_len` elements.
pub fn ggml_bytes(ty: &str, elements: u64) -> u64 {
    match ggml_block(ty) {
        Some((block, bytes)) => elements.div_ceil(block).saturating_mul(bytes),
        None => elements.saturating_mul(4),
    }
}

/// Weight bytes of `facts` under `scheme`, tensor by tensor.
pub fn estimate_weights(scheme: &Scheme, facts: &ModelFacts) -> WeightEstimate {
    let mut est = WeightEstimate::default();
    let tied = facts.tied_embeddings;
    let layers = facts.layers.unwrap_or(0);
    // Exported graphs (ONNX, QNN) hold a tied output projection as its own MatMul weight.
    let duplicate_tied_output = matches!(
        scheme,
        Scheme::OnnxInt8Dynamic
            | Scheme::OnnxInt8Static
            | Scheme::OnnxInt4 { .. }
            | Scheme::OnnxFloat { .. }
            | Scheme::Qnn { .. }
    );
    let mut gguf_state = GgufMixState::new(facts);
    for tensor in &facts.tensors {
        let (role, layer) = tensor_role(&tensor.name);
        let n = tensor.elements();
        let matrix = tensor.shape.len() >= 2 && !matches!(role, TensorRole::Norm);
        // A tied embedding that is also the output projection is read in full for every token.
        let embedding_is_output = tied && !duplicate_tied_output;
        let lookup_only = role == TensorRole::AuxEmbedding
            || (role == TensorRole::TokenEmbedding && !embedding_is_output);
        match scheme {
            Scheme::Gguf(ftype) => {
                let ty = gguf_tensor_type(ftype, tensor, &mut gguf_state);
                let read = !(role == TensorRole::AuxEmbedding
                    || (role == TensorRole::TokenEmbedding && gguf_state.has_output));
                est.add(&ty, ggml_bytes(&ty, n), read);
            }
            Scheme::MlxAffine { bits, group } => {
                mlx_tensor(&mut est, tensor, role, *bits, *group, lookup_only)
            }
            Scheme::MlxMixed { low, high } => {
                let more = match (role, layer) {
                    (TensorRole::Output, _) => true,
                    (TensorRole::AttnV | TensorRole::FfnDown, Some(i)) => {
                        use_more_bits(i, layers.max(1))
                    }
                    _ => false,
                };
                let bits = if more { *high } else { *low };
                mlx_tensor(&mut est, tensor, role, bits, 64, lookup_only)
            }
            Scheme::MlxMxfp4 => {
                if matrix && tensor.row_len() % 32 == 0 {
                    est.add("MXFP4", n / 2 + n / 32, !lookup_only);
                } else {
                    est.add("F16", n * 2, !lookup_only);
                }
            }
            Scheme::OnnxInt8Dynamic | Scheme::OnnxInt8Static | Scheme::Qnn { .. } => {
                let (qname, fname) = match scheme {
                    Scheme::Qnn { .. } => ("UINT8", "F32"),
                    _ => ("INT8", "F32"),
                };
                if matrix {
                    // Per-channel scale (f32) for QNN, per-tensor for ORT: rows*4 is an upper bound.
                    let rows = n / tensor.row_len().max(1);
                    est.add(qname, n + rows * 4, !lookup_only);
                } else {
                    est.add(fname, n * 4, true);
                }
            }
            Scheme::OnnxInt4 { block, symmetric } => {
                if matrix && role != TensorRole::TokenEmbedding && role != TensorRole::AuxEmbedding
                {
                    let blocks = n.div_ceil(u64::from(*block));
                    let zero_points = if *symmetric { 0 } else { blocks.div_ceil(2) };
                    est.add("INT4", n.div_ceil(2) + blocks * 4 + zero_points, true);
                } else {
                    est.add("F32", n * 4, !lookup_only);
                }
            }
            Scheme::OnnxFloat { bits } => {
                est.add(
                    if *bits == 16 { "F16" } else { "F32" },
                    n * u64::from(*bits) / 8,
                    !lookup_only,
                );
            }
            Scheme::OpenVinoInt4 { symmetric, group } => {
                let embedding_or_output =
                    matches!(role, TensorRole::TokenEmbedding | TensorRole::Output);
                let rows = n / tensor.row_len().max(1);
                if matrix
                    && !embedding_or_output
                    && role != TensorRole::AuxEmbedding
                    && tensor.row_len() % u64::from(*group) == 0
                {
                    let groups = n / u64::from(*group);
                    let zero_points = if *symmetric { 0 } else { groups.div_ceil(2) };
                    est.add("INT4", n / 2 + groups * 2 + zero_points, true);
                } else if matrix {
                    // NNCF's backup precision: INT8 asymmetric per channel (f16 scale + u8 zero point).
                    est.add("INT8", n + rows * 3, !lookup_only);
                } else {
                    est.add("F16", n * 2, true);
                }
            }
            Scheme::OpenVinoInt8 => {
                let rows = n / tensor.row_len().max(1);
                if matrix {
                    est.add("INT8", n + rows * 3, !lookup_only);
                } else {
                    est.add("F16", n * 2, true);
                }
            }
            Scheme::OpenVinoFp16 => est.add("F16", n * 2, !lookup_only),
        }
    }
    if tied && duplicate_tied_output {
        if let Some(embedding) = facts
            .tensors
            .iter()
            .find(|t| tensor_role(&t.name).0 == TensorRole::TokenEmbedding)
        {
            let n = embedding.elements();
            let rows = n / embedding.row_len().max(1);
            match scheme {
                Scheme::OnnxFloat { bits } => est.add(
                    if *bits == 16 { "F16" } else { "F32" },
                    n * u64::from(*bits) / 8,
                    true,
                ),
                Scheme::OnnxInt4 { block, symmetric } => {
                    let blocks = n.div_ceil(u64::from(*block));
                    let zero_points = if *symmetric { 0 } else { blocks.div_ceil(2) };
                    est.add("INT4", n.div_ceil(2) + blocks * 4 + zero_points, true)
                }
                Scheme::Qnn { .. } => est.add("UINT8", n + rows * 4, true),
                _ => est.add("INT8", n + rows * 4, true),
            }
        }
    }
    est
}

fn mlx_tensor(
    est: &mut WeightEstimate,
    tensor: &TensorFact,
    role: TensorRole,
    bits: u32,
    group: u32,
    lookup_only: bool,
) {
    let n = tensor.elements();
    let quantizable = tensor.shape.len() >= 2
        && !matches!(role, TensorRole::Norm)
        && tensor.row_len().is_multiple_of(u64::from(group));
    if quantizable {
        let groups = n / u64::from(group);
        // Packed weights plus f16 scales and biases per group.
        let bytes = n * u64::from(bits) / 8 + groups * 4;
        est.add(&format!("AFFINE{bits}"), bytes, !lookup_only);
    } else {
        est.add("F16", n * 2, !lookup_only);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[u64]) -> TensorFact {
        TensorFact {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: "F32".into(),
        }
    }

    #[test]
    fn roles_from_both_namings() {
        assert_eq!(
            tensor_role("blk.3.attn_v.weight"),
            (TensorRole::AttnV, Some(3))
        );
        assert_eq!(
            tensor_role("model.layers.12.self_attn.v_proj.weight"),
            (TensorRole::AttnV, Some(12))
        );
        assert_eq!(
            tensor_role("model.layers.0.mlp.down_proj.weight").0,
            TensorRole::FfnDown
        );
        assert_eq!(
            tensor_role("token_embd.weight").0,
            TensorRole::TokenEmbedding
        );
        assert_eq!(tensor_role("model.norm.weight").0, TensorRole::Norm);
        assert_eq!(
            tensor_role("encoder.layer.1.output.dense.weight").0,
            TensorRole::FfnDown
        );
        assert_eq!(
            tensor_role("encoder.layer.1.attention.output.dense.weight").0,
            TensorRole::AttnOutput
        );
    }

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        // 30 layers (SmolLM2): n/8 = 3, 7n/8 = 26.
        let more: Vec<u64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
    }

    #[test]
    fn row_fallbacks() {
        assert_eq!(gguf_row_fallback("Q4_K", 576), "Q5_0");
        assert_eq!(gguf_row_fallback("Q6_K", 576), "Q8_0");
        assert_eq!(gguf_row_fallback("Q5_K", 576), "Q5_1");
        assert_eq!(gguf_row_fallback("Q4_K", 512), "Q4_K");
        assert_eq!(gguf_row_fallback("Q4_0", 40), "F16");
    }

    #[test]
    fn schemes_parse() {
        assert_eq!(
            Scheme::parse(Framework::Mlx, "affine-4bit-g64"),
            Some(Scheme::MlxAffine { bits: 4, group: 64 })
        );
        assert_eq!(Scheme::parse(Framework::Mlx, "affine-7bit-g64"), None);
        assert_eq!(
            Scheme::parse(Framework::LlamaCpp, "q4_k_m"),
            Some(Scheme::Gguf("Q4_K_M".into()))
        );
        assert_eq!(
            Scheme::parse(Framework::OpenVino, "int4-sym-g128"),
            Some(Scheme::OpenVinoInt4 {
                symmetric: true,
                group: 128
            })
        );
        assert_eq!(
            Scheme::parse(Framework::Olive, "int4-g32"),
            Some(Scheme::OnnxInt4 {
                block: 32,
                symmetric: true
            })
        );
        assert_eq!(
            Scheme::parse(Framework::Qnn, "w8a16"),
            Some(Scheme::Qnn {
                activation_bits: 16
            })
        );
    }

    #[test]
    fn q4_k_m_mixture_counts_tensor_by_tensor() {
        // Two blocks with 256-wide rows: attn_v and ffn_down of block 1 get Q6_K
        // (use_more_bits(1,2) is true: 1 >= 7*2/8; use_more_bits(0,2) is false: 0 < 2/8 = 0
        // fails, as in llama.cpp's int arithmetic), the rest Q4_K; tied embedding -> Q6_K.
        let mut tensors = vec![t("token_embd.weight", &[320, 256])];
        for i in 0..2 {
            for (name, shape) in [
                ("attn_norm.weight", vec![256]),
                ("attn_q.weight", vec![256, 256]),
                ("attn_k.weight", vec![64, 256]),
                ("attn_v.weight", vec![64, 256]),
                ("attn_output.weight", vec![256, 256]),
                ("ffn_gate.weight", vec![512, 256]),
                ("ffn_up.weight", vec![512, 256]),
                ("ffn_down.weight", vec![256, 512]),
            ] {
                tensors.push(t(&format!("blk.{i}.{name}"), &shape));
            }
        }
        let facts = ModelFacts {
            path: "m.gguf".into(),
            format: crate::facts::ModelFormat::Gguf,
            architecture: "llama".into(),
            class: crate::facts::ModelClass::DecoderLlm,
            parameters: 0,
            dtype: "F32".into(),
            layers: Some(2),
            hidden_size: Some(256),
            heads: Some(4),
            kv_heads: Some(1),
            head_dim: Some(64),
            vocab_size: Some(320),
            max_context: Some(512),
            tied_embeddings: true,
            tensors,
        };
        let est = estimate_weights(&Scheme::Gguf("Q4_K_M".into()), &facts);
        assert_eq!(est.by_type["Q6_K"].tensors, 3);
        assert_eq!(est.by_type["Q4_K"].tensors, 12);
        assert_eq!(est.by_type["F32"].tensors, 2);
        let q6 = (320 * 256 + 64 * 256 + 256 * 512) / 256 * 210;
        assert_eq!(est.by_type["Q6_K"].bytes, q6);
    }
}
