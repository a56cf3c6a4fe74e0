//! `cargo edgeai convert MODEL --format mlx`: a Hugging Face directory (or a GGUF, through
//! [`crate::export`]) to an MLX model directory as `mlx_lm.convert -q` writes it, quantized
//! natively by `edgeai-mlx` (byte-identical to mlx 0.32's quantizers).
//!
//! Boundary: this module reads files (config.json, generation_config.json, `model*.safetensors`
//! memory-mapped, as mlx-lm globs them) and maps errors; every decision about tensors, dtypes,
//! recipes, sharding and config.json lives in `edgeai_mlx::model`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::Mmap;
use serde::Serialize;
use serde_json::Value;

use edgeai_mlx::model::{write_model, ModelOptions, SourceTensor};
use edgeai_mlx::recipe::{Recipe, RECIPES};
use edgeai_mlx::{DType, Mode, QuantSpec};

use crate::{Error, Result};

/// Options of an MLX conversion (the `convert --format mlx` flags).
#[derive(Debug, Clone)]
pub struct MlxConvertOptions {
    /// Quantize (true for `convert --format mlx`; false writes an unquantized MLX model).
    pub quantize: bool,
    /// `--bits` (affine: 2, 3, 4, 5, 6, 8; mxfp4: 4).
    pub bits: u32,
    /// `--group-size` (affine: 32, 64, 128; mxfp4: 32).
    pub group_size: usize,
    /// `--mode`: affine or mxfp4.
    pub mode: String,
    /// `--recipe`: mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6 (affine only).
    pub recipe: Option<String>,
    /// Dtype of unquantized tensors (float16, bfloat16, float32); None: config.json's
    /// `torch_dtype`, as mlx-lm.
    pub dtype: Option<String>,
    /// Leave Linear/Embedding weights whose rows the group size does not divide unquantized
    /// (mlx-lm's behaviour) instead of failing.
    pub skip_indivisible: bool,
    /// Worker threads (None: all cores).
    pub threads: Option<usize>,
    /// Shard size limit in bytes (None: mlx-lm's 5 GiB).
    pub max_shard_bytes: Option<u64>,
    /// Per-layer overrides from the plan, first match wins.
    pub overrides: Vec<MlxOverride>,
}

/// A per-layer override: modules whose path contains `pattern` (e.g. `lm_head`,
/// `mlp.down_proj`) get `bits`/`group_size` in the conversion's mode, or stay unquantized when
/// `bits` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlxOverride {
    pub pattern: String,
    pub bits: Option<u32>,
    pub group_size: Option<usize>,
}

impl Default for MlxConvertOptions {
    fn default() -> Self {
        MlxConvertOptions {
            quantize: true,
            bits: 4,
            group_size: 64,
            mode: "affine".into(),
            recipe: None,
            dtype: None,
            skip_indivisible: false,
            threads: None,
            max_shard_bytes: None,
            overrides: Vec::new(),
        }
    }
}

/// What an MLX conversion wrote.
#[derive(Debug, Clone, Serialize)]
pub struct MlxConvertSummary {
    /// The model given (HF directory or GGUF).
    pub input: PathBuf,
    /// The MLX model directory.
    pub output: PathBuf,
    /// "hf" or "gguf".
    pub source: String,
    /// Files of the output directory.
    pub files: Vec<String>,
    /// Output tensors.
    pub tensors: usize,
    /// Linear/Embedding modules quantized.
    pub quantized_modules: usize,
    /// Modules left unquantized because the group size does not divide their rows.
    pub skipped_modules: Vec<String>,
    /// Bytes of tensor data.
    pub total_size: u64,
    /// Parameters (as mlx-lm counts them).
    pub total_parameters: u64,
    /// config.json's `quantization` entry (null when not quantized).
    pub quantization: Value,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl MlxConvertSummary {
    /// Human-readable summary.
    pub fn render_human(&self) -> String {
        let q = match &self.quantization {
            Value::Object(m) => format!(
                "{} {}-bit g{}",
                m.get("mode").and_then(Value::as_str).unwrap_or("affine"),
                m.get("bits").map(|v| v.to_string()).unwrap_or_default(),
                m.get("group_size")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            ),
            _ => "unquantized".into(),
        };
        let mut s = format!(
            "converted {} -> {} (MLX, {q}): {} tensors, {} modules quantized, {:.1} MB, {:.2} bits/weight, in {:.2} s\n",
            self.input.display(),
            self.output.display(),
            self.tensors,
            self.quantized_modules,
            self.total_size as f64 / 1e6,
            self.total_size as f64 * 8.0 / self.total_parameters.max(1) as f64,
            self.seconds
        );
        for f in &self.files {
            s.push_str(&format!("  {f}\n"));
        }
        for m in &self.skipped_modules {
            s.push_str(&format!(
                "  left unquantized: {m} (rows not divisible by the group size)\n"
            ));
        }
        s
    }
}

const HELP_BITS: &str =
    "affine takes --bits 2, 3, 4, 5, 6 or 8 and --group-size 32, 64 or 128; mxfp4 takes --bits 4 --group-size 32";

fn map_err(e: edgeai_mlx::Error, model: &Path) -> Error {
    use edgeai_mlx::Error as E;
    match e {
        E::Option { message } => Error::Usage {
            message,
            help: HELP_BITS.into(),
        },
        E::Shape { .. } => Error::model(
            model,
            e.to_string(),
            "pass a --group-size that divides the row length of every Linear/Embedding weight (32 or 64 usually do)",
        ),
        E::DType { .. } => Error::model(
            model,
            e.to_string(),
            "MLX quantizes float weights: give a float16/bfloat16/float32 checkpoint (an already quantized model cannot be re-quantized)",
        ),
        E::Io { path, source } => Error::io(path, source),
    }
}

/// Convert `model` (HF directory or GGUF file) into the MLX directory `out_dir`.
pub fn convert_to_mlx(
    model: &Path,
    out_dir: &Path,
    opts: &MlxConvertOptions,
) -> Result<MlxConvertSummary> {
    let start = Instant::now();
    let mode = Mode::parse(&opts.mode).map_err(|e| map_err(e, model))?;
    let spec = QuantSpec {
        mode,
        bits: opts.bits,
        group_size: opts.group_size,
    };
    let recipe = opts
        .recipe
        .as_deref()
        .map(Recipe::parse)
        .transpose()
        .map_err(|e| Error::Usage {
            message: e.to_string(),
            help: format!("use one of {}", RECIPES.join(", ")),
        })?;
    let dtype = match opts.dtype.as_deref() {
        None => None,
        Some(d) => Some(DType::from_torch(d).ok_or_else(|| Error::Usage {
            message: format!("unknown --dtype `{d}`"),
            help: "use float16, bfloat16 or float32".into(),
        })?),
    };
    if opts.quantize {
        spec.validate().map_err(|e| map_err(e, model))?;
        if recipe.is_some() && mode != Mode::Affine {
            return Err(Error::Usage {
                message: format!("--recipe does not combine with --mode {}", mode.name()),
                help: "mlx-lm's mixed recipes are affine: drop --recipe or use --mode affine"
                    .into(),
            });
        }
    }
    let mopts = ModelOptions {
        quantize: opts.quantize,
        spec,
        recipe,
        dtype,
        threads: opts.threads.unwrap_or(0),
        max_shard_bytes: opts
            .max_shard_bytes
            .unwrap_or(edgeai_mlx::safetensors::MAX_SHARD_BYTES),
        skip_indivisible: opts.skip_indivisible,
        overrides: opts
            .overrides
            .iter()
            .map(|o| {
                let spec = o.bits.map(|bits| QuantSpec {
                    mode,
                    bits,
                    group_size: o.group_size.unwrap_or(spec.group_size),
                });
                (o.pattern.clone(), spec)
            })
            .collect(),
    };

    let (source, exported, hf_dir) = if model.is_dir() {
        ("hf", None, model.to_path_buf())
    } else if model.is_file() {
        let tmp = tempfile::Builder::new()
            .prefix(".edgeai-mlx-export-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        crate::export::do_export(&crate::export::ExportOptions {
            input: model.to_path_buf(),
            output: tmp.path().to_path_buf(),
            to: "safetensors".into(),
            threads: opts.threads,
        })?;
        let dir = tmp.path().to_path_buf();
        ("gguf", Some(tmp), dir)
    } else {
        return Err(Error::model(
            model,
            "does not exist",
            "pass a Hugging Face model directory or a GGUF file",
        ));
    };

    let config_path = hf_dir.join("config.json");
    let config = read_json(&config_path)?.ok_or_else(|| {
        Error::model(
            &hf_dir,
            "has no config.json",
            "pass a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)",
        )
    })?;
    // An architecture mlx-lm cannot load would give a model nobody can run: refuse it before
    // converting anything (a GGUF input already went through `export`, which is llama-only).
    if let (Some(map), None) = (config.as_object(), &exported) {
        crate::validate::mlx::check_loadable(&hf_dir, map)?;
    }
    let generation = read_json(&hf_dir.join("generation_config.json")).unwrap_or(None);

    // mlx-lm loads `model*.safetensors`.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&hf_dir)
        .map_err(|e| Error::io(&hf_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model") && n.ends_with(".safetensors"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::model(
            &hf_dir,
            "has no model*.safetensors",
            "MLX conversion reads safetensors weights; convert .bin checkpoints to safetensors first",
        ));
    }
    let mut maps = Vec::new();
    for f in &files {
        let header = crate::safetensors::read_header(f)?;
        let file = File::open(f).map_err(|e| Error::io(f, e))?;
        // SAFETY: read-only private map; as for every mmap-based loader, the input must not be
        // truncated while it is converted.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(f, e))?;
        maps.push((f.clone(), header, map));
    }
    let mut tensors = Vec::new();
    for (path, header, map) in &maps {
        let base = header.data_start();
        for t in &header.tensors {
            let (a, b) = (base + t.data_offsets.0, base + t.data_offsets.1);
            let data = map.get(a as usize..b as usize).ok_or_else(|| {
                Error::model(
                    path,
                    format!("tensor `{}` lies outside the file", t.name),
                    "the file is incomplete; re-download it",
                )
            })?;
            tensors.push(SourceTensor {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                data,
            });
        }
    }
    let summary = write_model(
        out_dir,
        &config,
        generation.as_ref(),
        &tensors,
        Some(&hf_dir),
        &mopts,
    )
    .map_err(|e| map_err(e, model))?;
    drop(exported);
    Ok(MlxConvertSummary {
        input: model.to_path_buf(),
        output: out_dir.to_path_buf(),
        source: source.into(),
        files: summary.files,
        tensors: summary.tensors,
        quantized_modules: summary.quantized_modules,
        skipped_modules: summary.skipped_modules,
        total_size: summary.total_size,
        total_parameters: summary.total_parameters,
        quantization: summary.quantization,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::model(
                path,
                format!("is not valid JSON: {e}"),
                "fix or re-download the file",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
