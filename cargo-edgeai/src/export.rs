//! `cargo edgeai export MODEL.gguf --to safetensors -o DIR`: a GGUF model of the llama family
//! back to a Hugging Face directory: `config.json`, `model.safetensors` (F32, dequantized, q/k
//! rows un-permuted), `tokenizer.json` rebuilt from the GGUF vocabulary, `tokenizer_config.json`
//! (special tokens, chat template), `generation_config.json` (special ids, sampling
//! defaults) and `README.md` (the model-card `general.*` fields as YAML front matter).
//! Llama 3's `rope_freqs.weight` is not a Hugging Face tensor: it is turned back into the
//! `rope_scaling` of config.json that regenerates it bit for bit on conversion.
//!
//! The directory is built so that [`crate::convert::do_convert`] reproduces the GGUF's
//! metadata and, for F32/F16 sources and the values a quantized source dequantizes to, its
//! tensors: `export` then `convert --outtype f16` gives the same tensor data as
//! `llama-quantize --allow-requantize IN OUT F16`.
//!
//! Every file is written to a temporary name in the output directory and renamed when
//! complete; tensors are dequantized one at a time.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::convert::arch::unpermute_row;
use crate::convert::tokenizer::{token_type, LLAMA3_REGEX, QWEN2_REGEX};
use crate::convert::{parallel_rows, row_to_f32};
use crate::gguf::{GgmlType, GgufArray, GgufHeader, GgufModel, GgufValue};
use crate::{Error, Result};

/// Target formats `--to` accepts.
pub const TARGETS: &[&str] = &["safetensors"];

/// What `cargo edgeai export` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Input GGUF (first part of a split model).
    pub input: PathBuf,
    /// Output directory (created if missing).
    pub output: PathBuf,
    /// `--to` (only "safetensors").
    pub to: String,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// Input GGUF.
    pub input: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of model.safetensors.
    pub bytes: u64,
    /// Tensors not exported (e.g. llama 3 `rope_freqs.weight`, derived from config.json).
    pub skipped: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl ExportReport {
    /// Human-readable summary.
    pub fn render_human(&self) -> String {
        let mut s = format!(
            "exported {} -> {}: {} tensors, {:.1} MB of F32 safetensors in {:.2} s\n",
            self.input.display(),
            self.output.display(),
            self.tensors,
            self.bytes as f64 / 1e6,
            self.seconds
        );
        for f in &self.files {
            s.push_str(&format!("  {}\n", f.display()));
        }
        for n in &self.skipped {
            s.push_str(&format!(
                "  skipped {n} (derived from config.json on conversion)\n"
            ));
        }
        s
    }
}

const HELP_ARCH: &str = "export supports GGUF models of the llama architecture (SmolLM/SmolLM2, TinyLlama, Llama 2/3, Mistral) with a GPT-2 style BPE vocabulary";

/// The Hugging Face name of a llama GGUF tensor.
fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (bid, leaf) = rest.split_once('.')?;
    let bid: u64 = bid.parse().ok()?;
    let hf = match leaf {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{bid}.{hf}"))
}

fn meta_u64(h: &GgufHeader, key: &str) -> Option<u64> {
    h.get_u64(key)
}

fn meta_f32(h: &GgufHeader, key: &str) -> Option<f32> {
    match h.get(key)? {
        GgufValue::F32(v) => Some(*v),
        v => v.as_f64().map(|x| x as f32),
    }
}

/// A JSON number whose shortest text round-trips through f32 (so 1e-5 stays 1e-5).
fn json_f32(v: f32) -> Value {
    let text = format!("{v}");
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn strings(h: &GgufHeader, key: &str) -> Option<Vec<String>> {
    match h.get(key)? {
        GgufValue::Array(GgufArray::String(v)) => Some(v.clone()),
        GgufValue::Array(GgufArray::RawString(v)) => Some(
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
        ),
        _ => None,
    }
}

fn ints(h: &GgufHeader, key: &str) -> Option<Vec<i64>> {
    match h.get(key)? {
        GgufValue::Array(GgufArray::I32(v)) => Some(v.iter().map(|&x| i64::from(x)).collect()),
        GgufValue::Array(GgufArray::U32(v)) => Some(v.iter().map(|&x| i64::from(x)).collect()),
        _ => None,
    }
}

/// The pre-tokenizer JSON for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Option<Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "gpt-2" | "default" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        "llama-bpe" | "llama3" | "llama-v3" => json!({
            "type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]
        }),
        "qwen2" => json!({
            "type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]
        }),
        _ => return None,
    })
}

/// `_name_or_path` for config.json: `org/basename-size-finetune-version` (the Hugging Face id
/// the reference converter's name heuristics split back into those parts), else the name.
fn name_or_path(h: &GgufHeader) -> Option<String> {
    let g = |k: &str| h.get_str(&format!("general.{k}"));
    let Some(base) = g("basename") else {
        return g("name").map(str::to_string);
    };
    let name = [Some(base), g("size_label"), g("finetune"), g("version")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("-");
    Some(match g("organization") {
        Some(o) => format!("{o}/{name}"),
        None => name,
    })
}

/// README.md with YAML front matter holding the GGUF's model-card fields under the keys
/// gguf-py's `Metadata` reads first (so no name heuristic is needed on the way back).
/// Strings are written as JSON strings, which are YAML double-quoted scalars.
fn model_card(h: &GgufHeader) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut y = String::from("---\n");
    for (gguf, card) in [
        ("name", "name"),
        ("author", "author"),
        ("version", "version"),
        ("organization", "organization"),
        ("description", "description"),
        ("finetune", "finetune"),
        ("basename", "basename"),
        ("size_label", "size_label"),
        ("source.url", "url"),
        ("source.doi", "doi"),
        ("source.uuid", "uuid"),
        ("source.repo_url", "repo_url"),
        ("license", "license"),
        ("license.name", "license_name"),
        ("license.link", "license_link"),
    ] {
        if let Some(v) = h.get_str(&format!("general.{gguf}")) {
            y.push_str(&format!("{card}: {}\n", q(v)));
        }
    }
    // Base models as Hugging Face ids (their name/organization/version are re-derived).
    if let Some(n) = meta_u64(h, "general.base_model.count") {
        let ids: Vec<String> = (0..n)
            .filter_map(|i| h.get_str(&format!("general.base_model.{i}.repo_url")))
            .map(|u| u.trim_start_matches("https://huggingface.co/").to_string())
            .collect();
        if !ids.is_empty() {
            y.push_str("base_model:\n");
            for id in ids {
                y.push_str(&format!("- {}\n", q(&id)));
            }
        }
    }
    for (gguf, card) in [("tags", "tags"), ("languages", "language")] {
        if let Some(list) = strings(h, &format!("general.{gguf}")) {
            y.push_str(&format!("{card}:\n"));
            for v in list {
                y.push_str(&format!("- {}\n", q(&v)));
            }
        }
    }
    y.push_str("---\n");
    if let Some(n) = h.get_str("general.name") {
        y.push_str(&format!("\n# {n}\n\nExported from GGUF by cargo-edgeai.\n"));
    }
    y
}

/// The Llama 3 `rope_scaling` whose generated `rope_freqs.weight` equals `freqs` bit for bit,
/// searched over the parameters Llama 3.x checkpoints use (the factor is the largest value).
fn fit_llama3_rope(
    freqs: &[f32],
    theta: f32,
    head_dim: u64,
    n_embd: u64,
    n_head: u64,
) -> Option<Map<String, Value>> {
    let factor = freqs.iter().copied().fold(f32::MIN, f32::max);
    let hp = crate::convert::arch::HParams {
        n_layer: 1,
        n_embd,
        n_ff: 1,
        n_head,
        n_head_kv: n_head,
        head_dim,
        vocab: 1,
    };
    for old in [8192u64, 4096, 16384, 32768, 65536, 131072, 2048] {
        for (low, high) in [
            (1.0f32, 4.0f32),
            (1.0, 2.0),
            (1.0, 8.0),
            (2.0, 4.0),
            (0.5, 4.0),
        ] {
            let mut r = Map::new();
            r.insert("factor".into(), json_f32(factor));
            r.insert("high_freq_factor".into(), json_f32(high));
            r.insert("low_freq_factor".into(), json_f32(low));
            r.insert("original_max_position_embeddings".into(), json!(old));
            r.insert("rope_type".into(), json!("llama3"));
            let mut cfg = Map::new();
            cfg.insert("rope_theta".into(), json_f32(theta));
            cfg.insert("head_dim".into(), json!(head_dim));
            cfg.insert("rope_scaling".into(), Value::Object(r.clone()));
            let got = crate::convert::arch::llama3_rope_freqs(&cfg, &hp)?;
            let same = got.len() == freqs.len()
                && got
                    .iter()
                    .zip(freqs)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if same {
                return Some(r);
            }
        }
    }
    None
}

/// Write `bytes` to `dir/name` through a temporary file.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(&path, e))?;
    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
    Ok(path)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

/// One tensor to export.
struct Item {
    loc: crate::gguf::TensorLoc,
    hf: String,
    ty: GgmlType,
    /// HF shape, outermost first.
    shape: Vec<u64>,
    /// Un-permute with this many heads.
    unpermute: Option<usize>,
}

/// Export a llama-family GGUF to a Hugging Face directory. See the module documentation.
pub fn do_export(opts: &ExportOptions) -> Result<ExportReport> {
    let start = std::time::Instant::now();
    let to = if opts.to.is_empty() {
        "safetensors"
    } else {
        opts.to.as_str()
    };
    if !TARGETS.contains(&to.to_ascii_lowercase().as_str()) {
        return Err(Error::Usage {
            message: format!("unknown --to `{to}`"),
            help: format!("supported: {}", TARGETS.join(", ")),
        });
    }
    let threads = opts
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = GgufModel::open(&opts.input)?;
    let h = model.header();
    let path = opts.input.as_path();
    let arch = h.architecture().unwrap_or("");
    if arch != "llama" {
        return Err(Error::model(
            path,
            format!("architecture `{arch}` cannot be exported"),
            HELP_ARCH,
        ));
    }
    let key = |k: &str| format!("llama.{k}");
    let need = |k: &str| {
        meta_u64(h, &key(k)).ok_or_else(|| {
            Error::model(
                path,
                format!("GGUF has no {}", key(k)),
                "the file is incomplete; re-download it",
            )
        })
    };
    let n_layer = need("block_count")?;
    let n_embd = need("embedding_length")?;
    let n_ff = need("feed_forward_length")?;
    let n_head = need("attention.head_count")?;
    let n_head_kv = meta_u64(h, &key("attention.head_count_kv")).unwrap_or(n_head);
    let tokens = strings(h, "tokenizer.ggml.tokens")
        .ok_or_else(|| Error::model(path, "GGUF has no tokenizer.ggml.tokens", HELP_ARCH))?;
    let types = ints(h, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![1; tokens.len()]);
    let tmodel = h.get_str("tokenizer.ggml.model").unwrap_or("");
    if tmodel != "gpt2" {
        return Err(Error::model(
            path,
            format!("tokenizer model `{tmodel}` cannot be exported yet"),
            HELP_ARCH,
        ));
    }
    let pre_name = h.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        Error::model(
            path,
            format!("pre-tokenizer `{pre_name}` cannot be exported yet"),
            "supported: gpt-2, smollm, llama-bpe, qwen2",
        )
    })?;
    let merges = strings(h, "tokenizer.ggml.merges").unwrap_or_default();

    // Tensors.
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for &loc in model.tensors() {
        let info = model.info(loc);
        if info.name == "rope_freqs.weight" {
            skipped.push(info.name.clone());
            continue;
        }
        let hf = hf_name(&info.name).ok_or_else(|| {
            Error::model(
                path,
                format!("tensor `{}` has no Hugging Face llama name", info.name),
                HELP_ARCH,
            )
        })?;
        if !crate::quants::can_dequantize(info.ggml_type)
            && !matches!(
                info.ggml_type,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
            )
        {
            return Err(Error::model(
                path,
                format!(
                    "tensor `{}`: dequantizing {} is not supported",
                    info.name, info.ggml_type
                ),
                "dequantize with llama-quantize --allow-requantize to F16 first",
            ));
        }
        let mut shape: Vec<u64> = info.ne.iter().rev().copied().collect();
        while shape.len() > 1 && shape[0] == 1 {
            shape.remove(0);
        }
        let unpermute = if info.name.ends_with("attn_q.weight") {
            Some(n_head as usize)
        } else if info.name.ends_with("attn_k.weight") {
            Some(n_head_kv as usize)
        } else {
            None
        };
        items.push(Item {
            loc,
            hf,
            ty: info.ggml_type,
            shape,
            unpermute,
        });
    }
    let tied = model.find("output.weight").is_none();

    std::fs::create_dir_all(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
    let dir = opts.output.as_path();
    let mut files = Vec::new();

    // model.safetensors
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for it in &items {
        let n: u64 = it.shape.iter().product();
        header.insert(
            it.hf.clone(),
            json!({"dtype": "F32", "shape": it.shape, "data_offsets": [offset, offset + 4 * n]}),
        );
        offset += 4 * n;
    }
    let mut hjson = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    while !hjson.len().is_multiple_of(8) {
        hjson.push(b' ');
    }
    let st_path = dir.join("model.safetensors");
    let tmp = tempfile::Builder::new()
        .prefix(".model.safetensors.tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp);
    let io = |e: std::io::Error| Error::io(&st_path, e);
    out.write_all(&(hjson.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&hjson).map_err(io)?;
    for it in &items {
        let src = model.data(it.loc);
        let row_len = it.shape.last().copied().unwrap_or(1) as usize;
        let n_rows = (it.shape.iter().product::<u64>() as usize) / row_len.max(1);
        let src_row = it.ty.bytes_for(row_len as u64).unwrap_or(0) as usize;
        let mut buf = vec![0u8; n_rows * row_len * 4];
        let ty = it.ty;
        let name = &it.hf;
        parallel_rows(&mut buf, row_len * 4, n_rows, threads, |row0, dst| {
            let nrows = dst.len() / (row_len * 4);
            let mut f = vec![0f32; row_len];
            for i in 0..nrows {
                let r = row0 + i;
                let sr = it.unpermute.map_or(r, |n| unpermute_row(r, n_rows, n));
                let s = &src[sr * src_row..(sr + 1) * src_row];
                row_to_f32(ty, s, &mut f)
                    .map_err(|e| Error::model(path, format!("tensor {name}: {e}"), HELP_ARCH))?;
                for (d, v) in dst[i * row_len * 4..(i + 1) * row_len * 4]
                    .chunks_exact_mut(4)
                    .zip(&f)
                {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            Ok(())
        })?;
        out.write_all(&buf).map_err(io)?;
    }
    let tmp = out
        .into_inner()
        .map_err(|e| Error::io(&st_path, e.into_error()))?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&st_path)
        .map_err(|e| Error::io(&st_path, e.error))?;
    files.push(st_path);

    // config.json
    let id = |k: &str| meta_u64(h, &format!("tokenizer.ggml.{k}_token_id"));
    let mut cfg = Map::new();
    cfg.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    cfg.insert("model_type".into(), json!("llama"));
    if let Some(n) = name_or_path(h) {
        cfg.insert("_name_or_path".into(), json!(n));
    }
    cfg.insert("hidden_act".into(), json!("silu"));
    cfg.insert("hidden_size".into(), json!(n_embd));
    cfg.insert("intermediate_size".into(), json!(n_ff));
    cfg.insert("num_attention_heads".into(), json!(n_head));
    cfg.insert("num_hidden_layers".into(), json!(n_layer));
    cfg.insert("num_key_value_heads".into(), json!(n_head_kv));
    if let Some(n) = meta_u64(h, &key("context_length")) {
        cfg.insert("max_position_embeddings".into(), json!(n));
    }
    if let Some(v) = meta_f32(h, &key("attention.layer_norm_rms_epsilon")) {
        cfg.insert("rms_norm_eps".into(), json_f32(v));
    }
    if let Some(v) = meta_f32(h, &key("rope.freq_base")) {
        cfg.insert("rope_theta".into(), json_f32(v));
    }
    if let Some(hd) = meta_u64(h, &key("attention.key_length")) {
        cfg.insert("head_dim".into(), json!(hd));
    }
    match (
        h.get_str(&key("rope.scaling.type")),
        meta_f32(h, &key("rope.scaling.factor")),
    ) {
        (Some(t @ ("linear" | "yarn")), Some(f)) => {
            let mut r = Map::new();
            r.insert("rope_type".into(), json!(t));
            r.insert("factor".into(), json_f32(f));
            if let Some(n) = meta_u64(h, &key("rope.scaling.original_context_length")) {
                r.insert("original_max_position_embeddings".into(), json!(n));
            }
            cfg.insert("rope_scaling".into(), Value::Object(r));
        }
        _ => {
            let scaling = match model.find("rope_freqs.weight") {
                Some(loc) => {
                    let hd = meta_u64(h, &key("attention.key_length"))
                        .or_else(|| meta_u64(h, &key("rope.dimension_count")))
                        .unwrap_or(n_embd / n_head.max(1));
                    let theta = meta_f32(h, &key("rope.freq_base")).unwrap_or(10000.0);
                    let info = model.info(loc);
                    if info.ggml_type != GgmlType::F32 {
                        return Err(Error::model(
                            path,
                            format!("rope_freqs.weight is {}, not F32", info.ggml_type),
                            HELP_ARCH,
                        ));
                    }
                    let freqs: Vec<f32> = model
                        .data(loc)
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let fit = fit_llama3_rope(&freqs, theta, hd, n_embd, n_head).ok_or_else(|| {
                        Error::model(
                            path,
                            "rope_freqs.weight does not match any Llama 3 rope_scaling (factor, low/high_freq_factor, original_max_position_embeddings)",
                            "export supports the rope_freqs that llama.cpp's converter generates from a Llama 3 config.json",
                        )
                    })?;
                    Value::Object(fit)
                }
                None => Value::Null,
            };
            cfg.insert("rope_scaling".into(), scaling);
        }
    }
    cfg.insert("tie_word_embeddings".into(), json!(tied));
    cfg.insert("torch_dtype".into(), json!("float32"));
    let vocab_size = meta_u64(h, &key("vocab_size")).unwrap_or(tokens.len() as u64);
    cfg.insert("vocab_size".into(), json!(vocab_size));
    for k in ["bos", "eos", "pad"] {
        if let Some(v) = id(k) {
            cfg.insert(format!("{k}_token_id"), json!(v));
        }
    }
    files.push(write_file(
        dir,
        "config.json",
        &pretty(&Value::Object(cfg)),
    )?);

    // tokenizer.json
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let ty = types.get(i).copied().unwrap_or(1) as i32;
        if ty == token_type::UNUSED {
            continue;
        }
        vocab.insert(t.clone(), json!(i));
        if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == token_type::CONTROL
            }));
        }
    }
    let add_bos = h
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        == Some(true);
    let bos_text = id("bos").and_then(|i| tokens.get(i as usize)).cloned();
    let post = match (&bos_text, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.as_str(): {"id": b, "ids": [id("bos")], "tokens": [b]}}
        }),
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    });
    files.push(write_file(dir, "tokenizer.json", &pretty(&tok))?);

    // tokenizer_config.json
    let mut tc = Map::new();
    if let Some(b) = h
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(GgufValue::as_bool)
    {
        tc.insert("add_prefix_space".into(), json!(b));
    }
    for (k, field) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ] {
        if let Some(t) = id(k).and_then(|i| tokens.get(i as usize)) {
            tc.insert(field.into(), json!(t));
        }
    }
    if let Some(ct) = h.get_str("tokenizer.chat_template") {
        tc.insert("chat_template".into(), json!(ct));
    }
    tc.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(n) = meta_u64(h, &key("context_length")) {
        tc.insert("model_max_length".into(), json!(n));
    }
    tc.insert("tokenizer_class".into(), json!("GPT2Tokenizer"));
    files.push(write_file(
        dir,
        "tokenizer_config.json",
        &pretty(&Value::Object(tc)),
    )?);

    // README.md: the model-card fields as YAML front matter, so that conversion writes the
    // same general.* metadata.
    files.push(write_file(dir, "README.md", model_card(h).as_bytes())?);

    // generation_config.json
    let mut gc = Map::new();
    for (gguf_key, hf) in [
        ("sequence", "sequence"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("xtc_probability", "xtc_probability"),
        ("xtc_threshold", "xtc_threshold"),
        ("temp", "temperature"),
        ("penalty_last_n", "penalty_last_n"),
        ("penalty_repeat", "repetition_penalty"),
        ("mirostat", "mirostat"),
        ("mirostat_tau", "mirostat_tau"),
        ("mirostat_eta", "mirostat_eta"),
    ] {
        let v = match h.get(&format!("general.sampling.{gguf_key}")) {
            Some(GgufValue::String(s)) => json!(s),
            Some(GgufValue::F32(x)) => json_f32(*x),
            Some(GgufValue::I32(x)) => json!(x),
            _ => continue,
        };
        gc.insert(hf.into(), v);
    }
    for k in ["bos", "eos", "pad"] {
        if let Some(v) = id(k) {
            gc.insert(format!("{k}_token_id"), json!(v));
        }
    }
    files.push(write_file(
        dir,
        "generation_config.json",
        &pretty(&Value::Object(gc)),
    )?);

    Ok(ExportReport {
        input: opts.input.clone(),
        output: opts.output.clone(),
        files,
        tensors: items.len(),
        bytes: 8 + hjson.len() as u64 + offset,
        skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}
