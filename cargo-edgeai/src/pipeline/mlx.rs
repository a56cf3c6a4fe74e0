//! The MLX steps: convert (native, mlx-exact quantization to the plan's scheme) and validate
//! (mlx-lm in the managed `mlx` toolchain, against the unquantized model).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::{Ctx, ModelArtifacts, ResolvedModel};
use crate::cache::StepKey;
use crate::facts::{ModelFacts, ModelFormat};
use crate::manifest::Target;
use crate::plan::Plan;
use crate::quant::{Framework, Scheme};
use crate::validate::gates::GateResult;
use crate::{Error, Result};

/// The conversion options for the plan's MLX scheme.
fn convert_options(plan: &Plan, threads: usize) -> Result<crate::mlx::MlxConvertOptions> {
    let mut o = crate::mlx::MlxConvertOptions {
        threads: Some(threads),
        ..Default::default()
    };
    match Scheme::parse(Framework::Mlx, &plan.quantization) {
        Some(Scheme::MlxAffine { bits, group }) => {
            o.bits = bits;
            o.group_size = group as usize;
            o.mode = "affine".into();
        }
        Some(Scheme::MlxMxfp4) => {
            o.bits = 4;
            o.group_size = 32;
            o.mode = "mxfp4".into();
        }
        Some(Scheme::MlxMixed { low, high }) => {
            o.recipe = Some(format!("mixed_{low}_{high}"));
        }
        _ => {
            return Err(Error::Usage {
                message: format!("`{}` is not an MLX quantization", plan.quantization),
                help: format!("set `quantization` in [package.metadata.edgeai.target.{}] to an MLX scheme such as affine-8bit-g64, affine-4bit-g64, mxfp4 or mixed_3_6", plan.target),
            })
        }
    }
    Ok(o)
}

pub(crate) fn run(
    ctx: &mut Ctx<'_>,
    target: &Target,
    plan: &Plan,
    facts: &ModelFacts,
    model: &ResolvedModel,
) -> Result<ModelArtifacts> {
    if !matches!(facts.format, ModelFormat::HfDirectory | ModelFormat::Gguf) {
        return Err(Error::Usage {
            message: format!(
                "{}: MLX converts Hugging Face directories and GGUF files",
                model.path.display()
            ),
            help: "use a Hugging Face directory or a GGUF file as `model`".into(),
        });
    }
    let threads = ctx.threads();
    let copts = convert_options(plan, threads)?;
    let mut key = StepKey::new("convert-mlx");
    key.inputs.insert("model".into(), model.digest.clone());
    key.options = json!({
        "quantization": plan.quantization,
        "bits": copts.bits,
        "group_size": copts.group_size,
        "mode": copts.mode,
        "recipe": copts.recipe,
    });
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let input = model.path.clone();
    let entry = ctx.step(
        &key,
        |e| format!("MLX model, {} files", e.meta.files.len()),
        |out| {
            let s = crate::mlx::convert_to_mlx(&input, &out.join("model"), &copts)?;
            Ok(json!({ "tensors": s.tensors, "quantization": s.quantization }))
        },
    )?;
    let candidate = entry.file("model");
    let candidate_digest = entry.outputs_digest();

    // The reference: the HF directory itself, or an unquantized MLX conversion of a GGUF.
    let (reference, reference_digest) = if facts.format == ModelFormat::HfDirectory {
        (model.path.clone(), model.digest.clone())
    } else {
        let mut key = StepKey::new("convert-mlx");
        key.inputs.insert("model".into(), model.digest.clone());
        key.options = json!({ "quantize": false });
        key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
        let input = model.path.clone();
        let e = ctx.step(
            &key,
            |_| "unquantized MLX reference".into(),
            |out| {
                let o = crate::mlx::MlxConvertOptions {
                    quantize: false,
                    threads: Some(threads),
                    ..Default::default()
                };
                crate::mlx::convert_to_mlx(&input, &out.join("model"), &o)?;
                Ok(json!({}))
            },
        )?;
        (e.file("model"), e.outputs_digest())
    };

    let mut toolchains = BTreeMap::new();
    toolchains.insert(
        "mlx (converter)".to_string(),
        plan.tools
            .get("mlx")
            .cloned()
            .unwrap_or_else(|| "unpinned".into()),
    );
    let (validation, status) = if ctx.opts.skip_validation {
        ctx.validation_skipped()
    } else {
        let tc = edgeai_toolchain::find(crate::validate::mlx::TOOLCHAIN).map_err(|e| {
            Error::Usage {
                message: format!("validation needs the mlx toolchain: {e}"),
                help: "run `cargo edgeai toolchain install mlx`, or pass --skip-validation to build an unvalidated bundle (recorded as skipped in its manifest)".into(),
            }
        })?;
        let versions = tc.versions();
        let gates = crate::validate::resolve_gates(target, Some(ctx.project))?;
        let mut key = StepKey::new("validate-mlx");
        key.inputs.insert("candidate".into(), candidate_digest);
        key.inputs.insert("reference".into(), reference_digest);
        key.options = json!({
            "target": target.name,
            "budget_mb": target.memory.budget_mb,
            "gates": gates,
            "ctx": super::llama::VALIDATION_CTX,
            "chunks": super::llama::VALIDATION_CHUNKS,
        });
        key.tools.insert(
            "mlx toolchain".into(),
            serde_json::to_string(&versions).unwrap_or_default(),
        );
        key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
        let report_path = ctx.edgeai_dir.join(&target.name).join("validation.json");
        let cand = candidate.clone();
        let target_c = target.clone();
        let e = ctx.step(
            &key,
            |_| "gates passed (mlx-lm)".into(),
            |out| {
                let mut o = crate::validate::mlx::MlxValidateOptions::new(target_c.clone());
                o.ctx = super::llama::VALIDATION_CTX;
                o.chunks = Some(super::llama::VALIDATION_CHUNKS);
                o.bench = gates.min_decode_tokens_per_s.is_some();
                o.gates = gates;
                let r = crate::validate::mlx::validate_mlx(&cand, &reference, &o)?;
                let full = crate::report::to_json(&r);
                std::fs::write(out.join("report.json"), &full)
                    .map_err(|e| Error::io(out.join("report.json"), e))?;
                crate::cache::write_atomic(&report_path, full.as_bytes(), false)?;
                let failed: Vec<&GateResult> = r.failures().collect();
                if let Some(err) = crate::validate::gate_error(
                    &failed,
                    &format!(
                        "MLX model on {} (report: {})",
                        target_c.name,
                        report_path.display()
                    ),
                ) {
                    return Err(err);
                }
                Ok(json!({
                    "status": "passed",
                    "tool": "mlx-lm",
                    "text_sha256": r.text.sha256,
                    "ctx": r.ctx,
                    "quality": {
                        "ppl": r.quality.ppl,
                        "ppl_reference": r.quality.ppl_reference,
                        "ppl_ratio": r.quality.ppl_ratio,
                        "kld_mean": r.quality.kld_mean,
                        "top1_agreement": r.quality.top1_agreement,
                    },
                    "gates": r.gates.iter().map(super::llama::gate_json).collect::<Vec<_>>(),
                }))
            },
        )?;
        for (k, v) in versions {
            toolchains.insert(format!("{k} (validation)"), v);
        }
        (Some(e.meta.result.clone()), "passed".to_string())
    };
    let files = crate::cache::list_files(&candidate)?
        .into_iter()
        .map(|rel| (format!("model/{rel}"), candidate.join(Path::new(&rel))))
        .collect();
    Ok(ModelArtifacts {
        files,
        validation,
        validation_status: status,
        toolchains,
    })
}
