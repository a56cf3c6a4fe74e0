//! `cargo edgeai quantize` / `dequantize`: llama-quantize, ported so that the output file is
//! byte-identical to what llama.cpp writes for the same input and options.
//!
//! The reference is llama.cpp as vendored in the PyPI sdist of llama-cpp-python 0.3.36
//! (`src/llama-quant.cpp`, `tools/quantize/quantize.cpp`, `common/imatrix-loader.cpp`). This
//! module ports:
//!
//! * the file types (`--type`) and their `general.file_type` ids ([`FileType`]);
//! * the per-tensor type choice (`tensor_allows_quantization`, `llama_tensor_get_type`,
//!   `llama_tensor_get_type_impl`, `tensor_type_fallback`) in [`TypeChooser`]; the planner
//!   ([`crate::quant::gguf_tensor_type`]) uses the same code for its size estimates;
//! * `--tensor-type REGEX=TYPE` overrides (a pattern that matches no tensor is an error here,
//!   where llama.cpp silently ignores it);
//! * importance matrices in the GGUF format and the legacy `.dat` format ([`Imatrix`]);
//! * the output layout: tensors sorted by layer number then name, the input's metadata in its
//!   order with `general.quantization_version` and `general.file_type` moved to the end, split
//!   keys removed, the `quantize.imatrix.*` keys appended, data aligned to 32 bytes;
//! * the driver: rows are converted to f32 (F32/F16/BF16 input, or dequantized quantized input
//!   with `--allow-requantize`) and quantized chunk by chunk on N threads, and tensors are
//!   streamed to the output in order, so memory holds a few tensors, never the model.
//!
//! The quantizers themselves are [`crate::quants`] (bit-exact ports of ggml's).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use regex::Regex;
use serde::Serialize;

use crate::gguf::{
    split_metadata, split_paths, GgmlType, GgufArray, GgufHeader, GgufModel, GgufTensorInfo,
    GgufValue, GgufWriter, TensorSpec, DEFAULT_ALIGNMENT, KEY_SPLIT_COUNT, KEY_SPLIT_NO,
    KEY_SPLIT_TENSORS_COUNT,
};
use crate::quants;
use crate::{Error, Result};

/// `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const GGML_QNT_VERSION: u32 = 2;
/// GGUF version llama.cpp writes.
pub const GGUF_VERSION: u32 = 3;
/// Metadata key `general.file_type`.
pub const KEY_FILE_TYPE: &str = "general.file_type";
/// Metadata key `general.quantization_version`.
pub const KEY_QUANTIZATION_VERSION: &str = "general.quantization_version";
const KEY_IMATRIX_FILE: &str = "quantize.imatrix.file";
const KEY_IMATRIX_DATASET: &str = "quantize.imatrix.dataset";
const KEY_IMATRIX_N_ENTRIES: &str = "quantize.imatrix.entries_count";
const KEY_IMATRIX_N_CHUNKS: &str = "quantize.imatrix.chunks_count";

const HELP_BUILD: &str = "this file cannot be quantized by cargo-edgeai as it is; llama-quantize from llama.cpp may handle it";

// ---- file types ------------------------------------------------------------------------------

/// A llama-quantize file type (`--type`): the mixture name and its `enum llama_ftype` id,
/// written as `general.file_type`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum FileType {
    /// All tensors F32 (`LLAMA_FTYPE_ALL_F32`, 0).
    F32,
    /// F16 (`MOSTLY_F16`, 1).
    F16,
    /// BF16 (`MOSTLY_BF16`, 32).
    BF16,
    /// Q8_0 (7).
    Q8_0,
    /// Q4_0 (2).
    Q4_0,
    /// Q4_1 (3).
    Q4_1,
    /// Q5_0 (8).
    Q5_0,
    /// Q5_1 (9).
    Q5_1,
    /// Q2_K mixture (10).
    Q2_K,
    /// Q2_K_S mixture (21); needs an importance matrix.
    Q2_K_S,
    /// Q3_K_S (11).
    Q3_K_S,
    /// Q3_K_M (12).
    Q3_K_M,
    /// Q3_K_L (13).
    Q3_K_L,
    /// Q4_K_S (14).
    Q4_K_S,
    /// Q4_K_M (15).
    Q4_K_M,
    /// Q5_K_S (16).
    Q5_K_S,
    /// Q5_K_M (17).
    Q5_K_M,
    /// Q6_K (18).
    Q6_K,
    /// IQ4_NL (25).
    IQ4_NL,
    /// MXFP4 for MoE expert tensors, Q8_0 elsewhere (38).
    MXFP4_MOE,
}

impl FileType {
    /// Every supported file type, in llama-quantize's listing order.
    pub const ALL: [FileType; 20] = [
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::MXFP4_MOE,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2_K,
        FileType::Q2_K_S,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::IQ4_NL,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
        FileType::Q8_0,
        FileType::F16,
        FileType::BF16,
        FileType::F32,
    ];

    /// The name llama-quantize prints and accepts ("Q4_K_M").
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q2_K => "Q2_K",
            FileType::Q2_K_S => "Q2_K_S",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
            FileType::IQ4_NL => "IQ4_NL",
            FileType::MXFP4_MOE => "MXFP4_MOE",
        }
    }

    /// The `enum llama_ftype` id, written as `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2_K => 10,
            FileType::Q3_K_S => 11,
            FileType::Q3_K_M => 12,
            FileType::Q3_K_L => 13,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::Q2_K_S => 21,
            FileType::IQ4_NL => 25,
            FileType::BF16 => 32,
            FileType::MXFP4_MOE => 38,
        }
    }

    /// The tensor type most tensors get (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2_K | FileType::Q2_K_S => GgmlType::Q2_K,
            FileType::Q3_K_S | FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q3_K,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
            FileType::IQ4_NL => GgmlType::IQ4_NL,
            FileType::MXFP4_MOE => GgmlType::MXFP4,
        }
    }

    /// Parse a `--type` value as llama-quantize does: a name (case-insensitive, with the
    /// aliases Q3_K, Q4_K, Q5_K for the _M mixtures) or a numeric `llama_ftype` id.
    pub fn parse(s: &str) -> Option<FileType> {
        let upper = s.trim().to_ascii_uppercase();
        let alias = match upper.as_str() {
            "Q3_K" => Some(FileType::Q3_K_M),
            "Q4_K" => Some(FileType::Q4_K_M),
            "Q5_K" => Some(FileType::Q5_K_M),
            _ => None,
        };
        alias
            .or_else(|| FileType::ALL.into_iter().find(|t| t.name() == upper))
            .or_else(|| {
                let id: u32 = upper.parse().ok()?;
                FileType::ALL.into_iter().find(|t| t.id() == id)
            })
    }

    /// "Q4_0, Q4_1, ..." for error messages.
    pub fn valid_names() -> String {
        let mut names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
        names.extend(["Q3_K", "Q4_K", "Q5_K"]);
        names.join(", ")
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parse a ggml tensor type name (`--output-tensor-type q8_0`), case-insensitive.
pub fn parse_ggml_type(s: &str, flag: &str) -> Result<GgmlType> {
    GgmlType::from_name(s.trim()).ok_or_else(|| {
        let known: Vec<&str> = GgmlType::ALL
            .iter()
            .filter(|t| quants::can_quantize(**t))
            .map(|t| t.name())
            .collect();
        Error::Usage {
            message: format!("{flag}: unknown tensor type `{s}`"),
            help: format!("use one of {}", known.join(", ")),
        }
    })
}

// ---- tensor categories and the per-tensor type choice ----------------------------------------

/// llama.cpp's broad tensor categories (`enum tensor_category`), from the GGUF tensor name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `token_embd.weight`, `per_layer_token_embd.weight`.
    TokenEmbd,
    /// `attn_q.weight`.
    AttnQ,
    /// `attn_v.weight`.
    AttnV,
    /// `attn_k.weight`.
    AttnK,
    /// `attn_qkv.weight`.
    AttnQkv,
    /// `attn_kv_b.weight`.
    AttnKvB,
    /// `attn_output.weight`.
    AttnOutput,
    /// `ffn_up*`.
    FfnUp,
    /// `ffn_gate*`.
    FfnGate,
    /// `ffn_down*`.
    FfnDown,
    /// `output.weight`.
    Output,
    /// Everything else.
    Other,
}

impl Category {
    /// `tensor_get_category`.
    pub fn of(name: &str) -> Category {
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Category::AttnQkv
        } else if name.contains("attn_kv_b.weight") {
            Category::AttnKvB
        } else if name.contains("attn_v.weight") {
            Category::AttnV
        } else if name.contains("attn_k.weight") {
            Category::AttnK
        } else if name.contains("attn_q.weight") {
            Category::AttnQ
        } else if name.contains("attn_output.weight") {
            Category::AttnOutput
        } else if name.contains("ffn_up") {
            Category::FfnUp
        } else if name.contains("ffn_gate") {
            Category::FfnGate
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    /// `category_is_attn_v`.
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

/// `ggml_n_dims`: dimensions up to the last one larger than 1 (at least 1).
pub fn ggml_n_dims(ne: &[u64]) -> usize {
    ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third in
/// between.
pub fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8
        || i_layer >= 7 * n_layers / 8
        || (i_layer - n_layers / 8).rem_euclid(3) == 2
}

/// The layer number llama.cpp parses with `sscanf(name, "blk.%d.", &il)`.
pub fn blk_layer(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start();
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().ok().map(|v| sign * v)
}

/// The order of llama.cpp's `weights_map` (`weight_name_comparer`): layer number (-1 for
/// tensors outside `blk.N.`), then name bytewise.
pub fn weight_order(a: &str, b: &str) -> std::cmp::Ordering {
    let la = blk_layer(a).unwrap_or(-1);
    let lb = blk_layer(b).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// `tensor_allows_quantization` (for the architectures this crate targets; the glm5-next
/// exclusions are included).
pub fn tensor_allows_quantization(
    name: &str,
    ne: &[u64],
    arch: &str,
    quantize_output_tensor: bool,
) -> bool {
    if ggml_n_dims(ne) < 2 {
        return false;
    }
    let has = |s: &str| name.contains(s);
    let mut q = name.ends_with("weight");
    q &= !has("_norm.weight");
    q &= quantize_output_tensor || name != "output.weight";
    q &= !has("ffn_gate_inp.weight");
    q &= !has("ffn_gate_tid2eid.weight");
    q &= !has("altup");
    q &= !has("laurel");
    q &= !has("per_layer_model_proj");
    q &= name != "position_embd.weight";
    q &= name != "token_types.weight";
    q &= !has("ssm_conv1d");
    q &= !has("shortconv.conv.weight");
    q &= !has("indexer.k_proj.weight");
    q &= !has("indexer.q_proj.weight");
    if arch == "glm5-next" {
        for s in [
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ] {
            q &= !has(s);
        }
    }
    for s in [
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ] {
        q &= !has(s);
    }
    q
}

/// The model hyper-parameters the type choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelParams {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count` (`n_layer_all`).
    pub n_layer: i64,
    /// Attention heads of layer 0.
    pub n_head: u64,
    /// KV heads of layer 0.
    pub n_head_kv: u64,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: u64,
}

impl ModelParams {
    /// Read from GGUF metadata, as llama.cpp's `load_hparams` does for these fields.
    pub fn from_header(header: &GgufHeader, path: &Path) -> Result<ModelParams> {
        let arch = header.architecture().unwrap_or("").to_string();
        if arch.is_empty() {
            return Err(Error::model(
                path,
                "GGUF file has no general.architecture; llama-quantize needs it",
                HELP_BUILD,
            ));
        }
        let first = |key: &str| -> Option<u64> {
            match header.get(&format!("{arch}.{key}"))? {
                GgufValue::Array(a) => a.to_u64_vec()?.first().copied(),
                v => v.as_u64(),
            }
        };
        let n_layer = first("block_count").filter(|&n| n > 0).ok_or_else(|| {
            Error::model(
                path,
                format!("GGUF file has no {arch}.block_count; llama-quantize needs it"),
                HELP_BUILD,
            )
        })?;
        let n_head = first("attention.head_count").unwrap_or(0);
        let n_head_kv = first("attention.head_count_kv").unwrap_or(n_head);
        let n_expert = first("expert_count").unwrap_or(0);
        Ok(ModelParams {
            arch,
            n_layer: i64::try_from(n_layer).unwrap_or(i64::MAX),
            n_head,
            n_head_kv,
            n_expert,
        })
    }

    /// `hparams.n_gqa()` of layer 0.
    pub fn n_gqa(&self) -> u64 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp classifies the model as `LLM_TYPE_70B` (the only model type the
    /// mixtures look at).
    pub fn is_70b(&self) -> bool {
        match self.arch.as_str() {
            "llama" => self.n_layer == 80 && self.n_head != self.n_head_kv,
            "qwen2" | "deci" | "olmo" => self.n_layer == 80,
            "jais2" => self.n_layer == 68,
            _ => false,
        }
    }
}

/// The user's knobs of the type choice.
#[derive(Debug, Clone, Default)]
pub struct TypeOptions {
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--pure`: no mixture, every quantizable tensor gets the default type (then fallbacks).
    pub pure: bool,
    /// `--leave-output-tensor` clears this.
    pub quantize_output_tensor: bool,
    /// `--tensor-type` overrides: (pattern as given, compiled lower-cased, type).
    pub overrides: Vec<TensorTypeOverride>,
    /// Whether an importance matrix is given (changes a few Q4_0/Q5_0/IQ4_NL choices).
    pub has_imatrix: bool,
}

/// One `--tensor-type REGEX=TYPE`.
#[derive(Debug, Clone)]
pub struct TensorTypeOverride {
    /// The argument as given.
    pub arg: String,
    /// The pattern, lower-cased as llama-quantize does, searched anywhere in the name.
    pub regex: Regex,
    /// The type.
    pub ty: GgmlType,
}

impl TensorTypeOverride {
    /// Parse `REGEX=TYPE` (split at the first `=`).
    pub fn parse(arg: &str) -> Result<TensorTypeOverride> {
        let usage = |message: String| {
            Error::Usage {
            message,
            help: "write --tensor-type REGEX=TYPE, e.g. --tensor-type 'attn_v=q8_0' or --tensor-type 'blk\\.[0-3]\\.ffn_down=q6_k'".into(),
        }
        };
        let Some((pattern, ty)) = arg.split_once('=') else {
            return Err(usage(format!("--tensor-type `{arg}`: missing `=TYPE`")));
        };
        if pattern.is_empty() {
            return Err(usage(format!(
                "--tensor-type `{arg}`: missing tensor name pattern"
            )));
        }
        if ty.is_empty() {
            return Err(usage(format!("--tensor-type `{arg}`: missing tensor type")));
        }
        let ty = parse_ggml_type(ty, "--tensor-type")?;
        let regex = Regex::new(&pattern.to_lowercase()).map_err(|e| {
            usage(format!(
                "--tensor-type `{arg}`: invalid regular expression: {e}"
            ))
        })?;
        Ok(TensorTypeOverride {
            arg: arg.to_string(),
            regex,
            ty,
        })
    }
}

/// The state llama-quantize keeps while it walks the tensors (`quantize_state_impl`), and the
/// type choice itself. Feed it every tensor in [`weight_order`] through [`TypeChooser::choose`].
#[derive(Debug, Clone)]
pub struct TypeChooser {
    ftype: FileType,
    model: ModelParams,
    opts: TypeOptions,
    n_attention_wv: i64,
    n_ffn_down: i64,
    n_ffn_gate: i64,
    n_ffn_up: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    /// Tensors whose row length forced a fallback type.
    pub n_fallback: usize,
    has_tied_embeddings: bool,
}

impl TypeChooser {
    /// Counters for `names` (all tensors of the model), as `init_quantize_state_counters`.
    pub fn new<'a>(
        ftype: FileType,
        model: ModelParams,
        opts: TypeOptions,
        names: impl IntoIterator<Item = &'a str>,
    ) -> TypeChooser {
        let mut n_attention_wv = 0;
        let mut has_tied_embeddings = true;
        for name in names {
            let cat = Category::of(name);
            if cat.is_attn_v() {
                n_attention_wv += 1;
            }
            if cat == Category::Output {
                has_tied_embeddings = false;
            }
        }
        let n = model.n_layer;
        TypeChooser {
            ftype,
            model,
            opts,
            n_attention_wv,
            n_ffn_down: n,
            n_ffn_gate: n,
            n_ffn_up: n,
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
            n_fallback: 0,
            has_tied_embeddings,
        }
    }

    /// Whether the model has no `output.weight` (the token embedding doubles as output).
    pub fn has_tied_embeddings(&self) -> bool {
        self.has_tied_embeddings
    }

    /// Whether llama-quantize would quantize this tensor at all.
    pub fn allows_quantization(&self, name: &str, ne: &[u64]) -> bool {
        tensor_allows_quantization(name, ne, &self.model.arch, self.opts.quantize_output_tensor)
    }

    /// `llama_tensor_get_type`: the type tensor `name` (shape `ne`, ggml order, stored as
    /// `cur`) is written in. Call once per tensor, in [`weight_order`].
    pub fn choose(&mut self, name: &str, ne: &[u64], cur: GgmlType) -> Result<GgmlType> {
        if !self.allows_quantization(name, ne) {
            return Ok(cur);
        }
        let category = Category::of(name);
        if let Some(t) = self.opts.token_embedding_type {
            if category == Category::TokenEmbd {
                let named = name == "per_layer_token_embd.weight"
                    && self.opts.overrides.iter().any(|o| o.regex.is_match(name));
                if !named {
                    return Ok(t);
                }
            }
        }
        if let Some(t) = self.opts.output_tensor_type {
            if category == Category::Output {
                return Ok(t);
            }
        }
        let default_type = self.ftype.default_type();
        let mut new_type = default_type;
        if default_type.is_quantized() {
            let manual = self.opts.overrides.iter().find(|o| o.regex.is_match(name));
            if let Some(o) = manual {
                new_type = o.ty;
            } else if !self.opts.pure {
                new_type = self.mixture(new_type, name, ne, category)?;
            }
            new_type = self.fallback(name, ne, new_type)?;
        }
        Ok(new_type)
    }

    /// `layer_info`: the layer index for the FFN rules.
    fn layer_info(&self, i_layer: i64, n_layer: i64, name: &str) -> Result<(i64, i64)> {
        if self.model.n_expert > 1 {
            let Some(il) = blk_layer(name) else {
                return Err(Error::Usage {
                    message: format!("failed to determine layer for tensor {name}"),
                    help: HELP_BUILD.into(),
                });
            };
            if il < 0 || il >= n_layer {
                return Err(Error::Usage {
                    message: format!("bad layer {il} for tensor {name}; must be in [0, {n_layer})"),
                    help: HELP_BUILD.into(),
                });
            }
            return Ok((il, n_layer));
        }
        Ok((i_layer, n_layer))
    }

    /// `llama_tensor_get_type_impl` for the file types of [`FileType`] (the i-quant mixtures'
    /// branches cannot be reached and are left out).
    fn mixture(
        &mut self,
        mut new_type: GgmlType,
        name: &str,
        ne: &[u64],
        category: Category,
    ) -> Result<GgmlType> {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.ftype;
        let arch = self.model.arch.as_str();
        let falcon = arch == "falcon";
        let n_gqa = self.model.n_gqa();
        let n_expert = self.model.n_expert;

        if arch == "glm5-next"
            && (name.contains("attn_q_a")
                || name.contains("attn_q_b")
                || name.contains("nextn.eh_proj"))
            && !matches!(new_type, G::F32 | G::BF16 | G::F16)
        {
            return Ok(G::Q8_0);
        }

        if category == Category::Output
            || (self.has_tied_embeddings && category == Category::TokenEmbd)
        {
            if let Some(t) = self.opts.output_tensor_type {
                new_type = t;
            } else {
                let nx = ne.first().copied().unwrap_or(0);
                let qk_k = new_type.block_size();
                if ftype == F::MXFP4_MOE || falcon || nx % qk_k != 0 {
                    new_type = G::Q8_0;
                } else if new_type != G::Q8_0 {
                    new_type = G::Q6_K;
                }
            }
        } else if ftype == F::MXFP4_MOE {
            let bailing = arch == "bailingmoe3";
            let bailing_expert = bailing
                && matches!(
                    category,
                    Category::FfnUp | Category::FfnGate | Category::FfnDown
                );
            let ne2 = ne.get(2).copied().unwrap_or(1);
            new_type = if ne2 > 1 && (!bailing || bailing_expert) {
                G::MXFP4
            } else {
                G::Q8_0
            };
        } else if category == Category::TokenEmbd {
            if let Some(t) = self.opts.token_embedding_type {
                new_type = t;
            }
        } else if category.is_attn_v() {
            let i = self.i_attention_wv;
            let n = self.n_attention_wv;
            match ftype {
                F::Q2_K => new_type = if n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q2_K_S if n_gqa >= 4 => new_type = G::Q4_K,
                F::Q3_K_M => new_type = if i < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => new_type = G::Q5_K,
                F::IQ4_NL if n_gqa >= 4 => new_type = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n) => new_type = G::Q6_K,
                F::Q4_K_S if i < 4 => new_type = G::Q5_K,
                _ => {}
            }
            if self.model.is_70b() && matches!(new_type, G::Q3_K | G::Q4_K) {
                new_type = G::Q5_K;
            }
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if category == Category::AttnK {
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
        } else if category == Category::AttnQ {
            // Only the i-quant mixtures change attn_q.
        } else if category == Category::FfnDown {
            let (i, n) = self.layer_info(self.i_ffn_down, self.n_ffn_down, name)?;
            let has_imatrix = self.opts.has_imatrix;
            match ftype {
                F::Q2_K => new_type = G::Q3_K,
                // (Later arms name other file types, so a failed guard changes nothing, as the
                // nested `if` in llama.cpp.)
                F::Q2_K_S if i < n / 8 => new_type = G::Q4_K,
                F::Q3_K_M => {
                    new_type = if i < n / 16 {
                        G::Q5_K
                    } else if !falcon || use_more_bits(i, n) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => new_type = if falcon { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M => {
                    if falcon {
                        new_type = if i < n / 16 {
                            G::Q6_K
                        } else if use_more_bits(i, n) {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if use_more_bits(i, n) {
                        new_type = G::Q6_K;
                    }
                }
                F::IQ4_NL if i < n / 8 && !has_imatrix => new_type = G::Q5_K,
                F::Q5_K_M if use_more_bits(i, n) => new_type = G::Q6_K,
                F::Q4_K_S if !falcon && i < n / 8 => new_type = G::Q5_K,
                F::Q4_0 if has_imatrix && i < n / 8 => new_type = G::Q4_1,
                F::Q5_0 if has_imatrix && i < n / 8 => new_type = G::Q5_1,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if category == Category::AttnOutput {
            if !falcon {
                if n_expert == 8 {
                    if matches!(
                        ftype,
                        F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::IQ4_NL | F::Q4_K_S | F::Q4_K_M
                    ) {
                        new_type = G::Q5_K;
                    }
                } else {
                    match ftype {
                        F::Q2_K => new_type = G::Q3_K,
                        F::Q3_K_M => new_type = G::Q4_K,
                        F::Q3_K_L => new_type = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == F::Q3_K_L {
                new_type = G::Q4_K;
            }
        } else if category == Category::AttnQkv {
            match ftype {
                F::Q3_K_M | F::Q3_K_L => new_type = G::Q4_K,
                F::Q4_K_M => new_type = G::Q5_K,
                F::Q5_K_M => new_type = G::Q6_K,
                _ => {}
            }
        } else if category == Category::FfnGate {
            self.layer_info(self.i_ffn_gate, self.n_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if category == Category::FfnUp {
            self.layer_info(self.i_ffn_up, self.n_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(new_type)
    }

    /// `tensor_type_fallback`: a type whose block does not divide the row length falls back to
    /// a 32-block type, or F16 when even that does not fit.
    fn fallback(&mut self, name: &str, ne: &[u64], target: GgmlType) -> Result<GgmlType> {
        let ncols = ne.first().copied().unwrap_or(0);
        if ncols % target.block_size() == 0 {
            return Ok(target);
        }
        self.n_fallback += 1;
        row_fallback(target, ncols).ok_or_else(|| Error::Usage {
            message: format!(
                "tensor {name}: rows of {ncols} are not a multiple of {} and no tensor type fallback is defined for type {target}",
                target.block_size()
            ),
            help: "pick another type for this tensor with --tensor-type".into(),
        })
    }
}

/// The type llama-quantize stores a tensor with rows of `ncols` in when it asked for `target`
/// (`tensor_type_fallback`): `target` itself when its block divides the row, else a 32-block
/// substitute (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, i-quants ->
/// IQ4_NL), else F16. `None` for a 256-block type without a defined fallback (llama.cpp errors).
pub fn row_fallback(target: GgmlType, ncols: u64) -> Option<GgmlType> {
    use GgmlType as G;
    let qk = target.block_size();
    if ncols.is_multiple_of(qk) {
        return Some(target);
    }
    let ret = match target {
        G::IQ1_S
        | G::IQ1_M
        | G::IQ2_XXS
        | G::IQ2_XS
        | G::IQ2_S
        | G::IQ3_XXS
        | G::IQ3_S
        | G::IQ4_XS => G::IQ4_NL,
        G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        _ if qk <= 32 => target,
        _ => return None,
    };
    Some(if !ncols.is_multiple_of(ret.block_size()) {
        G::F16
    } else {
        ret
    })
}

/// `tensor_requires_imatrix`.
fn tensor_requires_imatrix(name: &str, dst: GgmlType, ftype: FileType) -> bool {
    if name == "token_embd.weight"
        || name == "per_layer_token_embd.weight"
        || name == "output.weight"
    {
        return false;
    }
    match dst {
        GgmlType::IQ3_XXS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ1_M
        | GgmlType::IQ1_S => true,
        GgmlType::Q2_K => ftype == FileType::Q2_K_S,
        _ => false,
    }
}

/// The types llama-quantize gives `tensors` (name, ggml `ne`, current type), in the order
/// given (the caller sorts them with [`weight_order`] first to match llama.cpp exactly).
/// Returns the types and the number of row-length fallbacks. Used by the planner.
pub fn choose_types(
    ftype: FileType,
    model: ModelParams,
    opts: TypeOptions,
    tensors: &[(String, Vec<u64>, GgmlType)],
) -> Result<(Vec<GgmlType>, usize)> {
    let mut chooser = TypeChooser::new(ftype, model, opts, tensors.iter().map(|t| t.0.as_str()));
    let types = tensors
        .iter()
        .map(|(name, ne, cur)| chooser.choose(name, ne, *cur))
        .collect::<Result<Vec<_>>>()?;
    Ok((types, chooser.n_fallback))
}

// ---- importance matrix -----------------------------------------------------------------------

/// An importance matrix as llama-quantize uses it: per tensor name, the mean squared
/// activation of each input column (per expert for 3-D tensors).
#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    /// Normalized weights by tensor name.
    pub entries: HashMap<String, Vec<f32>>,
    /// Dataset names recorded in the file.
    pub datasets: Vec<String>,
    /// Chunks the matrix was computed on (0 when unknown).
    pub chunk_count: i32,
    /// Whether the file was the legacy `.dat` format.
    pub legacy: bool,
}

impl Imatrix {
    /// Load an imatrix file: the GGUF format (`NAME.in_sum2` + `NAME.counts` tensors and
    /// `imatrix.*` metadata) or, when the file is not GGUF, the legacy binary format. Values are
    /// normalized as tools/quantize does (sums divided by counts; columns without data get 1).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let m = if bytes.starts_with(b"GGUF") {
            Imatrix::from_gguf(bytes, path)?
        } else {
            Imatrix::from_legacy(&bytes, path)?
        };
        for (name, v) in &m.entries {
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::model(
                    path,
                    format!("imatrix contains non-finite value {x} (tensor {name})"),
                    "recompute the importance matrix; the activations overflowed",
                ));
            }
        }
        Ok(m)
    }

    fn from_gguf(bytes: Vec<u8>, path: &Path) -> Result<Imatrix> {
        let bad = |message: String| {
            Error::model(
                path,
                message,
                "write the importance matrix with llama-imatrix (GGUF output) or pass a legacy .dat file",
            )
        };
        let file = crate::gguf::GgufFile::from_bytes(bytes, path)?;
        let header = file.header();
        if header.tensors.is_empty() {
            return Err(bad("no data in imatrix file".into()));
        }
        let datasets = match header.get("imatrix.datasets") {
            Some(GgufValue::Array(GgufArray::String(v))) => v.clone(),
            _ => Vec::new(),
        };
        let has_metadata = header.get("imatrix.datasets").is_some()
            && header.get("imatrix.chunk_count").is_some()
            && header.get("imatrix.chunk_size").is_some();
        if !has_metadata {
            return Err(bad(
                "missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)"
                    .into(),
            ));
        }
        let chunk_count = header
            .get_u64("imatrix.chunk_count")
            .map_or(0, |c| c as u32 as i32);
        let mut pairs: BTreeMap<String, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in header.tensors.iter().enumerate() {
            if let Some(base) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(base.to_string()).or_default().0 = Some(i);
            } else if let Some(base) = t.name.strip_suffix(".counts") {
                pairs.entry(base.to_string()).or_default().1 = Some(i);
            }
        }
        let f32s = |i: usize| -> Vec<f32> {
            file.tensor_data(i)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let mut entries = HashMap::new();
        for (name, (sums, counts)) in pairs {
            let (Some(si), Some(ci)) = (sums, counts) else {
                return Err(bad(format!("mismatched sums and counts for {name}")));
            };
            if header.tensors[si].ggml_type != GgmlType::F32
                || header.tensors[ci].ggml_type != GgmlType::F32
            {
                return Err(bad(format!("sums and counts for {name} must be F32")));
            }
            let sums = f32s(si);
            let counts: Vec<i64> = f32s(ci).iter().map(|c| c.round() as i64).collect();
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(bad(format!(
                    "{name}: {} sums do not split into {} experts",
                    sums.len(),
                    counts.len()
                )));
            }
            let ne0 = sums.len() / counts.len();
            let mut e = vec![0f32; sums.len()];
            for (j, &c) in counts.iter().enumerate() {
                let count = c as f32;
                for k in 0..ne0 {
                    e[j * ne0 + k] = if count > 0.0 {
                        sums[j * ne0 + k] / count
                    } else {
                        1.0
                    };
                }
            }
            entries.insert(name, e);
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
            legacy: false,
        })
    }

    fn from_legacy(bytes: &[u8], path: &Path) -> Result<Imatrix> {
        let bad = |message: String| {
            Error::model(
                path,
                format!("not an imatrix file (neither GGUF nor the legacy format): {message}"),
                "pass the file written by llama-imatrix",
            )
        };
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize| -> Option<i32> {
            let b = bytes.get(*pos..*pos + 4)?;
            *pos += 4;
            Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let n_entries = i32_at(&mut pos)
            .filter(|&n| n >= 1)
            .ok_or_else(|| bad("no data".into()))?;
        let mut entries = HashMap::new();
        for i in 0..n_entries {
            let len = i32_at(&mut pos)
                .and_then(|l| usize::try_from(l).ok())
                .ok_or_else(|| bad(format!("failed reading name for entry {}", i + 1)))?;
            let name = bytes
                .get(pos..pos + len)
                .ok_or_else(|| bad(format!("failed reading name for entry {}", i + 1)))?;
            pos += len;
            // C++ reads the name into a NUL-terminated buffer: it ends at the first NUL.
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8_lossy(name).into_owned();
            let ncall = i32_at(&mut pos).ok_or_else(|| bad(format!("truncated entry {name}")))?;
            let nval = i32_at(&mut pos)
                .filter(|&n| n >= 1)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("failed reading number of values for entry {i}")))?;
            let data = bytes
                .get(pos..pos + nval * 4)
                .ok_or_else(|| bad(format!("failed reading data for entry {i}")))?;
            pos += nval * 4;
            let ncall = i64::from(ncall);
            let e: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .map(|s| if ncall > 0 { s / ncall as f32 } else { s })
                .collect();
            entries.insert(name, e);
        }
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if pos < bytes.len() {
            if let Some(n) = i32_at(&mut pos) {
                chunk_count = n;
                if let Some(len) = i32_at(&mut pos).and_then(|l| usize::try_from(l).ok()) {
                    if len > 0 {
                        if let Some(d) = bytes.get(pos..pos + len) {
                            let d = d.split(|&b| b == 0).next().unwrap_or(&[]);
                            datasets.push(String::from_utf8_lossy(d).into_owned());
                        }
                    }
                }
            }
        }
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
            legacy: true,
        })
    }
}

// ---- options and report ----------------------------------------------------------------------

/// What `cargo edgeai quantize` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct QuantizeOptions {
    /// Input GGUF (first split of a split model).
    pub input: PathBuf,
    /// Output GGUF (with `keep_split`, the prefix of the split names).
    pub output: PathBuf,
    /// `--type`, e.g. "Q4_K_M".
    pub file_type: String,
    /// `--imatrix FILE`.
    pub imatrix: Option<PathBuf>,
    /// `--threads N` (default: all cores).
    pub threads: Option<usize>,
    /// `--pure`.
    pub pure: bool,
    /// `--output-tensor-type TYPE`.
    pub output_tensor_type: Option<String>,
    /// `--token-embedding-type TYPE`.
    pub token_embedding_type: Option<String>,
    /// `--tensor-type REGEX=TYPE`, repeatable.
    pub tensor_types: Vec<String>,
    /// `--allow-requantize`: accept quantized input tensors (dequantized first).
    pub allow_requantize: bool,
    /// `--leave-output-tensor`: keep output.weight as it is.
    pub leave_output_tensor: bool,
    /// `--keep-split`: one output file per input split.
    pub keep_split: bool,
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// What `cargo edgeai dequantize` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct DequantizeOptions {
    /// Input GGUF.
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// "F16" (default), "F32" or "BF16".
    pub file_type: String,
    /// `--threads N` (default: all cores).
    pub threads: Option<usize>,
    /// `--keep-split`.
    pub keep_split: bool,
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// Tensors and bytes of one output type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeTotal {
    /// Tensors stored in this type.
    pub tensors: usize,
    /// Their data bytes.
    pub bytes: u64,
}

/// What a quantize (or dequantize) run did.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// Input file (first split).
    pub input: PathBuf,
    /// Files written.
    pub outputs: Vec<PathBuf>,
    /// File type name ("Q4_K_M").
    pub file_type: String,
    /// `general.file_type` written.
    pub file_type_id: u32,
    /// Worker threads used.
    pub threads: usize,
    /// Tensors in the model.
    pub tensors: usize,
    /// Tensors converted to another type.
    pub converted: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Tensors that fell back to another type because of their row length.
    pub fallbacks: usize,
    /// Tensor data bytes read.
    pub input_bytes: u64,
    /// Tensor data bytes written.
    pub output_bytes: u64,
    /// Output tensors by type.
    pub by_type: BTreeMap<String, TypeTotal>,
    /// Importance-matrix entries used, when an imatrix was given.
    pub imatrix_entries: Option<usize>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl QuantizeReport {
    /// A short human summary.
    pub fn render_human(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = format!(
            "{} -> {} as {} ({} threads, {:.2} s)\n  {} tensors: {} converted, {} copied{}\n  tensor data {:.2} MiB -> {:.2} MiB\n",
            self.input.display(),
            self.outputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.file_type,
            self.threads,
            self.seconds,
            self.tensors,
            self.converted,
            self.copied,
            if self.fallbacks > 0 {
                format!(", {} with a row-length fallback type", self.fallbacks)
            } else {
                String::new()
            },
            mib(self.input_bytes),
            mib(self.output_bytes),
        );
        for (ty, t) in &self.by_type {
            s.push_str(&format!(
                "  {:<7} {:>4} tensors {:>10.2} MiB\n",
                ty,
                t.tensors,
                mib(t.bytes)
            ));
        }
        s
    }
}

// ---- the driver ------------------------------------------------------------------------------

/// One tensor of the plan: where it comes from and what it becomes.
struct PlannedTensor {
    loc: crate::gguf::TensorLoc,
    name: String,
    /// `ne` trimmed to `ggml_n_dims`, as gguf writes it.
    ne: Vec<u64>,
    cur: GgmlType,
    new: GgmlType,
    /// Output split index.
    out_split: usize,
    /// Importance weights (ne[0] × experts) when used for this tensor.
    imatrix: Option<Vec<f32>>,
}

/// Quantize a GGUF model as `llama-quantize` does; the output is byte-identical to
/// llama.cpp's for the same input and options.
pub fn do_quantize(opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let ftype = FileType::parse(&opts.file_type).ok_or_else(|| Error::Usage {
        message: format!("unknown --type `{}`", opts.file_type),
        help: format!("valid types: {}", FileType::valid_names()),
    })?;
    let output_tensor_type = opts
        .output_tensor_type
        .as_deref()
        .map(|s| parse_ggml_type(s, "--output-tensor-type"))
        .transpose()?;
    let token_embedding_type = opts
        .token_embedding_type
        .as_deref()
        .map(|s| parse_ggml_type(s, "--token-embedding-type"))
        .transpose()?;
    let overrides = opts
        .tensor_types
        .iter()
        .map(|s| TensorTypeOverride::parse(s.as_str()))
        .collect::<Result<Vec<_>>>()?;
    let imatrix = opts.imatrix.as_deref().map(Imatrix::load).transpose()?;
    let imatrix = imatrix.filter(|m| !m.entries.is_empty());
    let type_opts = TypeOptions {
        output_tensor_type,
        token_embedding_type,
        pure: opts.pure,
        quantize_output_tensor: !opts.leave_output_tensor,
        overrides,
        has_imatrix: imatrix.is_some(),
    };
    run(Job {
        input: &opts.input,
        output: &opts.output,
        ftype,
        type_opts,
        imatrix: imatrix.map(|m| (m, opts.imatrix.clone().unwrap_or_default())),
        threads: opts.threads,
        allow_requantize: opts.allow_requantize,
        keep_split: opts.keep_split,
        progress: opts.progress,
        inflight_bytes: INFLIGHT_BYTES,
    })
}

/// Dequantize a GGUF model to F16 (or F32/BF16): exactly what
/// `llama-quantize --allow-requantize IN OUT F16` writes.
pub fn do_dequantize(opts: &DequantizeOptions) -> Result<QuantizeReport> {
    let name = if opts.file_type.is_empty() {
        "F16"
    } else {
        opts.file_type.as_str()
    };
    let ftype = match FileType::parse(name) {
        Some(t @ (FileType::F16 | FileType::F32 | FileType::BF16)) => t,
        _ => {
            return Err(Error::Usage {
                message: format!("unknown dequantize --type `{name}`"),
                help: "valid types: F16, F32, BF16".into(),
            })
        }
    };
    run(Job {
        input: &opts.input,
        output: &opts.output,
        ftype,
        type_opts: TypeOptions {
            quantize_output_tensor: true,
            ..TypeOptions::default()
        },
        imatrix: None,
        threads: opts.threads,
        allow_requantize: true,
        keep_split: opts.keep_split,
        progress: opts.progress,
        inflight_bytes: INFLIGHT_BYTES,
    })
}

struct Job<'a> {
    input: &'a Path,
    output: &'a Path,
    ftype: FileType,
    type_opts: TypeOptions,
    imatrix: Option<(Imatrix, PathBuf)>,
    threads: Option<usize>,
    allow_requantize: bool,
    keep_split: bool,
    progress: bool,
    /// Output bytes pending before no further tensor starts ([`INFLIGHT_BYTES`]).
    inflight_bytes: usize,
}

fn usage(message: String, help: &str) -> Error {
    Error::Usage {
        message,
        help: help.to_string(),
    }
}

fn run(job: Job<'_>) -> Result<QuantizeReport> {
    let start = Instant::now();
    let model = GgufModel::open(job.input)?;
    let header = model.header();
    let params = ModelParams::from_header(header, job.input)?;
    let threads = job
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    // The tensor list in llama.cpp's order.
    let mut locs: Vec<crate::gguf::TensorLoc> = model.tensors().to_vec();
    if job.keep_split {
        locs.sort_by_key(|l| (l.split, model.info(*l).offset));
    } else {
        locs.sort_by(|a, b| weight_order(&model.info(*a).name, &model.info(*b).name));
    }

    // --tensor-type patterns must name something.
    for o in &job.type_opts.overrides {
        if !locs.iter().any(|l| o.regex.is_match(&model.info(*l).name)) {
            return Err(usage(
                format!(
                    "--tensor-type `{}`: the pattern `{}` matches no tensor of {}",
                    o.arg,
                    o.regex.as_str(),
                    job.input.display()
                ),
                "check the pattern against the names `cargo edgeai inspect --tensors MODEL` lists (patterns are regular expressions searched anywhere in the name, lower-cased)",
            ));
        }
    }

    // Preliminary pass: every tensor's type, imatrix and checks, before anything is written.
    let mut chooser = TypeChooser::new(
        job.ftype,
        params,
        job.type_opts.clone(),
        locs.iter().map(|l| model.info(*l).name.as_str()),
    );
    let mut plan = Vec::with_capacity(locs.len());
    for &loc in &locs {
        let info = model.info(loc);
        let ne = trimmed_ne(info);
        let new = chooser.choose(&info.name, &ne, info.ggml_type)?;
        let allows = chooser.allows_quantization(&info.name, &ne);
        let requires_imatrix = tensor_requires_imatrix(&info.name, new, job.ftype);
        if job.imatrix.is_none() && allows && requires_imatrix {
            return Err(usage(
                format!(
                    "{} needs an importance matrix: tensor {} would be {}",
                    job.ftype, info.name, new
                ),
                "pass --imatrix FILE (computed with llama-imatrix on text like your use), or pick another --type",
            ));
        }
        let mut weights = None;
        if new != info.ggml_type {
            check_convertible(info, new, job.allow_requantize, job.input)?;
            if let Some((m, path)) = &job.imatrix {
                if let Some(e) = m.entries.get(&info.name) {
                    let want = ne[0] * ne.get(2).copied().unwrap_or(1);
                    if e.len() as u64 == want {
                        weights = Some(e.clone());
                    } else if !(info.name == "token_embd.weight"
                        || info.name == "per_layer_token_embd.weight")
                    {
                        return Err(Error::model(
                            path,
                            format!(
                                "imatrix size {} is different from tensor size {} for {}",
                                e.len(),
                                want,
                                info.name
                            ),
                            "the importance matrix was computed for another model; compute it for this one with llama-imatrix",
                        ));
                    }
                }
            }
            if weights.is_none() && requires_imatrix {
                return Err(usage(
                    format!(
                        "missing importance matrix for tensor {} in a very low-bit quantization ({})",
                        info.name, new
                    ),
                    "compute the importance matrix on this model with llama-imatrix",
                ));
            }
        }
        plan.push(PlannedTensor {
            loc,
            name: info.name.clone(),
            ne,
            cur: info.ggml_type,
            new,
            out_split: if job.keep_split { loc.split } else { 0 },
            imatrix: weights,
        });
    }

    // Output metadata, as llama_model_quantize_impl builds it.
    let n_split = if job.keep_split {
        model.splits().len()
    } else {
        1
    };
    let mut meta: Vec<(String, GgufValue)> = header.metadata.clone();
    set_kv(
        &mut meta,
        KEY_QUANTIZATION_VERSION,
        GgufValue::U32(GGML_QNT_VERSION),
    );
    set_kv(&mut meta, KEY_FILE_TYPE, GgufValue::U32(job.ftype.id()));
    for k in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
        meta.retain(|(key, _)| key != k);
    }
    let mut imatrix_entries = None;
    if let Some((m, path)) = &job.imatrix {
        let mut file = path.to_string_lossy().into_owned();
        truncate_bytes(&mut file, 127);
        set_kv(&mut meta, KEY_IMATRIX_FILE, GgufValue::String(file));
        if let Some(d) = m.datasets.first() {
            let mut d = d.clone();
            truncate_bytes(&mut d, 127);
            set_kv(&mut meta, KEY_IMATRIX_DATASET, GgufValue::String(d));
        }
        set_kv(
            &mut meta,
            KEY_IMATRIX_N_ENTRIES,
            GgufValue::U32(m.entries.len() as u32),
        );
        if m.chunk_count > 0 {
            set_kv(
                &mut meta,
                KEY_IMATRIX_N_CHUNKS,
                GgufValue::U32(m.chunk_count.unsigned_abs()),
            );
        }
        imatrix_entries = Some(m.entries.len());
    }

    // Output files.
    let out_paths: Vec<PathBuf> = if job.keep_split {
        split_paths(job.output, n_split)
    } else {
        vec![job.output.to_path_buf()]
    };
    for out in &out_paths {
        for split in model.splits() {
            if same_file(split.path(), out) {
                return Err(usage(
                    format!("input and output files are the same: {}", out.display()),
                    "write the output to another path",
                ));
            }
        }
    }
    let mut writers = Vec::with_capacity(n_split);
    for (i, out) in out_paths.iter().enumerate() {
        // Split parts after the first carry only the split keys (llama.cpp starts them from
        // an empty context).
        let m = split_metadata(&meta, i as u16, n_split as u16, plan.len());
        let specs: Vec<TensorSpec> = plan
            .iter()
            .filter(|p| p.out_split == i)
            .map(|p| TensorSpec {
                name: p.name.clone(),
                ne: p.ne.clone(),
                ggml_type: p.new,
            })
            .collect();
        // llama.cpp lays the data out at GGUF_DEFAULT_ALIGNMENT whatever general.alignment says.
        writers.push(GgufWriter::create(
            out,
            GGUF_VERSION,
            &m,
            &specs,
            DEFAULT_ALIGNMENT,
        )?);
    }

    // Main loop (see `Pipeline`): `threads` workers read, convert and quantize chunks of rows
    // across tensor boundaries; one more thread writes finished tensors in order.
    let total_in: u64 = plan.iter().map(|p| model.data(p.loc).len() as u64).sum();
    let bar = progress_bar(job.progress, total_in);
    let jobs = plan
        .iter()
        .map(|p| TensorJob::new(p, &model))
        .collect::<Result<Vec<_>>>()?;
    let input = Input::open(&model)?;
    let pipeline = Pipeline {
        plan: &plan,
        jobs: &jobs,
        input: &input,
        path: job.input,
        bar: bar.as_ref(),
        budget: job.inflight_bytes,
    };
    let writers = pipeline.run(threads, writers)?;
    for w in writers {
        w.finish()?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut report = QuantizeReport {
        input: job.input.to_path_buf(),
        outputs: out_paths.clone(),
        file_type: job.ftype.name().to_string(),
        file_type_id: job.ftype.id(),
        threads,
        tensors: plan.len(),
        converted: 0,
        copied: 0,
        fallbacks: chooser.n_fallback,
        input_bytes: 0,
        output_bytes: 0,
        by_type: BTreeMap::new(),
        imatrix_entries,
        seconds: 0.0,
    };
    for (p, j) in plan.iter().zip(&jobs) {
        if j.copy {
            report.copied += 1;
        } else {
            report.converted += 1;
        }
        report.input_bytes += j.in_len as u64;
        report.output_bytes += j.out_len as u64;
        let t = report.by_type.entry(p.new.name().to_string()).or_default();
        t.tensors += 1;
        t.bytes += j.out_len as u64;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The tensor's `ne` as gguf writes it back: trimmed to `ggml_n_dims`.
fn trimmed_ne(info: &GgufTensorInfo) -> Vec<u64> {
    let mut ne = info.ne.clone();
    if ne.is_empty() {
        ne.push(1);
    }
    ne.truncate(ggml_n_dims(&ne));
    ne
}

/// `gguf_set_val_*`: remove the key, then append it.
fn set_kv(meta: &mut Vec<(String, GgufValue)>, key: &str, value: GgufValue) {
    meta.retain(|(k, _)| k != key);
    meta.push((key.to_string(), value));
}

/// `strncpy(dst, src, 127)` into a 128-byte buffer: at most 127 bytes (cut on a byte boundary,
/// which may split a UTF-8 character just as C does; such a tail is replaced lossily).
fn truncate_bytes(s: &mut String, max: usize) {
    if s.len() > max {
        let bytes = s.as_bytes()[..max].to_vec();
        *s = String::from_utf8_lossy(&bytes).into_owned();
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Refuse conversions this build cannot do, before any output is written.
fn check_convertible(
    info: &GgufTensorInfo,
    new: GgmlType,
    allow_requantize: bool,
    path: &Path,
) -> Result<()> {
    if !quants::can_quantize(new) {
        return Err(usage(
            format!("tensor {}: quantizing to {new} is not supported", info.name),
            "pick another type (see --type, --tensor-type); cargo-edgeai quantizes to F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, MXFP4",
        ));
    }
    let cur = info.ggml_type;
    if cur.is_quantized() {
        if !allow_requantize {
            return Err(usage(
                format!(
                    "{}: tensor {} is already {cur}; requantizing from type {cur} is disabled",
                    path.display(),
                    info.name
                ),
                "quantize from an F16/BF16/F32 model, or pass --allow-requantize (quality suffers)",
            ));
        }
        if !quants::can_dequantize(cur) {
            return Err(Error::model(
                path,
                format!("tensor {}: dequantizing {cur} is not supported", info.name),
                HELP_BUILD,
            ));
        }
    } else if !matches!(cur, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(Error::model(
            path,
            format!("tensor {}: cannot convert tensor type {cur}", info.name),
            HELP_BUILD,
        ));
    }
    Ok(())
}

/// Rows per work item: about 64 Ki elements, never fewer than one row.
fn rows_per_chunk(n_per_row: usize) -> usize {
    (65_536 / n_per_row.max(1)).max(1)
}

/// Output bytes of tensors being quantized or waiting to be written, beyond which no further
/// tensor is started (a tensor larger than this runs alone). Bounds resident memory at a few
/// tensors' outputs whatever the model size.
const INFLIGHT_BYTES: usize = 32 << 20;

/// One tensor's geometry, checked before anything is written.
struct TensorJob {
    /// Written as it is (same type in and out).
    copy: bool,
    /// Input split and the absolute offset of the tensor's data in that file.
    split: usize,
    in_off: u64,
    in_len: usize,
    out_len: usize,
    n_per_row: usize,
    n_rows: usize,
    /// Rows per expert (`ne[1]`): work items never cross an expert boundary, since each
    /// expert has its own imatrix slice.
    rows_per_expert: usize,
    src_row: usize,
    dst_row: usize,
}

impl TensorJob {
    fn new(p: &PlannedTensor, model: &GgufModel) -> Result<TensorJob> {
        let file = &model.splits()[p.loc.split];
        let in_off = file.header().data_range(model.info(p.loc)).start;
        let in_len = model.data(p.loc).len();
        let n_per_row = p.ne.first().copied().unwrap_or(1) as usize;
        let n_rows = p.ne.iter().skip(1).product::<u64>() as usize;
        let rows_per_expert = (p.ne.get(1).copied().unwrap_or(1) as usize).max(1);
        let mut job = TensorJob {
            copy: p.cur == p.new,
            split: p.loc.split,
            in_off,
            in_len,
            out_len: in_len,
            n_per_row,
            n_rows,
            rows_per_expert,
            src_row: 0,
            dst_row: 0,
        };
        if job.copy {
            return Ok(job);
        }
        job.src_row = p.cur.bytes_for(n_per_row as u64).unwrap_or(0) as usize;
        job.dst_row = p.new.bytes_for(n_per_row as u64).ok_or_else(|| {
            usage(
                format!("tensor {}: rows of {n_per_row} cannot be {}", p.name, p.new),
                HELP_BUILD,
            )
        })? as usize;
        job.out_len = job.dst_row * n_rows;
        if job.src_row * n_rows != in_len {
            return Err(Error::Internal(format!(
                "tensor {}: {n_rows} rows of {} bytes but {in_len} bytes of data",
                p.name, job.src_row
            )));
        }
        Ok(job)
    }
}

/// The input's tensor data, read with positioned reads into small reused buffers rather than
/// through the memory map: the input's pages then never count in our resident memory (a
/// mapped F16 model would stay resident as it is touched, the whole file by the end).
struct Input<'a> {
    model: &'a GgufModel,
    #[cfg(unix)]
    files: Vec<std::fs::File>,
}

impl<'a> Input<'a> {
    fn open(model: &'a GgufModel) -> Result<Input<'a>> {
        #[cfg(unix)]
        let files = model
            .splits()
            .iter()
            .map(|s| std::fs::File::open(s.path()).map_err(|e| Error::io(s.path(), e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Input {
            model,
            #[cfg(unix)]
            files,
        })
    }

    /// `buf.len()` bytes of the tensor's data from byte `start`.
    fn read(&self, p: &PlannedTensor, j: &TensorJob, start: usize, buf: &mut [u8]) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            let _ = p;
            let file = &self.files[j.split];
            file.read_exact_at(buf, j.in_off + start as u64)
                .map_err(|e| Error::io(self.model.splits()[j.split].path(), e))
        }
        #[cfg(not(unix))]
        {
            let _ = j;
            let src = self
                .model
                .data(p.loc)
                .get(start..start + buf.len())
                .ok_or_else(|| Error::Internal(format!("tensor {}: read past its data", p.name)))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
}

/// A chunk of rows of one tensor.
#[derive(Clone, Copy)]
struct Item {
    tensor: usize,
    row: usize,
    n_rows: usize,
}

/// A tensor being quantized: its output and the rows still to come.
struct Slot {
    out: Vec<u8>,
    rows_left: usize,
}

/// The scheduler's state, behind one mutex (held only to hand out a chunk, or to store a
/// finished chunk's bytes: microseconds against the milliseconds a chunk takes).
#[derive(Default)]
struct State {
    /// The first tensor not started yet.
    next: usize,
    /// The tensor whose chunks are being handed out, and its next row.
    cur: Option<(usize, usize)>,
    slots: HashMap<usize, Slot>,
    /// Output bytes of started tensors not written yet.
    inflight: usize,
    /// Output buffers given back by the writer, reused for later tensors.
    pool: Vec<Vec<u8>>,
    failed: Option<Error>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when output bytes are written (budget freed) or a thread fails.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, e: Error) {
        self.lock().failed.get_or_insert(e);
        self.wake.notify_all();
    }
}

/// Records a panic as a failure so that no other thread waits for the panicking one.
struct FailOnPanic<'a>(&'a Shared);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(Error::Internal("a quantize thread panicked".to_string()));
        }
    }
}

/// A buffer of `len` bytes from the pool: the smallest that is large enough, else the largest
/// (grown), else a new one. Every byte is overwritten by the quantizers; reusing buffers
/// avoids faulting fresh pages in (and unmapping them) for every tensor.
fn take_buffer(pool: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    let fit = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())
        .or_else(|| pool.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
        .map(|(i, _)| i);
    let mut buf = fit.map(|i| pool.swap_remove(i)).unwrap_or_default();
    buf.resize(len, 0);
    buf
}

/// The quantize driver.
///
/// `threads` workers (the calling thread and `threads - 1` more, like llama.cpp's `nthread`)
/// take chunks of about 64 Ki elements from one queue that runs over all tensors in output
/// order, so no worker idles at the end of a small tensor. A worker reads its chunk from the
/// input file, converts it to f32 and quantizes it in buffers of its own (a few hundred KiB,
/// reused), then copies the bytes into the tensor's output buffer. A finished tensor goes to
/// the writer thread, which writes tensors in order (one large write each) and copies the
/// tensors that keep their type; it mostly waits on I/O. Tensors are started while less than
/// `budget` ([`INFLIGHT_BYTES`]) of output is pending, so reading and quantizing the next
/// tensors overlap writing the previous ones while memory stays at a few tensors.
///
/// Rows are quantized independently, so the output does not depend on chunking or threads.
struct Pipeline<'a> {
    plan: &'a [PlannedTensor],
    jobs: &'a [TensorJob],
    input: &'a Input<'a>,
    path: &'a Path,
    bar: Option<&'a indicatif::ProgressBar>,
    /// [`INFLIGHT_BYTES`] (smaller in tests).
    budget: usize,
}

impl Pipeline<'_> {
    fn run(&self, threads: usize, writers: Vec<GgufWriter>) -> Result<Vec<GgufWriter>> {
        let shared = Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        };
        let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
        let written = std::thread::scope(|s| {
            let sh = &shared;
            let writer = s.spawn(move || {
                let _guard = FailOnPanic(sh);
                match self.write(sh, rx, writers) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        sh.fail(e);
                        None
                    }
                }
            });
            for _ in 1..threads.max(1) {
                let tx = tx.clone();
                s.spawn(move || self.work(sh, tx));
            }
            self.work(sh, tx);
            writer.join()
        });
        let state = shared
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = state.failed {
            return Err(e);
        }
        match written {
            Ok(Some(w)) => Ok(w),
            Ok(None) | Err(_) => Err(Error::Internal(
                "the quantize writer thread stopped".to_string(),
            )),
        }
    }

    /// A worker: chunks until there are none left or a thread failed.
    fn work(&self, sh: &Shared, tx: mpsc::Sender<(usize, Vec<u8>)>) {
        let _guard = FailOnPanic(sh);
        let mut raw: Vec<u8> = Vec::new();
        let mut rows: Vec<f32> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        while let Some(item) = self.next_item(sh, &tx) {
            if let Err(e) = self.quantize(item, &mut raw, &mut rows, &mut out) {
                sh.fail(e);
                return;
            }
            let j = &self.jobs[item.tensor];
            let mut st = sh.lock();
            let start = item.row * j.dst_row;
            let Some(slot) = st.slots.get_mut(&item.tensor) else {
                drop(st);
                sh.fail(Error::Internal("quantize chunk of no tensor".to_string()));
                return;
            };
            let Some(dst) = slot.out.get_mut(start..start + out.len()) else {
                drop(st);
                sh.fail(Error::Internal("quantize chunk out of range".to_string()));
                return;
            };
            dst.copy_from_slice(&out);
            slot.rows_left -= item.n_rows;
            if slot.rows_left == 0 {
                if let Some(slot) = st.slots.remove(&item.tensor) {
                    // The writer is gone only after a failure, which `failed` records.
                    let _ = tx.send((item.tensor, slot.out));
                }
            }
        }
    }

    /// The next chunk: of the current tensor, else of the next tensor to convert once the
    /// output budget allows starting it. `None` when all are handed out or a thread failed.
    fn next_item(&self, sh: &Shared, tx: &mpsc::Sender<(usize, Vec<u8>)>) -> Option<Item> {
        let mut st = sh.lock();
        loop {
            if st.failed.is_some() {
                return None;
            }
            if let Some((tensor, row)) = st.cur {
                let j = &self.jobs[tensor];
                let expert_end = (row / j.rows_per_expert + 1) * j.rows_per_expert;
                let n_rows = rows_per_chunk(j.n_per_row)
                    .min(expert_end - row)
                    .min(j.n_rows - row);
                st.cur = (row + n_rows < j.n_rows).then_some((tensor, row + n_rows));
                return Some(Item {
                    tensor,
                    row,
                    n_rows,
                });
            }
            let tensor = (st.next..self.jobs.len()).find(|&i| !self.jobs[i].copy)?;
            let j = &self.jobs[tensor];
            if st.inflight > 0 && st.inflight + j.out_len > self.budget {
                // Freed by the writer (which is waiting for tensors started before this one,
                // all of whose chunks are handed out) or woken by a failure.
                st = sh.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.next = tensor + 1;
            st.inflight += j.out_len;
            let out = take_buffer(&mut st.pool, j.out_len);
            if j.n_rows == 0 || j.n_per_row == 0 {
                let _ = tx.send((tensor, out));
            } else {
                st.slots.insert(
                    tensor,
                    Slot {
                        out,
                        rows_left: j.n_rows,
                    },
                );
                st.cur = Some((tensor, 0));
            }
        }
    }

    /// Read, convert and quantize one chunk into `out`.
    fn quantize(
        &self,
        item: Item,
        raw: &mut Vec<u8>,
        rows: &mut Vec<f32>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let p = &self.plan[item.tensor];
        let j = &self.jobs[item.tensor];
        raw.resize(item.n_rows * j.src_row, 0);
        self.input.read(p, j, item.row * j.src_row, raw)?;
        rows.resize(item.n_rows * j.n_per_row, 0.0);
        to_f32(p.cur, raw, rows).map_err(|e| quant_error(p, self.path, e))?;
        let expert = item.row / j.rows_per_expert;
        let weights = match p.imatrix.as_deref() {
            // The length was checked against ne[0] × ne[2]; a 4-D tensor has more row groups
            // than that (llama.cpp does not support those either).
            Some(w) => Some(
                w.get(expert * j.n_per_row..(expert + 1) * j.n_per_row)
                    .ok_or_else(|| {
                        usage(
                            format!(
                                "tensor {}: no importance weights for row group {expert}",
                                p.name
                            ),
                            HELP_BUILD,
                        )
                    })?,
            ),
            None => None,
        };
        out.resize(item.n_rows * j.dst_row, 0);
        quants::quantize_rows(p.new, rows, j.n_per_row, weights, out)
            .map_err(|e| quant_error(p, self.path, e))
    }

    /// The writer: every tensor in order, into its output file.
    fn write(
        &self,
        sh: &Shared,
        rx: mpsc::Receiver<(usize, Vec<u8>)>,
        mut writers: Vec<GgufWriter>,
    ) -> Result<Vec<GgufWriter>> {
        let mut done: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut copy: Vec<u8> = Vec::new();
        for (i, (p, j)) in self.plan.iter().zip(self.jobs).enumerate() {
            let w = writers.get_mut(p.out_split).ok_or_else(|| {
                Error::Internal(format!(
                    "tensor {}: no output split {}",
                    p.name, p.out_split
                ))
            })?;
            if j.copy {
                if sh.lock().failed.is_some() {
                    break;
                }
                copy.resize(j.in_len, 0);
                self.input.read(p, j, 0, &mut copy)?;
                w.write_tensor(&copy)?;
            } else {
                let out = loop {
                    if let Some(out) = done.remove(&i) {
                        break out;
                    }
                    match rx.recv() {
                        Ok((k, out)) => {
                            done.insert(k, out);
                        }
                        // Every worker has stopped: one failed and said why.
                        Err(_) => return Ok(writers),
                    }
                };
                let res = w.write_tensor(&out);
                {
                    let mut st = sh.lock();
                    st.inflight -= j.out_len;
                    st.pool.push(out);
                }
                sh.wake.notify_all();
                res?;
            }
            if let Some(bar) = self.bar {
                bar.inc(j.in_len as u64);
            }
        }
        Ok(writers)
    }
}

fn quant_error(p: &PlannedTensor, path: &Path, e: quants::QuantError) -> Error {
    Error::model(
        path,
        format!("tensor {} ({} -> {}): {e}", p.name, p.cur, p.new),
        HELP_BUILD,
    )
}

/// Input rows to f32 (`llama_tensor_dequantize_impl`); also the converter's and exporter's
/// source-row conversion.
pub(crate) fn to_f32(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
) -> std::result::Result<(), quants::QuantError> {
    match ty {
        GgmlType::F32 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            f16_to_f32_slice(src, dst);
            Ok(())
        }
        GgmlType::BF16 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = quants::bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
            Ok(())
        }
        _ => quants::dequantize_rows(ty, src, dst),
    }
}

/// Little-endian F16 values to f32 (exact: every f16 is an f32), 8 at a time with F16C when
/// the CPU has it.
fn f16_to_f32_slice(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX and F16C, checked just above.
        unsafe { f16_to_f32_f16c(src, dst) };
        return;
    }
    f16_to_f32_scalar(src, dst);
}

fn f16_to_f32_scalar(src: &[u8], dst: &mut [f32]) {
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = quants::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `vcvtph2ps`: bit-identical to [`quants::f16_to_f32`] for every input (a unit test checks all
/// 65536).
///
/// # Safety
/// The CPU must support AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = dst.len().min(src.len() / 2);
    let whole = n - n % 8;
    for (d, s) in dst[..whole]
        .chunks_exact_mut(8)
        .zip(src[..2 * whole].chunks_exact(16))
    {
        // SAFETY: `s` holds 16 bytes and `d` 8 floats; both intrinsics accept unaligned
        // pointers.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    f16_to_f32_scalar(&src[2 * whole..2 * n], &mut dst[whole..n]);
}

fn progress_bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed:>4} [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_parse_and_ids() {
        assert_eq!(FileType::parse("q4_k_m"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q4_K"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("15"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q9_9"), None);
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Some(t));
            assert_eq!(
                crate::gguf::llama_file_type_name(u64::from(t.id())),
                Some(t.name())
            );
        }
    }

    #[test]
    fn use_more_bits_and_order() {
        let more: Vec<i64> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
        );
        let mut names = vec![
            "blk.10.attn_q.weight",
            "output.weight",
            "blk.2.ffn_down.weight",
            "blk.2.attn_k.weight",
            "token_embd.weight",
        ];
        names.sort_by(|a, b| weight_order(a, b));
        assert_eq!(
            names,
            vec![
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_down.weight",
                "blk.10.attn_q.weight"
            ]
        );
        assert_eq!(blk_layer("blk.7.attn_v.weight"), Some(7));
        assert_eq!(blk_layer("token_embd.weight"), None);
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        let model = ModelParams {
            arch: "llama".into(),
            n_layer: 1,
            n_head: 9,
            n_head_kv: 3,
            n_expert: 0,
        };
        let mut c = TypeChooser::new(
            FileType::Q2_K,
            model,
            TypeOptions {
                quantize_output_tensor: true,
                ..TypeOptions::default()
            },
            ["blk.0.attn_q.weight"],
        );
        let t = c
            .choose("blk.0.attn_q.weight", &[576, 576], GgmlType::F16)
            .unwrap();
        assert_eq!(t, GgmlType::Q4_0);
        assert_eq!(c.n_fallback, 1);
        assert_eq!(
            c.choose("blk.0.attn_norm.weight", &[576], GgmlType::F32)
                .unwrap(),
            GgmlType::F32
        );
    }

    #[test]
    fn f16_conversion_is_exact() {
        let src: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut fast = vec![0f32; 1 << 16];
        f16_to_f32_slice(&src, &mut fast);
        for (h, f) in (0..=u16::MAX).zip(&fast) {
            assert_eq!(f.to_bits(), quants::f16_to_f32(h).to_bits(), "f16 {h:#06x}");
        }
        // Lengths that are not a multiple of 8 take the scalar tail.
        let mut tail = vec![0f32; 13];
        f16_to_f32_slice(&src[2 * 0x3bf0..2 * (0x3bf0 + 13)], &mut tail);
        assert_eq!(tail, fast[0x3bf0..0x3bf0 + 13]);
    }

    /// A small two-layer llama model of F16, BF16 and F32 tensors, some of whose row counts
    /// are not multiples of the chunk size.
    fn write_test_model(path: &Path) {
        let mut specs = vec![
            (
                "token_embd.weight".to_string(),
                vec![256u64, 300],
                GgmlType::F16,
            ),
            ("output_norm.weight".to_string(), vec![256], GgmlType::F32),
        ];
        for l in 0..2 {
            let t = |n: &str, ne: Vec<u64>, ty| (format!("blk.{l}.{n}.weight"), ne, ty);
            specs.extend([
                t("attn_norm", vec![256], GgmlType::F32),
                t("attn_q", vec![256, 256], GgmlType::F16),
                t("attn_k", vec![256, 64], GgmlType::BF16),
                t("attn_v", vec![256, 64], GgmlType::F16),
                t("attn_output", vec![256, 256], GgmlType::F32),
                t("ffn_gate", vec![256, 768], GgmlType::F16),
                t("ffn_up", vec![256, 768], GgmlType::F16),
                t("ffn_down", vec![768, 256], GgmlType::F16),
            ]);
        }
        let meta = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".to_string()),
            ),
            ("llama.block_count".to_string(), GgufValue::U32(2)),
            ("llama.attention.head_count".to_string(), GgufValue::U32(4)),
            (
                "llama.attention.head_count_kv".to_string(),
                GgufValue::U32(1),
            ),
        ];
        let tensor_specs: Vec<TensorSpec> = specs
            .iter()
            .map(|(name, ne, ty)| TensorSpec {
                name: name.clone(),
                ne: ne.clone(),
                ggml_type: *ty,
            })
            .collect();
        let mut w = GgufWriter::create(path, GGUF_VERSION, &meta, &tensor_specs, 32).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for (_, ne, ty) in &specs {
            let n: u64 = ne.iter().product();
            let mut data = Vec::new();
            for i in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Values in ±1 scaled per row, so blocks differ in range.
                let row = i / ne[0];
                let x =
                    ((seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * (1.0 + row as f32 % 7.0);
                match ty {
                    GgmlType::F32 => data.extend(x.to_le_bytes()),
                    GgmlType::F16 => data.extend(quants::f32_to_f16(x).to_le_bytes()),
                    _ => data.extend(quants::f32_to_bf16(x).to_le_bytes()),
                }
            }
            w.write_tensor(&data).unwrap();
        }
        w.finish().unwrap();
    }

    fn quantize_test_model(
        input: &Path,
        output: &Path,
        ftype: FileType,
        threads: usize,
        inflight_bytes: usize,
    ) -> Vec<u8> {
        run(Job {
            input,
            output,
            ftype,
            type_opts: TypeOptions {
                quantize_output_tensor: true,
                ..TypeOptions::default()
            },
            imatrix: None,
            threads: Some(threads),
            allow_requantize: false,
            keep_split: false,
            progress: false,
            inflight_bytes,
        })
        .unwrap();
        std::fs::read(output).unwrap()
    }

    /// The pipeline's output does not depend on threads or the in-flight budget, and every
    /// tensor is what quantizing it whole in one call gives.
    #[test]
    fn pipeline_is_deterministic_and_matches_whole_tensor_quantization() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.gguf");
        write_test_model(&input);
        let output = dir.path().join("out.gguf");
        for ftype in [FileType::Q4_K_M, FileType::Q8_0, FileType::F32] {
            let first = quantize_test_model(&input, &output, ftype, 1, INFLIGHT_BYTES);
            for (threads, budget) in [(2, INFLIGHT_BYTES), (3, 1), (2, 100_000), (5, 1 << 40)] {
                let again = quantize_test_model(&input, &output, ftype, threads, budget);
                assert!(
                    first == again,
                    "{ftype}: {threads} threads, budget {budget}"
                );
            }
            let model_in = GgufModel::open(&input).unwrap();
            let model_out = GgufModel::open(&output).unwrap();
            let mut converted = 0;
            for &loc in model_out.tensors() {
                let info = model_out.info(loc);
                let src_loc = model_in.find(&info.name).unwrap();
                let src_ty = model_in.info(src_loc).ggml_type;
                let src = model_in.data(src_loc);
                let got = model_out.data(loc);
                if src_ty == info.ggml_type {
                    assert_eq!(got, src, "{}", info.name);
                    continue;
                }
                converted += 1;
                let mut rows = vec![0f32; info.n_elements() as usize];
                match src_ty {
                    GgmlType::F16 => f16_to_f32_scalar(src, &mut rows),
                    _ => to_f32(src_ty, src, &mut rows).unwrap(),
                }
                let mut want = vec![0u8; got.len()];
                quants::quantize_rows(info.ggml_type, &rows, info.ne[0] as usize, None, &mut want)
                    .unwrap();
                assert!(got == want.as_slice(), "{ftype}: {}", info.name);
            }
            assert!(converted >= 13, "{ftype}: {converted} tensors converted");
        }
    }
}
