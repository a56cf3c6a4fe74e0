//! `framework = "olive"`: quantize an FP32 ONNX model with Microsoft Olive (`olive run --config`)
//! in the managed `olive` toolchain.
//!
//! Boundary (the same as [`crate::backends::onnx`]): Rust checks the options and paths, writes the
//! workflow ([`write_workflow`], a pure function of the options) and owns the errors' shape; the
//! embedded driver (`olive_driver.py`) checks the model and the calibration data, adds the node
//! exclusions that depend on the model, runs `olive run --config` as a subprocess (its log goes to
//! a file), collects Olive's output model and answers with one JSON object:
//! - exit 0: a summary;
//! - exit 3: a user error `{error, help, path}` (bad model, bad calibration data) →
//!   [`Error::InvalidModel`];
//! - exit 4: Olive failed `{error, log, log_tail}` → [`Error::ToolFailed`]; the work directory
//!   (workflow, calibration script, Olive's full log) is kept and named so the run can be repeated
//!   by hand;
//! - anything else is a driver bug → [`Error::Internal`] with the traceback tail.
//!
//! The recipes are the onnxruntime path's base ones (per-channel INT8 weights; QDQ with uint8
//! activations; INT4 RTN on MatMul only; INT8 nodes whose input peak/RMS > 24 on the calibration
//! samples, or the probe sentences for dynamic, kept FP32) without its accuracy-aware search, so
//! the two frameworks can be compared figure by figure; the driver imports `onnx_driver.py` for
//! the checks, the calibration reader, the node selection and the atomic publish. Invariant: nothing appears at `out` unless Olive succeeded and
//! the model loads in onnxruntime (staged beside `out`, then renamed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::backends::onnx::{absolute, OnnxQuant};
use crate::{Error, Result};

const DRIVER: &str = include_str!("olive_driver.py");
const DATA_SCRIPT: &str = include_str!("edgeai_olive_data.py");
const ONNX_DRIVER: &str = include_str!("../onnx/onnx_driver.py");

/// Toolchain Olive runs in.
pub const TOOLCHAIN: &str = "olive";

/// File name of the workflow config in the work directory.
pub const CONFIG_NAME: &str = "olive_config.json";
/// File name of the calibration data script (an Olive `user_script`) next to the config.
pub const DATA_SCRIPT_NAME: &str = "edgeai_olive_data.py";
/// Name of the data config and of the dataset the script registers.
const DATA_CONFIG: &str = "edgeai_calibration";
const DATASET: &str = "edgeai_calibration_dataset";

/// Environment Olive runs with: no hub downloads, no telemetry.
const OFFLINE_ENV: [(&str, &str); 5] = [
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("OLIVE_DISABLE_TELEMETRY", "1"),
    ("PYTHONUNBUFFERED", "1"),
];

/// What to ask Olive for.
#[derive(Debug, Clone)]
pub struct OliveOptions {
    pub quant: OnnxQuant,
    /// INT8 static: folder of .npz/.npy samples, one .npz file, or a text file tokenized with the
    /// tokenizer.json next to the input model (same meaning as `OnnxConvertOptions::calibration`).
    pub calibration: Option<PathBuf>,
    /// INT4 block size (32, 64, 128); default 32.
    pub block: Option<usize>,
    /// INT4 symmetric (no zero points).
    pub symmetric: bool,
}

/// What Olive did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OliveSummary {
    /// The written model (`out`).
    pub output: PathBuf,
    /// The workflow as run (with the driver's `nodes_to_exclude`). Holds host paths (temporary
    /// work directory, input): sanitize before it goes into a bundle.
    pub config: Value,
    /// olive-ai version.
    pub olive_version: String,
    /// Olive pass types run, in order.
    pub passes: Vec<String>,
    /// Weight nodes of the input that read a quantized weight in the output.
    pub nodes_quantized: Option<usize>,
    /// Wall time of `olive run` (start-up included, ~16 s of it).
    pub seconds: f64,
    /// Everything else the driver reported: op counts, nodes kept float and why, sizes,
    /// calibration samples, Olive's own footprint and model_config.
    #[serde(default)]
    pub details: serde_json::Map<String, Value>,
}

impl OliveSummary {
    /// Human-readable summary.
    pub fn render_human(&self) -> String {
        let mb = |k: &str| self.details.get(k).and_then(Value::as_u64).unwrap_or(0) as f64 / 1e6;
        let mut s = format!(
            "olive {} ({}) -> {}\n  size: FP32 {:.1} MB -> {:.1} MB\n  olive run: {:.1} s\n",
            self.olive_version,
            self.passes.join(", "),
            self.output.display(),
            mb("fp32_bytes"),
            mb("output_bytes"),
            self.seconds,
        );
        if let Some(n) = self.nodes_quantized {
            s.push_str(&format!("  quantized nodes: {n}\n"));
        }
        if let Some(Value::Object(ops)) = self.details.get("quantized_op_counts") {
            let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            s.push_str(&format!("  quantized ops: {}\n", ops.join(", ")));
        }
        if let Some(Value::Object(k)) = self.details.get("nodes_excluded") {
            if !k.is_empty() {
                s.push_str(&format!("  kept float: {} node(s)\n", k.len()));
            }
        }
        s
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The Olive workflow config (JSON) that quantizes `input` (an FP32 .onnx) on the CPU execution
/// provider into `output_dir`. Pure: paths are used as given (pass absolute ones). Olive's cache
/// goes to `<parent of output_dir>/olive-cache`; INT8 static reads its calibration through the
/// Olive `user_script` `<parent of output_dir>/edgeai_olive_data.py` (written by
/// [`quantize_with_olive`]), which imports `onnx_driver.py` from the same directory. No evaluator:
/// validation is ours ([`crate::validate::ort`]). Model-dependent node exclusions
/// (`nodes_to_exclude`) are added by the driver before Olive runs.
pub fn write_workflow(input: &Path, output_dir: &Path, opts: &OliveOptions) -> Value {
    // The workflow's work directory is its output directory's parent: the config, the
    // calibration script and Olive's cache live there.
    let work = crate::backends::onnx::output_dir(output_dir);
    let (pass, data_configs) = match opts.quant {
        // The onnxruntime path's recipe: per-channel symmetric INT8 weights on MatMul/Conv/Gemm
        // (Olive's default would also quantize Gather embeddings, per tensor).
        OnnxQuant::Int8Dynamic => (
            json!({
                "type": "OnnxDynamicQuantization",
                "precision": "int8",
                "per_channel": true,
                "weight_symmetric": true,
                "activation_symmetric": false,
                "op_types_to_quantize": ["MatMul", "Conv", "Gemm"],
                "save_as_external_data": true,
                "all_tensors_to_one_file": true,
            }),
            vec![],
        ),
        // QDQ, uint8 asymmetric activations, int8 symmetric per-channel weights, MinMax. Olive's
        // `prepare_qdq_config` (full-integer QDQ of every op) is off: it ignores the node
        // selection and costs BERT-like models most of their accuracy.
        OnnxQuant::Int8Static => (
            json!({
                "type": "OnnxStaticQuantization",
                "data_config": DATA_CONFIG,
                "quant_format": "QDQ",
                "precision": "int8",
                "activation_type": "uint8",
                "per_channel": true,
                "weight_symmetric": true,
                "activation_symmetric": false,
                "calibrate_method": "MinMax",
                "prepare_qdq_config": false,
                "op_types_to_quantize": ["MatMul", "Conv", "ConvTranspose", "Gemm"],
                "save_as_external_data": true,
                "all_tensors_to_one_file": true,
            }),
            vec![json!({
                "name": DATA_CONFIG,
                "user_script": path_str(&work.join(DATA_SCRIPT_NAME)),
                "script_dir": path_str(&work),
                "load_dataset_config": {
                    "type": DATASET,
                    "params": {
                        "model": path_str(input),
                        "calibration": opts.calibration.as_deref().map(path_str),
                        "max_length": 128,
                    },
                },
                // Each sample is already a batch (of one): no torch auto-batching.
                "dataloader_config": {"type": "no_auto_batch_dataloader"},
            })],
        ),
        OnnxQuant::Int4 => (
            json!({
                "type": "OnnxBlockWiseRtnQuantization",
                "bits": 4,
                "block_size": opts.block.unwrap_or(32),
                "is_symmetric": opts.symmetric,
                "axis": 0,
                "save_as_external_data": true,
                "all_tensors_to_one_file": true,
            }),
            vec![],
        ),
    };
    let mut config = json!({
        "workflow_id": "edgeai",
        "input_model": {"type": "ONNXModel", "model_path": path_str(input)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [
                    {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
                ],
            }
        },
        "passes": {"quantize": pass},
        "engine": {
            "host": "local_system",
            "target": "local_system",
            "evaluate_input_model": false,
            "cache_dir": path_str(&work.join("olive-cache")),
            "output_dir": path_str(output_dir),
            "log_severity_level": 1,
        },
    });
    if !data_configs.is_empty() {
        config["data_configs"] = Value::Array(data_configs);
    }
    config
}

/// The scheme of `cargo edgeai convert MODEL --format FORMAT --framework FRAMEWORK --quant
/// SCHEME`, when FRAMEWORK is not `onnxruntime` (the default ONNX path).
pub fn cli_quant(format: &str, framework: &str, quant: Option<&str>) -> Result<OnnxQuant> {
    if !framework.eq_ignore_ascii_case(TOOLCHAIN) {
        return Err(Error::Usage {
            message: format!("unknown --framework `{framework}`"),
            help: "use --framework olive (Olive workflow) or --framework onnxruntime (the default)"
                .into(),
        });
    }
    if !format.eq_ignore_ascii_case("onnx") {
        return Err(Error::Usage {
            message: format!("--framework olive produces ONNX models, not `{format}`"),
            help: "add --format onnx".into(),
        });
    }
    match quant {
        Some(q) => q.parse(),
        None => Err(Error::Usage {
            message: "--framework olive quantizes: it needs --quant".into(),
            help: "add --quant int8-dynamic, int8-static (with --calibration) or int4; for an FP32 export drop --framework".into(),
        }),
    }
}

fn check_options(input: &Path, out: &Path, opts: &OliveOptions) -> Result<()> {
    if !input.exists() {
        return Err(Error::model(
            input,
            "does not exist",
            "pass the FP32 .onnx model to quantize (export one with `cargo edgeai convert MODEL --format onnx`)",
        ));
    }
    if !input.is_file() || input.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Err(Error::model(
            input,
            "is not an .onnx file",
            "Olive quantizes ONNX models here: export the model first with `cargo edgeai convert MODEL --format onnx -o MODEL.onnx`",
        ));
    }
    crate::backends::onnx::check_int4_options(Some(opts.quant), opts.block, opts.symmetric)?;
    match (opts.quant, &opts.calibration) {
        (OnnxQuant::Int8Static, None) => {
            return Err(Error::Usage {
                message: "int8-static with Olive needs calibration data".into(),
                help: "pass a folder of .npz/.npy samples keyed by input name, or a text file (one sample per line) for text models".into(),
            })
        }
        (OnnxQuant::Int8Static, Some(c)) if !c.exists() => {
            return Err(Error::io(
                c,
                std::io::Error::new(std::io::ErrorKind::NotFound, "calibration data not found"),
            ))
        }
        (OnnxQuant::Int8Static, Some(_)) => {}
        (_, Some(_)) => {
            return Err(Error::Usage {
                message: "calibration data applies to int8-static only".into(),
                help: "drop the calibration data, or quantize to int8-static".into(),
            })
        }
        _ => {}
    }
    crate::backends::onnx::check_output_dir(out)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

#[derive(Deserialize)]
struct DriverError {
    error: String,
    help: String,
    path: Option<String>,
}

#[derive(Deserialize)]
struct OliveFailure {
    error: String,
    log: String,
    #[serde(default)]
    log_tail: String,
}

/// Quantize `input` (an FP32 .onnx file, external data allowed) with `olive run` into `out` (a
/// single .onnx file, plus `out`.data beside it for models over 1.8 GB). Nothing is written at
/// `out` on failure. Needs the `olive` toolchain (`cargo edgeai toolchain install olive`).
pub fn quantize_with_olive(input: &Path, out: &Path, opts: &OliveOptions) -> Result<OliveSummary> {
    check_options(input, out, opts)?;
    let tc = edgeai_toolchain::find(TOOLCHAIN)?;
    let input = absolute(input)?;
    let out = absolute(out)?;
    let opts = OliveOptions {
        calibration: opts.calibration.as_deref().map(absolute).transpose()?,
        ..opts.clone()
    };
    let work = tempfile::Builder::new()
        .prefix("edgeai-olive-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let output_dir = work.path().join("output");
    let config = write_workflow(&input, &output_dir, &opts);
    let config_path = work.path().join(CONFIG_NAME);
    let pretty = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Internal(format!("olive workflow JSON: {e}")))?;
    write(&config_path, &pretty)?;
    write(&work.path().join(DATA_SCRIPT_NAME), DATA_SCRIPT)?;
    write(&work.path().join("onnx_driver.py"), ONNX_DRIVER)?;
    let driver = work.path().join("olive_driver.py");
    write(&driver, DRIVER)?;
    let request = json!({
        "input": input,
        "output": out,
        "config": config_path,
        "output_dir": output_dir,
        "quant": opts.quant,
        "calibration": opts.calibration,
    });
    let req_path = work.path().join("request.json");
    write(&req_path, &request.to_string())?;

    let started = Instant::now();
    let mut cmd = Command::new(tc.python());
    cmd.arg(&driver).arg(&req_path).current_dir(work.path());
    for (k, v) in OFFLINE_ENV {
        cmd.env(k, v);
    }
    let output = cmd.output().map_err(|e| Error::io(tc.python(), e))?;
    let total = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    match output.status.code() {
        Some(0) => {
            let mut details: serde_json::Map<String, Value> =
                serde_json::from_str(last).map_err(|e| {
                    Error::Internal(format!("olive driver printed no summary ({e}): {stdout}"))
                })?;
            let mut take = |k: &str| details.remove(k).unwrap_or(Value::Null);
            let config = take("workflow");
            let olive_version = take("olive_version").as_str().unwrap_or("").to_string();
            let passes = take("passes")
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let nodes_quantized = take("nodes_quantized").as_u64().map(|n| n as usize);
            let seconds = take("olive_seconds").as_f64().unwrap_or(total);
            details.insert(
                "total_seconds".into(),
                json!((total * 1000.0).round() / 1000.0),
            );
            Ok(OliveSummary {
                output: out,
                config,
                olive_version,
                passes,
                nodes_quantized,
                seconds,
                details,
            })
        }
        Some(3) => {
            let err: DriverError = serde_json::from_str(last).map_err(|e| {
                Error::Internal(format!("olive driver printed no error ({e}): {stdout}"))
            })?;
            Err(Error::InvalidModel {
                path: err.path.map(PathBuf::from).unwrap_or(input),
                message: err.error,
                help: err.help,
            })
        }
        Some(4) => {
            let fail: OliveFailure = serde_json::from_str(last).map_err(|e| {
                Error::Internal(format!("olive driver printed no failure ({e}): {stdout}"))
            })?;
            // Keep the work directory: the workflow, its calibration script and Olive's log are
            // what the user needs to reproduce and debug the run.
            let kept = work.keep();
            let env: Vec<String> = OFFLINE_ENV[..4]
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Err(Error::ToolFailed {
                tool: "olive".into(),
                message: format!(
                    "{} (input {}):\n{}",
                    fail.error,
                    input.display(),
                    fail.log_tail
                ),
                help: format!(
                    "the workflow is {config}, Olive's full log {log}; re-run it by hand with `cd {dir} && {env} {olive} run --config {config}` (delete {dir} when done)",
                    config = kept.join(CONFIG_NAME).display(),
                    log = fail.log,
                    dir = kept.display(),
                    env = env.join(" "),
                    olive = tc.bin("olive").display(),
                ),
            })
        }
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            Err(Error::Internal(format!(
                "olive driver failed ({}):\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(quant: OnnxQuant) -> OliveOptions {
        OliveOptions {
            quant,
            calibration: None,
            block: None,
            symmetric: false,
        }
    }

    #[test]
    fn options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"x").unwrap();
        let out = dir.path().join("o.onnx");
        assert!(check_options(&model, &out, &opts(OnnxQuant::Int8Dynamic)).is_ok());
        // static without calibration, calibration without static, block without int4
        assert!(check_options(&model, &out, &opts(OnnxQuant::Int8Static)).is_err());
        let mut o = opts(OnnxQuant::Int8Dynamic);
        o.calibration = Some(dir.path().into());
        assert!(check_options(&model, &out, &o).is_err());
        let mut o = opts(OnnxQuant::Int8Dynamic);
        o.block = Some(32);
        assert!(check_options(&model, &out, &o).is_err());
        let mut o = opts(OnnxQuant::Int4);
        o.block = Some(48);
        assert!(check_options(&model, &out, &o).is_err());
        // not an .onnx file, missing output directory
        let txt = dir.path().join("m.txt");
        std::fs::write(&txt, b"x").unwrap();
        assert!(check_options(&txt, &out, &opts(OnnxQuant::Int4)).is_err());
        let far = dir.path().join("nope/o.onnx");
        assert!(check_options(&model, &far, &opts(OnnxQuant::Int4)).is_err());
    }

    #[test]
    fn workflow_layout() {
        let w = write_workflow(
            Path::new("/m/model.onnx"),
            Path::new("/w/output"),
            &opts(OnnxQuant::Int4),
        );
        assert_eq!(w["engine"]["cache_dir"], "/w/olive-cache");
        assert_eq!(w["passes"]["quantize"]["block_size"], 32);
        assert!(w.get("data_configs").is_none());
    }
}
