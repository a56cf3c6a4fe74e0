//! The llama.cpp steps: convert (Hugging Face → unquantized GGUF, the validation reference),
//! quantize (llama-quantize-exact, to the plan's type), validate (llama.cpp's own tools against
//! the reference, gates from the target and the project).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Ctx, ModelArtifacts, ResolvedModel};
use crate::cache::StepKey;
use crate::facts::{ModelFacts, ModelFormat};
use crate::manifest::Target;
use crate::plan::Plan;
use crate::validate::gates::GateResult;
use crate::{Error, Result};

/// Chunks of the evaluation text llama-perplexity scores: enough for stable KLD/top-1 figures
/// (16 × half a context of tokens), bounded so that a build of a real model stays minutes.
pub const VALIDATION_CHUNKS: u32 = 16;

/// Context of the evaluation chunks (capped at the model's trained maximum).
pub const VALIDATION_CTX: u64 = 512;

fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F32" | "F16" | "BF16")
}

pub(crate) fn run(
    ctx: &mut Ctx<'_>,
    target: &Target,
    plan: &Plan,
    facts: &ModelFacts,
    model: &ResolvedModel,
) -> Result<ModelArtifacts> {
    let self_id = ctx.self_id.clone();
    let threads = ctx.threads();
    // The unquantized GGUF: the quantizer's input and the validation reference.
    let (reference, reference_digest): (PathBuf, String) = match facts.format {
        ModelFormat::HfDirectory => {
            let outtype = if facts.dtype == "BF16" { "bf16" } else { "f16" };
            let file = format!("model-{outtype}.gguf");
            let mut key = StepKey::new("convert");
            key.inputs.insert("model".into(), model.digest.clone());
            key.options = json!({ "format": "gguf", "outtype": outtype });
            key.tools.insert("cargo-edgeai".into(), self_id.clone());
            let input = model.path.clone();
            let out_name = file.clone();
            let entry = ctx.step(
                &key,
                |e| {
                    format!(
                        "{} ({} bytes)",
                        out_name,
                        e.meta.files.first().map_or(0, |f| f.size)
                    )
                },
                |out| {
                    let report = crate::convert::do_convert(&crate::convert::ConvertOptions {
                        input,
                        output: out.join(&file),
                        format: "gguf".into(),
                        outtype: outtype.into(),
                        threads: Some(threads),
                    })?;
                    Ok(json!({ "tensors": report.tensors, "outtype": report.outtype }))
                },
            )?;
            let name = format!("model-{outtype}.gguf");
            let digest = entry
                .digest_of(&name)
                .ok_or_else(|| Error::Internal(format!("convert entry lacks {name}")))?
                .to_string();
            (entry.file(&name), digest)
        }
        ModelFormat::Gguf => (model.path.clone(), model.digest.clone()),
        other => {
            return Err(Error::Usage {
                message: format!(
                    "{}: a {other:?} model cannot go to llama.cpp",
                    model.path.display()
                ),
                help: "use a Hugging Face directory or a GGUF file as `model`".into(),
            })
        }
    };

    // Quantize to the plan's type (a GGUF already of that type is used as it is).
    let quant = plan.quantization.clone();
    let (candidate, candidate_digest) =
        if facts.format == ModelFormat::Gguf && facts.dtype.eq_ignore_ascii_case(&quant) {
            (reference.clone(), reference_digest.clone())
        } else {
            let file = format!("model-{}.gguf", quant.to_ascii_lowercase());
            let requantize = facts.format == ModelFormat::Gguf && !is_float(&facts.dtype);
            let mut key = StepKey::new("quantize");
            key.inputs
                .insert("reference".into(), reference_digest.clone());
            key.options = json!({ "type": quant, "allow_requantize": requantize });
            key.tools.insert("cargo-edgeai".into(), self_id.clone());
            let input = reference.clone();
            let name = file.clone();
            let entry = ctx.step(
                &key,
                |e| {
                    format!(
                        "{name} ({} bytes)",
                        e.meta.files.first().map_or(0, |f| f.size)
                    )
                },
                |out| {
                    let report =
                        crate::llama_quant::do_quantize(&crate::llama_quant::QuantizeOptions {
                            input,
                            output: out.join(&file),
                            file_type: quant.clone(),
                            threads: Some(threads),
                            allow_requantize: requantize,
                            ..Default::default()
                        })?;
                    Ok(json!({ "file_type": report.file_type, "tensors": report.tensors }))
                },
            )?;
            let name = format!("model-{}.gguf", plan.quantization.to_ascii_lowercase());
            let digest = entry
                .digest_of(&name)
                .ok_or_else(|| Error::Internal(format!("quantize entry lacks {name}")))?
                .to_string();
            (entry.file(&name), digest)
        };

    let mut toolchains = BTreeMap::new();
    toolchains.insert(
        "llama.cpp (quantizer)".to_string(),
        plan.tools
            .get("llama.cpp")
            .cloned()
            .unwrap_or_else(|| "unpinned".into()),
    );
    let (validation, status) = if ctx.opts.skip_validation {
        ctx.validation_skipped()
    } else {
        let summary = validate(
            ctx,
            target,
            facts,
            &candidate,
            &candidate_digest,
            &reference,
            &reference_digest,
        )?;
        if let Some(v) = summary.get("tool").and_then(|t| t.as_str()) {
            toolchains.insert("llama.cpp (validation)".to_string(), v.to_string());
        }
        (Some(summary), "passed".to_string())
    };
    let bundle_name = format!(
        "model/{}",
        candidate
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.gguf".into())
    );
    Ok(ModelArtifacts {
        files: vec![(bundle_name, candidate)],
        validation,
        validation_status: status,
        toolchains,
    })
}

/// Gates whose measured value is a deterministic function of the files (the rest are host
/// measurements: speed and memory vary from run to run and stay out of the bundle).
fn deterministic_gate(name: &str) -> bool {
    matches!(
        name,
        "max_kld" | "max_ppl_ratio" | "min_top1" | "target_memory_budget"
    )
}

pub(crate) fn gate_json(g: &GateResult) -> Value {
    let mut v = json!({
        "name": g.name,
        "threshold": g.threshold,
        "unit": g.unit,
        "passed": g.passed,
    });
    if deterministic_gate(&g.name) {
        v["measured"] = json!(g.measured);
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn validate(
    ctx: &mut Ctx<'_>,
    target: &Target,
    facts: &ModelFacts,
    candidate: &Path,
    candidate_digest: &str,
    reference: &Path,
    reference_digest: &str,
) -> Result<Value> {
    let bin_dir = crate::validate::llama::find_bin_dir().map_err(|e| match e {
        Error::Usage { message, help } => Error::Usage {
            message: format!("validation needs llama.cpp's tools: {message}"),
            help: format!("{help}; or pass --skip-validation to build an unvalidated bundle (recorded as skipped in its manifest)"),
        },
        other => other,
    })?;
    let version = super::inputs::llama_version(ctx.cache, &bin_dir)?;
    let gates = crate::validate::resolve_gates(target, Some(ctx.project))?;
    let ctx_len = facts
        .max_context
        .filter(|&m| m > 0)
        .map_or(VALIDATION_CTX, |m| m.min(VALIDATION_CTX))
        .max(8);
    let mut text_digests = Vec::new();
    for part in crate::validate::DEFAULT_TEXT_PARTS {
        text_digests.push(ctx.cache.file_digest(Path::new(part)).map_err(|e| match e {
            Error::Io { path, source, .. } => Error::Io {
                path,
                source,
                help: "the evaluation text is Debian's license texts (package base-files); install it, or pass --skip-validation".into(),
            },
            other => other,
        })?);
    }
    let bench = gates.min_decode_tokens_per_s.is_some();
    let threads = ctx.threads();
    let mut key = StepKey::new("validate");
    key.inputs
        .insert("candidate".into(), candidate_digest.into());
    key.inputs
        .insert("reference".into(), reference_digest.into());
    key.inputs.insert("text".into(), text_digests.join("+"));
    key.options = json!({
        "target": target.name,
        "budget_mb": target.memory.budget_mb,
        "context_length": target.defaults.context_length,
        "bandwidth_gbps": target.memory.bandwidth_gbps,
        "gates": gates,
        "ctx": ctx_len,
        "chunks": VALIDATION_CHUNKS,
        "bench": bench,
        "threads": threads,
    });
    key.tools.insert("llama.cpp".into(), version.clone());
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let report_path = ctx.edgeai_dir.join(&target.name).join("validation.json");
    let candidate = candidate.to_path_buf();
    let reference = reference.to_path_buf();
    let target_c = target.clone();
    let entry = ctx.step(
        &key,
        |e| {
            let q = &e.meta.result["quality"];
            format!(
                "gates passed: KLD {:.5}, top-1 {:.3}, PPL ratio {:.4}",
                q["kld_mean"].as_f64().unwrap_or(f64::NAN),
                q["top1_agreement"].as_f64().unwrap_or(f64::NAN),
                q["ppl_ratio"].as_f64().unwrap_or(f64::NAN)
            )
        },
        |out| {
            let mut opts = crate::validate::ValidateOptions::new(candidate.clone(), reference);
            opts.ctx = ctx_len;
            opts.chunks = Some(VALIDATION_CHUNKS);
            opts.threads = Some(threads);
            opts.bench = bench;
            opts.gates = gates;
            // llama.cpp's asynchronous logger can lose the final statistics lines when the
            // machine is loaded (seen with two builds at once on 2 cores); such a run measured
            // nothing, so it is run again, at most twice.
            let mut attempt = 0;
            let r = loop {
                match crate::validate::do_validate(&target_c, &opts) {
                    Err(Error::Internal(m))
                        if attempt < 2 && m.contains("could not find the statistics") =>
                    {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                    other => break other?,
                }
            };
            let full = crate::report::to_json(&r);
            std::fs::write(out.join("report.json"), &full)
                .map_err(|e| Error::io(out.join("report.json"), e))?;
            // Also where the user looks, pass or fail.
            crate::cache::write_atomic(&report_path, full.as_bytes(), false)?;
            let failed: Vec<&GateResult> = r.failures().collect();
            if let Some(err) = crate::validate::gate_error(
                &failed,
                &format!(
                    "{} on {} (report: {})",
                    candidate
                        .file_name()
                        .map_or("model".into(), |n| n.to_string_lossy()),
                    target_c.name,
                    report_path.display()
                ),
            ) {
                return Err(err);
            }
            Ok(json!({
                "status": "passed",
                "tool": format!("llama.cpp {version}"),
                "candidate": r.candidate.label,
                "candidate_file_type": r.candidate.file_type,
                "reference": r.reference.label,
                "reference_file_type": r.reference.file_type,
                "text_sha256": r.text.sha256,
                "ctx": r.ctx,
                "chunks": r.quality.chunks,
                "quality": {
                    "ppl": r.quality.ppl,
                    "ppl_reference": r.quality.ppl_reference,
                    "ppl_ratio": r.quality.ppl_ratio,
                    "kld_mean": r.quality.kld_mean,
                    "top1_agreement": r.quality.top1_agreement,
                },
                "gates": r.gates.iter().map(gate_json).collect::<Vec<_>>(),
            }))
        },
    )?;
    Ok(entry.meta.result.clone())
}
