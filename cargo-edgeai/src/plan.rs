//! The planner: a pure function of (target, model facts, matrix, options) to a [`Plan`].
//!
//! It walks the target's accelerators in preference order and the matrix's rules in file order,
//! and for each applying rule tries the candidate quantizations in the order of the user's
//! preference; the first candidate whose weights + KV cache + runtime overhead fit the target's
//! memory budget wins. Every rejected candidate is kept with its numbers, so `--explain` can show
//! why the plan is what it is. Nothing here touches the file system or the clock.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::facts::{ModelClass, ModelFacts, ModelFormat};
use crate::manifest::{AcceleratorKind, Target};
use crate::matrix::{Matrix, Prefer, Rule};
use crate::quant::{estimate_weights, Framework, Scheme, TypeCount};
use crate::{Error, Result};

/// Plan JSON schema version.
pub const PLAN_SCHEMA: u32 = 1;

const MIB: u64 = 1 << 20;

/// What the user asked for besides target and model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Only rules of this framework (`--framework`).
    pub framework: Option<Framework>,
    /// Which candidate list to walk (`--prefer`).
    pub prefer: Prefer,
    /// Context length to size the KV cache for (`--context`); the target's default otherwise.
    pub context_length: Option<u64>,
    /// One quantization to try instead of the rule's list (`--quant`).
    pub quantization: Option<String>,
    /// The type a `cargo edgeai sweep` of this model on this target measured as the smallest
    /// that passes the gates; tried first for the llama.cpp rule (the CLI loads it).
    pub measured_quantization: Option<MeasuredChoice>,
}

/// A quantization chosen by measurement rather than by the matrix's prior.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredChoice {
    /// The llama.cpp file type (`Q5_K_M`).
    pub quantization: String,
    /// Where the measurement comes from, for the plan's reason (`sweep.json`).
    pub source: String,
}

/// The model as the plan records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanModel {
    /// The model as the user named it (path or `hf://` reference).
    pub path: String,
    pub format: ModelFormat,
    pub architecture: String,
    pub class: ModelClass,
    pub parameters: u64,
    pub dtype: String,
    pub layers: Option<u64>,
    pub hidden_size: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    pub max_context: Option<u64>,
}

/// Memory and speed arithmetic of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    pub budget_bytes: u64,
    pub fits: bool,
    /// Budget minus total (negative when it does not fit).
    pub headroom_bytes: i64,
    /// Estimated decode speed: bandwidth / bytes read per token (weights + full KV cache).
    /// An upper bound from memory bandwidth, not a measurement; null for models without decoding.
    pub decode_tokens_per_s: Option<f64>,
    /// How `decode_tokens_per_s` was derived.
    pub decode_basis: String,
    /// Bits per weight over all parameters.
    pub bits_per_weight: f64,
    /// Storage type -> tensors and bytes, counted tensor by tensor.
    pub tensor_types: BTreeMap<String, TypeCount>,
}

/// A candidate the planner tried and did not pick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub rule: String,
    pub framework: Framework,
    pub quantization: String,
    pub total_bytes: Option<u64>,
    pub reason: String,
}

/// One step of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// fetch, convert, quantize, kernels, build-app, validate, package, sign.
    pub step: String,
    /// The tool that runs it.
    pub tool: String,
    /// Inputs (files, references, options).
    pub inputs: Vec<String>,
    /// Outputs (relative to the bundle work directory).
    pub outputs: Vec<String>,
    /// What it does, in one line.
    pub detail: String,
}

/// A complete, serializable plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub schema: u32,
    pub target: String,
    pub triple: String,
    pub model: PlanModel,
    pub framework: Framework,
    pub format: String,
    pub quantization: String,
    pub kernel_backend: String,
    pub execution_provider: Option<String>,
    pub accelerator: AcceleratorKind,
    pub rule: String,
    pub prefer: Prefer,
    pub context_length: u64,
    pub estimate: Estimate,
    pub reasons: Vec<String>,
    pub rejected: Vec<Rejected>,
    pub steps: Vec<Step>,
    pub tools: BTreeMap<String, String>,
}

/// Whether a model in `format` can be brought into the rule's framework.
fn convertible(format: ModelFormat, framework: Framework) -> Result<(), String> {
    match (format, framework) {
        (ModelFormat::Onnx, Framework::LlamaCpp | Framework::Mlx) => Err(format!(
            "{framework} needs the model's weights by name; an ONNX graph cannot be converted to it (start from the Hugging Face model or a GGUF)"
        )),
        (ModelFormat::Safetensors, _) => Err(
            "a lone .safetensors file has no config.json, so its architecture cannot be converted; pass the Hugging Face directory".into(),
        ),
        _ => Ok(()),
    }
}

/// Sizing of one candidate.
pub fn estimate(
    target: &Target,
    facts: &ModelFacts,
    rule: &Rule,
    scheme: &Scheme,
    context: u64,
) -> Estimate {
    let weights = estimate_weights(scheme, facts);
    let kv_cache_bytes = kv_cache_bytes(facts, rule.kv_bytes, context);
    let overhead_bytes = rule.overhead_mb * MIB;
    let total_bytes = weights.bytes + kv_cache_bytes + overhead_bytes;
    let budget_bytes = target.budget_bytes();
    let per_token = weights.bytes_per_token + kv_cache_bytes;
    let decoder = facts.class == ModelClass::DecoderLlm;
    let decode_tokens_per_s = (decoder && per_token > 0).then(|| {
        let tps = target.memory.bandwidth_gbps * 1e9 / per_token as f64;
        (tps * 10.0).round() / 10.0
    });
    let bits_per_weight = if facts.parameters > 0 {
        ((weights.bytes as f64 * 8.0 / facts.parameters as f64) * 1000.0).round() / 1000.0
    } else {
        0.0
    };
    Estimate {
        weights_bytes: weights.bytes,
        kv_cache_bytes,
        overhead_bytes,
        total_bytes,
        budget_bytes,
        fits: total_bytes <= budget_bytes,
        headroom_bytes: budget_bytes as i64 - total_bytes as i64,
        decode_tokens_per_s,
        decode_basis: if decoder {
            format!(
                "estimate: {} GB/s memory bandwidth / {} bytes read per token (weights + KV cache at {} tokens)",
                target.memory.bandwidth_gbps, per_token, context
            )
        } else {
            "not applicable: the model does not decode tokens".into()
        },
        bits_per_weight,
        tensor_types: weights.by_type,
    }
}

/// layers × 2 (K and V) × kv_heads × head_dim × context × bytes per element.
pub fn kv_cache_bytes(facts: &ModelFacts, bytes_per_element: u64, context: u64) -> u64 {
    if facts.class != ModelClass::DecoderLlm || bytes_per_element == 0 {
        return 0;
    }
    let (Some(layers), Some(kv_heads), Some(head_dim)) =
        (facts.layers, facts.kv_heads, facts.head_dim)
    else {
        return 0;
    };
    layers * 2 * kv_heads * head_dim * context * bytes_per_element
}

/// Make the plan for `facts` on `target`. `model_ref` is how the user named the model.
pub fn make_plan(
    target: &Target,
    facts: &ModelFacts,
    model_ref: &str,
    matrix: &Matrix,
    options: &PlanOptions,
) -> Result<Plan> {
    let mut context = options
        .context_length
        .unwrap_or(target.defaults.context_length);
    let mut reasons = Vec::new();
    if let Some(max) = facts.max_context {
        if facts.class == ModelClass::DecoderLlm && max > 0 && context > max {
            reasons.push(format!(
                "context {context} of {} capped at the model's trained maximum {max}",
                if options.context_length.is_some() {
                    "--context"
                } else {
                    "the target"
                }
            ));
            context = max;
        }
    }

    let mut rejected = Vec::new();
    let mut any_rule = false;
    let mut smallest: Option<(Estimate, String, &Rule)> = None;
    for accelerator in &target.accelerators {
        for rule in &matrix.rules {
            if !rule.applies(accelerator.kind, target.os, &target.triple, facts.class) {
                continue;
            }
            if options.framework.is_some_and(|f| f != rule.framework) {
                continue;
            }
            if let Err(why) = convertible(facts.format, rule.framework) {
                rejected.push(Rejected {
                    rule: rule.id.clone(),
                    framework: rule.framework,
                    quantization: String::new(),
                    total_bytes: None,
                    reason: why,
                });
                continue;
            }
            if let Err(why) = mlx_loadable(facts, rule.framework) {
                rejected.push(Rejected {
                    rule: rule.id.clone(),
                    framework: rule.framework,
                    quantization: String::new(),
                    total_bytes: None,
                    reason: format!(
                        "{why}; the model types it loads: {}",
                        crate::matrix::MlxLmSupport::builtin().list()
                    ),
                });
                continue;
            }
            let measured = measured_for(options, rule);
            let candidates: Vec<String> = match (&options.quantization, measured) {
                (Some(q), _) => vec![q.clone()],
                (None, Some(m)) => std::iter::once(m.quantization.clone())
                    .chain(
                        rule.candidates(options.prefer)
                            .iter()
                            .filter(|c| **c != m.quantization)
                            .cloned(),
                    )
                    .collect(),
                (None, None) => rule.candidates(options.prefer).to_vec(),
            };
            for name in candidates {
                let Some(scheme) = Scheme::parse(rule.framework, &name) else {
                    rejected.push(Rejected {
                        rule: rule.id.clone(),
                        framework: rule.framework,
                        quantization: name.clone(),
                        total_bytes: None,
                        reason: format!("not a {} quantization", rule.framework),
                    });
                    continue;
                };
                any_rule = true;
                let est = estimate(target, facts, rule, &scheme, context);
                if est.fits {
                    return Ok(finish(
                        target,
                        facts,
                        model_ref,
                        matrix,
                        options,
                        rule,
                        accelerator.kind,
                        &name,
                        context,
                        est,
                        reasons,
                        rejected,
                    ));
                }
                rejected.push(Rejected {
                    rule: rule.id.clone(),
                    framework: rule.framework,
                    quantization: name.clone(),
                    total_bytes: Some(est.total_bytes),
                    reason: format!(
                        "needs {} > budget {} ({} short)",
                        human_bytes(est.total_bytes),
                        human_bytes(est.budget_bytes),
                        human_bytes(est.total_bytes - est.budget_bytes)
                    ),
                });
                if smallest
                    .as_ref()
                    .is_none_or(|(s, _, _)| est.total_bytes < s.total_bytes)
                {
                    smallest = Some((est, name.clone(), rule));
                }
            }
        }
    }

    if !any_rule {
        if options.framework == Some(Framework::Mlx) {
            if let Err(why) = mlx_loadable(facts, Framework::Mlx) {
                return Err(Error::Usage {
                    message: format!("{model_ref}: --framework mlx: {why}"),
                    help: format!(
                        "drop --framework mlx to plan with another framework (llama.cpp), or use a model whose config.json model_type is one of: {}",
                        crate::matrix::MlxLmSupport::builtin().list()
                    ),
                });
            }
        }
        let mut help = match options.framework {
            Some(f) => {
                format!("drop --framework {f}, or pick a target whose accelerators {f} runs on")
            }
            None => "add a rule for this accelerator and model class to the decision matrix".into(),
        };
        if options.quantization.is_some() {
            help.push_str("; check --quant: it must name a quantization of the chosen framework");
        }
        if let Some(r) = rejected.first() {
            help = format!("{help} ({}: {})", r.rule, r.reason);
        }
        return Err(Error::Usage {
            message: format!(
                "no rule of the decision matrix plans a {} {} model for target `{}`{}",
                facts.architecture,
                facts.class.as_str(),
                target.name,
                options
                    .framework
                    .map(|f| format!(" with framework {f}"))
                    .unwrap_or_default()
            ),
            help,
        });
    }

    let Some((est, quant, rule)) = smallest else {
        return Err(Error::Internal("no candidate was sized".into()));
    };
    let short = est.total_bytes - est.budget_bytes;
    Err(Error::DoesNotFit {
        message: format!(
            "{} does not fit `{}`: the smallest candidate, {} {} ({}), needs {} bytes (weights {} + KV cache {} + overhead {}) but the budget is {} bytes: {} bytes ({}) short",
            model_ref,
            target.name,
            rule.framework,
            quant,
            rule.id,
            est.total_bytes,
            human_bytes(est.weights_bytes),
            human_bytes(est.kv_cache_bytes),
            human_bytes(est.overhead_bytes),
            est.budget_bytes,
            short,
            human_bytes(short),
        ),
        help: what_would_fit(target, facts, &est, &quant, rule, context, options.prefer),
    })
}

/// MLX needs an architecture the pinned mlx-lm can load (`data/mlx-lm-architectures.toml`);
/// without this check the user learns it only after download and conversion, when
/// mlx_lm.load fails with "Model type X not supported".
fn mlx_loadable(facts: &ModelFacts, framework: Framework) -> Result<(), String> {
    if framework != Framework::Mlx {
        return Ok(());
    }
    let support = crate::matrix::MlxLmSupport::builtin();
    if support.loads_architecture(&facts.architecture) {
        return Ok(());
    }
    Err(format!(
        "mlx-lm {} cannot load the `{}` architecture (no mlx_lm.models module for it)",
        support.mlx_lm, facts.architecture
    ))
}

/// The measured choice, when it applies to `rule` (llama.cpp, no `--quant`).
fn measured_for<'a>(options: &'a PlanOptions, rule: &Rule) -> Option<&'a MeasuredChoice> {
    options
        .measured_quantization
        .as_ref()
        .filter(|_| options.quantization.is_none() && rule.framework == Framework::LlamaCpp)
}

/// Suggestions for a model that does not fit: a shorter context, fewer bits, a smaller model.
fn what_would_fit(
    target: &Target,
    facts: &ModelFacts,
    est: &Estimate,
    quant: &str,
    rule: &Rule,
    context: u64,
    prefer: Prefer,
) -> String {
    let mut ideas = Vec::new();
    let fixed = est.weights_bytes + est.overhead_bytes;
    if est.kv_cache_bytes > 0 && fixed < est.budget_bytes {
        let per_token = est.kv_cache_bytes / context.max(1);
        if let Some(tokens) = (est.budget_bytes - fixed).checked_div(per_token) {
            if tokens >= 128 {
                ideas.push(format!(
                    "a context of {tokens} tokens instead of {context} (--context {tokens})"
                ));
            }
        }
    }
    if prefer != Prefer::Size {
        ideas.push("fewer bits: --prefer size".into());
    }
    let available = est
        .budget_bytes
        .saturating_sub(est.overhead_bytes + est.kv_cache_bytes);
    if facts.parameters > 0 && est.weights_bytes > 0 {
        let bytes_per_param = est.weights_bytes as f64 / facts.parameters as f64;
        let max_params = (available as f64 / bytes_per_param) as u64;
        if max_params > 0 {
            ideas.push(format!(
                "a smaller model: at most {} parameters at {quant} ({})",
                human_count(max_params),
                rule.framework
            ));
        } else {
            ideas.push(format!(
                "nothing at this context: the runtime overhead ({}) and KV cache ({}) alone use the budget",
                human_bytes(est.overhead_bytes),
                human_bytes(est.kv_cache_bytes)
            ));
        }
    }
    ideas.push(format!(
        "a larger budget: memory.budget_mb of `{}` is {} of {} MiB total",
        target.name, target.memory.budget_mb, target.memory.total_mb
    ));
    format!("what would fit: {}", ideas.join("; or "))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    target: &Target,
    facts: &ModelFacts,
    model_ref: &str,
    matrix: &Matrix,
    options: &PlanOptions,
    rule: &Rule,
    accelerator: AcceleratorKind,
    quantization: &str,
    context: u64,
    estimate: Estimate,
    mut reasons: Vec<String>,
    rejected: Vec<Rejected>,
) -> Plan {
    reasons.insert(
        0,
        format!(
            "{} on `{}` ({}): {}",
            rule.framework,
            accelerator.as_str(),
            rule.id,
            rule.why
        ),
    );
    if let Some(f) = options.framework {
        reasons.push(format!("framework {f} requested with --framework"));
    }
    if let Some(q) = &options.quantization {
        reasons.push(format!("quantization {q} requested with --quant"));
    } else if let Some(m) = measured_for(options, rule).filter(|m| m.quantization == quantization) {
        reasons.push(format!(
            "{quantization} measured by `cargo edgeai sweep` ({}): the smallest type that passed the gates",
            m.source
        ));
    } else {
        let candidates = rule.candidates(options.prefer);
        let position = candidates
            .iter()
            .position(|c| c == quantization)
            .unwrap_or(0);
        if position == 0 {
            reasons.push(format!(
                "{quantization} is the first choice for --prefer {}",
                options.prefer.as_str()
            ));
        } else {
            reasons.push(format!(
                "{quantization} is choice {} for --prefer {}: {} did not fit the budget",
                position + 1,
                options.prefer.as_str(),
                candidates[..position].join(", ")
            ));
        }
    }
    if let Some(m) = measured_for(options, rule).filter(|m| m.quantization != quantization) {
        reasons.push(format!(
            "{} measured by `cargo edgeai sweep` ({}) was not usable here (see the rejected candidates); the matrix's prior applies",
            m.quantization, m.source
        ));
    }
    reasons.push(format!(
        "memory: weights {} + KV cache {} ({} tokens) + runtime overhead {} = {} of the {} budget ({} free)",
        human_bytes(estimate.weights_bytes),
        human_bytes(estimate.kv_cache_bytes),
        context,
        human_bytes(estimate.overhead_bytes),
        human_bytes(estimate.total_bytes),
        human_bytes(estimate.budget_bytes),
        human_bytes(estimate.headroom_bytes.max(0) as u64),
    ));
    if let Some(tps) = estimate.decode_tokens_per_s {
        reasons.push(format!(
            "decode speed estimate: about {tps} tokens/s from {} GB/s (an upper bound, not a measurement)",
            target.memory.bandwidth_gbps
        ));
    }
    if facts.format == ModelFormat::Gguf && !matches!(facts.dtype.as_str(), "F32" | "F16" | "BF16")
    {
        reasons.push(format!(
            "the input is already quantized ({}): requantizing loses more quality than quantizing from F16/F32 weights; use the unquantized model when you have it",
            facts.dtype
        ));
    }
    let steps = steps(target, facts, model_ref, matrix, rule, quantization);
    Plan {
        schema: PLAN_SCHEMA,
        target: target.name.clone(),
        triple: target.triple.clone(),
        model: PlanModel {
            path: model_ref.to_string(),
            format: facts.format,
            architecture: facts.architecture.clone(),
            class: facts.class,
            parameters: facts.parameters,
            dtype: facts.dtype.clone(),
            layers: facts.layers,
            hidden_size: facts.hidden_size,
            heads: facts.heads,
            kv_heads: facts.kv_heads,
            head_dim: facts.head_dim,
            vocab_size: facts.vocab_size,
            max_context: facts.max_context,
        },
        framework: rule.framework,
        format: rule.format.clone(),
        quantization: quantization.to_string(),
        kernel_backend: rule.kernel_backend.clone(),
        execution_provider: rule.execution_provider.clone(),
        accelerator,
        rule: rule.id.clone(),
        prefer: options.prefer,
        context_length: context,
        estimate,
        reasons,
        rejected,
        steps,
        tools: BTreeMap::from([(
            rule.framework.as_str().to_string(),
            matrix.tool_version(rule.framework),
        )]),
    }
}

/// The ordered pipeline for the chosen rule.
fn steps(
    target: &Target,
    facts: &ModelFacts,
    model_ref: &str,
    matrix: &Matrix,
    rule: &Rule,
    quantization: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let tool_version = matrix.tool_version(rule.framework);
    let step =
        |step: &str, tool: &str, inputs: Vec<String>, outputs: Vec<String>, detail: String| Step {
            step: step.into(),
            tool: tool.into(),
            inputs,
            outputs,
            detail,
        };
    let mut current = model_ref.to_string();
    if let Some(repo) = model_ref.strip_prefix("hf://") {
        steps.push(step(
            "fetch",
            "cargo-edgeai (reqwest)",
            vec![model_ref.into()],
            vec!["model/".into()],
            format!("download {repo} (resumable, sha256-checked) into the step cache"),
        ));
        current = "model/".into();
    }
    let stem = format!("model-{}", quantization.to_ascii_lowercase());
    let out = match rule.format.as_str() {
        "gguf" => format!("{stem}.gguf"),
        "mlx" => format!("{stem}/"),
        "onnx" => format!("{stem}.onnx"),
        "openvino-ir" => format!("{stem}.xml"),
        "qnn-context-binary" => format!("{stem}_ctx.onnx"),
        other => format!("{stem}.{other}"),
    };
    match (facts.format, rule.framework) {
        (ModelFormat::Gguf, Framework::LlamaCpp) => {}
        (ModelFormat::HfDirectory, Framework::LlamaCpp) => {
            steps.push(step(
                "convert",
                "cargo-edgeai convert (native)",
                vec![current.clone()],
                vec!["(streamed into quantize)".into()],
                format!("read {} safetensors and write GGUF tensors in llama.cpp's naming, one streaming pass", facts.architecture),
            ));
        }
        (ModelFormat::Gguf, _) => {
            steps.push(step(
                "convert",
                "cargo-edgeai export (native)",
                vec![current.clone()],
                vec!["hf-f32/".into()],
                "dequantize the GGUF into a Hugging Face directory (config.json, model.safetensors, tokenizer.json)".into(),
            ));
            current = "hf-f32/".into();
        }
        _ => {}
    }
    let (tool, detail) = match rule.framework {
        Framework::LlamaCpp => (
            "cargo-edgeai quantize (native, llama-quantize-exact)".to_string(),
            if facts.format == ModelFormat::Gguf
                && !matches!(facts.dtype.as_str(), "F32" | "F16" | "BF16")
            {
                format!("requantize {} to {quantization} (--allow-requantize)", facts.dtype)
            } else {
                format!("quantize to {quantization} with llama.cpp's mixture rules")
            },
        ),
        Framework::Mlx => (
            "cargo-edgeai convert --format mlx (native, mlx-exact)".to_string(),
            format!("write MLX safetensors with {quantization} packed weights, scales and biases"),
        ),
        Framework::OnnxRuntime => (
            format!("onnxruntime.quantization ({tool_version})"),
            format!("export to ONNX if needed, then {quantization}"),
        ),
        Framework::Olive => (
            format!("olive run ({tool_version})"),
            format!("Olive workflow: ONNX export, {quantization} (MatMulNBits), graph optimisation"),
        ),
        Framework::OpenVino => (
            format!("ovc + nncf ({tool_version})"),
            format!("convert to OpenVINO IR and compress weights to {quantization} with NNCF"),
        ),
        Framework::Qnn => (
            format!("onnxruntime QNN quantization ({tool_version})"),
            format!("QDQ {quantization}: qnn_preprocess_model, get_qnn_qdq_config, quantize with calibration data"),
        ),
    };
    steps.push(step(
        "quantize",
        &tool,
        vec![current],
        vec![out.clone()],
        detail,
    ));

    let kernels = match rule.kernel_backend.as_str() {
        "cuda" => {
            let sm = target
                .accelerator(AcceleratorKind::Cuda)
                .and_then(|a| a.sm)
                .unwrap_or(0);
            (
                "nvcc / NVRTC",
                format!("build llama.cpp's CUDA kernels for sm_{sm} (cubin + PTX)"),
            )
        }
        "vulkan" => (
            "glslc + spirv-val",
            "compile llama.cpp's Vulkan compute shaders to SPIR-V".to_string(),
        ),
        "metal" if rule.framework == Framework::LlamaCpp => (
            "xcrun metal (macOS)",
            "compile llama.cpp's ggml-metal kernels into a metallib".to_string(),
        ),
        "metal" => (
            "xcrun metal (macOS)",
            "compile MLX's Metal kernels into a metallib".to_string(),
        ),
        "qnn-htp" => {
            let acc = target.accelerator(AcceleratorKind::QnnHtp);
            (
                "onnxruntime-qnn (HTP)",
                format!(
                    "generate the HTP context binary for htp_arch v{} / soc_model {}",
                    acc.and_then(|a| a.htp_arch).unwrap_or(0),
                    acc.and_then(|a| a.soc_model).unwrap_or(0)
                ),
            )
        }
        b if b.starts_with("openvino-") => (
            "openvino",
            format!(
                "compile the IR for the {} device and cache the blob",
                b.trim_start_matches("openvino-").to_ascii_uppercase()
            ),
        ),
        "coreml" => (
            "onnxruntime (CoreML EP)",
            "compile the Core ML model cache at first load".to_string(),
        ),
        _ => {
            let isa: Vec<String> = target
                .cpu
                .isa
                .iter()
                .map(|f| {
                    serde_json::to_value(f)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect();
            (
                "cc / cmake",
                format!(
                    "build the CPU kernels for {} with {}",
                    target.triple,
                    if isa.is_empty() {
                        "baseline ISA".into()
                    } else {
                        isa.join(", ")
                    }
                ),
            )
        }
    };
    steps.push(step(
        "kernels",
        kernels.0,
        vec![rule.kernel_backend.clone()],
        vec!["kernels/".into()],
        kernels.1,
    ));
    steps.push(step(
        "build-app",
        "cargo build",
        vec!["Cargo.toml".into()],
        vec![format!("target/{}/release/", target.triple)],
        format!(
            "cargo build --release --target {} (rustup target and cross linker as needed)",
            target.triple
        ),
    ));
    steps.push(step(
        "validate",
        &format!("{} runtime", rule.framework),
        vec![out.clone(), model_ref.into()],
        vec!["validation.json".into()],
        match facts.class {
            ModelClass::DecoderLlm => "perplexity, KL divergence and top-1 agreement against the unquantized model; tokens/s; peak memory; gates".into(),
            _ => "output cosine and max error against the unquantized model; latency; peak memory; gates".into(),
        },
    ));
    let bundle = format!(
        "target/edgeai/{}/<name>-<version>-{}.zip",
        target.name, target.name
    );
    steps.push(step(
        "package",
        "cargo-edgeai bundle",
        vec![out, "app".into(), "validation.json".into()],
        vec![bundle.clone()],
        "deterministic zip: model, app, edgeai-manifest.json with sha256 of every file, SBOM"
            .into(),
    ));
    steps.push(step(
        "sign",
        "cargo-edgeai sign (minisign Ed25519)",
        vec![bundle.clone()],
        vec![format!("{bundle}.minisig")],
        "sign the bundle; devices verify with minisign -V".into(),
    ));
    steps
}

/// 1.5 GiB / 12.3 MiB / 512 B.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// 134.5M / 7.2B / 900.
pub fn human_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}K", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}
