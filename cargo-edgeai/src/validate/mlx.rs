//! Validation of MLX models on the real mlx-lm (Linux CPU or macOS Metal), in the managed `mlx`
//! toolchain: perplexity, KL divergence and top-1 agreement against the unquantized model, a
//! greedy decode compared token by token, decode speed and peak memory, judged by the same
//! gates and reported in the same [`ValidationReport`] as the llama.cpp path.
//!
//! The measuring is done by `mlx_driver.py` (embedded, written to a scratch directory and run
//! by the toolchain's python), in two processes: the reference run writes its log-probabilities
//! for the scored positions (cached by content, like llama.cpp's reference logits) and the
//! candidate run compares against them, so the candidate's peak memory is its own. The driver
//! prints one JSON object on stdout; failures are one `EDGEAI-ERROR {kind, message}` line on
//! stderr, mapped here to an [`Error`] with a help line.
//!
//! Chunking and scoring follow llama-perplexity (chunks of `ctx` tokens, the second half of
//! each scored, BOS in front when the tokenizer adds one), so the figures are comparable with
//! the GGUF path's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gates::Gates;
use super::{
    cache, evaluate_gates, evaluation_text, CacheInfo, HostFigures, ModelInfo, Quality,
    TargetFigures, ToolInfo, ValidateOptions, ValidationReport, SCHEMA_VERSION,
};
use crate::manifest::Target;
use crate::matrix::MlxLmSupport;
use crate::quant::Framework;
use crate::{Error, Result};

/// The driver, embedded so an installed cargo-edgeai needs no file next to it.
pub const DRIVER: &str = include_str!("mlx_driver.py");

/// The managed toolchain the driver runs in.
pub const TOOLCHAIN: &str = "mlx";

/// What to validate and how (besides the two model directories).
#[derive(Debug, Clone)]
pub struct MlxValidateOptions {
    /// The target whose budget and bandwidth give the target-side estimates.
    pub target: Target,
    /// Evaluation text; `None`: the llama.cpp path's default ([`super::DEFAULT_TEXT_PARTS`]).
    pub text: Option<PathBuf>,
    /// Context of each evaluated chunk.
    pub ctx: u64,
    /// Only the first N chunks; `None`: the whole text.
    pub chunks: Option<u32>,
    /// Prompt length (tokens of the evaluation text) of the greedy decode and the prompt rate.
    pub prompt_tokens: u32,
    /// Tokens to greedy-decode (N).
    pub gen_tokens: u32,
    /// The first K greedy tokens must equal the reference's for `first_k_agree`.
    pub agree_tokens: u32,
    /// Measure the prompt-processing rate (one extra forward pass over the prompt).
    pub bench: bool,
    /// Reference cache directory; `None`: [`cache::default_dir`]`/mlx`.
    pub cache_dir: Option<PathBuf>,
    /// The resolved gates (see [`super::resolve_gates`]).
    pub gates: Gates,
}

impl MlxValidateOptions {
    /// Defaults: whole default text, chunks of 512, a 128-token prompt, 32 decoded tokens of
    /// which the first 8 must agree, prompt rate measured, no gates but the target's budget.
    pub fn new(target: Target) -> Self {
        MlxValidateOptions {
            target,
            text: None,
            ctx: 512,
            chunks: None,
            prompt_tokens: 128,
            gen_tokens: 32,
            agree_tokens: 8,
            bench: true,
            cache_dir: None,
            gates: Gates::default(),
        }
    }

    /// The same settings as a llama.cpp validation (the `validate` CLI's flags): the bench
    /// prompt and generation lengths become the greedy decode's.
    pub fn from_validate(target: &Target, opts: &ValidateOptions) -> Self {
        MlxValidateOptions {
            target: target.clone(),
            text: opts.text.clone(),
            ctx: opts.ctx,
            chunks: opts.chunks,
            prompt_tokens: opts.bench_prompt_tokens,
            gen_tokens: opts.bench_gen_tokens,
            agree_tokens: 8.min(opts.bench_gen_tokens),
            bench: opts.bench,
            cache_dir: opts.cache_dir.clone(),
            gates: opts.gates.clone(),
        }
    }
}

/// The greedy decode of the candidate next to the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreedyDecode {
    /// Prompt length: the first tokens of the evaluation text.
    pub prompt_tokens: u64,
    pub tokens: Vec<u64>,
    pub text: String,
    pub reference_tokens: Vec<u64>,
    pub reference_text: String,
    /// Leading tokens identical to the reference's.
    pub agree_prefix: u64,
    /// K of "the first K tokens agree".
    pub first_k: u64,
    pub first_k_agree: bool,
}

/// Whether `path` is an MLX model directory: config.json with a `quantization` table and
/// safetensors whose metadata says `format=mlx` (what mlx-lm writes).
pub fn is_mlx_dir(path: &Path) -> bool {
    let Ok(config) = read_config(path) else {
        return false;
    };
    if !config.get("quantization").is_some_and(|q| q.is_object()) {
        return false;
    }
    safetensors_files(path)
        .ok()
        .and_then(|files| files.into_iter().next())
        .and_then(|f| safetensors_format(&f))
        .is_some_and(|f| f == "mlx")
}

fn read_config(dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
        help: "pass an MLX or Hugging Face model directory (config.json, *.safetensors, tokenizer.json)".into(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidModel {
        path: path.clone(),
        message: format!("config.json is not a JSON object: {e}"),
        help: "pass an MLX or Hugging Face model directory with a valid config.json".into(),
    })
}

/// The directory's *.safetensors, sorted.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// `__metadata__.format` of a safetensors file (header only, length-checked).
fn safetensors_format(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    // A header is JSON text; anything past 100 MB or the file is not one.
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return None;
    }
    let mut buf = vec![0u8; usize::try_from(n).ok()?];
    f.read_exact(&mut buf).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&buf).ok()?;
    header
        .get("__metadata__")?
        .get("format")?
        .as_str()
        .map(str::to_string)
}

/// Identity of a model directory: model_type, vocabulary, weights on disk, quantization.
fn model_info(dir: &Path) -> Result<(ModelInfo, serde_json::Map<String, serde_json::Value>)> {
    let config = read_config(dir)?;
    let files = safetensors_files(dir)?;
    if files.is_empty() {
        return Err(Error::InvalidModel {
            path: dir.to_path_buf(),
            message: "no *.safetensors in the directory".into(),
            help: "pass an MLX directory (cargo edgeai convert MODEL --format mlx -o DIR) or the Hugging Face directory it was made from".into(),
        });
    }
    let mut size_bytes = 0;
    for f in &files {
        size_bytes += std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
    }
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let text_config = config.get("text_config").and_then(|v| v.as_object());
    let vocab_size = config
        .get("vocab_size")
        .or_else(|| text_config.and_then(|t| t.get("vocab_size")))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let file_type = config
        .get("quantization")
        .and_then(|q| q.as_object())
        .map(scheme_name);
    let label = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        ModelInfo {
            path: dir.to_path_buf(),
            label,
            size_bytes,
            architecture: model_type,
            vocab_size,
            file_type,
        },
        config,
    ))
}

/// The quantization's name as the matrix spells MLX schemes (`affine-4bit-g64`, `mxfp4`);
/// `mixed` when layers differ (per-module entries).
fn scheme_name(q: &serde_json::Map<String, serde_json::Value>) -> String {
    let mode = q.get("mode").and_then(|v| v.as_str()).unwrap_or("affine");
    let bits = q.get("bits").and_then(|v| v.as_u64()).unwrap_or(0);
    let group = q.get("group_size").and_then(|v| v.as_u64()).unwrap_or(0);
    let mixed = q.values().any(|v| v.is_object());
    let base = if mode == "affine" {
        format!("affine-{bits}bit-g{group}")
    } else {
        mode.to_string()
    };
    if mixed {
        format!("{base} (mixed)")
    } else {
        base
    }
}

/// Refuse, before any Python starts (or any tensor is converted), a model mlx-lm cannot load.
pub(crate) fn check_loadable(
    dir: &Path,
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let support = MlxLmSupport::builtin();
    let Some(model_type) = config.get("model_type").and_then(|v| v.as_str()) else {
        return Err(Error::InvalidModel {
            path: dir.join("config.json"),
            message: "config.json has no model_type, which mlx-lm needs to pick the model code"
                .into(),
            help:
                "pass an MLX or Hugging Face model directory whose config.json names its model_type"
                    .into(),
        });
    };
    let architectures: Vec<&str> = config
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if support.module_for(model_type, &architectures).is_none() {
        return Err(unsupported(dir, model_type));
    }
    Ok(())
}

fn unsupported(dir: &Path, model_type: &str) -> Error {
    let support = MlxLmSupport::builtin();
    Error::InvalidModel {
        path: dir.join("config.json"),
        message: format!(
            "mlx-lm {} cannot load model_type `{model_type}`",
            support.mlx_lm
        ),
        help: format!(
            "MLX is not available for this architecture; validate it on llama.cpp (GGUF) instead. mlx-lm loads these model types: {}",
            support.list()
        ),
    }
}

/// The reference run's result (the driver's JSON), stored in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReferenceResult {
    model_type: Option<String>,
    vocab_size: u64,
    tokens: u64,
    add_bos: bool,
    chunks: u64,
    tokens_scored: u64,
    ppl: f64,
    ppl_error: f64,
    greedy_prompt_tokens: u64,
    greedy_tokens: Vec<u64>,
    greedy_text: String,
    peak_rss_bytes: Option<u64>,
    versions: BTreeMap<String, String>,
}

/// The candidate run's result (the driver's JSON).
#[derive(Debug, Clone, Deserialize)]
struct CandidateResult {
    chunks: u64,
    tokens_scored: u64,
    ppl: f64,
    ppl_error: f64,
    kld_mean: f64,
    kld_mean_error: f64,
    kld_median: f64,
    kld_p99: f64,
    kld_max: f64,
    top1: f64,
    top1_error: f64,
    prompt_tokens_per_s: Option<f64>,
    decode_tokens_per_s: Option<f64>,
    time_to_first_token_ms: Option<f64>,
    greedy_prompt_tokens: u64,
    greedy_tokens: Vec<u64>,
    greedy_text: String,
    greedy_agree_prefix: u64,
    mlx_peak_memory_bytes: Option<u64>,
    peak_rss_bytes: Option<u64>,
    versions: BTreeMap<String, String>,
}

/// The toolchain's interpreter, or the error that says how to install it.
fn toolchain_python() -> Result<(PathBuf, String)> {
    let tc = edgeai_toolchain::find(TOOLCHAIN).map_err(|e| Error::Usage {
        message: format!("MLX validation needs the `{TOOLCHAIN}` toolchain (mlx, mlx-lm): {e}"),
        help: format!(
            "run `cargo edgeai toolchain install {TOOLCHAIN}` (a pinned Python environment with mlx and mlx-lm)"
        ),
    })?;
    let version = ["mlx-lm", "mlx"]
        .iter()
        .filter_map(|p| tc.version(p).map(|v| format!("{p} {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((tc.python(), version))
}

/// Run the driver with `request`; its one JSON object, or the mapped error.
fn run_driver<T: serde::de::DeserializeOwned>(
    python: &Path,
    scratch: &Path,
    request: &serde_json::Value,
    model: &Path,
) -> Result<T> {
    let driver = scratch.join("mlx_driver.py");
    if !driver.is_file() {
        std::fs::write(&driver, DRIVER).map_err(|e| Error::io(&driver, e))?;
    }
    let req_path = scratch.join("request.json");
    std::fs::write(&req_path, request.to_string()).map_err(|e| Error::io(&req_path, e))?;
    let out = Command::new(python)
        // -I: no user site-packages, no PYTHON* variables: only the toolchain's packages.
        .arg("-I")
        .arg(&driver)
        .arg(&req_path)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .map_err(|e| Error::Io {
            path: python.to_path_buf(),
            source: e,
            help: format!(
                "reinstall the toolchain: cargo edgeai toolchain install {TOOLCHAIN} --force"
            ),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(driver_error(&stderr, out.status, model));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        Error::Internal(format!(
            "the MLX driver printed no result for {} ({e}); stderr: {}",
            model.display(),
            tail(&stderr, 6)
        ))
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[derive(Deserialize)]
struct DriverError {
    kind: String,
    message: String,
}

/// The driver's `EDGEAI-ERROR` line as an [`Error`] with a help line.
fn driver_error(stderr: &str, status: std::process::ExitStatus, model: &Path) -> Error {
    let parsed = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("EDGEAI-ERROR "))
        .and_then(|j| serde_json::from_str::<DriverError>(j).ok());
    let Some(e) = parsed else {
        return Error::Internal(format!(
            "the MLX driver failed ({status}) on {}: {}",
            model.display(),
            tail(stderr, 8)
        ));
    };
    let path = model.to_path_buf();
    match e.kind.as_str() {
        "unsupported_architecture" => Error::InvalidModel {
            path,
            message: e.message,
            help: format!(
                "validate this architecture on llama.cpp (GGUF) instead; mlx-lm loads these model types: {}",
                MlxLmSupport::builtin().list()
            ),
        },
        "load" => Error::InvalidModel {
            path,
            message: format!("mlx-lm cannot load the model: {}", e.message),
            help: "pass a complete MLX directory (cargo edgeai convert MODEL --format mlx -o DIR) or Hugging Face directory: config.json, *.safetensors, tokenizer.json".into(),
        },
        "text_too_short" => Error::Usage {
            message: e.message,
            help: "pass a longer --text, or a smaller --ctx".into(),
        },
        "vocab_mismatch" => Error::Usage {
            message: e.message,
            help: "KL divergence needs both models over the same vocabulary; pass the model the candidate was made from as --reference".into(),
        },
        "environment" => Error::Usage {
            message: e.message,
            help: format!(
                "reinstall the toolchain: cargo edgeai toolchain install {TOOLCHAIN} --force"
            ),
        },
        "memory" => Error::Usage {
            message: format!("{}: {}", model.display(), e.message),
            help: "use a smaller --ctx, or validate on a machine with more memory".into(),
        },
        _ => Error::Internal(format!(
            "the MLX driver failed on {}: {} ({})",
            model.display(),
            e.message,
            tail(stderr, 4)
        )),
    }
}

/// Content key of a model directory: the sha256 of every file mlx-lm reads.
fn dir_digest(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x == "safetensors" || x == "json" || x == "jinja")
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(format!("{name} {}\n", cache::sha256_file(&f)?).as_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The reference's log-probabilities and result: from the cache, or one reference run.
fn reference_run(
    python: &Path,
    tool_version: &str,
    reference: &Path,
    text: &Path,
    text_sha256: &str,
    opts: &MlxValidateOptions,
) -> Result<(PathBuf, ReferenceResult, String, bool)> {
    let cache_root = opts
        .cache_dir
        .clone()
        .unwrap_or_else(cache::default_dir)
        .join("mlx");
    std::fs::create_dir_all(&cache_root).map_err(|e| Error::io(&cache_root, e))?;
    let key_text = format!(
        "cargo-edgeai mlx reference v1\nreference {}\ntext {text_sha256}\nctx {}\nchunks {}\nprompt {}\ngen {}\ntool {tool_version}\ndriver {}\n",
        dir_digest(reference)?,
        opts.ctx,
        opts.chunks.map_or("all".to_string(), |c| c.to_string()),
        opts.prompt_tokens,
        opts.gen_tokens,
        sha256_hex(DRIVER.as_bytes()),
    );
    let key = sha256_hex(key_text.as_bytes());
    let slot = cache_root.join(&key);
    let meta = slot.join("reference.json");
    if let Some(r) = std::fs::read_to_string(&meta)
        .ok()
        .and_then(|t| serde_json::from_str::<ReferenceResult>(&t).ok())
    {
        return Ok((slot, r, key, true));
    }
    // Filled under a unique name and renamed into place, so a killed run leaves no half slot.
    let staging = cache_root.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let request = serde_json::json!({
        "mode": "reference",
        "model": reference,
        "text": text,
        "ctx": opts.ctx,
        "chunks": opts.chunks,
        "scratch": staging,
        "prompt_tokens": opts.prompt_tokens,
        "gen_tokens": opts.gen_tokens,
    });
    let result: ReferenceResult = match run_driver(python, &staging, &request, reference) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let json = serde_json::to_string_pretty(&result)
        .map_err(|e| Error::Internal(format!("reference result: {e}")))?;
    let staged_meta = staging.join("reference.json");
    std::fs::write(&staged_meta, json).map_err(|e| Error::io(&staged_meta, e))?;
    if std::fs::rename(&staging, &slot).is_err() {
        // Another run filled the slot first with the same content: use it.
        let _ = std::fs::remove_dir_all(&staging);
        if !meta.is_file() {
            return Err(Error::Internal(format!(
                "could not store the reference run in {}",
                slot.display()
            )));
        }
    }
    Ok((slot, result, key, false))
}

/// Memory footprint and decode speed on the target: the candidate's safetensors + the KV
/// cache at the target's context (the MLX rule's element size) + the MLX rule's overhead.
fn target_figures(target: &Target, candidate: &Path, weights_bytes: u64) -> Result<TargetFigures> {
    let facts = crate::facts::read_model_facts(candidate)?;
    super::estimated_target_figures(target, &facts, weights_bytes, Framework::Mlx, "MLX weights")
}

/// Validate the MLX model `candidate` against `reference` (the unquantized Hugging Face
/// directory it was made from, or another MLX directory) with mlx-lm.
pub fn validate_mlx(
    candidate: &Path,
    reference: &Path,
    opts: &MlxValidateOptions,
) -> Result<ValidationReport> {
    let (cand_info, cand_config) = model_info(candidate)?;
    let (ref_info, ref_config) = model_info(reference)?;
    check_loadable(candidate, &cand_config)?;
    check_loadable(reference, &ref_config)?;
    if cand_info.architecture != ref_info.architecture {
        return Err(Error::Usage {
            message: format!(
                "{} is a `{}` model but the reference {} is `{}`",
                candidate.display(),
                cand_info.architecture,
                reference.display(),
                ref_info.architecture
            ),
            help: "pass the unquantized model the candidate was made from as --reference".into(),
        });
    }
    if cand_info.vocab_size != ref_info.vocab_size {
        return Err(Error::Usage {
            message: format!(
                "{} has a vocabulary of {} tokens but the reference {} has {}",
                candidate.display(),
                cand_info.vocab_size,
                reference.display(),
                ref_info.vocab_size
            ),
            help: "KL divergence needs both models over the same vocabulary; pass the model the candidate was made from as --reference".into(),
        });
    }
    if opts.ctx < 8 {
        return Err(Error::Usage {
            message: format!("--ctx {} is too small", opts.ctx),
            help: "use a context of at least 8 tokens; 256 or 512 are usual".into(),
        });
    }
    if opts.gen_tokens == 0 || opts.prompt_tokens == 0 {
        return Err(Error::Usage {
            message: "the greedy decode needs at least one prompt token and one generated token"
                .into(),
            help: "pass --bench-prompt and --bench-gen of 1 or more".into(),
        });
    }
    let (python, tool_version) = toolchain_python()?;
    let scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (text_path, text) = evaluation_text(opts.text.as_deref(), scratch.path())?;

    let (slot, reference_result, key, hit) = reference_run(
        &python,
        &tool_version,
        reference,
        &text_path,
        &text.sha256,
        opts,
    )?;

    let request = serde_json::json!({
        "mode": "candidate",
        "model": candidate,
        "ctx": opts.ctx,
        "scratch": slot,
        "prompt_tokens": opts.prompt_tokens,
        "gen_tokens": opts.gen_tokens,
        "bench": opts.bench,
        "reference_result": reference_result,
    });
    // The driver and request go to the scratch directory; the cache slot is only read.
    let c: CandidateResult = run_driver(&python, scratch.path(), &request, candidate)?;

    let quality = Quality {
        ppl: c.ppl,
        ppl_error: c.ppl_error,
        ppl_reference: reference_result.ppl,
        ppl_ratio: c.ppl / reference_result.ppl,
        kld_mean: c.kld_mean,
        kld_mean_error: c.kld_mean_error,
        kld_median: c.kld_median,
        kld_p99: c.kld_p99,
        kld_max: c.kld_max,
        top1_agreement: c.top1,
        top1_agreement_error: c.top1_error,
        chunks: c.chunks,
        tokens_scored: c.tokens_scored,
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let host = HostFigures {
        label: "measured on this host".into(),
        threads,
        prompt_tokens_per_s: c.prompt_tokens_per_s,
        decode_tokens_per_s: c.decode_tokens_per_s,
        time_to_first_token_ms: c.time_to_first_token_ms,
        speed_basis: format!(
            "mlx-lm on {}: greedy decode of {} tokens after a {}-token prompt (generate_step; decode rate after the first token, time to first token = prompt + first token){}",
            if cfg!(target_os = "macos") { "Metal" } else { "CPU" },
            c.greedy_tokens.len(),
            c.greedy_prompt_tokens,
            if opts.bench { "; prompt rate = one forward pass over the prompt" } else { "; prompt rate not measured (--no-bench)" }
        ),
        peak_rss_bytes: c.peak_rss_bytes,
        peak_rss_basis: format!(
            "maximum resident set of the candidate's mlx-lm process (getrusage ru_maxrss){}",
            c.mlx_peak_memory_bytes
                .map(|b| format!(
                    "; MLX allocator peak during the decode {:.1} MiB",
                    b as f64 / (1u64 << 20) as f64
                ))
                .unwrap_or_default()
        ),
    };
    let target_side = target_figures(&opts.target, candidate, cand_info.size_bytes)?;
    let mut gates = evaluate_gates(&opts.gates, &quality, &host, &target_side);
    for g in &mut gates {
        match g.name.as_str() {
            "max_kld" => g.basis = "mean KL divergence from the reference, mlx-lm".into(),
            "min_decode_tokens_per_s" if host.decode_tokens_per_s.is_some() => {
                g.basis = "mlx-lm greedy decode on this host".into()
            }
            _ => {}
        }
    }
    let passed = gates.iter().all(|g| g.passed);
    let first_k = u64::from(opts.agree_tokens).min(c.greedy_tokens.len() as u64);
    let greedy = GreedyDecode {
        prompt_tokens: c.greedy_prompt_tokens,
        tokens: c.greedy_tokens,
        text: c.greedy_text,
        reference_tokens: reference_result.greedy_tokens.clone(),
        reference_text: reference_result.greedy_text.clone(),
        agree_prefix: c.greedy_agree_prefix,
        first_k,
        first_k_agree: c.greedy_agree_prefix >= first_k,
    };
    let version = if tool_version.is_empty() {
        c.versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        tool_version
    };
    Ok(ValidationReport {
        schema: SCHEMA_VERSION,
        target: opts.target.name.clone(),
        candidate: cand_info,
        reference: ref_info,
        text,
        ctx: opts.ctx,
        chunks_requested: opts.chunks,
        quality,
        host,
        target_side,
        gates,
        passed,
        tool: ToolInfo {
            bin_dir: python,
            version,
        },
        reference_cache: CacheInfo {
            key,
            logits: slot,
            hit,
        },
        greedy: Some(greedy),
    })
}

/// Whether a report came from [`validate_mlx`].
pub fn is_mlx_report(r: &ValidationReport) -> bool {
    r.greedy.is_some()
}

/// The terminal table of an MLX validation: the llama.cpp path's table with the tool named
/// right, plus the greedy decode.
pub fn render_human(r: &ValidationReport) -> String {
    let mut s = super::report::render_human(r)
        .replacen(&format!("llama.cpp {}", r.tool.version), &r.tool.version, 1)
        .replacen("quality (llama-perplexity)", "quality (mlx-lm)", 1);
    if let Some(g) = &r.greedy {
        let insert = format!(
            "\ngreedy decode ({} tokens after a {}-token prompt)\n  candidate  {:?}\n  reference  {:?}\n  first {} tokens {} ({} leading tokens agree)\n",
            g.tokens.len(),
            g.prompt_tokens,
            g.text,
            g.reference_text,
            g.first_k,
            if g.first_k_agree { "agree" } else { "DIFFER" },
            g.agree_prefix
        );
        match s.find("\ngates\n") {
            Some(at) => s.insert_str(at, &insert),
            None => s.push_str(&insert),
        }
    }
    s
}

/// The HTML report of an MLX validation (the llama.cpp path's page, tool named right).
pub fn render_html(title: &str, reports: &[&ValidationReport], summary: &str) -> String {
    super::report::render_html(title, reports, summary).replace(
        "measured on this machine with llama.cpp",
        "measured on this machine with mlx-lm",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_match_the_matrix() {
        let q: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"group_size":64,"bits":4,"mode":"affine"}"#).unwrap();
        assert_eq!(scheme_name(&q), "affine-4bit-g64");
        assert!(crate::quant::Scheme::parse(Framework::Mlx, &scheme_name(&q)).is_some());
        let q: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"group_size":32,"bits":4,"mode":"mxfp4"}"#).unwrap();
        assert_eq!(scheme_name(&q), "mxfp4");
    }

    #[cfg(unix)]
    #[test]
    fn driver_errors_map_to_errors_with_help() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(3 << 8);
        let e = driver_error(
            "noise\nEDGEAI-ERROR {\"kind\": \"text_too_short\", \"message\": \"t.txt: 10 tokens\"}\n",
            status,
            Path::new("m"),
        );
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("10 tokens"), "{e}");
        let e = driver_error("Segmentation fault\n", status, Path::new("m"));
        assert!(e.to_string().contains("Segmentation fault"), "{e}");
    }

    #[test]
    fn non_mlx_directories_are_not_mlx() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mlx_dir(dir.path()));
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
        assert!(!is_mlx_dir(dir.path()));
    }
}
