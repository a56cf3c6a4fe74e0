//! `cargo edgeai validate` and `sweep`: what a quantized GGUF costs in quality, speed and
//! memory, measured on the real llama.cpp runtime, and production gates on those figures.
//!
//! - [`llama`]: llama-perplexity (PPL, KL divergence, top-1 agreement) and llama-bench (speed)
//!   as subprocesses; peak memory of the child.
//! - [`cache`]: reference logits, content-addressed, computed once.
//! - [`gates`]: thresholds from the target manifest and the project, and their evaluation.
//! - [`report`]: terminal table, JSON, JUnit XML, one self-contained HTML file.
//! - [`sweep`]: quantize to several types, validate all, recommend the smallest that passes.

pub mod cache;
pub mod gates;
pub mod llama;
pub mod mlx;
pub mod ort;
pub mod report;
pub mod sweep;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gguf::GgufFile;
use crate::manifest::Target;
use crate::matrix::Matrix;
use crate::project::Project;
use crate::quant::Framework;
use crate::{Error, Result};

use gates::{Direction, GateResult, Gates};

/// Report schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// The evaluation text used when none is given: the GPL-3 and Apache-2.0 texts every Debian
/// machine has, joined (46.5 KB, ~9,900 tokens for a 49k-vocabulary model).
pub const DEFAULT_TEXT_PARTS: [&str; 2] = [
    "/usr/share/common-licenses/GPL-3",
    "/usr/share/common-licenses/Apache-2.0",
];

/// What to validate and how.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub candidate: PathBuf,
    pub reference: PathBuf,
    /// Evaluation text; `None`: [`DEFAULT_TEXT_PARTS`] joined.
    pub text: Option<PathBuf>,
    /// Context of each evaluated chunk (`-c`).
    pub ctx: u64,
    /// Only the first N chunks (`--chunks`); `None`: the whole text.
    pub chunks: Option<u32>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Run llama-bench (prompt/decode tokens/s, time to first token).
    pub bench: bool,
    pub bench_prompt_tokens: u32,
    pub bench_gen_tokens: u32,
    pub bench_repetitions: u32,
    /// Reference-logits cache directory; `None`: [`cache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// The resolved gates (see [`resolve_gates`]).
    pub gates: Gates,
}

impl ValidateOptions {
    /// Defaults for a candidate/reference pair: whole default text, `-c 512`, bench on.
    pub fn new(candidate: PathBuf, reference: PathBuf) -> Self {
        ValidateOptions {
            candidate,
            reference,
            text: None,
            ctx: 512,
            chunks: None,
            threads: None,
            bench: true,
            bench_prompt_tokens: 128,
            bench_gen_tokens: 32,
            bench_repetitions: 2,
            cache_dir: None,
            gates: Gates::default(),
        }
    }
}

/// Identity of a model file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// File stem, used as the label in tables and plots (`Q4_K_M`).
    pub label: String,
    pub size_bytes: u64,
    pub architecture: String,
    pub vocab_size: u64,
    /// `general.file_type` as llama.cpp names it, when the file says.
    pub file_type: Option<String>,
}

/// Identity of the evaluation text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextInfo {
    /// The file, or the default files joined by `+`.
    pub source: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Quality of the candidate against the reference (llama-perplexity's figures).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// Perplexity of the candidate.
    pub ppl: f64,
    pub ppl_error: f64,
    /// Perplexity of the reference on the same chunks.
    pub ppl_reference: f64,
    /// ppl / ppl_reference.
    pub ppl_ratio: f64,
    /// Mean KL divergence (nats) of the candidate's token distributions from the reference's.
    pub kld_mean: f64,
    pub kld_mean_error: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Fraction of tokens whose most likely next token is the reference's.
    pub top1_agreement: f64,
    pub top1_agreement_error: f64,
    /// Chunks evaluated and tokens scored (llama-perplexity scores the second half of each).
    pub chunks: u64,
    pub tokens_scored: u64,
}

/// Measured on this machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFigures {
    pub label: String,
    pub threads: usize,
    pub prompt_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    pub speed_basis: String,
    /// Peak resident memory of the candidate's evaluation run.
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_basis: String,
}

/// Estimated for the target device (not measured there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetFigures {
    pub label: String,
    pub target: String,
    pub context_length: u64,
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    pub budget_bytes: u64,
    pub fits: bool,
    pub decode_tokens_per_s: Option<f64>,
    pub decode_basis: String,
}

/// Which llama.cpp did the measuring.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolInfo {
    pub bin_dir: PathBuf,
    pub version: String,
}

/// The reference-logits cache slot used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheInfo {
    pub key: String,
    pub logits: PathBuf,
    /// Whether the logits were already there.
    pub hit: bool,
}

/// Everything `validate` measured and decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub schema: u32,
    pub target: String,
    pub candidate: ModelInfo,
    pub reference: ModelInfo,
    pub text: TextInfo,
    pub ctx: u64,
    pub chunks_requested: Option<u32>,
    pub quality: Quality,
    pub host: HostFigures,
    pub target_side: TargetFigures,
    pub gates: Vec<GateResult>,
    pub passed: bool,
    pub tool: ToolInfo,
    pub reference_cache: CacheInfo,
    /// MLX validations: the candidate's greedy decode next to the reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greedy: Option<mlx::GreedyDecode>,
}

impl ValidationReport {
    /// The failed gates.
    pub fn failures(&self) -> impl Iterator<Item = &GateResult> {
        self.gates.iter().filter(|g| !g.passed)
    }
}

/// The gates for `target` in `project`: the target's `[gates]` overridden key by key by
/// `[package.metadata.edgeai.gates]`.
pub fn resolve_gates(target: &Target, project: Option<&Project>) -> Result<Gates> {
    let base = target.gates.clone().unwrap_or_default();
    base.check(&format!("target {}", target.name))?;
    let over = match project.and_then(|p| p.metadata.gates.as_ref().map(|g| (p, g))) {
        Some((p, table)) => Gates::from_table(
            table,
            &format!(
                "{} [package.metadata.edgeai.gates]",
                p.manifest_path.display()
            ),
        )?,
        None => Gates::default(),
    };
    Ok(base.overridden_by(&over))
}

/// The error `main` returns when gates failed: every failed gate with measured and threshold.
pub fn gate_error(failed: &[&GateResult], what: &str) -> Option<Error> {
    if failed.is_empty() {
        return None;
    }
    let lines: Vec<String> = failed.iter().map(|g| g.describe()).collect();
    Some(Error::GateFailed {
        message: format!("{what}: {} gate(s) failed: {}", failed.len(), lines.join("; ")),
        help: "see the report above; relax the gate in [gates] / [package.metadata.edgeai.gates] only if the measured cost is acceptable, or try a larger quantization type (cargo edgeai sweep)".into(),
    })
}

fn model_info(path: &Path) -> Result<ModelInfo> {
    let file = GgufFile::open(path)?;
    let header = file.header();
    let architecture = header.architecture().unwrap_or("").to_string();
    let vocab_size = header
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len() as u64);
    let file_type = header
        .get_u64("general.file_type")
        .and_then(|id| {
            crate::llama_quant::FileType::ALL
                .into_iter()
                .find(|t| u64::from(t.id()) == id)
        })
        .map(|t| t.name().to_string());
    Ok(ModelInfo {
        path: path.to_path_buf(),
        label: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size_bytes: header.file_size,
        architecture,
        vocab_size,
        file_type,
    })
}

/// The evaluation text as one file: the given one, or the default parts joined into `scratch`.
fn evaluation_text(text: Option<&Path>, scratch: &Path) -> Result<(PathBuf, TextInfo)> {
    let (path, source) = match text {
        Some(p) => (p.to_path_buf(), p.display().to_string()),
        None => {
            let mut joined = Vec::new();
            for part in DEFAULT_TEXT_PARTS {
                let bytes = std::fs::read(part).map_err(|e| Error::Io {
                    path: part.into(),
                    source: e,
                    help: "the default evaluation text is Debian's license texts (package base-files); pass --text FILE".into(),
                })?;
                joined.extend_from_slice(&bytes);
            }
            let path = scratch.join("evaluation.txt");
            std::fs::write(&path, &joined).map_err(|e| Error::io(&path, e))?;
            (path, DEFAULT_TEXT_PARTS.join(" + "))
        }
    };
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    let sha256 = cache::sha256_file(&path)?;
    Ok((
        path,
        TextInfo {
            source,
            bytes,
            sha256,
        },
    ))
}

/// Candidate and reference must be the same model: same architecture and vocabulary, or the
/// KL divergence compares unrelated distributions.
fn check_pair(candidate: &ModelInfo, reference: &ModelInfo) -> Result<()> {
    if candidate.architecture != reference.architecture {
        return Err(Error::Usage {
            message: format!(
                "{} is a `{}` model but the reference {} is `{}`",
                candidate.path.display(),
                candidate.architecture,
                reference.path.display(),
                reference.architecture
            ),
            help: "pass the unquantized model the candidate was made from as --reference".into(),
        });
    }
    if candidate.vocab_size != reference.vocab_size {
        return Err(Error::Usage {
            message: format!(
                "{} has a vocabulary of {} tokens but the reference {} has {}",
                candidate.path.display(),
                candidate.vocab_size,
                reference.path.display(),
                reference.vocab_size
            ),
            help: "KL divergence needs both models over the same vocabulary; pass the unquantized model the candidate was made from as --reference".into(),
        });
    }
    Ok(())
}

/// Memory footprint and decode speed on the target, from plan.rs's arithmetic: the file's
/// tensor bytes + the KV cache at the target's context (llama.cpp's default F16 cache) + the
/// llama.cpp rule's runtime overhead; decode reads the weights and the KV cache once per token,
/// so tokens/s <= bandwidth / those bytes.
fn target_figures(target: &Target, candidate: &Path) -> Result<TargetFigures> {
    let facts = crate::facts::read_model_facts(candidate)?;
    let file = GgufFile::open(candidate)?;
    let weights_bytes = file
        .header()
        .file_size
        .saturating_sub(file.header().data_offset);
    estimated_target_figures(
        target,
        &facts,
        weights_bytes,
        Framework::LlamaCpp,
        "weights",
    )
}

/// The footprint arithmetic shared by every runtime's validation (plan.rs's formula): weights +
/// KV cache at the target's context (the framework's first matrix rule's element size) + that
/// rule's overhead; decode reads weights and KV cache once per token. `weights_what` names the
/// weights in the decode basis ("weights", "MLX weights").
pub(crate) fn estimated_target_figures(
    target: &Target,
    facts: &crate::facts::ModelFacts,
    weights_bytes: u64,
    framework: Framework,
    weights_what: &str,
) -> Result<TargetFigures> {
    let matrix = Matrix::builtin()?;
    let rule = matrix.rules.iter().find(|r| r.framework == framework);
    let (kv_bytes, overhead_mb) = rule.map_or((2, 256), |r| (r.kv_bytes, r.overhead_mb));
    let context = target.defaults.context_length;
    let kv_cache_bytes = crate::plan::kv_cache_bytes(facts, kv_bytes, context);
    let overhead_bytes = overhead_mb * (1 << 20);
    let total_bytes = weights_bytes + kv_cache_bytes + overhead_bytes;
    let per_token = weights_bytes + kv_cache_bytes;
    let decode = (per_token > 0)
        .then(|| (target.memory.bandwidth_gbps * 1e9 / per_token as f64 * 10.0).round() / 10.0);
    Ok(TargetFigures {
        label: format!("estimated for {} (not measured on the device)", target.name),
        target: target.name.clone(),
        context_length: context,
        weights_bytes,
        kv_cache_bytes,
        overhead_bytes,
        total_bytes,
        budget_bytes: target.budget_bytes(),
        fits: total_bytes <= target.budget_bytes(),
        decode_tokens_per_s: decode,
        decode_basis: format!(
            "{} GB/s memory bandwidth / {per_token} bytes read per token ({weights_what} + KV cache at {context} tokens)",
            target.memory.bandwidth_gbps
        ),
    })
}

/// Judge every configured gate, plus the target's memory budget (always checked).
pub fn evaluate_gates(
    gates: &Gates,
    quality: &Quality,
    host: &HostFigures,
    side: &TargetFigures,
) -> Vec<GateResult> {
    const MIB: f64 = (1u64 << 20) as f64;
    let mut out = Vec::new();
    if let Some(t) = gates.max_kld {
        out.push(GateResult::judge(
            "max_kld",
            Some(quality.kld_mean),
            t,
            Direction::AtMost,
            "nats",
            "mean KL divergence, llama-perplexity --kl-divergence",
        ));
    }
    if let Some(t) = gates.max_ppl_ratio {
        out.push(GateResult::judge(
            "max_ppl_ratio",
            Some(quality.ppl_ratio),
            t,
            Direction::AtMost,
            "",
            "PPL(candidate) / PPL(reference)",
        ));
    }
    if let Some(t) = gates.min_top1 {
        out.push(GateResult::judge(
            "min_top1",
            Some(quality.top1_agreement),
            t,
            Direction::AtLeast,
            "",
            "fraction of tokens with the reference's top token",
        ));
    }
    if let Some(t) = gates.min_decode_tokens_per_s {
        out.push(GateResult::judge(
            "min_decode_tokens_per_s",
            host.decode_tokens_per_s,
            t,
            Direction::AtLeast,
            "tokens/s",
            if host.decode_tokens_per_s.is_some() {
                "llama-bench decode on this host"
            } else {
                "benchmark skipped (--no-bench)"
            },
        ));
    }
    if let Some(t) = gates.max_memory_mb {
        out.push(GateResult::judge(
            "max_memory_mb",
            host.peak_rss_bytes.map(|b| b as f64 / MIB),
            t,
            Direction::AtMost,
            "MiB",
            &host.peak_rss_basis,
        ));
    }
    out.push(GateResult::judge(
        "target_memory_budget",
        Some(side.total_bytes as f64 / MIB),
        side.budget_bytes as f64 / MIB,
        Direction::AtMost,
        "MiB",
        &format!(
            "estimated footprint on {} (weights + KV cache at {} tokens + runtime overhead) against its budget_mb",
            side.target, side.context_length
        ),
    ));
    out
}

/// Validate `opts.candidate` against `opts.reference` on `target`.
pub fn do_validate(target: &Target, opts: &ValidateOptions) -> Result<ValidationReport> {
    let candidate = model_info(&opts.candidate)?;
    let reference = model_info(&opts.reference)?;
    check_pair(&candidate, &reference)?;
    if opts.ctx < 8 {
        return Err(Error::Usage {
            message: format!("--ctx {} is too small", opts.ctx),
            help: "use a context of at least 8 tokens; 256 or 512 are usual".into(),
        });
    }
    let bin_dir = llama::find_bin_dir()?;
    let version = llama::tool_version(&bin_dir)?;
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (text_path, text) = evaluation_text(opts.text.as_deref(), scratch.path())?;

    // Reference logits: from the cache, or one reference run that fills it.
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(cache::default_dir);
    std::fs::create_dir_all(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let inputs = cache::KeyInputs {
        reference_sha256: cache::sha256_file(&opts.reference)?,
        text_sha256: text.sha256.clone(),
        ctx: opts.ctx,
        chunks: opts.chunks,
        tool_version: version.clone(),
    };
    let slot = cache::Slot::new(&cache_dir, &inputs);
    let (entry, hit) = match slot.load() {
        Some(entry) => (entry, true),
        None => {
            let staging = slot.staging();
            let stats = llama::perplexity(&llama::PerplexityRun {
                bin_dir: &bin_dir,
                model: &opts.reference,
                text: &text_path,
                ctx: opts.ctx,
                chunks: opts.chunks,
                threads,
                logits: &staging,
                compare: false,
            });
            let stats = match stats {
                Ok(s) => s,
                Err(e) => {
                    // A failed run must not leave a partial logits file behind.
                    let _ = std::fs::remove_file(&staging);
                    return Err(e);
                }
            };
            let entry = cache::Entry {
                inputs: inputs.clone(),
                ppl: stats.ppl,
                ppl_error: stats.ppl_error,
                chunks: stats.chunks,
                peak_rss_bytes: stats.peak_rss_bytes,
            };
            slot.commit(&staging, &entry)?;
            (entry, false)
        }
    };

    let stats = llama::perplexity(&llama::PerplexityRun {
        bin_dir: &bin_dir,
        model: &opts.candidate,
        text: &text_path,
        ctx: opts.ctx,
        chunks: opts.chunks,
        threads,
        logits: &slot.logits,
        compare: true,
    })?;
    let missing =
        |what: &str| Error::Internal(format!("llama-perplexity printed no {what} statistic"));
    let ppl_reference = stats.ppl_base.unwrap_or(entry.ppl);
    let quality = Quality {
        ppl: stats.ppl,
        ppl_error: stats.ppl_error,
        ppl_reference,
        ppl_ratio: stats.ppl / ppl_reference,
        kld_mean: stats.kld_mean.ok_or_else(|| missing("mean KLD"))?,
        kld_mean_error: stats.kld_mean_error.unwrap_or(f64::NAN),
        kld_median: stats.kld_median.ok_or_else(|| missing("median KLD"))?,
        kld_p99: stats.kld_p99.ok_or_else(|| missing("99% KLD"))?,
        kld_max: stats.kld_max.ok_or_else(|| missing("maximum KLD"))?,
        top1_agreement: stats.top1.ok_or_else(|| missing("same top p"))?,
        top1_agreement_error: stats.top1_error.unwrap_or(f64::NAN),
        chunks: stats.chunks,
        // llama-perplexity scores the second half of each chunk (the first is warm-up context).
        tokens_scored: stats.chunks * (opts.ctx - 1 - opts.ctx / 2),
    };

    let bench = if opts.bench {
        Some(llama::bench(&llama::BenchRun {
            bin_dir: &bin_dir,
            model: &opts.candidate,
            prompt_tokens: opts.bench_prompt_tokens,
            gen_tokens: opts.bench_gen_tokens,
            repetitions: opts.bench_repetitions,
            threads,
        })?)
    } else {
        None
    };
    let host = HostFigures {
        label: "measured on this host".into(),
        threads,
        prompt_tokens_per_s: bench.as_ref().map(|b| b.prompt_tokens_per_s),
        decode_tokens_per_s: bench.as_ref().map(|b| b.decode_tokens_per_s),
        // A prompt of the benchmarked length at the measured prompt rate, plus one decode step.
        time_to_first_token_ms: bench.as_ref().map(|b| {
            1000.0 * (b.prompt_tokens as f64 / b.prompt_tokens_per_s + 1.0 / b.decode_tokens_per_s)
        }),
        speed_basis: match &bench {
            Some(b) => format!(
                "llama-bench -p {} -n {} -r {} -t {threads}; time to first token = {} prompt tokens at the measured prompt rate + one decode step",
                b.prompt_tokens, b.gen_tokens, b.repetitions, b.prompt_tokens
            ),
            None => "not measured (--no-bench)".into(),
        },
        peak_rss_bytes: stats.peak_rss_bytes,
        peak_rss_basis: if stats.peak_rss_bytes.is_some() {
            "maximum resident set of the candidate's llama-perplexity run (/usr/bin/time %M)".into()
        } else {
            "not measured: /usr/bin/time is missing (Debian package `time`)".into()
        },
    };
    let target_side = target_figures(target, &opts.candidate)?;
    let gates = evaluate_gates(&opts.gates, &quality, &host, &target_side);
    let passed = gates.iter().all(|g| g.passed);
    Ok(ValidationReport {
        schema: SCHEMA_VERSION,
        target: target.name.clone(),
        candidate,
        reference,
        text,
        ctx: opts.ctx,
        chunks_requested: opts.chunks,
        quality,
        host,
        target_side,
        gates,
        passed,
        tool: ToolInfo { bin_dir, version },
        reference_cache: CacheInfo {
            key: slot.key.clone(),
            logits: slot.logits.clone(),
            hit,
        },
        greedy: None,
    })
}
