//! `cargo edgeai convert`: a Hugging Face model directory (config.json, safetensors,
//! tokenizer.json) to GGUF, in Rust, in one streaming pass.
//!
//! The output reproduces llama.cpp's reference converter (`convert_hf_to_gguf.py`, llama.cpp
//! vendored in llama-cpp-python 0.3.36) for `--outtype f32|f16|bf16`: tensor names, the q/k
//! rotary permutation, types (norms, 1-D and non-`.weight` tensors stay F32), hyper-parameter
//! and tokenizer metadata ([`arch`], [`tokenizer`]). Tensors are written in llama-quantize's
//! order (layer number, then name).
//!
//! Any llama-quantize file type (`q8_0`, `Q4_K_M`, `IQ4_NL`, ...) is produced in the same pass
//! and is byte-identical to converting to F16 and then running `cargo edgeai quantize` (or
//! llama-quantize) on that file: each weight is rounded to F16 exactly as the F16 file would
//! hold it, then quantized with [`crate::quants`] to the type [`TypeChooser`] picks.
//!
//! Everything is checked before the output is created (architecture, hyper-parameters,
//! shards, every tensor's name, dtype and shape, the tokenizer); the output goes through
//! [`GgufWriter`]'s temporary file, so a failure never leaves a partial model. Memory holds the
//! memory-mapped inputs and one output tensor at a time.

pub mod arch;
pub mod model_card;
pub mod sentencepiece;
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use memmap2::Mmap;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::facts::weight_files;
use crate::gguf::{GgmlType, GgufValue, GgufWriter, TensorSpec, DEFAULT_ALIGNMENT};
use crate::llama_quant::{
    ggml_n_dims, weight_order, FileType, ModelParams, TypeChooser, TypeOptions, TypeTotal,
    GGML_QNT_VERSION, GGUF_VERSION, KEY_FILE_TYPE, KEY_QUANTIZATION_VERSION,
};
use crate::quants;
use crate::safetensors::{self, SafetensorsHeader};
use crate::{Error, Result};

use arch::{Arch, HParams, MapResult, Transform};

/// Output formats `--format` accepts.
pub const FORMATS: &[&str] = &["gguf"];

/// What `cargo edgeai convert` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// The Hugging Face model directory.
    pub input: PathBuf,
    /// The output file.
    pub output: PathBuf,
    /// `--format` (only "gguf").
    pub format: String,
    /// `--outtype`: f32, f16, bf16, or any llama-quantize type (q8_0, Q4_K_M, ...).
    pub outtype: String,
    /// `--threads N` (default: all cores).
    pub threads: Option<usize>,
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// Input directory.
    pub input: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// llama.cpp architecture written.
    pub architecture: String,
    /// Output type name (F16, Q4_K_M, ...).
    pub outtype: String,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data read.
    pub input_bytes: u64,
    /// Bytes of tensor data written.
    pub output_bytes: u64,
    /// Tensors and bytes per output type.
    pub by_type: BTreeMap<String, TypeTotal>,
    /// Worker threads used.
    pub threads: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl ConvertReport {
    /// The human-readable summary.
    pub fn render_human(&self) -> String {
        let mut s = format!(
            "converted {} ({}) -> {} as {}: {} tensors, {:.1} MB -> {:.1} MB in {:.2} s ({} threads)\n",
            self.input.display(),
            self.architecture,
            self.output.display(),
            self.outtype,
            self.tensors,
            self.input_bytes as f64 / 1e6,
            self.output_bytes as f64 / 1e6,
            self.seconds,
            self.threads
        );
        for (ty, t) in &self.by_type {
            s.push_str(&format!(
                "  {ty:<8} {:>4} tensors {:>10.1} MB\n",
                t.tensors,
                t.bytes as f64 / 1e6
            ));
        }
        s
    }
}

/// The requested output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutType {
    /// A float type written directly (reference converter semantics).
    Float(GgmlType),
    /// A llama-quantize file type, via the F16 values.
    Quant(FileType),
}

fn parse_outtype(s: &str) -> Result<OutType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => return Ok(OutType::Float(GgmlType::F32)),
        "f16" => return Ok(OutType::Float(GgmlType::F16)),
        "bf16" => return Ok(OutType::Float(GgmlType::BF16)),
        _ => {}
    }
    match FileType::parse(s) {
        Some(FileType::F32) => Ok(OutType::Float(GgmlType::F32)),
        Some(FileType::F16) => Ok(OutType::Float(GgmlType::F16)),
        Some(FileType::BF16) => Ok(OutType::Float(GgmlType::BF16)),
        Some(t) if !s.chars().all(|c| c.is_ascii_digit()) => Ok(OutType::Quant(t)),
        _ => Err(Error::Usage {
            message: format!("unknown --outtype `{s}`"),
            help: format!("valid types: f32, f16, bf16, {}", FileType::valid_names()),
        }),
    }
}

const HELP_CONFIG: &str =
    "config.json must be the model's JSON configuration; re-download it from the model's repository";
const HELP_WEIGHTS: &str = "the weights do not match config.json; re-download the model (all shards, the index and config.json from the same revision)";

/// One input tensor, planned.
#[derive(Debug, Clone)]
struct Planned {
    /// GGUF name.
    name: String,
    /// Source shard.
    shard: usize,
    /// Byte range in the shard's file.
    range: (usize, usize),
    /// Source dtype (F32/F16/BF16).
    src: GgmlType,
    /// Safetensors shape (outermost first).
    shape: Vec<u64>,
    transform: Transform,
    /// Type in the F32/F16/BF16 file.
    base: GgmlType,
    /// Type written.
    out: GgmlType,
    /// Little-endian F32 data computed from config.json (Llama 3's `rope_freqs.weight`)
    /// instead of read from a shard.
    generated: Option<Vec<u8>>,
}

impl Planned {
    fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1) as usize
    }
    fn n_rows(&self) -> usize {
        let n: u64 = self.shape.iter().product();
        (n as usize) / self.row_len().max(1)
    }
    /// ggml `ne` trimmed as llama.cpp writes it.
    fn ne(&self) -> Vec<u64> {
        let mut ne: Vec<u64> = self.shape.iter().rev().copied().collect();
        if ne.is_empty() {
            ne.push(1);
        }
        ne.truncate(ggml_n_dims(&ne));
        ne
    }
}

/// A memory-mapped shard.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// The parsed, validated input: everything needed before the output is created.
struct Inspected {
    arch: Arch,
    metadata: Vec<(String, GgufValue)>,
    plan: Vec<Planned>,
    shards: Vec<Shard>,
}

/// Read config.json as an object.
pub fn read_config(dir: &Path) -> Result<Map<String, Value>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::model(
            dir,
            "no config.json in this directory",
            "pass a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)",
        ));
    }
    match tokenizer::read_json(&path, HELP_CONFIG)? {
        Value::Object(o) => Ok(o),
        _ => Err(Error::model(
            &path,
            "config.json is not a JSON object",
            HELP_CONFIG,
        )),
    }
}

/// The architecture of a config, or an error listing the supported ones.
pub fn detect_arch(cfg: &Map<String, Value>, dir: &Path) -> Result<Arch> {
    let names: Vec<&str> = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let first = names.first().copied().unwrap_or("");
    Arch::from_hf(first).ok_or_else(|| {
        Error::model(
            dir.join("config.json"),
            if first.is_empty() {
                "config.json has no `architectures` entry".to_string()
            } else {
                format!("architecture `{first}` is not supported by `convert`")
            },
            format!("supported architectures: {}", arch::supported_list()),
        )
    })
}

fn dtype_of(s: &str) -> Option<GgmlType> {
    match s {
        "F32" => Some(GgmlType::F32),
        "F16" => Some(GgmlType::F16),
        "BF16" => Some(GgmlType::BF16),
        _ => None,
    }
}

fn config_dtype(cfg: &Map<String, Value>) -> Option<GgmlType> {
    match cfg
        .get("torch_dtype")
        .or_else(|| cfg.get("dtype"))
        .and_then(Value::as_str)?
    {
        "float32" => Some(GgmlType::F32),
        "float16" => Some(GgmlType::F16),
        "bfloat16" => Some(GgmlType::BF16),
        _ => None,
    }
}

/// `modules.json` → `1_Pooling/config.json` pooling type (MEAN 1, CLS 2, LAST 3).
fn pooling_type(dir: &Path) -> Result<Option<u32>> {
    let modules = dir.join("modules.json");
    if !modules.is_file() {
        return Ok(None);
    }
    let help = "re-download modules.json and the pooling config from the model's repository";
    let v = tokenizer::read_json(&modules, help)?;
    let Some(p) = v.as_array().into_iter().flatten().find_map(|m| {
        let ty = m.get("type").and_then(Value::as_str)?;
        ty.ends_with("Pooling")
            .then(|| m.get("path").and_then(Value::as_str))
            .flatten()
    }) else {
        return Ok(None);
    };
    let cfg_path = dir.join(p).join("config.json");
    let c = tokenizer::read_json(&cfg_path, help)?;
    let on = |k: &str| c.get(k).and_then(Value::as_bool) == Some(true);
    Ok(if on("pooling_mode_mean_tokens") {
        Some(1)
    } else if on("pooling_mode_cls_token") {
        Some(2)
    } else if on("pooling_mode_lasttoken") {
        Some(3)
    } else {
        None
    })
}

fn inspect(dir: &Path, outtype: OutType) -> Result<Inspected> {
    let cfg = read_config(dir)?;
    let arch = detect_arch(&cfg, dir)?;
    let cfg_path = dir.join("config.json");
    let hp: HParams = arch::hparams(&cfg).map_err(|m| Error::model(&cfg_path, m, HELP_CONFIG))?;

    // Weights: shards, their headers, the index's claims.
    let files = weight_files(dir)?;
    let mut headers: Vec<SafetensorsHeader> = Vec::with_capacity(files.len());
    for f in &files {
        headers.push(safetensors::read_header(f)?);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() && !dir.join("model.safetensors").is_file() {
        let v = tokenizer::read_json(&index, "re-download model.safetensors.index.json")?;
        if let Some(map) = v.get("weight_map").and_then(Value::as_object) {
            for (tensor, shard) in map {
                let shard = shard.as_str().unwrap_or("");
                let i = files
                    .iter()
                    .position(|f| f.file_name().and_then(|n| n.to_str()) == Some(shard));
                let found = i.is_some_and(|i| headers[i].tensor(tensor).is_some());
                if !found {
                    return Err(Error::model(
                        dir.join(shard),
                        format!("model.safetensors.index.json says tensor `{tensor}` is in this shard, but it is not"),
                        HELP_WEIGHTS,
                    ));
                }
            }
        }
    }

    // Map every tensor.
    let want_dtype = config_dtype(&cfg);
    let mut plan: Vec<Planned> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (si, h) in headers.iter().enumerate() {
        let path = &files[si];
        for t in &h.tensors {
            let m = match arch::map_tensor(arch, &hp, &t.name) {
                MapResult::Skip => continue,
                MapResult::Unknown => {
                    return Err(Error::model(
                        path,
                        format!("cannot map tensor `{}` of a {} model to a llama.cpp tensor", t.name, arch.name()),
                        "the checkpoint has tensors this converter does not know (a variant of the architecture, or a config.json with the wrong `architectures`/`num_hidden_layers`)",
                    ))
                }
                MapResult::Tensor(m) => m,
            };
            let src = dtype_of(&t.dtype).ok_or_else(|| {
                Error::model(
                    path,
                    format!(
                        "tensor `{}` has dtype {}; only F32, F16 and BF16 weights are converted",
                        t.name, t.dtype
                    ),
                    "dequantize the checkpoint to F16/BF16 with its own tooling first",
                )
            })?;
            if let (Some(want), true) = (want_dtype, t.shape.len() >= 2) {
                if want != src {
                    return Err(Error::model(
                        path,
                        format!(
                            "tensor `{}` is {} but config.json's torch_dtype says {}",
                            t.name,
                            t.dtype,
                            want.name()
                        ),
                        HELP_WEIGHTS,
                    ));
                }
            }
            if let Some(shape) = &m.shape {
                if *shape != t.shape {
                    return Err(Error::model(
                        path,
                        format!(
                            "tensor `{}` has shape {:?}, but config.json implies {:?}",
                            t.name, t.shape, shape
                        ),
                        HELP_WEIGHTS,
                    ));
                }
            }
            let bytes = t.elements().saturating_mul(src.type_size());
            if t.data_offsets.1 - t.data_offsets.0 != bytes || t.shape.is_empty() {
                return Err(Error::model(
                    path,
                    format!(
                        "tensor `{}`: {} bytes of data for shape {:?} of {}",
                        t.name,
                        t.data_offsets.1 - t.data_offsets.0,
                        t.shape,
                        t.dtype
                    ),
                    HELP_WEIGHTS,
                ));
            }
            if let Transform::Permute(n) = m.transform {
                let rows = t.shape[0] as usize;
                if n == 0 || !rows.is_multiple_of(2 * n) {
                    return Err(Error::model(
                        path,
                        format!(
                            "tensor `{}`: {rows} rows cannot be split into {n} heads of even size",
                            t.name
                        ),
                        HELP_WEIGHTS,
                    ));
                }
            }
            if let Some(prev) = seen.insert(m.name.clone(), t.name.clone()) {
                return Err(Error::model(
                    path,
                    format!("tensors `{prev}` and `{}` both map to `{}`", t.name, m.name),
                    HELP_WEIGHTS,
                ));
            }
            let start = h.data_start() + t.data_offsets.0;
            let n_dims = t.shape.len();
            let base = match outtype {
                _ if arch::forced_f32(&m.name, n_dims) => GgmlType::F32,
                OutType::Float(ty) => ty,
                OutType::Quant(_) => GgmlType::F16,
            };
            plan.push(Planned {
                name: m.name,
                shard: si,
                range: (start as usize, (start + bytes) as usize),
                src,
                shape: t.shape.clone(),
                transform: m.transform,
                base,
                out: base,
                generated: None,
            });
        }
    }
    if !seen.contains_key("token_embd.weight") {
        return Err(Error::model(
            dir,
            "the weights have no token embedding",
            HELP_WEIGHTS,
        ));
    }
    for bid in 0..hp.n_layer {
        let prefix = format!("blk.{bid}.");
        if !seen.keys().any(|k| k.starts_with(&prefix)) {
            return Err(Error::model(
                dir,
                format!(
                    "config.json says {} layers but the weights have no layer {bid}",
                    hp.n_layer
                ),
                HELP_WEIGHTS,
            ));
        }
    }
    // LlamaModel.generate_extra_tensors: Llama 3 rotary scaling factors, always F32.
    if arch == Arch::Llama {
        if let Some(freqs) = arch::llama3_rope_freqs(&cfg, &hp) {
            let bytes: Vec<u8> = freqs.iter().flat_map(|v| v.to_le_bytes()).collect();
            plan.push(Planned {
                name: "rope_freqs.weight".into(),
                shard: 0,
                range: (0, bytes.len()),
                src: GgmlType::F32,
                shape: vec![freqs.len() as u64],
                transform: Transform::None,
                base: GgmlType::F32,
                out: GgmlType::F32,
                generated: Some(bytes),
            });
        }
    }
    plan.sort_by(|a, b| weight_order(&a.name, &b.name));

    // Metadata.
    let file_type = match outtype {
        OutType::Float(GgmlType::F32) => 0,
        OutType::Float(GgmlType::BF16) => 32,
        _ => 1,
    };
    let mut metadata: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.name().into()),
        ),
        ("general.type".into(), GgufValue::String("model".into())),
    ];
    // The reference counts the parameters of every tensor it writes (for the size label).
    let total_params: u64 = plan.iter().map(|p| p.shape.iter().product::<u64>()).sum();
    metadata.extend(model_card::general_metadata(dir, &cfg, total_params));
    metadata.extend(arch::hparam_metadata(arch, &cfg, &hp, file_type));
    if arch == Arch::Bert {
        if let Some(p) = pooling_type(dir)? {
            metadata.push(("bert.pooling_type".into(), GgufValue::U32(p)));
        }
    }
    metadata.push((
        KEY_QUANTIZATION_VERSION.into(),
        GgufValue::U32(GGML_QNT_VERSION),
    ));
    metadata.extend(tokenizer::tokenizer_metadata(dir, arch, &cfg, hp.vocab)?);

    // Quantized output: llama-quantize's choices on the F16 file.
    if let OutType::Quant(ftype) = outtype {
        let params = ModelParams {
            arch: arch.name().to_string(),
            n_layer: i64::try_from(hp.n_layer).unwrap_or(i64::MAX),
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            n_expert: 0,
        };
        let opts = TypeOptions {
            quantize_output_tensor: true,
            ..TypeOptions::default()
        };
        let mut chooser =
            TypeChooser::new(ftype, params, opts, plan.iter().map(|p| p.name.as_str()));
        for p in &mut plan {
            let ne = p.ne();
            p.out = chooser.choose(&p.name, &ne, p.base)?;
            if chooser.allows_quantization(&p.name, &ne) && requires_imatrix(&p.name, p.out, ftype)
            {
                return Err(Error::Usage {
                    message: format!(
                        "{} needs an importance matrix (tensor {} would be {})",
                        ftype.name(),
                        p.name,
                        p.out
                    ),
                    help: "convert to f16, compute an importance matrix with llama-imatrix, then `cargo edgeai quantize --imatrix`".into(),
                });
            }
            if p.out != p.base {
                if quants::requires_imatrix(p.out) {
                    return Err(Error::Usage {
                        message: format!("{} needs an importance matrix (tensor {} would be {})", ftype.name(), p.name, p.out),
                        help: "convert to f16, compute an importance matrix with llama-imatrix, then `cargo edgeai quantize --imatrix`".into(),
                    });
                }
                if !quants::can_quantize(p.out) {
                    return Err(Error::Usage {
                        message: format!(
                            "tensor {}: quantizing to {} is not supported",
                            p.name, p.out
                        ),
                        help: "pick another --outtype".into(),
                    });
                }
            }
        }
        set_kv(
            &mut metadata,
            KEY_QUANTIZATION_VERSION,
            GgufValue::U32(GGML_QNT_VERSION),
        );
        set_kv(&mut metadata, KEY_FILE_TYPE, GgufValue::U32(ftype.id()));
    }

    let mut shards = Vec::with_capacity(files.len());
    for f in files {
        let file = File::open(&f).map_err(|e| Error::io(&f, e))?;
        // SAFETY: read-only private map; the usual contract that nobody truncates the input
        // while it is being converted (as for every mmap-based loader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&f, e))?;
        shards.push(Shard { path: f, map });
    }
    Ok(Inspected {
        arch,
        metadata,
        plan,
        shards,
    })
}

/// llama-quantize's `tensor_requires_imatrix`: without an importance matrix these choices
/// are refused.
fn requires_imatrix(name: &str, dst: GgmlType, ftype: FileType) -> bool {
    if matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    ) {
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

fn set_kv(meta: &mut Vec<(String, GgufValue)>, key: &str, value: GgufValue) {
    meta.retain(|(k, _)| k != key);
    meta.push((key.to_string(), value));
}

/// Convert a Hugging Face model directory to GGUF. See the module documentation.
pub fn do_convert(opts: &ConvertOptions) -> Result<ConvertReport> {
    let start = Instant::now();
    let format = if opts.format.is_empty() {
        "gguf"
    } else {
        opts.format.as_str()
    };
    if !FORMATS.contains(&format.to_ascii_lowercase().as_str()) {
        return Err(Error::Usage {
            message: format!("unknown --format `{format}`"),
            help: format!(
                "supported formats: {}, mlx and onnx (openvino and qnn are planned)",
                FORMATS.join(", ")
            ),
        });
    }
    let outtype = parse_outtype(if opts.outtype.is_empty() {
        "f16"
    } else {
        &opts.outtype
    })?;
    if !opts.input.is_dir() {
        return Err(Error::model(
            &opts.input,
            "not a directory",
            "pass a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)",
        ));
    }
    let threads = opts
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ins = inspect(&opts.input, outtype)?;

    let specs: Vec<TensorSpec> = ins
        .plan
        .iter()
        .map(|p| TensorSpec {
            name: p.name.clone(),
            ne: p.ne(),
            ggml_type: p.out,
        })
        .collect();
    for s in &specs {
        if s.byte_size().is_none() {
            return Err(Error::Internal(format!(
                "tensor {} has no valid size as {}",
                s.name, s.ggml_type
            )));
        }
    }
    let mut writer = GgufWriter::create(
        &opts.output,
        GGUF_VERSION,
        &ins.metadata,
        &specs,
        DEFAULT_ALIGNMENT,
    )?;
    let mut report = ConvertReport {
        input: opts.input.clone(),
        output: opts.output.clone(),
        architecture: ins.arch.name().to_string(),
        outtype: match outtype {
            OutType::Float(t) => t.name().to_string(),
            OutType::Quant(f) => f.name().to_string(),
        },
        tensors: ins.plan.len(),
        input_bytes: 0,
        output_bytes: 0,
        by_type: BTreeMap::new(),
        threads,
        seconds: 0.0,
    };
    for p in &ins.plan {
        if let Some(g) = &p.generated {
            let data = convert_tensor(p, g, threads, &opts.input)?;
            writer.write_tensor(&data)?;
            report.output_bytes += data.len() as u64;
            let t = report.by_type.entry(p.out.name().to_string()).or_default();
            t.tensors += 1;
            t.bytes += data.len() as u64;
            continue;
        }
        let shard = ins
            .shards
            .get(p.shard)
            .ok_or_else(|| Error::Internal(format!("tensor {} has no input shard", p.name)))?;
        let src = shard.map.get(p.range.0..p.range.1).ok_or_else(|| {
            Error::model(
                &shard.path,
                format!("tensor data of `{}` lies outside the file", p.name),
                HELP_WEIGHTS,
            )
        })?;
        let data = convert_tensor(p, src, threads, &shard.path)?;
        writer.write_tensor(&data)?;
        // Keep resident memory at a few tensors on multi-GB models: the pages of a tensor
        // already converted are dropped (they are re-read from the file if ever needed).
        #[cfg(unix)]
        // SAFETY: the map is a read-only private file mapping; DONTNEED only discards clean
        // page-cache pages, which the kernel re-reads from the file on the next access.
        let _ = unsafe {
            shard.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                p.range.0,
                p.range.1 - p.range.0,
            )
        };
        report.input_bytes += src.len() as u64;
        report.output_bytes += data.len() as u64;
        let t = report.by_type.entry(p.out.name().to_string()).or_default();
        t.tensors += 1;
        t.bytes += data.len() as u64;
    }
    writer.finish()?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Source values of one row to f32: the quantizer's conversion (F16C-accelerated, exact).
pub(crate) use crate::llama_quant::to_f32 as row_to_f32;

/// f32 rows to `ty` (float types directly, quantized types through [`quants::quantize_rows`]).
pub(crate) fn f32_to_type(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
) -> std::result::Result<(), quants::QuantError> {
    match ty {
        GgmlType::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }
        GgmlType::F16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&quants::f32_to_f16(*v).to_le_bytes());
            }
            Ok(())
        }
        GgmlType::BF16 => {
            for (d, v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&quants::f32_to_bf16(*v).to_le_bytes());
            }
            Ok(())
        }
        _ => quants::quantize_rows(ty, src, n_per_row, None, dst),
    }
}

/// Run `f(first_row, out_chunk)` over `out` in chunks of whole rows on `threads` threads.
pub(crate) fn parallel_rows<F>(
    out: &mut [u8],
    dst_row: usize,
    n_rows: usize,
    threads: usize,
    f: F,
) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync,
{
    let per_chunk = ((1usize << 18) / dst_row.max(1)).max(1);
    let mut items: Vec<(usize, &mut [u8])> = Vec::new();
    let mut rest: &mut [u8] = out;
    let mut row = 0;
    while row < n_rows {
        let n = per_chunk.min(n_rows - row);
        let (head, tail) = rest.split_at_mut(n * dst_row);
        items.push((row, head));
        rest = tail;
        row += n;
    }
    let queue = Mutex::new(items.into_iter());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let worker = || loop {
        if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            return;
        }
        let next = match queue.lock() {
            Ok(mut q) => q.next(),
            Err(_) => None,
        };
        let Some((row, dst)) = next else { return };
        if let Err(e) = f(row, dst) {
            if let Ok(mut slot) = failed.lock() {
                slot.get_or_insert(e);
            }
            return;
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.max(1) {
            s.spawn(worker);
        }
        worker();
    });
    match failed.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(Error::Internal("a conversion worker panicked".into())),
    }
}

fn convert_tensor(p: &Planned, src: &[u8], threads: usize, path: &Path) -> Result<Vec<u8>> {
    let row_len = p.row_len();
    let n_rows = p.n_rows();
    let src_row = row_len * p.src.type_size() as usize;
    // Plain copy: same type, no transform.
    if p.src == p.out && p.transform == Transform::None {
        return Ok(src.to_vec());
    }
    let dst_row = p.out.bytes_for(row_len as u64).ok_or_else(|| {
        Error::Internal(format!(
            "tensor {}: rows of {row_len} cannot be {}",
            p.name, p.out
        ))
    })? as usize;
    let mut out = vec![0u8; dst_row * n_rows];
    let err = |e: quants::QuantError| {
        Error::model(
            path,
            format!("tensor {} ({} -> {}): {e}", p.name, p.src, p.out),
            HELP_WEIGHTS,
        )
    };
    parallel_rows(&mut out, dst_row, n_rows, threads, |row0, dst| {
        let nrows = dst.len() / dst_row;
        let mut buf = vec![0f32; nrows * row_len];
        for i in 0..nrows {
            let r = row0 + i;
            let sr = match p.transform {
                Transform::Permute(n) => arch::permute_row(r, n_rows, n),
                _ => r,
            };
            let s = &src[sr * src_row..(sr + 1) * src_row];
            let d = &mut buf[i * row_len..(i + 1) * row_len];
            row_to_f32(p.src, s, d).map_err(err)?;
            if p.transform == Transform::PlusOne {
                for v in d.iter_mut() {
                    *v += 1.0;
                }
            }
        }
        // The quantized path goes through the values the F16 file would hold.
        if p.base == GgmlType::F16 && p.out != GgmlType::F16 {
            for v in buf.iter_mut() {
                *v = quants::f16_to_f32(quants::f32_to_f16(*v));
            }
        }
        f32_to_type(p.out, &buf, row_len, dst).map_err(err)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outtypes_parse() {
        assert_eq!(parse_outtype("f16").unwrap(), OutType::Float(GgmlType::F16));
        assert_eq!(
            parse_outtype("BF16").unwrap(),
            OutType::Float(GgmlType::BF16)
        );
        assert_eq!(
            parse_outtype("q8_0").unwrap(),
            OutType::Quant(FileType::Q8_0)
        );
        assert_eq!(
            parse_outtype("Q4_K_M").unwrap(),
            OutType::Quant(FileType::Q4_K_M)
        );
        assert!(parse_outtype("q9").is_err());
        assert!(parse_outtype("15").is_err());
    }
}
