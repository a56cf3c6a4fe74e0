//! `cargo edgeai sweep`: quantize one model to several types, validate each against the
//! unquantized model, and recommend the smallest type that passes every gate: the measured
//! answer to "which quant for this device".

use std::path::PathBuf;

use serde::Serialize;

use super::{do_validate, ValidateOptions, ValidationReport};
use crate::llama_quant::{do_quantize, QuantizeOptions};
use crate::manifest::Target;
use crate::{Error, Result};

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
        reference,
        types: opts.types.clone(),
        results,
        recommended,
        reason,
    })
}
