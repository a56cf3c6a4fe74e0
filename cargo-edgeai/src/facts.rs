//! Model facts: what a model is, read from headers only (never tensor data).
//!
//! Supported inputs: a Hugging Face directory (config.json + model.safetensors or a sharded
//! `model.safetensors.index.json`), a single `.safetensors` file, a GGUF file, an ONNX file.
//! Invariant: reading facts touches only headers, so a multi-gigabyte model answers in
//! milliseconds and a hostile file cannot make us allocate more than its header claims within
//! the file's real size.

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::safetensors::SafetensorsHeader;
use crate::{gguf, onnx, safetensors, Error, Result};

/// The container a model came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// A Hugging Face model directory.
    HfDirectory,
    /// A lone safetensors file (no config.json next to it).
    Safetensors,
    /// A GGUF file (llama.cpp).
    Gguf,
    /// An ONNX protobuf file.
    Onnx,
}

/// What kind of network this is; the decision matrix keys on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelClass {
    /// Autoregressive decoder language model (llama, qwen2, phi3, gemma, ...).
    DecoderLlm,
    /// Encoder-only transformer (BERT family, sentence embeddings).
    Encoder,
    /// Vision or anything else (CNNs, audio, ...).
    Other,
}

impl ModelClass {
    /// The kebab-case name used in JSON and in the decision matrix.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelClass::DecoderLlm => "decoder-llm",
            ModelClass::Encoder => "encoder",
            ModelClass::Other => "other",
        }
    }
}

/// One tensor as declared in a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorFact {
    /// Name as stored in the file (HF names stay HF names, GGUF names stay GGUF names).
    pub name: String,
    /// Shape in the file's own convention, outermost dimension first (safetensors/ONNX order);
    /// GGUF shapes are reported reversed from ggml's `ne` so that `shape.last()` is the row length
    /// in every format.
    pub shape: Vec<u64>,
    /// Element type, normalised: F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL, or a GGUF
    /// quantized type name such as Q4_1 or Q4_K.
    pub dtype: String,
}

impl TensorFact {
    /// Number of elements (saturating: a hostile header cannot overflow it).
    pub fn elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Length of one row (the innermost dimension), 1 for scalars.
    pub fn row_len(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }
}

/// Everything the planner needs to know about a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFacts {
    /// Where it was read from.
    pub path: PathBuf,
    /// The container format.
    pub format: ModelFormat,
    /// Architecture in llama.cpp's naming where one exists ("llama", "qwen2", "bert", ...);
    /// for ONNX, the producer's name or "onnx".
    pub architecture: String,
    /// Model class.
    pub class: ModelClass,
    /// Total number of parameters (elements of all tensors).
    pub parameters: u64,
    /// The dominant element type (by element count).
    pub dtype: String,
    /// Transformer blocks.
    pub layers: Option<u64>,
    /// Hidden (embedding) size.
    pub hidden_size: Option<u64>,
    /// Attention heads.
    pub heads: Option<u64>,
    /// Key/value heads (grouped-query attention); equals `heads` without GQA.
    pub kv_heads: Option<u64>,
    /// Size of one attention head.
    pub head_dim: Option<u64>,
    /// Vocabulary size.
    pub vocab_size: Option<u64>,
    /// Longest context the model was trained for.
    pub max_context: Option<u64>,
    /// Whether the output projection shares the token embedding.
    pub tied_embeddings: bool,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorFact>,
}

/// What [`read_model_facts`] expects, for "not a model" errors.
pub const NOT_A_MODEL: &str = "not a model: expected a Hugging Face directory (config.json + *.safetensors), a .gguf, a .safetensors or an .onnx file";

const NOT_A_MODEL_HELP: &str =
    "pass the path of a Hugging Face model directory, or of a .gguf, .safetensors or .onnx file";

/// Read the facts of the model at `path` (file or directory), from headers only.
///
/// Directories are read as Hugging Face model directories; files are recognised by extension
/// (`.gguf`, `.safetensors`, `.onnx`) and, failing that, by their first bytes. Anything else is
/// an [`Error::InvalidModel`] that says what was expected; a missing path is an [`Error::Io`].
pub fn read_model_facts(path: &Path) -> Result<ModelFacts> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return read_hf_directory(path);
    }
    match detect_format(path)? {
        Some(ModelFormat::Gguf) => gguf::read_facts(path),
        Some(ModelFormat::Onnx) => onnx::read_facts(path),
        Some(ModelFormat::Safetensors) | Some(ModelFormat::HfDirectory) => {
            read_safetensors_file(path)
        }
        None => Err(not_a_model(path)),
    }
}

fn not_a_model(path: &Path) -> Error {
    let ext = extension(path);
    let help = match ext.as_str() {
        "bin" | "pt" | "pth" | "ckpt" | "pkl" => "PyTorch pickle checkpoints are not read (they can run code); convert the weights to safetensors, or pass the Hugging Face directory once it holds model.safetensors".to_string(),
        "json" if path.file_name().is_some_and(|n| n == "config.json") => {
            "pass the directory that holds config.json, not the file itself".to_string()
        }
        _ => NOT_A_MODEL_HELP.to_string(),
    };
    Error::model(path, NOT_A_MODEL, help)
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The format of the model file at `path`, by extension and then by magic bytes; `None` when it
/// is not a model file. Directories are not inspected here.
pub fn detect_format(path: &Path) -> Result<Option<ModelFormat>> {
    match extension(path).as_str() {
        "gguf" => return Ok(Some(ModelFormat::Gguf)),
        "safetensors" => return Ok(Some(ModelFormat::Safetensors)),
        "onnx" => return Ok(Some(ModelFormat::Onnx)),
        _ => {}
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if got >= 4 && head[..4] == gguf::GGUF_MAGIC {
        return Ok(Some(ModelFormat::Gguf));
    }
    if got == 9 && head[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        let n = u64::from_le_bytes(n);
        if n >= 2 && n <= len.saturating_sub(8) {
            return Ok(Some(ModelFormat::Safetensors));
        }
    }
    Ok(None)
}

/// The dominant element type of `tensors`, by element count (ties go to the type seen first).
pub fn dominant_dtype(tensors: &[TensorFact]) -> Option<String> {
    let mut totals: Vec<(&str, u64)> = Vec::new();
    for t in tensors {
        match totals.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n = n.saturating_add(t.elements()),
            None => totals.push((&t.dtype, t.elements())),
        }
    }
    let mut best: Option<(&str, u64)> = None;
    for (d, n) in totals {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((d, n));
        }
    }
    best.map(|(d, _)| d.to_string())
}

fn total_parameters(tensors: &[TensorFact]) -> u64 {
    tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.elements()))
}

// ---- Hugging Face directories -------------------------------------------------------------

const CONFIG_JSON: &str = "config.json";
const INDEX_JSON: &str = "model.safetensors.index.json";

/// Read a Hugging Face model directory: `config.json` plus safetensors headers.
pub fn read_hf_directory(dir: &Path) -> Result<ModelFacts> {
    let config_path = dir.join(CONFIG_JSON);
    if !config_path.is_file() {
        let mut help = "a Hugging Face model directory needs config.json next to model.safetensors; pass the directory that holds both, or a .gguf/.onnx file".to_string();
        if let Some(single) = single_model_file(dir) {
            help.push_str(&format!(
                " (this directory holds {}; pass that file instead)",
                single.display()
            ));
        }
        return Err(Error::model(dir, "no config.json in this directory", help));
    }
    let config = read_config(&config_path)?;
    let shards = weight_files(dir)?;
    let mut tensors = Vec::new();
    for shard in &shards {
        let header = safetensors::read_header(shard)?;
        tensors.extend(header.tensors.iter().map(|t| t.to_fact()));
    }
    Ok(facts_from_config(
        dir,
        ModelFormat::HfDirectory,
        &config,
        tensors,
    ))
}

/// The one .gguf/.onnx/.safetensors file in `dir`, if there is exactly one.
fn single_model_file(dir: &Path) -> Option<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if matches!(extension(&p).as_str(), "gguf" | "onnx" | "safetensors") && p.is_file() {
            found.push(p);
        }
    }
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}

/// Largest config.json or safetensors index accepted (real ones are kilobytes to a few MB).
pub const MAX_JSON_FILE: u64 = 64 << 20;

/// Read a small JSON file whole, refusing files over [`MAX_JSON_FILE`] before reading them.
fn read_small_file(path: &Path, help: &str) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > MAX_JSON_FILE {
        return Err(Error::model(
            path,
            format!("{len} bytes is too large for this JSON file (limit {MAX_JSON_FILE})"),
            help,
        ));
    }
    let mut text = Vec::with_capacity(len as usize);
    file.take(MAX_JSON_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, e))?;
    Ok(text)
}

fn read_config(path: &Path) -> Result<Map<String, Value>> {
    let help = "config.json must be the model's JSON configuration; re-download it from the model's repository";
    let text = read_small_file(path, help)?;
    match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::model(path, "config.json is not a JSON object", help)),
        Err(e) => Err(Error::model(
            path,
            format!("config.json is not valid JSON: {e}"),
            help,
        )),
    }
}

/// The safetensors files holding the weights of the HF directory `dir`, in load order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_JSON);
    if index.is_file() {
        return index_shards(dir, &index);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| extension(p) == "safetensors" && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::model(
            dir,
            "no safetensors weights in this directory (model.safetensors, model.safetensors.index.json or *.safetensors)",
            "download the model's .safetensors files next to config.json; PyTorch .bin weights must be converted to safetensors first",
        ));
    }
    Ok(files)
}

fn index_shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let help = "re-download model.safetensors.index.json from the model's repository";
    let text = read_small_file(index, help)?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::model(index, format!("not valid JSON: {e}"), help))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::model(index, "no `weight_map` object", help))?;
    let mut names = BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::model(
                index,
                format!("weight_map entry `{tensor}` is not a file name"),
                help,
            )
        })?;
        let plain = Path::new(shard)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || shard.is_empty() {
            return Err(Error::model(
                index,
                format!("weight_map names shard `{shard}`, which is not a file in this directory"),
                help,
            ));
        }
        names.insert(shard.to_string());
    }
    let mut shards = Vec::with_capacity(names.len());
    for name in names {
        let p = dir.join(&name);
        if !p.is_file() {
            return Err(Error::model(
                &p,
                format!("shard listed in {INDEX_JSON} is missing"),
                "download every model-*-of-*.safetensors shard listed in the index into the same directory",
            ));
        }
        shards.push(p);
    }
    if shards.is_empty() {
        return Err(Error::model(index, "the index lists no shards", help));
    }
    Ok(shards)
}

/// A lone safetensors file. With a config.json next to it, the file is part of a Hugging Face
/// directory and the whole directory is read instead.
fn read_safetensors_file(path: &Path) -> Result<ModelFacts> {
    if let Some(dir) = path.parent().filter(|d| d.join(CONFIG_JSON).is_file()) {
        return read_hf_directory(dir);
    }
    let header = safetensors::read_header(path)?;
    let tensors = tensors_of(&header);
    let guess = infer_from_tensors(&tensors);
    let meta = |k: &str| {
        header
            .metadata
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let architecture = meta("architecture")
        .or_else(|| meta("model_type"))
        .map(|a| llama_cpp_architecture(&[], Some(&a)))
        .unwrap_or_else(|| guess.architecture.to_string());
    Ok(ModelFacts {
        path: path.to_path_buf(),
        format: ModelFormat::Safetensors,
        architecture,
        class: guess.class,
        parameters: total_parameters(&tensors),
        dtype: dominant_dtype(&tensors).unwrap_or_else(|| "unknown".to_string()),
        layers: guess.layers,
        hidden_size: guess.hidden,
        heads: None,
        kv_heads: None,
        head_dim: None,
        vocab_size: guess.vocab,
        max_context: guess.max_context,
        tied_embeddings: !guess.has_lm_head,
        tensors,
    })
}

fn tensors_of(header: &SafetensorsHeader) -> Vec<TensorFact> {
    header.tensors.iter().map(|t| t.to_fact()).collect()
}

/// What tensor names and shapes alone say about a model.
#[derive(Debug)]
struct Guess {
    architecture: &'static str,
    class: ModelClass,
    layers: Option<u64>,
    hidden: Option<u64>,
    vocab: Option<u64>,
    max_context: Option<u64>,
    has_lm_head: bool,
}

fn infer_from_tensors(tensors: &[TensorFact]) -> Guess {
    let mut g = Guess {
        architecture: "unknown",
        class: ModelClass::Other,
        layers: None,
        hidden: None,
        vocab: None,
        max_context: None,
        has_lm_head: false,
    };
    let mut layer_ids = BTreeSet::new();
    let (mut decoder, mut encoder) = (false, false);
    for t in tensors {
        let parts: Vec<&str> = t.name.split('.').collect();
        for w in parts.windows(2) {
            if matches!(w[0], "layers" | "layer" | "h" | "blocks" | "blk") {
                if let Ok(i) = w[1].parse::<u64>() {
                    layer_ids.insert(i);
                }
            }
        }
        let n = t.name.as_str();
        if n == "lm_head.weight" || n.ends_with(".lm_head.weight") {
            g.has_lm_head = true;
        }
        let embedding = [
            "embed_tokens.weight",
            "word_embeddings.weight",
            "wte.weight",
            "tok_embeddings.weight",
        ]
        .iter()
        .any(|s| n.ends_with(s));
        if embedding && t.shape.len() == 2 && g.vocab.is_none() {
            g.vocab = t.shape.first().copied();
            g.hidden = t.shape.last().copied();
        }
        if n.ends_with("position_embeddings.weight") && t.shape.len() == 2 {
            g.max_context = t.shape.first().copied();
        }
        if n.contains("self_attn.q_proj") || n.contains("attn.c_attn") || n.contains("attention.wq")
        {
            decoder = true;
        }
        if n.contains("attention.self.query") {
            encoder = true;
        }
    }
    g.layers = Some(layer_ids.len() as u64).filter(|&n| n > 0);
    if encoder {
        g.class = ModelClass::Encoder;
        g.architecture = "bert";
    } else if decoder {
        g.class = ModelClass::DecoderLlm;
    }
    g
}

/// Config lookups that prefer a nested `text_config` (multimodal models, gemma3) and fall back
/// to the top level.
struct Config<'a> {
    top: &'a Map<String, Value>,
    text: Option<&'a Map<String, Value>>,
}

impl<'a> Config<'a> {
    fn new(top: &'a Map<String, Value>) -> Self {
        let text = top
            .get("text_config")
            .or_else(|| top.get("llm_config"))
            .and_then(Value::as_object);
        Config { top, text }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.text
            .and_then(|t| t.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| self.top.get(key).filter(|v| !v.is_null()))
    }

    fn u64(&self, keys: &[&str]) -> Option<u64> {
        keys.iter().find_map(|k| {
            let v = self.get(k)?;
            v.as_u64().or_else(|| {
                // Some configs write integers as floats (4096.0).
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18)
                    .map(|f| f as u64)
            })
        })
    }

    fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    fn top_str(&self, key: &str) -> Option<&'a str> {
        self.top.get(key).and_then(Value::as_str)
    }
}

/// llama.cpp's name for a Hugging Face architecture (`architectures[0]`) or `model_type`.
pub fn llama_cpp_architecture(architectures: &[&str], model_type: Option<&str>) -> String {
    for a in architectures {
        let name = match *a {
            "LlamaForCausalLM" | "MistralForCausalLM" | "LLaMAForCausalLM" => "llama",
            "Qwen2ForCausalLM" => "qwen2",
            "Qwen2MoeForCausalLM" => "qwen2moe",
            "Qwen3ForCausalLM" => "qwen3",
            "Qwen3MoeForCausalLM" => "qwen3moe",
            "Phi3ForCausalLM" => "phi3",
            "PhiForCausalLM" => "phi2",
            "GemmaForCausalLM" => "gemma",
            "Gemma2ForCausalLM" => "gemma2",
            "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => "gemma3",
            "GPT2LMHeadModel" => "gpt2",
            "StableLmForCausalLM" => "stablelm",
            "Starcoder2ForCausalLM" => "starcoder2",
            "GraniteForCausalLM" => "granite",
            "SmolLM3ForCausalLM" => "smollm3",
            "BertModel"
            | "BertForMaskedLM"
            | "BertForSequenceClassification"
            | "RobertaModel"
            | "XLMRobertaModel"
            | "DistilBertModel" => "bert",
            "NomicBertModel" => "nomic-bert",
            _ => continue,
        };
        return name.to_string();
    }
    let Some(mt) = model_type else {
        return architectures
            .first()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
    };
    match mt {
        "llama" | "mistral" => "llama",
        "gemma3" | "gemma3_text" => "gemma3",
        "phi" => "phi2",
        "qwen2_moe" => "qwen2moe",
        "qwen3_moe" => "qwen3moe",
        "bert" | "roberta" | "xlm-roberta" | "distilbert" => "bert",
        "nomic_bert" => "nomic-bert",
        other => other,
    }
    .to_string()
}

const ENCODER_TYPES: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "electra",
    "nomic_bert",
    "nomic-bert",
    "modernbert",
    "deberta",
    "deberta-v2",
    "camembert",
    "albert",
    "mpnet",
    "jina_bert",
    "xlm-roberta-xl",
    "ernie",
    "neobert",
];

const OTHER_TYPES: &[&str] = &[
    "vit",
    "resnet",
    "convnext",
    "convnextv2",
    "whisper",
    "wav2vec2",
    "hubert",
    "clip",
    "clip_vision_model",
    "siglip",
    "siglip_vision_model",
    "detr",
    "yolos",
    "swin",
    "swinv2",
    "deit",
    "beit",
    "dinov2",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilevit",
    "efficientnet",
    "segformer",
    "regnet",
    "t5",
    "mt5",
    "bart",
    "mbart",
    "marian",
    "encodec",
    "speecht5",
    "sam",
    "dpt",
    "levit",
    "audio-spectrogram-transformer",
    "wavlm",
    "data2vec-audio",
];

const DECODER_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi",
    "phi3",
    "phimoe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gpt2",
    "gpt_neox",
    "gptj",
    "falcon",
    "mpt",
    "stablelm",
    "starcoder2",
    "olmo",
    "olmo2",
    "granite",
    "smollm3",
    "deepseek_v2",
    "deepseek_v3",
    "cohere",
    "internlm2",
    "exaone",
    "bloom",
    "opt",
    "llava",
    "mistral3",
];

fn hf_class(cfg: &Config<'_>, architectures: &[&str], tensors: &[TensorFact]) -> ModelClass {
    let mt = cfg.top_str("model_type").unwrap_or("").to_ascii_lowercase();
    if ENCODER_TYPES.contains(&mt.as_str()) {
        return ModelClass::Encoder;
    }
    if OTHER_TYPES.contains(&mt.as_str()) {
        return ModelClass::Other;
    }
    if architectures
        .iter()
        .any(|a| a.ends_with("ForCausalLM") || a.ends_with("LMHeadModel"))
    {
        return ModelClass::DecoderLlm;
    }
    if cfg.text.is_some()
        && architectures
            .iter()
            .any(|a| a.ends_with("ForConditionalGeneration"))
    {
        return ModelClass::DecoderLlm;
    }
    if DECODER_TYPES.contains(&mt.as_str()) {
        return ModelClass::DecoderLlm;
    }
    if architectures
        .iter()
        .any(|a| a.starts_with("Bert") || a.contains("Roberta"))
    {
        return ModelClass::Encoder;
    }
    infer_from_tensors(tensors).class
}

/// Normalise a `torch_dtype` ("bfloat16") to a tensor dtype name ("BF16").
fn torch_dtype_name(s: &str) -> Option<&'static str> {
    Some(match s.trim_start_matches("torch.") {
        "float32" | "float" => "F32",
        "float16" | "half" => "F16",
        "bfloat16" => "BF16",
        "float64" | "double" => "F64",
        "int8" => "I8",
        "uint8" => "U8",
        _ => return None,
    })
}

fn facts_from_config(
    path: &Path,
    format: ModelFormat,
    top: &Map<String, Value>,
    tensors: Vec<TensorFact>,
) -> ModelFacts {
    let cfg = Config::new(top);
    let architectures: Vec<&str> = top
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let model_type = cfg.top_str("model_type").or_else(|| cfg.str("model_type"));
    let architecture = llama_cpp_architecture(&architectures, model_type);
    let class = hf_class(&cfg, &architectures, &tensors);
    let guess = infer_from_tensors(&tensors);

    let layers = cfg
        .u64(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])
        .or(guess.layers);
    let hidden_size = cfg
        .u64(&["hidden_size", "n_embd", "d_model", "dim"])
        .or(guess.hidden);
    let heads = cfg
        .u64(&["num_attention_heads", "n_head", "num_heads", "n_heads"])
        .filter(|&h| h > 0);
    let kv_heads = cfg
        .u64(&[
            "num_key_value_heads",
            "n_head_kv",
            "num_kv_heads",
            "multi_query_group_num",
        ])
        .filter(|&h| h > 0)
        .or(heads);
    let head_dim = cfg.u64(&["head_dim"]).or(match (hidden_size, heads) {
        (Some(h), Some(n)) => Some(h / n),
        _ => None,
    });
    let vocab_size = cfg
        .u64(&["vocab_size", "n_vocab", "padded_vocab_size"])
        .or(guess.vocab);
    let max_context = cfg
        .u64(&[
            "max_position_embeddings",
            "n_positions",
            "max_sequence_length",
            "seq_length",
            "n_ctx",
        ])
        .or(guess.max_context);
    let tied_embeddings = cfg
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(!guess.has_lm_head);
    let dtype = dominant_dtype(&tensors)
        .or_else(|| {
            cfg.str("torch_dtype")
                .or_else(|| cfg.str("dtype"))
                .and_then(torch_dtype_name)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());

    ModelFacts {
        path: path.to_path_buf(),
        format,
        architecture,
        class,
        parameters: total_parameters(&tensors),
        dtype,
        layers,
        hidden_size,
        heads,
        kv_heads,
        head_dim,
        vocab_size,
        max_context,
        tied_embeddings,
        tensors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[u64], dtype: &str) -> TensorFact {
        TensorFact {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: dtype.into(),
        }
    }

    fn config(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn from_config(json: &str, tensors: Vec<TensorFact>) -> ModelFacts {
        facts_from_config(
            Path::new("m"),
            ModelFormat::HfDirectory,
            &config(json),
            tensors,
        )
    }

    fn safetensors_file(json: &str, data: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.resize(out.len() + data, 0);
        out
    }

    #[test]
    fn dominant_dtype_by_elements() {
        let ts = [
            t("a", &[10], "F32"),
            t("b", &[4, 4], "Q4_K"),
            t("c", &[6], "F32"),
        ];
        assert_eq!(dominant_dtype(&ts).as_deref(), Some("F32"));
        assert_eq!(dominant_dtype(&ts[1..2]).as_deref(), Some("Q4_K"));
        assert_eq!(dominant_dtype(&[]), None);
        // Ties go to the first seen.
        let tie = [t("a", &[8], "F16"), t("b", &[8], "BF16")];
        assert_eq!(dominant_dtype(&tie).as_deref(), Some("F16"));
    }

    #[test]
    fn architecture_names() {
        let cases: [(&[&str], Option<&str>, &str); 13] = [
            (&["LlamaForCausalLM"], Some("llama"), "llama"),
            (&["MistralForCausalLM"], Some("mistral"), "llama"),
            (&["Qwen2ForCausalLM"], Some("qwen2"), "qwen2"),
            (&["Qwen3ForCausalLM"], Some("qwen3"), "qwen3"),
            (&["Phi3ForCausalLM"], Some("phi3"), "phi3"),
            (&["Gemma2ForCausalLM"], Some("gemma2"), "gemma2"),
            (&["Gemma3ForCausalLM"], Some("gemma3_text"), "gemma3"),
            (
                &["Gemma3ForConditionalGeneration"],
                Some("gemma3"),
                "gemma3",
            ),
            (&["BertModel"], Some("bert"), "bert"),
            (&["BertForMaskedLM"], None, "bert"),
            (&[], Some("bert"), "bert"),
            (&["FancyNewModel"], Some("fancy"), "fancy"),
            (&[], None, "unknown"),
        ];
        for (archs, mt, want) in cases {
            assert_eq!(llama_cpp_architecture(archs, mt), want, "{archs:?} {mt:?}");
        }
    }

    #[test]
    fn config_facts_and_classes() {
        let llama = from_config(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":30,
               "hidden_size":576,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
               "max_position_embeddings":8192,"tie_word_embeddings":true,"torch_dtype":"bfloat16"}"#,
            vec![],
        );
        assert_eq!(llama.class, ModelClass::DecoderLlm);
        assert_eq!(
            (
                llama.layers,
                llama.hidden_size,
                llama.heads,
                llama.kv_heads,
                llama.head_dim
            ),
            (Some(30), Some(576), Some(9), Some(3), Some(64))
        );
        assert_eq!(llama.dtype, "BF16", "torch_dtype when there are no tensors");
        assert!(llama.tied_embeddings);

        let bert = from_config(
            r#"{"architectures":["BertModel"],"model_type":"bert","num_attention_heads":12,"hidden_size":384}"#,
            vec![],
        );
        assert_eq!(bert.class, ModelClass::Encoder);
        assert_eq!(bert.kv_heads, Some(12), "kv heads default to heads");
        let xlmr = from_config(r#"{"model_type":"xlm-roberta"}"#, vec![]);
        assert_eq!(
            (xlmr.class, xlmr.architecture.as_str()),
            (ModelClass::Encoder, "bert")
        );
        for other in ["vit", "resnet", "convnext", "whisper"] {
            let f = from_config(&format!(r#"{{"model_type":"{other}"}}"#), vec![]);
            assert_eq!(f.class, ModelClass::Other, "{other}");
        }
        let whisper = from_config(
            r#"{"architectures":["WhisperForConditionalGeneration"],"model_type":"whisper"}"#,
            vec![],
        );
        assert_eq!(whisper.class, ModelClass::Other);

        // tie_word_embeddings absent: tied iff no lm_head.weight.
        let untied = from_config(
            r#"{"architectures":["Qwen2ForCausalLM"]}"#,
            vec![t("lm_head.weight", &[8, 4], "F16")],
        );
        assert!(!untied.tied_embeddings);
        assert_eq!(untied.dtype, "F16");
        // Explicit head_dim, null values and float-written integers.
        let g = from_config(
            r#"{"model_type":"gemma2","head_dim":256,"hidden_size":2304.0,"num_attention_heads":8,
               "num_key_value_heads":null}"#,
            vec![],
        );
        assert_eq!(
            (g.head_dim, g.hidden_size, g.kv_heads),
            (Some(256), Some(2304), Some(8))
        );
        assert_eq!(g.class, ModelClass::DecoderLlm);
    }

    #[test]
    fn lone_safetensors_inference() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("encoder.safetensors");
        let json = r#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[100,8],"data_offsets":[0,3200]},
            "embeddings.position_embeddings.weight":{"dtype":"F32","shape":[64,8],"data_offsets":[3200,5248]},
            "encoder.layer.0.attention.self.query.weight":{"dtype":"F32","shape":[8,8],"data_offsets":[5248,5504]},
            "encoder.layer.1.attention.self.query.weight":{"dtype":"F32","shape":[8,8],"data_offsets":[5504,5760]}}"#;
        std::fs::write(&p, safetensors_file(json, 5760)).unwrap();
        let f = read_model_facts(&p).unwrap();
        assert_eq!(f.format, ModelFormat::Safetensors);
        assert_eq!(
            (f.architecture.as_str(), f.class),
            ("bert", ModelClass::Encoder)
        );
        assert_eq!(
            (f.layers, f.hidden_size, f.vocab_size, f.max_context),
            (Some(2), Some(8), Some(100), Some(64))
        );
        assert_eq!(f.parameters, 800 + 512 + 128);

        // With a config.json beside it, the directory is read.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"bert","num_hidden_layers":2}"#,
        )
        .unwrap();
        let f = read_model_facts(&p).unwrap();
        assert_eq!(f.format, ModelFormat::HfDirectory);
        assert_eq!(f.path, dir.path());
    }

    #[test]
    fn formats_are_sniffed_without_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("weights");
        std::fs::write(
            &st,
            safetensors_file(
                r#"{"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#,
                3,
            ),
        )
        .unwrap();
        assert_eq!(detect_format(&st).unwrap(), Some(ModelFormat::Safetensors));
        let gg = dir.path().join("model.bin");
        std::fs::write(&gg, b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(detect_format(&gg).unwrap(), Some(ModelFormat::Gguf));
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, b"hello").unwrap();
        assert_eq!(detect_format(&txt).unwrap(), None);
        match read_model_facts(&txt) {
            Err(Error::InvalidModel { message, .. }) => assert_eq!(message, NOT_A_MODEL),
            other => panic!("{other:?}"),
        }
        let pt = dir.path().join("pytorch_model.bin");
        std::fs::write(&pt, b"PK\x03\x04 pickle").unwrap();
        match read_model_facts(&pt) {
            Err(Error::InvalidModel { help, .. }) => {
                assert!(help.contains("safetensors"), "{help}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hf_directory_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("only.gguf"), b"GGUF").unwrap();
        match read_model_facts(dir.path()) {
            Err(Error::InvalidModel { message, help, .. }) => {
                assert_eq!(message, "no config.json in this directory");
                assert!(help.contains("only.gguf"), "{help}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("config.json"), b"{not json").unwrap();
        match read_model_facts(dir.path()) {
            Err(Error::InvalidModel { message, path, .. }) => {
                assert!(message.contains("not valid JSON"), "{message}");
                assert!(path.ends_with("config.json"));
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        match read_model_facts(dir.path()) {
            Err(Error::InvalidModel { message, .. }) => {
                assert!(message.contains("no safetensors weights"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(
            dir.path().join(INDEX_JSON),
            br#"{"weight_map":{"a":"../escape.safetensors"}}"#,
        )
        .unwrap();
        match read_model_facts(dir.path()) {
            Err(Error::InvalidModel { message, .. }) => {
                assert!(
                    message.contains("not a file in this directory"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
