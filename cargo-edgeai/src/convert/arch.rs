//! Per-architecture knowledge of the reference converter (`convert_hf_to_gguf.py` of the
//! llama.cpp vendored in llama-cpp-python 0.3.36): which Hugging Face `architectures` map to
//! which llama.cpp architecture, the tensor names, the layout transforms (q/k rotary
//! permutation for llama, `+1` on Gemma's RMS norms), the expected tensor shapes and the
//! `{arch}.*` hyper-parameter metadata in the reference's order.

use serde_json::{Map, Value};

use crate::gguf::GgufValue;

/// A llama.cpp architecture this converter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Llama 1-3, SmolLM/SmolLM2, TinyLlama, Mistral.
    Llama,
    /// `qwen2`.
    Qwen2,
    /// `qwen3`.
    Qwen3,
    /// `phi3`.
    Phi3,
    /// `gemma2`.
    Gemma2,
    /// `gemma3` (text model).
    Gemma3,
    /// `bert` (sentence embeddings).
    Bert,
}

/// Hugging Face `architectures` entries accepted, and their llama.cpp architecture.
pub const SUPPORTED: &[(&str, Arch)] = &[
    ("LlamaForCausalLM", Arch::Llama),
    ("LLaMAForCausalLM", Arch::Llama),
    ("LlamaModel", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("Phi3ForCausalLM", Arch::Phi3),
    ("Gemma2ForCausalLM", Arch::Gemma2),
    ("Gemma3ForCausalLM", Arch::Gemma3),
    ("BertModel", Arch::Bert),
    ("BertForMaskedLM", Arch::Bert),
];

/// The comma-separated list of supported `architectures` names (for error messages).
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Arch {
    /// The architecture named by config.json's `architectures[0]`, if supported.
    pub fn from_hf(name: &str) -> Option<Arch> {
        SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// llama.cpp's name (`general.architecture`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Bert => "bert",
        }
    }

    /// Whether q/k projections are permuted into llama.cpp's rotary layout.
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    /// Whether RMS norm weights are stored as `1 + w` (Gemma's `(1 + w) * x`).
    pub fn norm_plus_one(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// How one source tensor is transformed on its way to the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Copied (converted to the output type only).
    None,
    /// Rows permuted for llama.cpp's rotary layout with this many heads.
    Permute(usize),
    /// `w + 1` (Gemma norms).
    PlusOne,
}

/// The hyper-parameters the converter needs from config.json.
#[derive(Debug, Clone)]
pub struct HParams {
    /// Layers.
    pub n_layer: u64,
    /// Hidden size.
    pub n_embd: u64,
    /// Feed-forward size.
    pub n_ff: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_head_kv: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
}

/// `find_hparam`: the first key present.
pub fn find<'a>(cfg: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| cfg.get(*k).filter(|v| !v.is_null()))
}

fn find_u64(cfg: &Map<String, Value>, keys: &[&str]) -> Option<u64> {
    find(cfg, keys).and_then(Value::as_u64)
}

/// Read the hyper-parameters; `Err` names the missing key.
pub fn hparams(cfg: &Map<String, Value>) -> Result<HParams, String> {
    let need = |keys: &[&str]| {
        find_u64(cfg, keys).ok_or_else(|| format!("config.json has no integer `{}`", keys[0]))
    };
    let n_layer = need(&["num_hidden_layers", "n_layers", "n_layer", "num_layers"])?;
    let n_embd = need(&["hidden_size", "n_embd", "dim"])?;
    let n_ff = need(&["intermediate_size", "n_inner", "hidden_dim"])?;
    let n_head = need(&["num_attention_heads", "n_head", "n_heads"])?;
    if n_head == 0 || n_layer == 0 {
        return Err("config.json has zero layers or attention heads".into());
    }
    let n_head_kv = find_u64(cfg, &["num_key_value_heads", "n_kv_heads"]).unwrap_or(n_head);
    let head_dim = find_u64(cfg, &["head_dim"]).unwrap_or(n_embd / n_head);
    let vocab = need(&["vocab_size"])?;
    Ok(HParams {
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        vocab,
    })
}

/// A source tensor mapped: its GGUF name, transform, and the shape config.json implies
/// (outermost first, as in safetensors), when known.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// GGUF tensor name.
    pub name: String,
    /// Layout transform.
    pub transform: Transform,
    /// Expected safetensors shape.
    pub shape: Option<Vec<u64>>,
}

/// What to do with a source tensor.
#[derive(Debug, Clone)]
pub enum MapResult {
    /// Write it under this name.
    Tensor(Mapped),
    /// The reference converter drops it (rotary caches, position ids, pooler, heads).
    Skip,
    /// Not a tensor of this architecture.
    Unknown,
}

/// Map a Hugging Face tensor name to its GGUF tensor.
pub fn map_tensor(arch: Arch, hp: &HParams, name: &str) -> MapResult {
    if arch == Arch::Bert {
        return map_bert(hp, name);
    }
    if name.ends_with(".rotary_emb.inv_freq") || name.ends_with(".attention.masked_bias") {
        return MapResult::Skip;
    }
    let e = hp.n_embd;
    let q = hp.n_head * hp.head_dim;
    let kv = hp.n_head_kv * hp.head_dim;
    let ff = hp.n_ff;
    let plus = |t: Transform| {
        if arch.norm_plus_one() {
            Transform::PlusOne
        } else {
            t
        }
    };
    let t = |n: &str, tr: Transform, shape: Vec<u64>| {
        MapResult::Tensor(Mapped {
            name: n.to_string(),
            transform: tr,
            shape: Some(shape),
        })
    };
    let stripped = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("model."))
        .unwrap_or(name);
    match stripped {
        "embed_tokens.weight" => return t("token_embd.weight", Transform::None, vec![hp.vocab, e]),
        "norm.weight" => return t("output_norm.weight", plus(Transform::None), vec![e]),
        "lm_head.weight" => return t("output.weight", Transform::None, vec![hp.vocab, e]),
        _ => {}
    }
    let Some(rest) = stripped.strip_prefix("layers.") else {
        return MapResult::Unknown;
    };
    let Some((bid, leaf)) = rest.split_once('.') else {
        return MapResult::Unknown;
    };
    let Ok(bid) = bid.parse::<u64>() else {
        return MapResult::Unknown;
    };
    if bid >= hp.n_layer {
        return MapResult::Unknown;
    }
    let gemma = arch.norm_plus_one();
    let (base, tr, shape): (&str, Transform, Vec<u64>) = match leaf {
        "input_layernorm.weight" => ("attn_norm.weight", plus(Transform::None), vec![e]),
        "post_attention_layernorm.weight" if gemma => {
            ("post_attention_norm.weight", Transform::PlusOne, vec![e])
        }
        "post_attention_layernorm.weight" => ("ffn_norm.weight", Transform::None, vec![e]),
        "pre_feedforward_layernorm.weight" if gemma => {
            ("ffn_norm.weight", Transform::PlusOne, vec![e])
        }
        "post_feedforward_layernorm.weight" if gemma => {
            ("post_ffw_norm.weight", Transform::PlusOne, vec![e])
        }
        "self_attn.q_proj.weight" => {
            let tr = if arch.permutes_qk() {
                Transform::Permute(hp.n_head as usize)
            } else {
                Transform::None
            };
            ("attn_q.weight", tr, vec![q, e])
        }
        "self_attn.k_proj.weight" => {
            let tr = if arch.permutes_qk() {
                Transform::Permute(hp.n_head_kv as usize)
            } else {
                Transform::None
            };
            ("attn_k.weight", tr, vec![kv, e])
        }
        "self_attn.v_proj.weight" => ("attn_v.weight", Transform::None, vec![kv, e]),
        "self_attn.q_proj.bias" => ("attn_q.bias", Transform::None, vec![q]),
        "self_attn.k_proj.bias" => ("attn_k.bias", Transform::None, vec![kv]),
        "self_attn.v_proj.bias" => ("attn_v.bias", Transform::None, vec![kv]),
        "self_attn.o_proj.weight" => ("attn_output.weight", Transform::None, vec![e, q]),
        "self_attn.qkv_proj.weight" => ("attn_qkv.weight", Transform::None, vec![q + 2 * kv, e]),
        "self_attn.q_norm.weight" => (
            "attn_q_norm.weight",
            plus(Transform::None),
            vec![hp.head_dim],
        ),
        "self_attn.k_norm.weight" => (
            "attn_k_norm.weight",
            plus(Transform::None),
            vec![hp.head_dim],
        ),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", Transform::None, vec![ff, e]),
        "mlp.up_proj.weight" => ("ffn_up.weight", Transform::None, vec![ff, e]),
        "mlp.gate_up_proj.weight" => ("ffn_up.weight", Transform::None, vec![2 * ff, e]),
        "mlp.down_proj.weight" => ("ffn_down.weight", Transform::None, vec![e, ff]),
        _ => return MapResult::Unknown,
    };
    t(&format!("blk.{bid}.{base}"), tr, shape)
}

fn map_bert(hp: &HParams, name: &str) -> MapResult {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    let name = if let Some(s) = name.strip_suffix(".gamma") {
        format!("{s}.weight")
    } else if let Some(s) = name.strip_suffix(".beta") {
        format!("{s}.bias")
    } else {
        name.to_string()
    };
    if matches!(
        name.as_str(),
        "embeddings.position_ids" | "pooler.dense.weight" | "pooler.dense.bias"
    ) || name.starts_with("cls.")
    {
        return MapResult::Skip;
    }
    let e = hp.n_embd;
    let ff = hp.n_ff;
    let t = |n: String, shape: Option<Vec<u64>>| {
        MapResult::Tensor(Mapped {
            name: n,
            transform: Transform::None,
            shape,
        })
    };
    match name.as_str() {
        "embeddings.word_embeddings.weight" => {
            return t("token_embd.weight".into(), Some(vec![hp.vocab, e]))
        }
        "embeddings.token_type_embeddings.weight" => return t("token_types.weight".into(), None),
        "embeddings.position_embeddings.weight" => return t("position_embd.weight".into(), None),
        "embeddings.LayerNorm.weight" => return t("token_embd_norm.weight".into(), Some(vec![e])),
        "embeddings.LayerNorm.bias" => return t("token_embd_norm.bias".into(), Some(vec![e])),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("encoder.layer.") else {
        return MapResult::Unknown;
    };
    let Some((bid, leaf)) = rest.split_once('.') else {
        return MapResult::Unknown;
    };
    let Ok(bid) = bid.parse::<u64>() else {
        return MapResult::Unknown;
    };
    if bid >= hp.n_layer {
        return MapResult::Unknown;
    }
    let (base, shape): (&str, Vec<u64>) = match leaf {
        "attention.self.query.weight" => ("attn_q.weight", vec![e, e]),
        "attention.self.query.bias" => ("attn_q.bias", vec![e]),
        "attention.self.key.weight" => ("attn_k.weight", vec![e, e]),
        "attention.self.key.bias" => ("attn_k.bias", vec![e]),
        "attention.self.value.weight" => ("attn_v.weight", vec![e, e]),
        "attention.self.value.bias" => ("attn_v.bias", vec![e]),
        "attention.output.dense.weight" => ("attn_output.weight", vec![e, e]),
        "attention.output.dense.bias" => ("attn_output.bias", vec![e]),
        "attention.output.LayerNorm.weight" => ("attn_output_norm.weight", vec![e]),
        "attention.output.LayerNorm.bias" => ("attn_output_norm.bias", vec![e]),
        "intermediate.dense.weight" => ("ffn_up.weight", vec![ff, e]),
        "intermediate.dense.bias" => ("ffn_up.bias", vec![ff]),
        "output.dense.weight" => ("ffn_down.weight", vec![e, ff]),
        "output.dense.bias" => ("ffn_down.bias", vec![e]),
        "output.LayerNorm.weight" => ("layer_output_norm.weight", vec![e]),
        "output.LayerNorm.bias" => ("layer_output_norm.bias", vec![e]),
        _ => return MapResult::Unknown,
    };
    t(format!("blk.{bid}.{base}"), Some(shape))
}

/// Whether the reference converter keeps this GGUF tensor in F32 whatever the output type
/// (`prepare_tensors`: 1-D tensors, norms, non-`.weight` tensors, position and token-type
/// embeddings).
pub fn forced_f32(gguf_name: &str, n_dims: usize) -> bool {
    n_dims <= 1
        || gguf_name.ends_with("_norm.weight")
        || !gguf_name.ends_with(".weight")
        || gguf_name == "position_embd.weight"
        || gguf_name == "token_types.weight"
}

fn u32v(v: u64) -> GgufValue {
    GgufValue::U32(u32::try_from(v).unwrap_or(u32::MAX))
}

fn f32v(v: &Value) -> Option<GgufValue> {
    v.as_f64().map(|x| GgufValue::F32(x as f32))
}

/// The `{arch}.*` metadata and `general.file_type`, in the reference converter's order
/// (`TextModel.set_gguf_parameters` then the model class's additions).
pub fn hparam_metadata(
    arch: Arch,
    cfg: &Map<String, Value>,
    hp: &HParams,
    file_type: u32,
) -> Vec<(String, GgufValue)> {
    let a = arch.name();
    let mut m: Vec<(String, GgufValue)> = Vec::new();
    let mut put = |k: &str, v: GgufValue| m.push((format!("{a}.{k}"), v));
    put("block_count", u32v(hp.n_layer));
    if let Some(n) = find_u64(
        cfg,
        &[
            "max_position_embeddings",
            "n_ctx",
            "n_positions",
            "max_length",
            "max_sequence_length",
            "model_max_length",
        ],
    ) {
        put("context_length", u32v(n));
    }
    put("embedding_length", u32v(hp.n_embd));
    put("feed_forward_length", u32v(hp.n_ff));
    put("attention.head_count", u32v(hp.n_head));
    if let Some(n) = find_u64(cfg, &["num_key_value_heads", "n_kv_heads"]) {
        put("attention.head_count_kv", u32v(n));
    }
    let rope = cfg
        .get("rope_parameters")
        .or_else(|| cfg.get("rope_scaling"))
        .and_then(Value::as_object);
    if let Some(r) = rope {
        let ty = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str);
        let factor = r.get("factor").and_then(f32v);
        match (ty, factor) {
            (Some("linear"), Some(f)) => {
                put("rope.scaling.type", GgufValue::String("linear".into()));
                put("rope.scaling.factor", f);
            }
            (Some("yarn"), Some(f)) => {
                put("rope.scaling.type", GgufValue::String("yarn".into()));
                put("rope.scaling.factor", f);
                if let Some(n) = r
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_u64)
                {
                    put("rope.scaling.original_context_length", u32v(n));
                }
            }
            _ => {}
        }
    }
    let theta = find(cfg, &["rope_theta", "rotary_emb_base"])
        .or_else(|| rope.and_then(|r| r.get("rope_theta")));
    if let Some(v) = theta.and_then(f32v) {
        put("rope.freq_base", v);
    }
    if let Some(v) = find(cfg, &["rope_local_base_freq"]).and_then(f32v) {
        put("rope.freq_base_swa", v);
    }
    if let Some(v) = find(cfg, &["rms_norm_eps", "norm_eps"]).and_then(f32v) {
        put("attention.layer_norm_rms_epsilon", v);
    }
    if let Some(v) = find(
        cfg,
        &["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"],
    )
    .and_then(f32v)
    {
        put("attention.layer_norm_epsilon", v);
    }
    if let Some(hd) = find_u64(cfg, &["head_dim"]) {
        put("attention.key_length", u32v(hd));
        put("attention.value_length", u32v(hd));
    }
    m.push(("general.file_type".into(), GgufValue::U32(file_type)));
    let mut put = |k: &str, v: GgufValue| m.push((format!("{a}.{k}"), v));
    match arch {
        Arch::Llama => {
            put("vocab_size", u32v(hp.vocab));
            put("rope.dimension_count", u32v(hp.head_dim));
        }
        Arch::Qwen2 | Arch::Qwen3 => {}
        Arch::Phi3 => {
            let rot = find(cfg, &["partial_rotary_factor"])
                .and_then(Value::as_f64)
                .unwrap_or(1.0);
            put(
                "rope.dimension_count",
                u32v((rot * (hp.n_embd / hp.n_head) as f64) as u64),
            );
            if let Some(n) = find_u64(cfg, &["sliding_window"]) {
                put("attention.sliding_window", u32v(n));
            }
        }
        Arch::Gemma2 => {
            if let Some(v) = find(cfg, &["attn_logit_softcapping"]).and_then(f32v) {
                put("attn_logit_softcapping", v);
            }
            if let Some(v) = find(cfg, &["final_logit_softcapping"]).and_then(f32v) {
                put("final_logit_softcapping", v);
            }
            if let Some(n) = find_u64(cfg, &["sliding_window"]) {
                put("attention.sliding_window", u32v(n));
            }
        }
        Arch::Gemma3 => {
            if let Some(n) = find_u64(cfg, &["sliding_window"]) {
                put("attention.sliding_window", u32v(n));
            }
        }
        Arch::Bert => {
            put("attention.causal", GgufValue::Bool(false));
        }
    }
    m
}

/// The rotary scaling parameters of config.json (`rope_parameters`, else `rope_scaling`),
/// with the top-level `rope_theta` and `original_max_position_embeddings` mirrored in as
/// the reference's `TextModel.__init__` does, and `type` read as `rope_type`.
fn rope_params(cfg: &Map<String, Value>) -> Map<String, Value> {
    let mut r = cfg
        .get("rope_parameters")
        .or_else(|| cfg.get("rope_scaling"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(full) = r.get("full_attention").and_then(Value::as_object) {
        return full.clone();
    }
    if r.contains_key("sliding_attention") {
        return r;
    }
    if !r.contains_key("rope_theta") {
        if let Some(t) = find(
            cfg,
            &[
                "global_rope_theta",
                "rope_global_theta",
                "rope_theta_global",
                "rope_theta",
                "rotary_emb_base",
            ],
        ) {
            r.insert("rope_theta".into(), t.clone());
        }
    }
    if !r.contains_key("rope_type") {
        if let Some(t) = r.get("type").cloned() {
            r.insert("rope_type".into(), t);
        }
    }
    if !r.contains_key("original_max_position_embeddings") {
        if let Some(n) = find(cfg, &["original_max_position_embeddings"]) {
            r.insert("original_max_position_embeddings".into(), n.clone());
        }
    }
    r
}

/// Llama 3's `rope_freqs.weight` (`LlamaModel.generate_extra_tensors`) when config.json's
/// rope type is `llama3`: one factor per rotary frequency pair, `head_dim / 2` values.
///
/// The reference computes in float32 torch tensors, and so does this, operation by
/// operation: `freqs = 1 / base^(arange(0, dim, 2) / dim)`; `2π / freq` is torch's
/// `freq.reciprocal() * 2π`, and likewise `old_context_len / wavelen`; every Python scalar
/// joins the arithmetic rounded to f32. The one step that cannot be bit-identical by
/// construction is `pow`: torch's CPU kernel uses SLEEF's `powf` (≤ 1 ULP), here it is the
/// f64 power rounded to f32 (correctly rounded); a last-bit difference there can only move
/// a factor in the smooth band between `high_freq_factor` and `low_freq_factor`.
pub fn llama3_rope_freqs(cfg: &Map<String, Value>, hp: &HParams) -> Option<Vec<f32>> {
    let r = rope_params(cfg);
    let ty = r.get("rope_type").and_then(Value::as_str)?;
    if !ty.eq_ignore_ascii_case("llama3") {
        return None;
    }
    let num = |k: &str, default: f64| r.get(k).and_then(Value::as_f64).unwrap_or(default);
    let base = num("rope_theta", 10000.0) as f32;
    let dim = find_u64(cfg, &["head_dim"]).unwrap_or(hp.n_embd / hp.n_head.max(1));
    let factor = num("factor", 8.0);
    let low_freq_factor = num("low_freq_factor", 1.0);
    let high_freq_factor = num("high_freq_factor", 4.0);
    let old_context_len = num("original_max_position_embeddings", 8192.0);
    // Python divides these in f64; torch compares and subtracts them as f32.
    let low_freq_wavelen = (old_context_len / low_freq_factor) as f32;
    let high_freq_wavelen = (old_context_len / high_freq_factor) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let dim_f = dim as f32;
    let mut out = Vec::with_capacity(dim as usize / 2);
    for i in (0..dim).step_by(2) {
        let exponent = i as f32 / dim_f;
        let p = (f64::from(base)).powf(f64::from(exponent)) as f32;
        let freq = 1.0f32 / p;
        let wavelen = (1.0f32 / freq) * two_pi;
        let v = if wavelen < high_freq_wavelen {
            1.0f32
        } else if wavelen > low_freq_wavelen {
            factor as f32
        } else {
            let smooth = ((1.0f32 / wavelen) * old_context_len as f32 - low_freq_factor as f32)
                / (high_freq_factor - low_freq_factor) as f32;
            1.0f32 / ((1.0f32 - smooth) / factor as f32 + smooth)
        };
        out.push(v);
    }
    Some(out)
}

/// The llama rotary permutation as a row map: output row `r` takes input row
/// `permute_row(r, ...)` (`LlamaModel.permute`: reshape(n_head, 2, rows/n_head/2, ...)
/// .swapaxes(1, 2)).
pub fn permute_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head.max(1);
    let half = (hd / 2).max(1);
    let h = r / hd;
    let within = r % hd;
    let i = within / 2;
    let j = within % 2;
    h * hd + j * half + i
}

/// The inverse of [`permute_row`]: output row `r` of the un-permuted tensor takes row
/// `unpermute_row(r, ...)` of the permuted one.
pub fn unpermute_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head.max(1);
    let half = (hd / 2).max(1);
    let h = r / hd;
    let within = r % hd;
    let j = within / half;
    let i = within % half;
    h * hd + i * 2 + j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1 8B's rope_scaling (theta 500000, head_dim 128, factor 8, low 1, high 4,
    /// original context 8192). Expected values computed by hand in float32 (numpy f32 with
    /// the reference's operation order): 29 pairs keep 1.0 (wavelength < 2048), 29 get the
    /// full factor 8 (wavelength > 8192), and pairs 29..=34 are smoothed.
    #[test]
    fn llama3_rope_freqs_match_hand_computation() {
        let cfg: Map<String, Value> = serde_json::from_str(
            r#"{"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
                "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#,
        )
        .unwrap();
        let hp = HParams {
            n_layer: 1,
            n_embd: 4096,
            n_ff: 1,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            vocab: 1,
        };
        let f = llama3_rope_freqs(&cfg, &hp).expect("llama3 rope");
        assert_eq!(f.len(), 64);
        assert!(f[..29].iter().all(|&v| v == 1.0));
        assert!(f[35..].iter().all(|&v| v == 8.0));
        let smooth: Vec<u32> = f[29..35].iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            smooth,
            [0x3f9a8ed5, 0x3fc6d64a, 0x4001af1d, 0x402c732e, 0x406bcace, 0x40a83c06]
        );
        // 1.2074839 = 1 / ((1 - s) / 8 + s) with s = (8192 / wavelen(29) - 1) / 3: an
        // independent f64 evaluation agrees to f32 precision.
        let wl = 2.0 * std::f64::consts::PI * 500000f64.powf(58.0 / 128.0);
        let s = (8192.0 / wl - 1.0) / 3.0;
        assert!((1.0 / ((1.0 - s) / 8.0 + s) - f64::from(f[29])).abs() < 1e-6);
        // No llama3 rope type, no tensor.
        let mut plain = cfg.clone();
        plain.remove("rope_scaling");
        assert!(llama3_rope_freqs(&plain, &hp).is_none());
    }

    #[test]
    fn permutation_round_trips() {
        let rows = 64 * 3;
        for r in 0..rows {
            assert_eq!(unpermute_row(permute_row(r, rows, 3), rows, 3), r);
            assert_eq!(permute_row(unpermute_row(r, rows, 3), rows, 3), r);
        }
        // First head: output rows 0,1,2,3 come from input rows 0,32,1,33.
        let first: Vec<usize> = (0..4).map(|r| permute_row(r, rows, 3)).collect();
        assert_eq!(first, vec![0, 32, 1, 33]);
    }
}
