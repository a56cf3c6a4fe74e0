//! The ONNX Runtime and Olive steps: export (a Hugging Face directory → FP32 ONNX, the
//! validation reference), quantize (the plan's scheme, with `onnxruntime.quantization` for
//! `onnxruntime` plans or `olive run` for `olive` plans), validate (both models on ONNX Runtime
//! from Rust, gates from the target and the project).
//!
//! The export entry is a model directory: `model/model.onnx` (+ `model.onnx.data` for models
//! over protobuf's 2 GB) next to copies of the tokenizer files and config.json, so the
//! quantizer finds the tokenizer for text calibration and the bundle takes them from one
//! place. An `.onnx` model without external data is used as it is; one with external data goes
//! through the export step too (the driver checks every external file and writes one
//! self-contained model), so its cache identity and the bundle never depend on files the
//! pipeline did not read.
//!
//! Only deterministic figures enter the bundle (`validation/report.json` and the manifest's
//! summary: cosines, max errors, top-1, gate verdicts); host latency and memory stay in
//! `target/edgeai/<target>/validation.json` (+ `.junit.xml`, `.html`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Ctx, ModelArtifacts, ResolvedModel};
use crate::backends::olive;
use crate::backends::onnx::{OnnxConvertOptions, OnnxQuant};
use crate::cache::StepKey;
use crate::facts::{ModelFacts, ModelFormat};
use crate::manifest::Target;
use crate::plan::Plan;
use crate::quant::{Framework, Scheme};
use crate::validate::gates::GateResult;
use crate::validate::ort::{InputSource, OrtValidateOptions, OrtValidationReport};
use crate::{Error, Result};

/// Sentences ONNX validation tokenizes for a text model when the project names none
/// (`validation-text`): 24 short English sentences of different topics and forms.
pub const VALIDATION_TEXT: &str = include_str!("../../data/validation-sentences.txt");

/// Sentences INT8 static quantization calibrates a text model on when the project names no
/// `calibration` (other sentences than the validation ones, so validation does not measure the
/// calibration set).
pub const CALIBRATION_TEXT: &str = include_str!("../../data/calibration-sentences.txt");

/// Most sentences validation runs (each is one inference per model plus timed runs).
const MAX_SENTENCES: usize = 64;

/// Timed runs per model after the warm-up ones (latency p50/p95 in the host report).
const VALIDATION_RUNS: usize = 20;
const VALIDATION_WARMUP: usize = 3;

/// Files of a Hugging Face model directory that the app needs besides the weights: the
/// tokenizer and the model's configuration (pooling, normalisation).
const MODEL_SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// The model inside every entry and the bundle.
const MODEL_FILE: &str = "model.onnx";

/// The scheme of the plan as the converter takes it: None = FP32 (no quantize step).
fn quant_options(plan: &Plan) -> Result<Option<(OnnxQuant, Option<usize>, bool)>> {
    match Scheme::parse(plan.framework, &plan.quantization) {
        Some(Scheme::OnnxInt8Dynamic) => Ok(Some((OnnxQuant::Int8Dynamic, None, false))),
        Some(Scheme::OnnxInt8Static) => Ok(Some((OnnxQuant::Int8Static, None, false))),
        Some(Scheme::OnnxInt4 { block, symmetric }) => {
            Ok(Some((OnnxQuant::Int4, Some(block as usize), symmetric)))
        }
        Some(Scheme::OnnxFloat { bits: 32 }) => Ok(None),
        _ => Err(Error::Usage {
            message: format!(
                "target `{}`: `{}` is not an ONNX quantization `cargo edgeai build` can produce",
                plan.target, plan.quantization
            ),
            help: format!(
                "set `quantization` in [package.metadata.edgeai.target.{}] to one of int8-dynamic, int8-static, int4-g32, int4-g64, int4-g128 (-asym: with zero points), fp32",
                plan.target
            ),
        }),
    }
}

/// The `onnxruntime` toolchain (export, quantization, and the library validation loads).
fn toolchain() -> Result<edgeai_toolchain::Toolchain> {
    let name = crate::backends::onnx::TOOLCHAIN;
    edgeai_toolchain::find(name).map_err(|e| Error::Usage {
        message: format!("ONNX targets need the {name} toolchain: {e}"),
        help: format!(
            "run `{}` (a managed Python environment with onnx and onnxruntime)",
            edgeai_toolchain::install_command(name)
        ),
    })
}

/// The versions that identify a toolchain in cache keys (its whole lock: any package may
/// change what the driver writes).
fn versions_key(tc: &edgeai_toolchain::Toolchain) -> String {
    serde_json::to_string(&tc.versions()).unwrap_or_default()
}

/// The model's side files (tokenizer, config) in `dir`, by name.
fn side_files(dir: &Path) -> Vec<(String, PathBuf)> {
    MODEL_SIDE_FILES
        .iter()
        .map(|n| (n.to_string(), dir.join(n)))
        .filter(|(_, p)| p.is_file())
        .collect()
}

/// Digest of an `.onnx` model with external data: the file and every other non-`.onnx` file
/// of its directory (the external-data files are among them; which ones, only the driver reads).
fn onnx_with_siblings_digest(ctx: &Ctx<'_>, model: &ResolvedModel) -> Result<String> {
    let dir = model.path.parent().unwrap_or(Path::new("."));
    let mut parts = vec![format!("onnx {}", model.digest)];
    for rel in crate::cache::list_files(dir)? {
        if rel.contains('/') || rel.ends_with(".onnx") {
            continue;
        }
        parts.push(format!(
            "{rel}\0{}",
            ctx.cache.file_digest(&dir.join(&rel))?
        ));
    }
    Ok(crate::cache::sha256_bytes(parts.join("\n").as_bytes()))
}

/// A project file (relative to Cargo.toml) named by `key`, which must exist.
fn project_file(ctx: &Ctx<'_>, key: &str, rel: &Path) -> Result<PathBuf> {
    let path = ctx.project.dir().join(rel);
    if !path.exists() {
        return Err(Error::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
            help: format!(
                "`{key}` in {} [package.metadata.edgeai] must name an existing file or directory (relative to Cargo.toml)",
                ctx.project.manifest_path.display()
            ),
        });
    }
    Ok(path)
}

/// Digest of a file or a directory of samples.
fn path_digest(ctx: &Ctx<'_>, path: &Path) -> Result<String> {
    if path.is_dir() {
        ctx.cache.tree_digest(path)
    } else {
        ctx.cache.file_digest(path)
    }
}

/// The FP32 reference: (the .onnx file, its digest, the directory of its side files).
struct Reference {
    model: PathBuf,
    digest: String,
    side_dir: PathBuf,
}

fn export(
    ctx: &mut Ctx<'_>,
    facts: &ModelFacts,
    model: &ResolvedModel,
    tc_versions: &str,
) -> Result<Reference> {
    let external = facts.format == ModelFormat::Onnx
        && crate::onnx::read_model(&model.path)?.has_external_data();
    if facts.format == ModelFormat::Onnx && !external {
        return Ok(Reference {
            model: model.path.clone(),
            digest: model.digest.clone(),
            side_dir: model.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        });
    }
    let (input_digest, side_dir) = if external {
        (
            onnx_with_siblings_digest(ctx, model)?,
            model.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        )
    } else {
        (model.digest.clone(), model.path.clone())
    };
    let mut key = StepKey::new("export-onnx");
    key.inputs.insert("model".into(), input_digest);
    key.options = json!({ "format": "onnx", "quant": null, "side_files": MODEL_SIDE_FILES });
    key.tools
        .insert("onnxruntime toolchain".into(), tc_versions.to_string());
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let input = model.path.clone();
    let entry = ctx.step(
        &key,
        |e| {
            format!(
                "FP32 {} ({}, {} bytes)",
                MODEL_FILE,
                e.meta.result["source"].as_str().unwrap_or("onnx"),
                e.meta.result["fp32_bytes"].as_u64().unwrap_or(0)
            )
        },
        |out| {
            let dir = out.join("model");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let s = crate::backends::onnx::convert_to_onnx(
                &input,
                &dir.join(MODEL_FILE),
                &OnnxConvertOptions {
                    quant: None,
                    block: None,
                    symmetric: false,
                    calibration: None,
                },
            )?;
            for (name, src) in side_files(&side_dir) {
                std::fs::copy(&src, dir.join(&name)).map_err(|e| Error::io(&src, e))?;
            }
            Ok(json!({
                "source": s.source,
                "fp32_bytes": s.output_bytes,
                "inputs": s.details.get("inputs"),
                "outputs": s.details.get("outputs"),
                "seconds": s.details.get("seconds"),
            }))
        },
    )?;
    let digest = entry
        .digest_of(&format!("model/{MODEL_FILE}"))
        .map(str::to_string)
        .ok_or_else(|| Error::Internal(format!("export entry lacks model/{MODEL_FILE}")))?;
    // External data of a > 2 GB model sits next to the .onnx: the whole entry is its identity.
    let digest = if entry.meta.files.iter().any(|f| f.path.ends_with(".data")) {
        entry.outputs_digest()
    } else {
        digest
    };
    Ok(Reference {
        model: entry.file(&format!("model/{MODEL_FILE}")),
        digest,
        side_dir: entry.file("model"),
    })
}

/// INT8 static calibration data: the project's `calibration`, else the built-in sentences for
/// a model with a tokenizer, else the project's `validation-inputs` samples.
/// Returns (path to pass, digest, a built-in text to write to that path first).
fn calibration(
    ctx: &Ctx<'_>,
    reference: &Reference,
) -> Result<(Option<PathBuf>, String, Option<&'static str>)> {
    if let Some(rel) = ctx.project.metadata.calibration.clone() {
        let p = project_file(ctx, "calibration", &rel)?;
        let d = path_digest(ctx, &p)?;
        return Ok((Some(p), d, None));
    }
    if reference.side_dir.join("tokenizer.json").is_file() {
        return Ok((
            None,
            crate::cache::sha256_bytes(CALIBRATION_TEXT.as_bytes()),
            Some(CALIBRATION_TEXT),
        ));
    }
    if let Some(rel) = ctx.project.metadata.validation_inputs.clone() {
        let p = project_file(ctx, "validation-inputs", &rel)?;
        let d = path_digest(ctx, &p)?;
        return Ok((Some(p), d, None));
    }
    Err(Error::Usage {
        message: format!(
            "{}: int8-static needs calibration data, and the model has no tokenizer.json to calibrate on text",
            ctx.project.manifest_path.display()
        ),
        help: "set `calibration` in [package.metadata.edgeai] to a directory of .npz/.npy samples keyed by the model's input names, or choose quantization = \"int8-dynamic\"".into(),
    })
}

/// The quantized candidate: (the model directory of the entry, digest of the entry's model).
#[allow(clippy::too_many_arguments)]
fn quantize(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    reference: &Reference,
    quant: OnnxQuant,
    block: Option<usize>,
    symmetric: bool,
    tc_versions: &str,
    olive_versions: Option<&str>,
) -> Result<(PathBuf, String, Value)> {
    let (calib, calib_digest, builtin) = if quant == OnnxQuant::Int8Static {
        let (p, d, b) = calibration(ctx, reference)?;
        (p, Some(d), b)
    } else {
        (None, None, None)
    };
    let olive = plan.framework == Framework::Olive;
    let mut key = StepKey::new(if olive {
        "quantize-olive"
    } else {
        "quantize-onnx"
    });
    key.inputs
        .insert("reference".into(), reference.digest.clone());
    if let Some(d) = &calib_digest {
        key.inputs.insert("calibration".into(), d.clone());
    }
    key.options = json!({
        "quantization": plan.quantization,
        "quant": quant,
        "block": block,
        "symmetric": symmetric,
    });
    key.tools
        .insert("onnxruntime toolchain".into(), tc_versions.to_string());
    if let Some(v) = olive_versions {
        key.tools.insert("olive toolchain".into(), v.to_string());
    }
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let input = reference.model.clone();
    let entry = ctx.step(
        &key,
        |e| {
            let r = &e.meta.result;
            format!(
                "{} {} through {} ({} nodes quantized, {} bytes)",
                MODEL_FILE,
                r["quant"].as_str().unwrap_or("?"),
                r["tool"].as_str().unwrap_or("?"),
                r["quantized_nodes"]
                    .as_u64()
                    .map_or("?".into(), |n| n.to_string()),
                r["output_bytes"].as_u64().unwrap_or(0)
            )
        },
        |out| {
            let calib = match (calib, builtin) {
                (Some(p), _) => Some(p),
                (None, Some(text)) => {
                    let p = out.join("calibration.txt");
                    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
                    Some(p)
                }
                (None, None) => None,
            };
            let dir = out.join("model");
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let dest = dir.join(MODEL_FILE);
            let result = if olive {
                olive_quantize(&input, &dest, quant, calib, block, symmetric)?
            } else {
                let s = crate::backends::onnx::convert_to_onnx(
                    &input,
                    &dest,
                    &OnnxConvertOptions {
                        quant: Some(quant),
                        block,
                        symmetric,
                        calibration: calib,
                    },
                )?;
                json!({
                    "tool": format!("onnxruntime {}", s.details.get("onnxruntime").and_then(Value::as_str).unwrap_or("?")),
                    "quant": s.quant,
                    "output_bytes": s.output_bytes,
                    "quantized_nodes": s.details.get("quantized_nodes"),
                    "unquantized_weight_ops": s.details.get("unquantized_weight_ops"),
                    "kept_float_outliers": s.details.get("kept_float_outliers"),
                    "preprocess": s.details.get("preprocess"),
                })
            };
            // The calibration text is an input, not an output: it stays out of the model dir
            // and out of the entry.
            let _ = std::fs::remove_file(out.join("calibration.txt"));
            Ok(result)
        },
    )?;
    let result = entry.meta.result.clone();
    Ok((entry.file("model"), entry.outputs_digest(), result))
}

/// The Olive quantization of `input` into `dest` (`olive run` in the `olive` toolchain).
fn olive_quantize(
    input: &Path,
    dest: &Path,
    quant: OnnxQuant,
    calibration: Option<PathBuf>,
    block: Option<usize>,
    symmetric: bool,
) -> Result<Value> {
    let s = olive::quantize_with_olive(
        input,
        dest,
        &olive::OliveOptions {
            quant,
            calibration,
            block,
            symmetric,
        },
    )?;
    let output_bytes = crate::cache::list_files(dest.parent().unwrap_or(Path::new(".")))?
        .iter()
        .filter_map(|rel| std::fs::metadata(dest.parent().unwrap_or(Path::new(".")).join(rel)).ok())
        .map(|m| m.len())
        .sum::<u64>();
    Ok(json!({
        "tool": format!("olive-ai {}", s.olive_version),
        "olive_version": s.olive_version,
        "quant": quant,
        "output_bytes": output_bytes,
        "quantized_nodes": s.nodes_quantized,
        "passes": s.passes,
        "olive_seconds": s.seconds,
    }))
}

/// `model.onnx` of a model directory first, then its external-data files (`model.onnx.*`).
fn model_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = crate::cache::list_files(dir)?
        .into_iter()
        .filter(|rel| rel == MODEL_FILE || rel.starts_with(&format!("{MODEL_FILE}.")))
        .map(|rel| (format!("model/{rel}"), dir.join(&rel)))
        .collect();
    files.sort_by_key(|(p, _)| p != &format!("model/{MODEL_FILE}"));
    if files.first().map(|(p, _)| p.as_str()) != Some(&format!("model/{MODEL_FILE}")) {
        return Err(Error::Internal(format!(
            "{} holds no {MODEL_FILE}",
            dir.display()
        )));
    }
    Ok(files)
}

/// The samples validation runs: (source, digest, a built-in text to write first).
fn validation_inputs(
    ctx: &Ctx<'_>,
    reference: &Reference,
) -> Result<(Option<InputSource>, String, Option<&'static str>)> {
    let tokenizer = reference.side_dir.join("tokenizer.json");
    if tokenizer.is_file() {
        let tok_digest = ctx.cache.file_digest(&tokenizer)?;
        if let Some(rel) = ctx.project.metadata.validation_text.clone() {
            let file = project_file(ctx, "validation-text", &rel)?;
            let d = ctx.cache.file_digest(&file)?;
            return Ok((
                Some(InputSource::Text {
                    file,
                    tokenizer,
                    max_sentences: MAX_SENTENCES,
                }),
                format!("{d}+{tok_digest}"),
                None,
            ));
        }
        let d = crate::cache::sha256_bytes(VALIDATION_TEXT.as_bytes());
        return Ok((None, format!("{d}+{tok_digest}"), Some(VALIDATION_TEXT)));
    }
    if let Some(rel) = ctx.project.metadata.validation_inputs.clone() {
        let dir = project_file(ctx, "validation-inputs", &rel)?;
        let d = path_digest(ctx, &dir)?;
        return Ok((Some(InputSource::Dir(dir)), d, None));
    }
    Err(Error::Usage {
        message: format!(
            "{}: the model has no tokenizer.json, so validation has no inputs to run it on",
            ctx.project.manifest_path.display()
        ),
        help: "set `validation-inputs` in [package.metadata.edgeai] to a directory of .npz/.npy samples keyed by the model's input names, or pass --skip-validation to build an unvalidated bundle (recorded as skipped in its manifest)".into(),
    })
}

/// A gate as the bundle records it: the measured value of the deterministic ones (quality and
/// the target estimate), never host speed or memory.
fn gate_json(g: &GateResult) -> Value {
    let mut v = json!({
        "name": g.name,
        "threshold": g.threshold,
        "unit": g.unit,
        "passed": g.passed,
    });
    if matches!(
        g.name.as_str(),
        "min_cosine" | "min_top1" | "target_memory_budget"
    ) {
        v["measured"] = json!(g.measured);
    }
    v
}

/// The report that goes into the bundle: the full report without host paths and without the
/// figures that vary from run to run (latency, memory: see the host report).
fn bundle_report(r: &OrtValidationReport, plan: &Plan, samples: &str) -> Value {
    json!({
        "schema": r.schema,
        "framework": plan.framework,
        "quantization": plan.quantization,
        "target": r.target,
        "runtime": format!("onnxruntime {}", r.tool.version),
        "measured_on": r.tool.execution_provider,
        "expected_execution_provider": plan.execution_provider,
        "candidate": {
            "file": format!("model/{MODEL_FILE}"),
            "bytes": r.candidate.size_bytes,
            "inputs": r.candidate.inputs,
            "outputs": r.candidate.outputs,
        },
        "reference": {
            "model": "the FP32 ONNX export of the same model",
            "bytes": r.reference.size_bytes,
        },
        "samples": { "source": samples, "count": r.inputs.samples },
        "outputs": r.outputs,
        "embedding": r.embedding,
        "target_side": r.target_side,
        "gates": r.gates.iter().map(gate_json).collect::<Vec<_>>(),
        "skipped_gates": r.skipped_gates,
        "passed": r.passed,
        "host_figures": "latency and peak memory were measured on the build host; they vary from run to run and are in the build's target/edgeai/<target>/validation.json, not in the bundle",
    })
}

#[allow(clippy::too_many_arguments)]
fn validate(
    ctx: &mut Ctx<'_>,
    target: &Target,
    plan: &Plan,
    candidate: &Path,
    candidate_digest: &str,
    reference: &Reference,
    tc_versions: &str,
) -> Result<Value> {
    let gates = crate::validate::resolve_gates(target, Some(ctx.project))?;
    let (source, inputs_digest, builtin) = validation_inputs(ctx, reference)?;
    let threads = ctx.threads();
    let mut key = StepKey::new("validate-onnx");
    key.inputs
        .insert("candidate".into(), candidate_digest.to_string());
    key.inputs
        .insert("reference".into(), reference.digest.clone());
    key.inputs.insert("inputs".into(), inputs_digest);
    key.options = json!({
        "target": target.name,
        "budget_mb": target.memory.budget_mb,
        "gates": gates,
        "framework": plan.framework,
        "quantization": plan.quantization,
        "execution_provider": plan.execution_provider,
        "runs": VALIDATION_RUNS,
        "warmup": VALIDATION_WARMUP,
        "max_sentences": MAX_SENTENCES,
        "threads": threads,
    });
    key.tools
        .insert("onnxruntime toolchain".into(), tc_versions.to_string());
    if let Ok(lib) = std::env::var(crate::validate::ort::DYLIB_ENV) {
        key.tools.insert("ORT_DYLIB_PATH".into(), lib);
    }
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let host_dir = ctx.edgeai_dir.join(&target.name);
    let cand = candidate.to_path_buf();
    let reference_model = reference.model.clone();
    let tokenizer = reference.side_dir.join("tokenizer.json");
    let target_c = target.clone();
    let plan_c = plan.clone();
    let entry = ctx.step(
        &key,
        |e| {
            let r = &e.meta.result;
            match r["quality"]["embedding_cosine_mean"].as_f64() {
                Some(c) => format!(
                    "gates passed: embedding cosine {c:.5} over {} samples (onnxruntime)",
                    r["samples"].as_u64().unwrap_or(0)
                ),
                None => format!(
                    "gates passed: lowest output cosine {:.5} over {} samples (onnxruntime)",
                    r["quality"]["cosine_min_output"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    r["samples"].as_u64().unwrap_or(0)
                ),
            }
        },
        |out| {
            let (source, label) = match (source, builtin) {
                (Some(s), _) => {
                    let label = match &s {
                        InputSource::Text { file, .. } | InputSource::Dir(file) => format!(
                            "project file {}",
                            file.file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        ),
                    };
                    (s, label)
                }
                (None, Some(text)) => {
                    let file = out.join("sentences.txt");
                    std::fs::write(&file, text).map_err(|e| Error::io(&file, e))?;
                    (
                        InputSource::Text {
                            file,
                            tokenizer,
                            max_sentences: MAX_SENTENCES,
                        },
                        "cargo-edgeai's built-in validation sentences".to_string(),
                    )
                }
                (None, None) => {
                    return Err(Error::Internal("validation without inputs".into()));
                }
            };
            let mut o = OrtValidateOptions::new(target_c.clone(), source);
            o.runs = VALIDATION_RUNS;
            o.warmup = VALIDATION_WARMUP;
            o.threads = Some(threads);
            o.gates = gates;
            let r = crate::validate::ort::validate_onnx(&cand, &reference_model, &o)?;
            // The host report, pass or fail: where the user looks.
            std::fs::create_dir_all(&host_dir).map_err(|e| Error::io(&host_dir, e))?;
            let full = crate::report::to_json(&r);
            crate::cache::write_atomic(&host_dir.join("validation.json"), full.as_bytes(), false)?;
            crate::cache::write_atomic(
                &host_dir.join("validation.junit.xml"),
                crate::validate::ort::render_junit(&[&r]).as_bytes(),
                false,
            )?;
            let summary_line = if r.passed { "passed" } else { "failed" };
            crate::cache::write_atomic(
                &host_dir.join("validation.html"),
                crate::validate::ort::render_html(
                    &format!("{} on {}", MODEL_FILE, target_c.name),
                    &[&r],
                    summary_line,
                )
                .as_bytes(),
                false,
            )?;
            let failed: Vec<&GateResult> = r.failures().collect();
            if let Some(err) = crate::validate::gate_error(
                &failed,
                &format!(
                    "{} {} on {} (report: {})",
                    plan_c.framework,
                    plan_c.quantization,
                    target_c.name,
                    host_dir.join("validation.json").display()
                ),
            ) {
                return Err(err);
            }
            let report = bundle_report(&r, &plan_c, &label);
            let text = crate::report::to_json(&report);
            std::fs::write(out.join("report.json"), &text)
                .map_err(|e| Error::io(out.join("report.json"), e))?;
            let _ = std::fs::remove_file(out.join("sentences.txt"));
            let lowest = r
                .outputs
                .iter()
                .map(|o| o.cosine_mean)
                .min_by(|a, b| a.total_cmp(b));
            Ok(json!({
                "status": "passed",
                "tool": format!("onnxruntime {}", r.tool.version),
                "execution_provider": r.tool.execution_provider,
                "candidate": format!("model/{MODEL_FILE}"),
                "candidate_quantization": plan_c.quantization,
                "reference": "fp32",
                "samples": r.inputs.samples,
                "samples_source": label,
                "quality": {
                    "embedding_cosine_mean": r.embedding.as_ref().map(|e| e.cosine_mean),
                    "embedding_cosine_min": r.embedding.as_ref().map(|e| e.cosine_min),
                    "cosine_min_output": lowest,
                    "outputs": r.outputs,
                },
                "gates": r.gates.iter().map(gate_json).collect::<Vec<_>>(),
                "report": "validation/report.json",
            }))
        },
    )?;
    Ok(json!({
        "summary": entry.meta.result.clone(),
        "report": entry.file("report.json"),
    }))
}

pub(crate) fn run(
    ctx: &mut Ctx<'_>,
    target: &Target,
    plan: &Plan,
    facts: &ModelFacts,
    model: &ResolvedModel,
) -> Result<ModelArtifacts> {
    if !matches!(facts.format, ModelFormat::HfDirectory | ModelFormat::Onnx) {
        return Err(Error::Usage {
            message: format!(
                "{}: {} targets take a Hugging Face directory or an .onnx file",
                model.path.display(),
                plan.framework
            ),
            help: "use the Hugging Face model directory (config.json + *.safetensors) or an exported .onnx file as `model`".into(),
        });
    }
    let quant = quant_options(plan)?;
    let tc = toolchain()?;
    let tc_versions = versions_key(&tc);
    let olive = if plan.framework == Framework::Olive && quant.is_some() {
        let name = olive::TOOLCHAIN;
        let otc = edgeai_toolchain::find(name).map_err(|e| Error::Usage {
            message: format!("framework olive needs the {name} toolchain: {e}"),
            help: format!(
                "run `{}`, or set framework = \"onnxruntime\" for this target in [package.metadata.edgeai.target.{}]",
                edgeai_toolchain::install_command(name),
                target.name
            ),
        })?;
        Some(otc)
    } else {
        None
    };
    let olive_versions = olive.as_ref().map(versions_key);

    let reference = export(ctx, facts, model, &tc_versions)?;
    // The candidate's files in the bundle's model/ directory (model.onnx and its external data).
    let (candidate_files, candidate_digest, qresult) = match quant {
        Some((q, block, symmetric)) => quantize(
            ctx,
            plan,
            &reference,
            q,
            block,
            symmetric,
            &tc_versions,
            olive_versions.as_deref(),
        )
        .and_then(|(dir, digest, result)| Ok((model_files(&dir)?, digest, result)))?,
        None if reference.model.file_name() == Some(MODEL_FILE.as_ref()) => (
            model_files(reference.model.parent().unwrap_or(Path::new(".")))?,
            reference.digest.clone(),
            json!({ "quant": "fp32" }),
        ),
        // An .onnx file used as it is (no external data), whatever its name.
        None => (
            vec![(format!("model/{MODEL_FILE}"), reference.model.clone())],
            reference.digest.clone(),
            json!({ "quant": "fp32" }),
        ),
    };
    let candidate = candidate_files
        .first()
        .map(|(_, p)| p.clone())
        .ok_or_else(|| Error::Internal(format!("no {MODEL_FILE} was produced")))?;

    let mut toolchains = BTreeMap::new();
    let versions = tc.versions();
    for (k, label) in [("onnxruntime", "onnxruntime"), ("onnx", "onnx")] {
        if let Some(v) = versions.get(k) {
            toolchains.insert(format!("{label} (export, quantizer)"), v.clone());
        }
    }
    if let Some(otc) = &olive {
        let v = otc.versions();
        let olive_v = v
            .get("olive-ai")
            .cloned()
            .or_else(|| qresult["olive_version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        toolchains.insert("olive-ai (quantizer)".into(), olive_v);
    }

    let (validation, status, report) = if ctx.opts.skip_validation {
        let (validation, status) = ctx.validation_skipped();
        (validation, status, None)
    } else {
        let v = validate(
            ctx,
            target,
            plan,
            &candidate,
            &candidate_digest,
            &reference,
            &tc_versions,
        )?;
        let summary = v["summary"].clone();
        if let Some(tool) = summary["tool"].as_str() {
            let version = tool.strip_prefix("onnxruntime ").unwrap_or(tool);
            toolchains.insert("onnxruntime (validation, ort)".into(), version.into());
        }
        let report = v["report"].as_str().map(PathBuf::from);
        (Some(summary), "passed".to_string(), report)
    };

    // The model directory: the candidate's files (model.onnx, external data), then the side
    // files (tokenizer, config) of the model.
    let mut files = candidate_files;
    for (name, src) in side_files(&reference.side_dir) {
        if !files.iter().any(|(p, _)| p == &format!("model/{name}")) {
            files.push((format!("model/{name}"), src));
        }
    }
    if let Some(r) = report {
        files.push(("validation/report.json".into(), r));
    }
    Ok(ModelArtifacts {
        files,
        validation,
        validation_status: status,
        toolchains,
    })
}
