//! `cargo edgeai sweep`: quantize one model to several types, validate each against the
//! unquantized model, and recommend the smallest type that passes every gate: the measured
//! answer to "which quant for this device".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{do_validate, ValidateOptions, ValidationReport};
use crate::llama_quant::{do_quantize, QuantizeOptions};
use crate::manifest::Target;
use crate::plan::MeasuredChoice;
use crate::{Error, Result};

/// Schema of `sweep.json`.
pub const SWEEP_RECORD_SCHEMA: u32 = 1;

/// The file name of a persisted sweep result.
pub const SWEEP_FILE: &str = "sweep.json";

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The unquantized model (F32/F16/BF16 GGUF) the types are made from.
    pub model: PathBuf,
    /// The reference to validate against; `None`: `model` itself.
    pub reference: Option<PathBuf>,
    /// File types (`Q4_K_M`, ...).
    pub types: Vec<String>,
    /// Where the quantized files go.
    pub out_dir: PathBuf,
    /// Validation settings; `candidate` and `reference` are filled per type.
    pub validate: ValidateOptions,
}

/// The sweep's results and recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub schema: u32,
    pub target: String,
    pub model: PathBuf,
    /// sha256 of the model's content (see [`model_sha256`]).
    pub model_sha256: String,
    pub reference: PathBuf,
    /// The types, in the order given; `results[i]` is `types[i]`.
    pub types: Vec<String>,
    pub results: Vec<ValidationReport>,
    /// The smallest passing type, if any.
    pub recommended: Option<String>,
    pub reason: String,
}

/// Quantize to each type, validate all, recommend the smallest file that passes.
pub fn do_sweep(target: &Target, opts: &SweepOptions) -> Result<SweepReport> {
    if opts.types.is_empty() {
        return Err(Error::Usage {
            message: "--types is empty".into(),
            help: "list the types to try, e.g. --types Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0".into(),
        });
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    let model_sha256 = model_sha256(&opts.model)?;
    let reference = opts.reference.clone().unwrap_or_else(|| opts.model.clone());
    let stem = opts
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut results = Vec::new();
    for ty in &opts.types {
        let output = opts.out_dir.join(format!("{stem}-{ty}.gguf"));
        do_quantize(&QuantizeOptions {
            input: opts.model.clone(),
            output: output.clone(),
            file_type: ty.clone(),
            imatrix: None,
            threads: opts.validate.threads,
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            tensor_types: Vec::new(),
            allow_requantize: false,
            leave_output_tensor: false,
            keep_split: false,
            progress: false,
        })?;
        let mut v = opts.validate.clone();
        v.candidate = output;
        v.reference = reference.clone();
        results.push(do_validate(target, &v)?);
    }
    let best = opts
        .types
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.passed)
        .min_by_key(|(_, r)| r.candidate.size_bytes);
    let (recommended, reason) = match best {
        Some((ty, r)) => (
            Some(ty.clone()),
            format!(
                "the smallest of the {} passing type(s): {:.1} MiB, mean KLD {:.5}, top-1 {:.2} %",
                results.iter().filter(|r| r.passed).count(),
                r.candidate.size_bytes as f64 / (1u64 << 20) as f64,
                r.quality.kld_mean,
                r.quality.top1_agreement * 100.0
            ),
        ),
        None => (
            None,
            "every type failed at least one gate; see the table".to_string(),
        ),
    };
    Ok(SweepReport {
        schema: super::SCHEMA_VERSION,
        target: target.name.clone(),
        model: opts.model.clone(),
        model_sha256,
        reference,
        types: opts.types.clone(),
        results,
        recommended,
        reason,
    })
}

/// sha256 identifying a model's content: a file's own sha256, or for a directory (a Hugging
/// Face model) the sha256 of the lines `<file name>\0<sha256 of the file>\n` of its regular
/// files in name order. `plan` compares it with a sweep result's to know the result applies.
pub fn model_sha256(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return super::cache::sha256_file(path);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        if p.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), p));
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for (name, p) in files {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update(super::cache::sha256_file(&p)?.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// One measured type of a persisted sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredType {
    /// The file type (`Q4_K_M`).
    #[serde(rename = "type")]
    pub file_type: String,
    pub passed: bool,
    pub size_bytes: u64,
    pub ppl: f64,
    pub ppl_ratio: f64,
    pub kld_mean: f64,
    pub kld_p99: f64,
    pub top1_agreement: f64,
    pub decode_tokens_per_s: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Estimated footprint on the target (weights + KV cache + overhead).
    pub target_total_bytes: u64,
    /// The gates it failed, as `name: measured ... threshold ...`.
    pub failed_gates: Vec<String>,
}

/// What `sweep` persists in `target/edgeai/<target>/sweep.json` and `plan` reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub schema: u32,
    pub target: String,
    /// The model as given to `sweep`.
    pub model: PathBuf,
    /// [`model_sha256`] of it.
    pub model_sha256: String,
    pub ctx: u64,
    pub chunks: Option<u32>,
    /// The types measured, in the order given.
    pub types: Vec<MeasuredType>,
    /// The smallest type that passed every gate, if any.
    pub recommended: Option<String>,
    pub reason: String,
}

impl SweepReport {
    /// The persisted form of this sweep.
    pub fn record(&self) -> SweepRecord {
        SweepRecord {
            schema: SWEEP_RECORD_SCHEMA,
            target: self.target.clone(),
            model: self.model.clone(),
            model_sha256: self.model_sha256.clone(),
            ctx: self.results.first().map_or(0, |r| r.ctx),
            chunks: self.results.first().and_then(|r| r.chunks_requested),
            types: self
                .types
                .iter()
                .zip(&self.results)
                .map(|(ty, r)| MeasuredType {
                    file_type: ty.clone(),
                    passed: r.passed,
                    size_bytes: r.candidate.size_bytes,
                    ppl: r.quality.ppl,
                    ppl_ratio: r.quality.ppl_ratio,
                    kld_mean: r.quality.kld_mean,
                    kld_p99: r.quality.kld_p99,
                    top1_agreement: r.quality.top1_agreement,
                    decode_tokens_per_s: r.host.decode_tokens_per_s,
                    peak_rss_bytes: r.host.peak_rss_bytes,
                    target_total_bytes: r.target_side.total_bytes,
                    failed_gates: r.failures().map(|g| g.describe()).collect(),
                })
                .collect(),
            recommended: self.recommended.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Where a sweep result for `target` lives by default: `<dir>/target/edgeai/<target>/sweep.json`,
/// `dir` being the project's directory (or the current one).
pub fn default_record_path(dir: &Path, target: &str) -> PathBuf {
    dir.join("target")
        .join("edgeai")
        .join(target)
        .join(SWEEP_FILE)
}

/// Write `record` as pretty JSON to `path` (creating its directory).
pub fn write_record(path: &Path, record: &SweepRecord) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut text = serde_json::to_string_pretty(record)
        .map_err(|e| Error::Internal(format!("serialize sweep result: {e}")))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The measured choice a sweep result at `path` gives `plan` for `target` and the model at
/// `model`: `None` when there is no result, it is for another target or other model content,
/// or no type passed. An unreadable or malformed result is an error (it names the file).
pub fn load_measured(path: &Path, target: &str, model: &Path) -> Result<Option<MeasuredChoice>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let record: SweepRecord = serde_json::from_str(&text).map_err(|e| Error::Usage {
        message: format!("{}: not a sweep result: {e}", path.display()),
        help: "delete it, or run `cargo edgeai sweep` again to rewrite it".into(),
    })?;
    let Some(quantization) = record.recommended.clone() else {
        return Ok(None);
    };
    if record.target != target || record.model_sha256 != model_sha256(model)? {
        return Ok(None);
    }
    Ok(Some(MeasuredChoice {
        quantization,
        source: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ModelClass, ModelFacts, ModelFormat, TensorFact};
    use crate::manifest::TargetSet;
    use crate::matrix::Matrix;
    use crate::plan::{make_plan, PlanOptions};

    /// A small llama-shaped decoder in llama.cpp's tensor naming, F16.
    fn facts() -> ModelFacts {
        let (layers, hidden, ffn, vocab) = (4u64, 256u64, 512u64, 1024u64);
        let t = |name: String, shape: Vec<u64>| TensorFact {
            name,
            shape,
            dtype: "F16".into(),
        };
        let mut tensors = vec![
            t("token_embd.weight".into(), vec![vocab, hidden]),
            t("output_norm.weight".into(), vec![hidden]),
        ];
        for i in 0..layers {
            for (n, shape) in [
                ("attn_norm", vec![hidden]),
                ("attn_q", vec![hidden, hidden]),
                ("attn_k", vec![hidden / 2, hidden]),
                ("attn_v", vec![hidden / 2, hidden]),
                ("attn_output", vec![hidden, hidden]),
                ("ffn_norm", vec![hidden]),
                ("ffn_gate", vec![ffn, hidden]),
                ("ffn_up", vec![ffn, hidden]),
                ("ffn_down", vec![hidden, ffn]),
            ] {
                tensors.push(t(format!("blk.{i}.{n}.weight"), shape));
            }
        }
        ModelFacts {
            path: "model.gguf".into(),
            format: ModelFormat::Gguf,
            architecture: "llama".into(),
            class: ModelClass::DecoderLlm,
            parameters: tensors.iter().map(TensorFact::elements).sum(),
            dtype: "F16".into(),
            layers: Some(layers),
            hidden_size: Some(hidden),
            heads: Some(4),
            kv_heads: Some(2),
            head_dim: Some(64),
            vocab_size: Some(vocab),
            max_context: Some(8192),
            tied_embeddings: true,
            tensors,
        }
    }

    fn plan_with(target: &str, measured: Option<&str>) -> crate::plan::Plan {
        let targets = TargetSet::builtin().unwrap();
        let options = PlanOptions {
            measured_quantization: measured.map(|q| MeasuredChoice {
                quantization: q.into(),
                source: "sweep.json".into(),
            }),
            ..PlanOptions::default()
        };
        make_plan(
            targets.get(target).unwrap(),
            &facts(),
            "model.gguf",
            &Matrix::builtin().unwrap(),
            &options,
        )
        .unwrap()
    }

    #[test]
    fn plan_uses_the_measured_type_with_its_reason_and_estimate() {
        let prior = plan_with("host-x86_64", None);
        assert_eq!(prior.quantization, "Q4_K_M");
        let plan = plan_with("host-x86_64", Some("Q5_K_M"));
        assert_eq!(plan.quantization, "Q5_K_M");
        assert!(
            plan.reasons.contains(
                &"Q5_K_M measured by `cargo edgeai sweep` (sweep.json): the smallest type that passed the gates".to_string()
            ),
            "{:?}",
            plan.reasons
        );
        // The estimate is the measured type's, not the prior's.
        assert!(plan.estimate.weights_bytes > prior.estimate.weights_bytes);
        assert!(plan.estimate.tensor_types.contains_key("Q5_K"));
        assert!(plan.steps.iter().any(|s| s.detail.contains("to Q5_K_M")));
    }

    #[test]
    fn measured_type_is_ignored_by_other_frameworks_and_by_quant() {
        // apple-m2-16gb plans MLX: a llama.cpp measurement does not apply.
        let plan = plan_with("apple-m2-16gb", Some("Q8_0"));
        assert_eq!(plan.quantization, "affine-4bit-g64");
        assert!(!plan.reasons.iter().any(|r| r.contains("measured")));
        // --quant wins over the measurement.
        let targets = TargetSet::builtin().unwrap();
        let options = PlanOptions {
            quantization: Some("Q6_K".into()),
            measured_quantization: Some(MeasuredChoice {
                quantization: "Q8_0".into(),
                source: "sweep.json".into(),
            }),
            ..PlanOptions::default()
        };
        let plan = make_plan(
            targets.get("host-x86_64").unwrap(),
            &facts(),
            "model.gguf",
            &Matrix::builtin().unwrap(),
            &options,
        )
        .unwrap();
        assert_eq!(plan.quantization, "Q6_K");
    }

    #[test]
    fn record_round_trips_and_default_path() {
        let record = SweepRecord {
            schema: SWEEP_RECORD_SCHEMA,
            target: "host-x86_64".into(),
            model: "m.gguf".into(),
            model_sha256: "ab".into(),
            ctx: 256,
            chunks: Some(2),
            types: vec![MeasuredType {
                file_type: "Q8_0".into(),
                passed: true,
                size_bytes: 1,
                ppl: 2.0,
                ppl_ratio: 1.0,
                kld_mean: 0.001,
                kld_p99: 0.01,
                top1_agreement: 0.99,
                decode_tokens_per_s: None,
                peak_rss_bytes: Some(3),
                target_total_bytes: 4,
                failed_gates: vec![],
            }],
            recommended: Some("Q8_0".into()),
            reason: "r".into(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"type\":\"Q8_0\""), "{json}");
        let back: SweepRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        assert_eq!(
            default_record_path(Path::new("app"), "pi"),
            Path::new("app/target/edgeai/pi/sweep.json")
        );
    }
}
