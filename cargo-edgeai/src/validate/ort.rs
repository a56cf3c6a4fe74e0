//! Validation of ONNX models on the real ONNX Runtime, from Rust (`ort`, `load-dynamic`).
//!
//! The library is the one in the managed `onnxruntime` toolchain (the PyPI wheel's
//! `onnxruntime/capi/libonnxruntime.so.*`), loaded at run time: nothing is downloaded at build
//! time, and the runtime that validates is the one the quantization tools of the same toolchain
//! produced the model with. `ORT_DYLIB_PATH` overrides it.
//!
//! A candidate (quantized) and a reference (FP32) model run on the same sample inputs (`.npy`
//! / `.npz` files, or sentences tokenized with the model's WordPiece tokenizer.json) on the CPU
//! execution provider. Per output: cosine (mean/min over samples), max abs error and, for
//! classifier-like outputs, top-1 agreement; for text encoders the mean-pooled, L2-normalised
//! sentence embedding's cosine. Latency p50/p95 over N timed runs after warm-up, for both
//! models; peak memory is the process's resident high-water mark (VmHWM) while each model is
//! loaded and run, reset through `/proc/self/clear_refs` before each, candidate first so its
//! figure holds nothing of the reference. Gates as in the llama.cpp path (`min_cosine`,
//! `min_top1`, `max_memory_mb`, `max_latency_p95_ms`, the target's memory budget); gates about
//! token distributions (`max_kld`, `max_ppl_ratio`, `min_decode_tokens_per_s`) do not apply to
//! an ONNX graph and are listed as skipped.
//!
//! Invariant: inputs are checked against the session's input list (name, element type, rank
//! and fixed dimensions) before anything runs; a mismatch is an error naming the input, the
//! expected and the found type and shape.

pub mod npy;
pub mod wordpiece;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ::ort::session::Session;
use ::ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use serde::Serialize;

use super::gates::{Direction, GateResult, Gates};
use super::report::{render_junit_suites, svg_bars, xml_escape, JunitSuite};
use super::TargetFigures;
use crate::manifest::Target;
use crate::matrix::Matrix;
use crate::quant::Framework;
use crate::{Error, Result};

use npy::{Array, Dtype};

/// The managed toolchain whose libonnxruntime is loaded.
pub const TOOLCHAIN: &str = "onnxruntime";

/// Environment variable that names the library to load instead of the toolchain's.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The execution provider the measurements run on.
pub const HOST_EP: &str = "CPUExecutionProvider";

/// Where the sample inputs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A directory of `.npz` files (one sample each, keys = input names) or `.npy` files
    /// (`INPUT.npy` files together form one sample; with a single-input model every `.npy` is
    /// one sample).
    Dir(PathBuf),
    /// Sentences, one per non-empty line, tokenized with a WordPiece `tokenizer.json`.
    Text {
        file: PathBuf,
        tokenizer: PathBuf,
        /// Use at most this many sentences.
        max_sentences: usize,
    },
}

/// What to validate and how (besides the two models).
#[derive(Debug, Clone)]
pub struct OrtValidateOptions {
    /// The target whose gates and budget apply.
    pub target: Target,
    pub inputs: InputSource,
    /// Timed runs per model (latency percentiles), after `warmup` untimed ones.
    pub runs: usize,
    pub warmup: usize,
    /// Intra-op threads (default: all cores).
    pub threads: Option<usize>,
    pub gates: Gates,
}

impl OrtValidateOptions {
    pub fn new(target: Target, inputs: InputSource) -> Self {
        OrtValidateOptions {
            target,
            inputs,
            runs: 20,
            warmup: 3,
            threads: None,
            gates: Gates::default(),
        }
    }
}

/// An input or output of a model, as the session reports it (-1: dynamic dimension).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Port {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

/// Identity of an ONNX model file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnnxModelInfo {
    pub path: PathBuf,
    pub label: String,
    /// The .onnx file plus any external-data files next to it that it names are not counted:
    /// this is the .onnx file's size.
    pub size_bytes: u64,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

/// Where the samples came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleInfo {
    /// `inputs DIR` or `text FILE (tokenizer FILE)`.
    pub source: String,
    pub samples: usize,
    /// Recurrent state fed back between samples (`input <- output`): for a model with a
    /// state input and a matching state output (silero-vad's `state`/`stateN`, an RNN's
    /// `h0`/`hn`), the samples run in file order as one stream and each model gets its own
    /// previous state output, as it would in a streaming application; the state arrays stored
    /// in the samples after the first are not used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recurrent_state: Vec<String>,
}

/// Agreement of one output over all samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputAgreement {
    pub name: String,
    /// Mean over samples of the cosine of the sample's flattened output; for outputs of one
    /// value per sample, the cosine over all samples' values together (mean = min).
    pub cosine_mean: f64,
    pub cosine_min: f64,
    pub max_abs_error: f64,
    /// Fraction of rows whose argmax equals the reference's (rank-2 outputs with at least two
    /// columns, when the inputs are not text: classifier-like); `None` otherwise.
    pub top1_agreement: Option<f64>,
    /// Rows compared for top-1.
    pub rows: u64,
    /// For an output of one probability per sample (every value in [0, 1], e.g. a VAD's speech
    /// probability): agreement of the decisions at [`DECISION_THRESHOLD`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionAgreement>,
}

/// Threshold of a probability output's yes/no decision (silero-vad's default speech threshold).
pub const DECISION_THRESHOLD: f64 = 0.5;

/// Yes/no agreement of a probability output (one value per sample).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionAgreement {
    pub threshold: f64,
    /// Samples on which candidate and reference take the same decision.
    pub agreement: f64,
    /// Fraction of samples above the threshold, reference and candidate.
    pub reference_positive: f64,
    pub candidate_positive: f64,
    pub samples: usize,
}

/// Sentence-embedding agreement of a text encoder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingAgreement {
    /// The output pooled (rank 3: mean over tokens under the attention mask; rank 2: as is).
    pub output: String,
    pub sentences: usize,
    pub cosine_mean: f64,
    pub cosine_min: f64,
}

/// Latency of one model over the timed runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub label: String,
    pub runs: usize,
    pub warmup: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
}

/// Memory of one model's load and runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    pub label: String,
    /// Resident set before the session was created.
    pub baseline_rss_bytes: Option<u64>,
    /// Resident high-water mark while the session was created and run.
    pub peak_rss_bytes: Option<u64>,
    pub basis: String,
}

/// Which ONNX Runtime did the measuring.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrtToolInfo {
    pub library: PathBuf,
    pub version: String,
    pub execution_provider: String,
    pub threads: usize,
}

/// Everything an ONNX validation measured and decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrtValidationReport {
    pub schema: u32,
    /// Always `onnxruntime`.
    pub framework: String,
    pub target: String,
    pub candidate: OnnxModelInfo,
    pub reference: OnnxModelInfo,
    pub inputs: SampleInfo,
    pub outputs: Vec<OutputAgreement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingAgreement>,
    /// Candidate first, then reference.
    pub latency: Vec<Latency>,
    /// Candidate first, then reference.
    pub memory: Vec<Memory>,
    pub target_side: TargetFigures,
    pub gates: Vec<GateResult>,
    /// Configured gates that do not apply to ONNX validation, with why.
    pub skipped_gates: Vec<String>,
    pub passed: bool,
    pub tool: OrtToolInfo,
}

impl OrtValidationReport {
    pub fn failures(&self) -> impl Iterator<Item = &GateResult> {
        self.gates.iter().filter(|g| !g.passed)
    }
}

// ---- the runtime ------------------------------------------------------------------------------

/// The libonnxruntime to load: `ORT_DYLIB_PATH`, else the `onnxruntime` toolchain's.
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::MissingTool {
                tool: "onnxruntime".into(),
                message: format!("{DYLIB_ENV}={} is not a file", p.display()),
                help: format!("unset {DYLIB_ENV} to use the managed toolchain, or point it at libonnxruntime.so.1.x"),
            });
        }
        return Ok(p);
    }
    let tc = edgeai_toolchain::find(TOOLCHAIN).map_err(|e| Error::MissingTool {
        tool: "onnxruntime".into(),
        message: format!("ONNX Runtime is needed to validate .onnx models: {e}"),
        help: format!(
            "run `{}` (or set {DYLIB_ENV} to a libonnxruntime)",
            edgeai_toolchain::install_command(TOOLCHAIN)
        ),
    })?;
    find_library(&tc.dir).ok_or_else(|| Error::MissingTool {
        tool: "onnxruntime".into(),
        message: format!(
            "the onnxruntime toolchain at {} has no onnxruntime/capi/libonnxruntime library",
            tc.dir.display()
        ),
        help: format!(
            "reinstall it: `{} --force`",
            edgeai_toolchain::install_command(TOOLCHAIN)
        ),
    })
}

/// `<env>/lib/python3.X/site-packages/onnxruntime/capi/libonnxruntime.so.1.Y.Z` (Linux),
/// `libonnxruntime.*.dylib` (macOS) or `Lib/site-packages/.../onnxruntime.dll` (Windows).
fn find_library(env: &Path) -> Option<PathBuf> {
    let mut site = Vec::new();
    site.push(env.join("Lib").join("site-packages"));
    for lib in ["lib", "lib64"] {
        if let Ok(rd) = std::fs::read_dir(env.join(lib)) {
            let mut pys: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("python"))
                })
                .collect();
            pys.sort();
            site.extend(pys.into_iter().map(|p| p.join("site-packages")));
        }
    }
    for s in site {
        let capi = s.join("onnxruntime").join("capi");
        let Ok(rd) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut hits: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
                n.is_some_and(|n| {
                    (n.starts_with("libonnxruntime.so.") && n.matches('.').count() >= 3)
                        || (n.starts_with("libonnxruntime.") && n.ends_with(".dylib"))
                        || n == "onnxruntime.dll"
                })
            })
            .collect();
        hits.sort();
        if let Some(h) = hits.pop() {
            return Some(h);
        }
    }
    None
}

/// The version in the library's file name (`libonnxruntime.so.1.32.0` -> `1.32.0`).
fn library_version(lib: &Path) -> String {
    let name = lib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("libonnxruntime.so.")
        .or_else(|| {
            name.strip_prefix("libonnxruntime.")
                .and_then(|s| s.strip_suffix(".dylib"))
        })
        .map(str::to_string)
        .unwrap_or_else(|| "unknown".into())
}

static ENV: OnceLock<std::result::Result<(::ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// The process's one ONNX Runtime environment (ort allows one), loaded on first use.
pub fn environment() -> Result<(&'static ::ort::environment::Environment, &'static Path)> {
    let lib = library_path()?;
    let got = ENV.get_or_init(|| {
        let builder = ::ort::init_from(&lib).map_err(|e| format!("{e}"))?;
        let env = builder
            .with_name("cargo-edgeai")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("{e}"))?;
        Ok((env, lib.clone()))
    });
    match got {
        Ok((env, lib)) => Ok((env, lib.as_path())),
        Err(e) => Err(Error::MissingTool {
            tool: "onnxruntime".into(),
            message: format!("cannot load ONNX Runtime from {}: {e}", lib.display()),
            help: format!(
                "reinstall the toolchain: `{} --force` (ort 2.0.0-rc.15 needs libonnxruntime >= 1.22)",
                edgeai_toolchain::install_command(TOOLCHAIN)
            ),
        }),
    }
}

fn ort_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::model(
        path,
        format!("ONNX Runtime: {what}: {e}"),
        "check that the file is a complete ONNX model (with its external-data files next to it) that onnxruntime 1.32 can load",
    )
}

fn open_session(path: &Path, threads: usize) -> Result<Session> {
    if !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file"),
        ));
    }
    let (env, _) = environment()?;
    let builder = Session::builder(env).map_err(|e| ort_err(path, "session options", e))?;
    let mut builder = builder
        .with_intra_threads(threads)
        .map_err(|e| ort_err(path, "threads", e))?;
    builder
        .commit_from_file(path)
        .map_err(|e| ort_err(path, "loading the model", e))
}

fn dtype_name(t: TensorElementType) -> String {
    format!("{t:?}").to_lowercase()
}

fn ports(list: &[::ort::value::Outlet]) -> Vec<Port> {
    list.iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => Port {
                name: o.name().to_string(),
                dtype: dtype_name(*ty),
                shape: shape.iter().copied().collect(),
            },
            other => Port {
                name: o.name().to_string(),
                dtype: format!("{other:?}"),
                shape: Vec::new(),
            },
        })
        .collect()
}

fn model_info(path: &Path, session: &Session) -> Result<OnnxModelInfo> {
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    Ok(OnnxModelInfo {
        path: path.to_path_buf(),
        label: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size_bytes,
        inputs: ports(session.inputs()),
        outputs: ports(session.outputs()),
    })
}

fn element_type(d: Dtype) -> TensorElementType {
    match d {
        Dtype::F32 => TensorElementType::Float32,
        Dtype::F64 => TensorElementType::Float64,
        Dtype::F16 => TensorElementType::Float16,
        Dtype::I64 => TensorElementType::Int64,
        Dtype::I32 => TensorElementType::Int32,
        Dtype::I8 => TensorElementType::Int8,
        Dtype::U8 => TensorElementType::Uint8,
        Dtype::Bool => TensorElementType::Bool,
    }
}

// ---- samples ----------------------------------------------------------------------------------

/// One sample: input name -> array, plus where it came from (for messages).
#[derive(Debug, Clone)]
struct Sample {
    origin: String,
    arrays: BTreeMap<String, Array>,
}

fn list_dir(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    Ok(v)
}

fn load_dir(dir: &Path, inputs: &[Port]) -> Result<Vec<Sample>> {
    let npz = list_dir(dir, "npz")?;
    let npys = list_dir(dir, "npy")?;
    let mut samples = Vec::new();
    for f in &npz {
        samples.push(Sample {
            origin: f.display().to_string(),
            arrays: npy::read_npz(f)?.into_iter().collect(),
        });
    }
    if !npys.is_empty() {
        let stem = |p: &Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let named = npys
            .iter()
            .all(|p| inputs.iter().any(|i| i.name == stem(p)));
        if named || inputs.len() != 1 {
            let mut arrays = BTreeMap::new();
            for p in &npys {
                arrays.insert(stem(p), npy::read_npy(p)?);
            }
            samples.push(Sample {
                origin: dir.display().to_string(),
                arrays,
            });
        } else {
            for p in &npys {
                let mut arrays = BTreeMap::new();
                arrays.insert(inputs[0].name.clone(), npy::read_npy(p)?);
                samples.push(Sample {
                    origin: p.display().to_string(),
                    arrays,
                });
            }
        }
    }
    if samples.is_empty() {
        return Err(Error::Usage {
            message: format!("{}: no .npz or .npy files", dir.display()),
            help: "put one .npz per sample (keys = the model's input names) or INPUT.npy files into the --inputs directory".into(),
        });
    }
    Ok(samples)
}

fn load_text(
    file: &Path,
    tokenizer: &Path,
    max: usize,
    inputs: &[Port],
) -> Result<(Vec<Sample>, Vec<String>)> {
    let tok = wordpiece::WordPiece::from_file(tokenizer)?;
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let sentences: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(max.max(1))
        .map(str::to_string)
        .collect();
    if sentences.is_empty() {
        return Err(Error::Usage {
            message: format!("{}: no sentences (every line is empty)", file.display()),
            help: "write one sentence per line".into(),
        });
    }
    let mut samples = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let ids = tok.encode(s);
        let n = ids.len();
        let mut arrays = BTreeMap::new();
        for port in inputs {
            let values: Vec<i64> = match port.name.as_str() {
                "input_ids" => ids.clone(),
                "attention_mask" => vec![1; n],
                "token_type_ids" => vec![0; n],
                other => {
                    return Err(Error::Usage {
                        message: format!(
                            "{}: the model has input `{other}`, which a tokenized sentence does not provide (it gives input_ids, attention_mask, token_type_ids)",
                            file.display()
                        ),
                        help: "pass the inputs as .npy/.npz files with --inputs DIR".into(),
                    })
                }
            };
            arrays.insert(port.name.clone(), Array::i64(vec![1, n], &values));
        }
        samples.push(Sample {
            origin: format!("{} line {}", file.display(), i + 1),
            arrays,
        });
    }
    Ok((samples, sentences))
}

fn fmt_shape<T: std::fmt::Display>(s: &[T]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Every sample must give exactly the model's inputs, with their element type, rank and fixed
/// dimensions.
fn check_samples(samples: &[Sample], model: &OnnxModelInfo) -> Result<()> {
    let help = |m: &OnnxModelInfo| {
        let list: Vec<String> = m
            .inputs
            .iter()
            .map(|p| format!("{} {} {}", p.name, p.dtype, fmt_shape(&p.shape)))
            .collect();
        format!(
            "the model's inputs are: {} (-1 = any size)",
            list.join("; ")
        )
    };
    for s in samples {
        for (name, a) in &s.arrays {
            let Some(port) = model.inputs.iter().find(|p| &p.name == name) else {
                return Err(Error::Usage {
                    message: format!(
                        "{}: input `{name}` is not an input of {}",
                        s.origin,
                        model.path.display()
                    ),
                    help: help(model),
                });
            };
            let found_ty = dtype_name(element_type(a.dtype));
            let shape_ok = port.shape.len() == a.shape.len()
                && port
                    .shape
                    .iter()
                    .zip(&a.shape)
                    .all(|(e, f)| *e < 0 || *e as usize == *f);
            if found_ty != port.dtype || !shape_ok {
                return Err(Error::Usage {
                    message: format!(
                        "{}: input `{name}`: expected {} {}, found {} {}",
                        s.origin,
                        port.dtype,
                        fmt_shape(&port.shape),
                        found_ty,
                        fmt_shape(&a.shape)
                    ),
                    help: help(model),
                });
            }
        }
        for port in &model.inputs {
            if !s.arrays.contains_key(&port.name) {
                return Err(Error::Usage {
                    message: format!(
                        "{}: no value for input `{}` ({} {}) of {}",
                        s.origin,
                        port.name,
                        port.dtype,
                        fmt_shape(&port.shape),
                        model.path.display()
                    ),
                    help: help(model),
                });
            }
        }
    }
    Ok(())
}

fn to_value(a: &Array) -> std::result::Result<DynValue, ::ort::Error> {
    fn cast<T: Copy, const N: usize>(d: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        d.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect()
    }
    let shape: Vec<i64> = a.shape.iter().map(|d| *d as i64).collect();
    Ok(match a.dtype {
        Dtype::F32 => Tensor::from_array((shape, cast(&a.data, f32::from_le_bytes)))?.into_dyn(),
        Dtype::F64 => Tensor::from_array((shape, cast(&a.data, f64::from_le_bytes)))?.into_dyn(),
        Dtype::I64 => Tensor::from_array((shape, cast(&a.data, i64::from_le_bytes)))?.into_dyn(),
        Dtype::I32 => Tensor::from_array((shape, cast(&a.data, i32::from_le_bytes)))?.into_dyn(),
        Dtype::I8 => Tensor::from_array((shape, cast(&a.data, i8::from_le_bytes)))?.into_dyn(),
        Dtype::U8 => Tensor::from_array((shape, a.data.clone()))?.into_dyn(),
        Dtype::Bool => {
            Tensor::from_array((shape, a.data.iter().map(|b| *b != 0).collect::<Vec<_>>()))?
                .into_dyn()
        }
        Dtype::F16 => {
            // No `half` feature: widen to f32 only if the model wants f32 — it does not here,
            // so refuse clearly.
            return Err(::ort::Error::new(
                "float16 inputs are not supported by this validator",
            ));
        }
    })
}

/// One output of one run, widened to f64, with its shape.
#[derive(Debug, Clone)]
struct OutData {
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// Recurrent state pairs (input, output) of a model: a float input and a float output of the
/// same rank whose name is the input's plus `N`/`n`/`_out`/`_new`/`_next`/`out`, or the
/// input's with a trailing `0` replaced by `n`/`N` (`h0` -> `hn`), with equal fixed dimensions.
fn state_pairs(info: &OnnxModelInfo) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    // float32 only: the state is read back as f32.
    for i in info.inputs.iter().filter(|p| p.dtype == "float32") {
        let mut names: Vec<String> = ["N", "n", "_out", "_new", "_next", "out"]
            .iter()
            .map(|s| format!("{}{s}", i.name))
            .collect();
        if let Some(stem) = i.name.strip_suffix('0') {
            names.push(format!("{stem}n"));
            names.push(format!("{stem}N"));
        }
        let found = info.outputs.iter().find(|o| {
            names.contains(&o.name)
                && o.dtype == i.dtype
                && o.shape.len() == i.shape.len()
                && o.shape
                    .iter()
                    .zip(&i.shape)
                    .all(|(a, b)| *a < 0 || *b < 0 || a == b)
        });
        if let Some(o) = found {
            pairs.push((i.name.clone(), o.name.clone()));
        }
    }
    pairs
}

/// Run every sample once, in order; outputs by name per sample. `state`: (input, output) pairs
/// whose output of one sample is fed as the input of the next (the first sample's own array
/// is the initial state).
fn run_all(
    session: &mut Session,
    path: &Path,
    inputs: &[Vec<(String, DynValue)>],
    state: &[(String, String)],
) -> Result<Vec<BTreeMap<String, OutData>>> {
    let mut all = Vec::new();
    let mut carried: BTreeMap<String, DynValue> = BTreeMap::new();
    for sample in inputs {
        let feed: Vec<(&str, &DynValue)> = sample
            .iter()
            .map(|(n, v)| (n.as_str(), carried.get(n).unwrap_or(v)))
            .collect();
        let outputs = session
            .run(feed)
            .map_err(|e| ort_err(path, "running the model", e))?;
        let mut next = BTreeMap::new();
        for (input, output) in state {
            if let Some(v) = outputs.get(output.as_str()) {
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| ort_err(path, "reading the recurrent state", e))?;
                let t = Tensor::from_array((shape.to_vec(), data.to_vec()))
                    .map_err(|e| ort_err(path, "feeding back the recurrent state", e))?;
                next.insert(input.clone(), t.into_dyn());
            }
        }
        let mut map = BTreeMap::new();
        for (name, value) in outputs.iter() {
            let data = if let Ok((s, d)) = value.try_extract_tensor::<f32>() {
                Some((s.clone(), d.iter().map(|v| *v as f64).collect()))
            } else if let Ok((s, d)) = value.try_extract_tensor::<f64>() {
                Some((s.clone(), d.to_vec()))
            } else if let Ok((s, d)) = value.try_extract_tensor::<i64>() {
                Some((s.clone(), d.iter().map(|v| *v as f64).collect()))
            } else if let Ok((s, d)) = value.try_extract_tensor::<i32>() {
                Some((s.clone(), d.iter().map(|v| *v as f64).collect()))
            } else {
                None
            };
            if let Some((s, values)) = data {
                map.insert(
                    name.to_string(),
                    OutData {
                        shape: s.iter().map(|d| (*d).max(0) as usize).collect(),
                        values,
                    },
                );
            }
        }
        drop(outputs);
        carried = next;
        all.push(map);
    }
    Ok(all)
}

fn time_runs(
    session: &mut Session,
    path: &Path,
    inputs: &[Vec<(String, DynValue)>],
    warmup: usize,
    runs: usize,
    label: &str,
) -> Result<Latency> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let sample = &inputs[i % inputs.len()];
        let feed: Vec<(&str, &DynValue)> = sample.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let t = Instant::now();
        let out = session
            .run(feed)
            .map_err(|e| ort_err(path, "running the model", e))?;
        drop(out);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    times.sort_by(f64::total_cmp);
    Ok(Latency {
        label: label.into(),
        runs,
        warmup,
        p50_ms: percentile(&times, 0.50),
        p95_ms: percentile(&times, 0.95),
        mean_ms: mean,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- memory -----------------------------------------------------------------------------------

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok()
}

/// Reset the resident high-water mark (Linux >= 4.0: "5" to /proc/self/clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---- comparison -------------------------------------------------------------------------------

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Mean over tokens (all attended: samples are unpadded) of a [1, T, H] output, or a [1, H]
/// output as is; then L2-normalised (sentence-transformers' mean pooling + Normalize).
fn pooled(out: &OutData) -> Option<Vec<f64>> {
    let (tokens, hidden) = match out.shape.as_slice() {
        [1, t, h] => (*t, *h),
        [1, h] => (1, *h),
        _ => return None,
    };
    if tokens == 0 || hidden == 0 {
        return None;
    }
    let mut v = vec![0.0; hidden];
    for t in 0..tokens {
        for (h, acc) in v.iter_mut().enumerate() {
            *acc += out.values[t * hidden + h];
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    Some(v.iter().map(|x| x / norm).collect())
}

fn compare(
    cand: &[BTreeMap<String, OutData>],
    refs: &[BTreeMap<String, OutData>],
    reference: &OnnxModelInfo,
    text: bool,
    candidate_path: &Path,
) -> Result<(Vec<OutputAgreement>, Option<EmbeddingAgreement>)> {
    let mut outs = Vec::new();
    for port in &reference.outputs {
        let name = &port.name;
        let (mut cos_sum, mut cos_min, mut max_abs, mut n) = (0.0, f64::INFINITY, 0.0f64, 0usize);
        let (mut agree, mut rows) = (0u64, 0u64);
        // Outputs of one value per sample (a VAD probability, a score): the cosine of two
        // one-element vectors is always ±1, so those are compared over all samples at once.
        let (mut all_c, mut all_r) = (Vec::new(), Vec::new());
        // Embeddings and hidden states are rank 2 too, but their argmax means nothing.
        let lname = name.to_ascii_lowercase();
        let mut classifier = !text && !lname.contains("embed") && !lname.contains("hidden");
        for (c, r) in cand.iter().zip(refs) {
            let Some(r) = r.get(name) else { continue };
            let Some(c) = c.get(name) else {
                return Err(Error::Usage {
                    message: format!(
                        "{} has no output `{name}` (the reference has it)",
                        candidate_path.display()
                    ),
                    help: "validate a candidate made from this reference: both must have the same outputs".into(),
                });
            };
            if c.shape != r.shape {
                return Err(Error::Usage {
                    message: format!(
                        "{}: output `{name}` has shape {} but the reference's is {}",
                        candidate_path.display(),
                        fmt_shape(&c.shape),
                        fmt_shape(&r.shape)
                    ),
                    help: "validate a candidate made from this reference".into(),
                });
            }
            all_c.extend_from_slice(&c.values);
            all_r.extend_from_slice(&r.values);
            let cs = cosine(&c.values, &r.values);
            cos_sum += cs;
            cos_min = cos_min.min(cs);
            n += 1;
            for (x, y) in c.values.iter().zip(&r.values) {
                max_abs = max_abs.max((x - y).abs());
            }
            match r.shape.as_slice() {
                [_, cols] if *cols >= 2 && classifier => {
                    for (cr, rr) in c.values.chunks(*cols).zip(r.values.chunks(*cols)) {
                        rows += 1;
                        agree += u64::from(argmax(cr) == argmax(rr));
                    }
                }
                _ => classifier = false,
            }
        }
        if n == 0 {
            continue;
        }
        let mut decision = None;
        if all_r.len() <= n {
            let whole = cosine(&all_c, &all_r);
            cos_sum = whole * n as f64;
            cos_min = whole;
            let unit = |v: &[f64]| v.iter().all(|x| (0.0..=1.0).contains(x));
            if n >= 2 && unit(&all_c) && unit(&all_r) {
                let t = DECISION_THRESHOLD;
                let pos = |v: &[f64]| v.iter().filter(|x| **x > t).count() as f64 / v.len() as f64;
                let same = all_c
                    .iter()
                    .zip(&all_r)
                    .filter(|(c, r)| (**c > t) == (**r > t))
                    .count();
                decision = Some(DecisionAgreement {
                    threshold: t,
                    agreement: same as f64 / all_r.len() as f64,
                    reference_positive: pos(&all_r),
                    candidate_positive: pos(&all_c),
                    samples: all_r.len(),
                });
            }
        }
        outs.push(OutputAgreement {
            name: name.clone(),
            cosine_mean: cos_sum / n as f64,
            cosine_min: cos_min,
            max_abs_error: max_abs,
            top1_agreement: (classifier && rows > 0).then(|| agree as f64 / rows as f64),
            rows: if classifier { rows } else { 0 },
            decision,
        });
    }
    let embedding = if text {
        // The sentence embedding: a rank-2 output if the model has one (sentence_embedding),
        // else the first rank-3 output (last_hidden_state) mean-pooled.
        let pick = |rank: usize| {
            reference
                .outputs
                .iter()
                .find(|p| p.shape.len() == rank)
                .map(|p| p.name.clone())
        };
        match pick(2).or_else(|| pick(3)) {
            Some(name) => {
                let mut cs = Vec::new();
                for (c, r) in cand.iter().zip(refs) {
                    if let (Some(pc), Some(pr)) =
                        (c.get(&name).and_then(pooled), r.get(&name).and_then(pooled))
                    {
                        cs.push(cosine(&pc, &pr));
                    }
                }
                (!cs.is_empty()).then(|| EmbeddingAgreement {
                    output: name,
                    sentences: cs.len(),
                    cosine_mean: cs.iter().sum::<f64>() / cs.len() as f64,
                    cosine_min: cs.iter().copied().fold(f64::INFINITY, f64::min),
                })
            }
            None => None,
        }
    } else {
        None
    };
    Ok((outs, embedding))
}

// ---- target side and gates --------------------------------------------------------------------

/// Footprint on the target: the candidate file + the ONNX Runtime rule's overhead for this
/// target (no KV cache: ONNX graphs here are encoders and classifiers).
fn target_figures(target: &Target, candidate: &OnnxModelInfo) -> Result<TargetFigures> {
    let matrix = Matrix::builtin()?;
    let overhead_mb = matrix
        .rules
        .iter()
        .find(|r| {
            r.framework == Framework::OnnxRuntime
                && target.accelerators.iter().any(|a| {
                    r.applies(
                        a.kind,
                        target.os,
                        &target.triple,
                        crate::facts::ModelClass::Encoder,
                    ) || r.applies(
                        a.kind,
                        target.os,
                        &target.triple,
                        crate::facts::ModelClass::Other,
                    )
                })
        })
        .map_or(128, |r| r.overhead_mb);
    let overhead_bytes = overhead_mb * (1 << 20);
    let total = candidate.size_bytes + overhead_bytes;
    Ok(TargetFigures {
        label: format!("estimated for {} (not measured on the device)", target.name),
        target: target.name.clone(),
        context_length: 0,
        weights_bytes: candidate.size_bytes,
        kv_cache_bytes: 0,
        overhead_bytes,
        total_bytes: total,
        budget_bytes: target.budget_bytes(),
        fits: total <= target.budget_bytes(),
        decode_tokens_per_s: None,
        decode_basis: "not applicable: ONNX validation measures latency per inference".into(),
    })
}

fn evaluate(
    gates: &Gates,
    outputs: &[OutputAgreement],
    embedding: Option<&EmbeddingAgreement>,
    latency: &Latency,
    memory: &Memory,
    side: &TargetFigures,
) -> (Vec<GateResult>, Vec<String>) {
    const MIB: f64 = (1u64 << 20) as f64;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    if let Some(t) = gates.min_cosine {
        let (value, basis) = match embedding {
            Some(e) => (
                Some(e.cosine_mean),
                format!(
                    "mean cosine of the mean-pooled normalised `{}` embedding over {} sentences",
                    e.output, e.sentences
                ),
            ),
            None => {
                let worst = outputs
                    .iter()
                    .min_by(|a, b| a.cosine_mean.total_cmp(&b.cosine_mean));
                (
                    worst.map(|o| o.cosine_mean),
                    match worst {
                        Some(o) => format!("lowest per-output mean cosine (output `{}`)", o.name),
                        None => "no comparable float output".into(),
                    },
                )
            }
        };
        out.push(GateResult::judge(
            "min_cosine",
            value,
            t,
            Direction::AtLeast,
            "",
            &basis,
        ));
    }
    if let Some(t) = gates.min_top1 {
        // A probability output's yes/no decision is a two-class top-1.
        let worst = outputs
            .iter()
            .filter_map(|o| {
                o.top1_agreement
                    .or(o.decision.as_ref().map(|d| d.agreement))
                    .map(|a| (o, a))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        out.push(GateResult::judge(
            "min_top1",
            worst.map(|w| w.1),
            t,
            Direction::AtLeast,
            "",
            &match worst {
                Some((o, _)) if o.top1_agreement.is_none() => format!(
                    "fraction of samples where `{}` takes the reference's decision at {}",
                    o.name, DECISION_THRESHOLD
                ),
                Some((o, _)) => format!(
                    "fraction of rows of `{}` with the reference's argmax",
                    o.name
                ),
                None => {
                    "no classifier-like output (rank 2, >= 2 classes) and no probability output"
                        .into()
                }
            },
        ));
    }
    if let Some(t) = gates.max_memory_mb {
        out.push(GateResult::judge(
            "max_memory_mb",
            memory.peak_rss_bytes.map(|b| b as f64 / MIB),
            t,
            Direction::AtMost,
            "MiB",
            &memory.basis,
        ));
    }
    if let Some(t) = gates.max_latency_p95_ms {
        out.push(GateResult::judge(
            "max_latency_p95_ms",
            Some(latency.p95_ms),
            t,
            Direction::AtMost,
            "ms",
            &format!(
                "p95 of {} runs after {} warm-up runs on this host",
                latency.runs, latency.warmup
            ),
        ));
    }
    for (name, set) in [
        ("max_kld", gates.max_kld.is_some()),
        ("max_ppl_ratio", gates.max_ppl_ratio.is_some()),
        (
            "min_decode_tokens_per_s",
            gates.min_decode_tokens_per_s.is_some(),
        ),
    ] {
        if set {
            skipped.push(format!(
                "{name}: measures token distributions or decoding; not applicable to an ONNX graph (use min_cosine / min_top1)"
            ));
        }
    }
    out.push(GateResult::judge(
        "target_memory_budget",
        Some(side.total_bytes as f64 / MIB),
        side.budget_bytes as f64 / MIB,
        Direction::AtMost,
        "MiB",
        &format!(
            "estimated footprint on {} (model file + ONNX Runtime overhead) against its budget_mb",
            side.target
        ),
    ));
    (out, skipped)
}

// ---- the validation ---------------------------------------------------------------------------

/// Validate `candidate` against `reference` (both .onnx) on ONNX Runtime's CPU EP.
pub fn validate_onnx(
    candidate: &Path,
    reference: &Path,
    opts: &OrtValidateOptions,
) -> Result<OrtValidationReport> {
    if opts.runs == 0 {
        return Err(Error::Usage {
            message: "--runs 0: latency needs at least one timed run".into(),
            help: "use --runs 20 or more for stable percentiles".into(),
        });
    }
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (_, lib) = environment()?;
    let lib = lib.to_path_buf();

    // Candidate first, with the high-water mark reset: its peak memory is its own.
    let reset = reset_peak();
    let cand_base = status_kib("VmRSS:").map(|k| k * 1024);
    let mut cand_session = open_session(candidate, threads)?;
    let cand_info = model_info(candidate, &cand_session)?;
    let (samples, text) = match &opts.inputs {
        InputSource::Dir(d) => (load_dir(d, &cand_info.inputs)?, false),
        InputSource::Text {
            file,
            tokenizer,
            max_sentences,
        } => (
            load_text(file, tokenizer, *max_sentences, &cand_info.inputs)?.0,
            true,
        ),
    };
    check_samples(&samples, &cand_info)?;
    // A stateful model fed a folder of samples runs them as one stream (see SampleInfo).
    let state = if matches!(opts.inputs, InputSource::Dir(_)) && samples.len() > 1 {
        state_pairs(&cand_info)
    } else {
        Vec::new()
    };
    let values: Vec<Vec<(String, DynValue)>> = samples
        .iter()
        .map(|s| {
            s.arrays
                .iter()
                .map(|(n, a)| {
                    to_value(a)
                        .map(|v| (n.clone(), v))
                        .map_err(|e| Error::Usage {
                            message: format!("{}: input `{n}`: {e}", s.origin),
                            help: "pass float32/float64/int64/int32/int8/uint8/bool arrays".into(),
                        })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let cand_out = run_all(&mut cand_session, candidate, &values, &state)?;
    let cand_lat = time_runs(
        &mut cand_session,
        candidate,
        &values,
        opts.warmup,
        opts.runs,
        &cand_info.label,
    )?;
    let cand_peak = status_kib("VmHWM:").map(|k| k * 1024);
    drop(cand_session);

    let reset_ref = reset_peak();
    let ref_base = status_kib("VmRSS:").map(|k| k * 1024);
    let mut ref_session = open_session(reference, threads)?;
    let ref_info = model_info(reference, &ref_session)?;
    check_samples(&samples, &ref_info).map_err(|e| match e {
        Error::Usage { message, help } => Error::Usage {
            message: format!("reference: {message}"),
            help: format!("candidate and reference must take the same inputs; {help}"),
        },
        other => other,
    })?;
    if state_pairs(&ref_info) != state && !state.is_empty() {
        return Err(Error::Usage {
            message: format!(
                "{} feeds back recurrent state ({}) but the reference {} does not have the same state input/output pairs",
                candidate.display(),
                fmt_pairs(&state),
                reference.display()
            ),
            help: "validate a candidate made from this reference: both must have the same inputs and outputs".into(),
        });
    }
    let ref_out = run_all(&mut ref_session, reference, &values, &state)?;
    let ref_lat = time_runs(
        &mut ref_session,
        reference,
        &values,
        opts.warmup,
        opts.runs,
        &ref_info.label,
    )?;
    let ref_peak = status_kib("VmHWM:").map(|k| k * 1024);
    drop(ref_session);

    let (outputs, embedding) = compare(&cand_out, &ref_out, &ref_info, text, candidate)?;
    let basis = |reset: bool, who: &str| {
        match (reset, cand_peak.is_some()) {
        (_, false) => "not measured: /proc/self/status is not available on this OS".to_string(),
        (true, _) if who == "candidate" => "resident high-water mark (VmHWM) of this process while the candidate was loaded and run, reset before loading it (/proc/self/clear_refs); includes the process baseline (ONNX Runtime library, inputs)".into(),
        (true, _) => "resident high-water mark (VmHWM) while the reference was loaded and run, reset before loading it; may include heap the allocator kept from the candidate run".into(),
        (false, _) => format!("resident high-water mark of the whole process up to the end of the {who} run (could not reset it: /proc/self/clear_refs not writable)"),
    }
    };
    let memory = vec![
        Memory {
            label: cand_info.label.clone(),
            baseline_rss_bytes: cand_base,
            peak_rss_bytes: cand_peak,
            basis: basis(reset, "candidate"),
        },
        Memory {
            label: ref_info.label.clone(),
            baseline_rss_bytes: ref_base,
            peak_rss_bytes: ref_peak,
            basis: basis(reset_ref, "reference"),
        },
    ];
    let target_side = target_figures(&opts.target, &cand_info)?;
    let (gates, skipped_gates) = evaluate(
        &opts.gates,
        &outputs,
        embedding.as_ref(),
        &cand_lat,
        &memory[0],
        &target_side,
    );
    let passed = gates.iter().all(|g| g.passed);
    let source = match &opts.inputs {
        InputSource::Dir(d) => format!("inputs {}", d.display()),
        InputSource::Text {
            file, tokenizer, ..
        } => format!(
            "text {} (tokenizer {})",
            file.display(),
            tokenizer.display()
        ),
    };
    Ok(OrtValidationReport {
        schema: super::SCHEMA_VERSION,
        framework: "onnxruntime".into(),
        target: opts.target.name.clone(),
        candidate: cand_info,
        reference: ref_info,
        inputs: SampleInfo {
            source,
            samples: samples.len(),
            recurrent_state: state.iter().map(|(i, o)| format!("{i} <- {o}")).collect(),
        },
        outputs,
        embedding,
        latency: vec![cand_lat, ref_lat],
        memory,
        target_side,
        gates,
        skipped_gates,
        passed,
        tool: OrtToolInfo {
            version: library_version(&lib),
            library: lib,
            execution_provider: HOST_EP.into(),
            threads,
        },
    })
}

fn fmt_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(i, o)| format!("`{i}` <- `{o}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `path` is an ONNX model file (by extension: the validator dispatches on it).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

// ---- reports ----------------------------------------------------------------------------------

fn fmt_bytes_mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn opt_mib(v: Option<u64>) -> String {
    v.map_or("-".into(), fmt_bytes_mib)
}

/// The terminal report.
pub fn render_human(r: &OrtValidationReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "validate {} against {} on {} (onnxruntime {}, {}, {} threads; {} samples from {})",
        r.candidate.path.display(),
        r.reference.path.display(),
        r.target,
        r.tool.version,
        r.tool.execution_provider,
        r.tool.threads,
        r.inputs.samples,
        r.inputs.source
    );
    let _ = writeln!(s, "\noutputs (candidate vs reference)");
    let _ = writeln!(
        s,
        "  {:<24}{:>12}{:>12}{:>14}{:>10}",
        "output", "cos mean", "cos min", "max |err|", "top-1 %"
    );
    for o in &r.outputs {
        let _ = writeln!(
            s,
            "  {:<24}{:>12.6}{:>12.6}{:>14.6}{:>10}",
            o.name,
            o.cosine_mean,
            o.cosine_min,
            o.max_abs_error,
            o.top1_agreement
                .map_or("-".into(), |a| format!("{:.2}", a * 100.0))
        );
    }
    if !r.inputs.recurrent_state.is_empty() {
        let _ = writeln!(
            s,
            "\nsamples run in file order as one stream, recurrent state fed back: {}",
            r.inputs.recurrent_state.join(", ")
        );
    }
    for o in &r.outputs {
        if let Some(d) = &o.decision {
            let _ = writeln!(
                s,
                "{} decision (> {}): agreement {:.2}% over {} samples; positive: reference {:.2}%, candidate {:.2}%; max |err| {:.6}",
                o.name,
                d.threshold,
                d.agreement * 100.0,
                d.samples,
                d.reference_positive * 100.0,
                d.candidate_positive * 100.0,
                o.max_abs_error
            );
        }
    }
    if let Some(e) = &r.embedding {
        let _ = writeln!(
            s,
            "\nsentence embedding (mean-pooled `{}`, normalised): cosine mean {:.6}, min {:.6} over {} sentences",
            e.output, e.cosine_mean, e.cosine_min, e.sentences
        );
    }
    let _ = writeln!(s, "\nlatency and memory (measured on this host)");
    let _ = writeln!(
        s,
        "  {:<28}{:>10}{:>10}{:>10}{:>14}",
        "model", "p50 ms", "p95 ms", "mean ms", "peak RSS"
    );
    for (l, m) in r.latency.iter().zip(&r.memory) {
        let _ = writeln!(
            s,
            "  {:<28}{:>10.3}{:>10.3}{:>10.3}{:>14}",
            l.label,
            l.p50_ms,
            l.p95_ms,
            l.mean_ms,
            opt_mib(m.peak_rss_bytes)
        );
    }
    let t = &r.target_side;
    let _ = writeln!(
        s,
        "  {}: {} of {} budget",
        t.label,
        fmt_bytes_mib(t.total_bytes),
        fmt_bytes_mib(t.budget_bytes)
    );
    let _ = writeln!(s, "\ngates");
    for g in &r.gates {
        let _ = writeln!(
            s,
            "  {} {}",
            if g.passed { "pass" } else { "FAIL" },
            g.describe()
        );
    }
    for k in &r.skipped_gates {
        let _ = writeln!(s, "  skip {k}");
    }
    let _ = writeln!(
        s,
        "\n{}",
        if r.passed {
            "all gates passed"
        } else {
            "GATES FAILED"
        }
    );
    s
}

/// JUnit XML in the llama.cpp path's layout: one testsuite per model, one testcase per gate.
pub fn render_junit(reports: &[&OrtValidationReport]) -> String {
    let suites: Vec<JunitSuite<'_>> = reports
        .iter()
        .map(|r| JunitSuite {
            label: &r.candidate.label,
            target: &r.target,
            gates: &r.gates,
        })
        .collect();
    render_junit_suites(&suites)
}

/// One self-contained HTML page: agreement table, latency and memory plots, gates.
pub fn render_html(title: &str, reports: &[&OrtValidationReport], summary: &str) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th{{background:#f4f4f4}}.fail{{color:#c0392b;font-weight:bold}}.pass{{color:#27ae60}}.plots svg{{margin:8px;border:1px solid #ddd}}</style></head><body>\
<h1>{t}</h1><p>{summary}</p>",
        t = xml_escape(title),
        summary = xml_escape(summary)
    );
    let latency: Vec<(String, Vec<Option<f64>>)> = reports
        .iter()
        .flat_map(|r| {
            r.latency
                .iter()
                .map(|l| (l.label.clone(), vec![Some(l.p50_ms), Some(l.p95_ms)]))
        })
        .collect();
    let memory: Vec<(String, Vec<Option<f64>>)> = reports
        .iter()
        .flat_map(|r| {
            r.memory.iter().map(|m| {
                (
                    m.label.clone(),
                    vec![m.peak_rss_bytes.map(|b| b as f64 / MIB)],
                )
            })
        })
        .collect();
    h.push_str("<div class=\"plots\">");
    h.push_str(&svg_bars(
        "Latency per inference (ms, measured on this host)",
        "ms",
        &[("p50", "#2c7fb8"), ("p95", "#f39c12")],
        &latency,
        None,
    ));
    h.push_str(&svg_bars(
        "Peak resident memory (MiB, measured on this host)",
        "MiB",
        &[("peak RSS", "#2c7fb8")],
        &memory,
        None,
    ));
    h.push_str("</div><h2>Agreement</h2><table><tr><th>candidate</th><th>output</th><th>cosine mean</th><th>cosine min</th><th>max abs error</th><th>top-1 %</th></tr>");
    for r in reports {
        for o in &r.outputs {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.6}</td><td>{:.6}</td><td>{:.6}</td><td>{}</td></tr>",
                xml_escape(&r.candidate.label),
                xml_escape(&o.name),
                o.cosine_mean,
                o.cosine_min,
                o.max_abs_error,
                o.top1_agreement
                    .map_or("-".into(), |a| format!("{:.2}", a * 100.0))
            );
        }
        if let Some(e) = &r.embedding {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>sentence embedding ({})</td><td>{:.6}</td><td>{:.6}</td><td>-</td><td>-</td></tr>",
                xml_escape(&r.candidate.label),
                xml_escape(&e.output),
                e.cosine_mean,
                e.cosine_min
            );
        }
    }
    h.push_str(
        "</table><h2>Gates</h2><table><tr><th>candidate</th><th>gate</th><th>result</th></tr>",
    );
    for r in reports {
        for g in &r.gates {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\" style=\"text-align:left\">{}</td></tr>",
                xml_escape(&r.candidate.label),
                xml_escape(&g.name),
                if g.passed { "pass" } else { "fail" },
                xml_escape(&g.describe())
            );
        }
    }
    h.push_str("</table><p>Measured on this host with ONNX Runtime's CPU execution provider; the target footprint is an estimate from the target manifest, not a measurement on the device.</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.95), 19.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
    }

    #[test]
    fn recurrent_state_pairs_by_name() {
        let port = |n: &str, shape: Vec<i64>| Port {
            name: n.into(),
            dtype: "float32".into(),
            shape,
        };
        let info = OnnxModelInfo {
            path: "m.onnx".into(),
            label: "m".into(),
            size_bytes: 0,
            inputs: vec![
                port("input", vec![-1, -1]),
                port("state", vec![2, -1, 128]),
                port("h0", vec![1, 1, 8]),
                port("c0", vec![1, 1, 8]),
            ],
            outputs: vec![
                port("output", vec![-1, 1]),
                port("stateN", vec![-1, -1, -1]),
                port("hn", vec![1, 1, 8]),
                // Another rank: not c0's state.
                port("cn", vec![1, 8]),
            ],
        };
        assert_eq!(
            state_pairs(&info),
            vec![
                ("state".to_string(), "stateN".to_string()),
                ("h0".to_string(), "hn".to_string())
            ]
        );
    }

    #[test]
    fn cosine_and_pooling() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        let out = OutData {
            shape: vec![1, 2, 2],
            values: vec![1.0, 0.0, 3.0, 0.0],
        };
        assert_eq!(pooled(&out), Some(vec![1.0, 0.0]));
    }

    #[test]
    fn library_version_from_file_name() {
        assert_eq!(
            library_version(Path::new("/x/libonnxruntime.so.1.32.0")),
            "1.32.0"
        );
    }
}
