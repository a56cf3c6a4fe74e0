//! `cargo edgeai convert MODEL --format onnx`: export an HF BERT directory to ONNX (no torch) and
//! quantize ONNX models (INT8 dynamic, INT8 static QDQ, INT4 MatMulNBits) with
//! `onnxruntime.quantization` in the managed `onnxruntime` toolchain.
//!
//! Boundary: Rust checks the flags and paths and owns the error messages' shape; the embedded
//! driver (`onnx_driver.py`) does the ONNX work and answers with one JSON object: a summary
//! (exit 0) or a user error `{error, help, path}` (exit 3). Any other exit is a driver bug and
//! becomes [`Error::Internal`] with its stderr. The driver writes OUT through a temp directory
//! beside OUT, loads it in onnxruntime, then renames it: a failed run leaves no OUT.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const DRIVER: &str = include_str!("onnx_driver.py");

/// Toolchain the driver runs in.
pub const TOOLCHAIN: &str = "onnxruntime";

/// Quantization scheme of `--quant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnnxQuant {
    /// Weights INT8 (per channel), activations quantized at run time.
    Int8Dynamic,
    /// QDQ INT8 weights and activations, activation ranges from calibration data.
    Int8Static,
    /// Weight-only blockwise INT4 (MatMulNBits).
    Int4,
}

impl std::str::FromStr for OnnxQuant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "int8-dynamic" => Ok(OnnxQuant::Int8Dynamic),
            "int8-static" => Ok(OnnxQuant::Int8Static),
            "int4" => Ok(OnnxQuant::Int4),
            _ => Err(Error::Usage {
                message: format!("unknown ONNX quantization `{s}`"),
                help: "use --quant int8-dynamic, int8-static or int4".into(),
            }),
        }
    }
}

impl OnnxQuant {
    fn as_str(self) -> &'static str {
        match self {
            OnnxQuant::Int8Dynamic => "int8-dynamic",
            OnnxQuant::Int8Static => "int8-static",
            OnnxQuant::Int4 => "int4",
        }
    }
}

/// Options of [`convert_to_onnx`].
#[derive(Debug, Clone)]
pub struct OnnxConvertOptions {
    /// None: export/copy FP32 only.
    pub quant: Option<OnnxQuant>,
    /// INT4 block size (32, 64, 128); default 32.
    pub block: Option<usize>,
    /// INT4 symmetric (no zero points).
    pub symmetric: bool,
    /// INT8 static: folder of .npz/.npy samples, one .npz file, or a text file (text models).
    pub calibration: Option<PathBuf>,
}

/// What the driver did (its JSON summary, the fields the CLI shows typed; the rest kept raw).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnnxConvertSummary {
    /// MODEL as given.
    pub model: String,
    /// The written model.
    pub output: String,
    /// Scheme, None for a plain export.
    pub quant: Option<String>,
    /// `hf-export` or `onnx`.
    pub source: String,
    /// Bytes of the FP32 ONNX model (with external data).
    pub fp32_bytes: u64,
    /// Bytes written (with external data).
    pub output_bytes: u64,
    /// Every other field of the driver's summary (op counts, unquantized ops, timings).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl OnnxConvertSummary {
    /// Human-readable summary; lists the weight ops left unquantized by name.
    pub fn render_human(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let mut s = format!(
            "{} -> {} ({}, {})\n  size: FP32 {:.1} MB -> {:.1} MB\n",
            self.model,
            self.output,
            self.source,
            self.quant.as_deref().unwrap_or("fp32"),
            mb(self.fp32_bytes),
            mb(self.output_bytes),
        );
        if let Some(n) = self.details.get("quantized_nodes") {
            s.push_str(&format!("  quantized nodes: {n}\n"));
        }
        if let Some(serde_json::Value::Object(ops)) = self.details.get("unquantized_weight_ops") {
            for (op, v) in ops {
                let nodes: Vec<String> = v["nodes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                s.push_str(&format!(
                    "  not quantized: {op} x{} ({})\n",
                    v["count"],
                    nodes.join(", ")
                ));
            }
        }
        if let Some(serde_json::Value::Object(k)) = self.details.get("kept_float_outliers") {
            if !k.is_empty() {
                s.push_str(&format!(
                    "  kept FP32 (activation peak/RMS > 24): {}\n",
                    k.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(serde_json::Value::Object(k)) = self.details.get("kept_float_sensitive") {
            if !k.is_empty() {
                s.push_str(&format!(
                    "  kept FP32 (accuracy search, most sensitive): {}\n",
                    k.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(serde_json::Value::Object(k)) = self.details.get("kept_int8_sensitive") {
            if !k.is_empty() {
                s.push_str(&format!(
                    "  8-bit blocks (accuracy search, most sensitive): {}\n",
                    k.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(a) = self.details.get("recipe").map(|r| &r["accuracy"]) {
            if let (Some(got), Some(target)) = (a["achieved"].as_f64(), a["target"].as_f64()) {
                s.push_str(&format!(
                    "  worst output cosine vs FP32 on {} {} samples: {got:.4} (target {target}, all quantized {})\n",
                    a["samples"],
                    a["source"].as_str().unwrap_or("probe"),
                    a["all_candidates_quantized"]
                ));
            }
        }
        s
    }
}

#[derive(Deserialize)]
struct DriverError {
    error: String,
    help: String,
    path: Option<String>,
}

/// `--block` and `--symmetric` belong to INT4, and INT4 blocks are 32, 64 or 128 wide (the
/// MatMulNBits kernels' sizes). Shared by the onnxruntime and Olive paths.
pub(crate) fn check_int4_options(
    quant: Option<OnnxQuant>,
    block: Option<usize>,
    symmetric: bool,
) -> Result<()> {
    if quant != Some(OnnxQuant::Int4) && (block.is_some() || symmetric) {
        return Err(Error::Usage {
            message: "--block and --symmetric apply to --quant int4".into(),
            help: "drop them, or use --quant int4".into(),
        });
    }
    if let Some(b) = block {
        if ![32, 64, 128].contains(&b) {
            return Err(Error::Usage {
                message: format!("--block {b} is not supported"),
                help: "use --block 32, 64 or 128".into(),
            });
        }
    }
    Ok(())
}

fn check_options(model: &Path, out: &Path, opts: &OnnxConvertOptions) -> Result<()> {
    if !model.exists() {
        return Err(Error::model(
            model,
            "does not exist",
            "pass an .onnx file or a Hugging Face model directory",
        ));
    }
    if model.is_file() && model.extension().and_then(|e| e.to_str()) != Some("onnx") {
        return Err(Error::model(
            model,
            "is neither an .onnx file nor a model directory",
            "pass an .onnx file or a Hugging Face model directory (config.json + *.safetensors)",
        ));
    }
    check_int4_options(opts.quant, opts.block, opts.symmetric)?;
    match (opts.quant, &opts.calibration) {
        (Some(OnnxQuant::Int8Static), None) => {
            return Err(Error::Usage {
                message: "--quant int8-static needs --calibration".into(),
                help: "pass a folder of .npz/.npy samples keyed by input name, or a text file (one sample per line) for text models".into(),
            })
        }
        (Some(_), Some(c)) if !c.exists() => {
            return Err(Error::io(
                c,
                std::io::Error::new(std::io::ErrorKind::NotFound, "calibration data not found"),
            ))
        }
        // int8-dynamic and int4 take calibration data too: it picks the nodes kept at higher
        // precision (the driver's accuracy search).
        (None, Some(_)) => {
            return Err(Error::Usage {
                message: "--calibration applies to --quant int8-static, int8-dynamic and int4"
                    .into(),
                help: "drop --calibration, or add --quant".into(),
            })
        }
        _ => {}
    }
    check_output_dir(out)
}

/// The directory `out` goes to (`.` for a bare file name); both ONNX paths write beside it.
pub(crate) fn output_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// OUT's directory must exist: the model is written beside it and renamed into place.
pub(crate) fn check_output_dir(out: &Path) -> Result<()> {
    let parent = output_dir(out);
    if !parent.is_dir() {
        return Err(Error::io(
            &parent,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "output directory does not exist",
            ),
        ));
    }
    Ok(())
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io(p, e))
}

/// Export and/or quantize `model` (an .onnx file or an HF BERT directory) to `out`.
pub fn convert_to_onnx(
    model: &Path,
    out: &Path,
    opts: &OnnxConvertOptions,
) -> Result<OnnxConvertSummary> {
    check_options(model, out, opts)?;
    let tc = edgeai_toolchain::find(TOOLCHAIN)?;
    let work = tempfile::Builder::new()
        .prefix("edgeai-onnx-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let driver = work.path().join("onnx_driver.py");
    std::fs::write(&driver, DRIVER).map_err(|e| Error::io(&driver, e))?;
    let request = serde_json::json!({
        "command": "convert",
        "model": absolute(model)?,
        "output": absolute(out)?,
        "quant": opts.quant.map(OnnxQuant::as_str),
        "block": opts.block.unwrap_or(32),
        "symmetric": opts.symmetric,
        "calibration": opts.calibration.as_deref().map(absolute).transpose()?,
    });
    let req_path = work.path().join("request.json");
    std::fs::write(&req_path, request.to_string()).map_err(|e| Error::io(&req_path, e))?;
    let output = Command::new(tc.python())
        .arg(&driver)
        .arg(&req_path)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .map_err(|e| Error::io(tc.python(), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    match output.status.code() {
        Some(0) => serde_json::from_str(last).map_err(|e| {
            Error::Internal(format!("onnx driver printed no summary ({e}): {stdout}"))
        }),
        Some(3) => {
            let err: DriverError = serde_json::from_str(last).map_err(|e| {
                Error::Internal(format!("onnx driver printed no error ({e}): {stdout}"))
            })?;
            Err(Error::InvalidModel {
                path: err.path.map(PathBuf::from).unwrap_or_else(|| model.into()),
                message: err.error,
                help: err.help,
            })
        }
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            Err(Error::Internal(format!(
                "onnx driver failed ({}):\n{}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quant_names_parse() {
        assert_eq!(
            "INT8-dynamic".parse::<OnnxQuant>().unwrap(),
            OnnxQuant::Int8Dynamic
        );
        assert!("int2".parse::<OnnxQuant>().is_err());
    }

    #[test]
    fn flag_combinations_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"x").unwrap();
        let out = dir.path().join("o.onnx");
        let base = OnnxConvertOptions {
            quant: Some(OnnxQuant::Int8Dynamic),
            block: Some(32),
            symmetric: false,
            calibration: None,
        };
        assert!(check_options(&model, &out, &base).is_err());
        let stat = OnnxConvertOptions {
            quant: Some(OnnxQuant::Int8Static),
            block: None,
            ..base.clone()
        };
        assert!(check_options(&model, &out, &stat).is_err());
        let int4 = OnnxConvertOptions {
            quant: Some(OnnxQuant::Int4),
            block: Some(48),
            ..base
        };
        assert!(check_options(&model, &out, &int4).is_err());
    }
}
