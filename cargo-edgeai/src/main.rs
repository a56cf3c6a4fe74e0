//! `cargo-edgeai`: the thin command-line layer. Each subcommand parses its arguments and calls
//! one library function; printing and exit codes live here, the work lives in the library.
//!
//! Exit codes: 0 ok, 1 user error or failed gate, 2 internal error (a panic included).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use edgeai::facts::read_model_facts;
use edgeai::manifest::{TargetSet, DEFAULT_TARGET};
use edgeai::matrix::{Matrix, Prefer};
use edgeai::plan::{make_plan, PlanOptions};
use edgeai::project::{find_manifest, load_project, Project};
use edgeai::quant::Framework;
use edgeai::report::{self, Format};
use edgeai::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "cargo-edgeai",
    bin_name = "cargo edgeai",
    version,
    about = "Plan, convert, quantize, validate and bundle AI models for edge devices",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct GlobalArgs {
    /// Path to the Cargo.toml of the project (default: the one around the current directory).
    #[arg(long, global = true, value_name = "PATH")]
    manifest_path: Option<PathBuf>,
    /// More output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No output but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the target devices (built-in and the project's targets-dir).
    Targets(TargetsArgs),
    /// Decide framework, format and quantization for a model on a target, and explain why.
    Plan(PlanArgs),
    /// Show a model's facts (GGUF, safetensors, Hugging Face directory, ONNX) from its headers.
    Inspect(InspectArgs),
    /// Report the toolchains and runtimes found, and which steps of which targets can run here.
    Doctor(DoctorArgs),
    /// Install, list or remove the managed Python toolchains (mlx, onnxruntime, ...).
    Toolchain(ToolchainArgs),
    /// Add a commented [package.metadata.edgeai] table to Cargo.toml (idempotent).
    Init(InitArgs),
    /// Quantize a GGUF model (byte-identical to llama.cpp's llama-quantize).
    Quantize(QuantizeArgs),
    /// Convert a GGUF model back to F16/F32 (what `llama-quantize --allow-requantize` writes).
    Dequantize(DequantizeArgs),
    /// Convert a Hugging Face model directory to GGUF (F32/F16/BF16 or any quantize type).
    Convert(ConvertArgs),
    /// Export a llama-family GGUF to a Hugging Face directory (F32 safetensors + tokenizer).
    Export(ExportArgs),
    /// Measure a quantized GGUF against its reference on llama.cpp and check the gates (exit 1 on failure).
    Validate(ValidateArgs),
    /// Quantize to several types, validate each, and recommend the smallest that passes the gates.
    Sweep(SweepArgs),
    /// Run the whole pipeline: convert, quantize, validate, build the app, bundle and sign.
    Build(BuildArgs),
    /// Remove target/edgeai (the step cache and bundles), or one target's outputs.
    Clean(CleanArgs),
    /// Generate a minisign key pair for signing bundles (secret key 0600, public key KEY.pub).
    Keygen(KeygenArgs),
    /// Sign a bundle: writes BUNDLE.minisig next to it (minisign format, prehashed Ed25519).
    Sign(SignArgs),
    /// Verify a bundle: signature, then every file's sha256 and size, then no missing or extra entries.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Secret key file to write; the public key goes to KEY.pub.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "KEY",
        default_value = "edgeai.key"
    )]
    output: PathBuf,
    /// Store the secret key without a password (not recommended; e.g. for a CI secret store).
    #[arg(long, conflicts_with = "password_file")]
    unencrypted: bool,
    /// Read the password from the first line of FILE (else EDGEAI_KEY_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct SignArgs {
    /// The bundle (.zip) to sign.
    bundle: PathBuf,
    /// Minisign secret key (from `cargo edgeai keygen`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Read the key's password from the first line of FILE (else EDGEAI_KEY_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The bundle (.zip); its signature is BUNDLE.minisig next to it.
    bundle: PathBuf,
    /// Minisign public key (KEY.pub from `cargo edgeai keygen`).
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// The secret key's password: --password-file, else EDGEAI_KEY_PASSWORD, else a terminal prompt.
fn key_password(file: Option<&Path>, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        return Ok(edgeai_bundle::read_password_file(f)?);
    }
    if let Some(p) = std::env::var(edgeai_bundle::PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(p);
    }
    Ok(edgeai_bundle::prompt_password(
        "Password for the secret key: ",
        confirm,
    )?)
}

fn public_key_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// Target device (repeatable; default: the first of [package.metadata.edgeai] targets, else host-x86_64).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Build the app with the release profile.
    #[arg(long)]
    release: bool,
    /// Build every target listed in [package.metadata.edgeai] targets.
    #[arg(long)]
    all_targets: bool,
    /// No network: models from the hub cache, cargo --offline.
    #[arg(long)]
    offline: bool,
    /// Minisign secret key to sign with (else EDGEAI_SIGNING_KEY, else [package.metadata.edgeai] signing-key; password from EDGEAI_KEY_PASSWORD).
    #[arg(long, value_name = "KEY")]
    key: Option<PathBuf>,
    /// Do not validate the quantized model (recorded as skipped in the bundle's manifest).
    #[arg(long)]
    skip_validation: bool,
    /// Worker threads for convert, quantize and validate (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct CleanArgs {
    /// Only this target's outputs (target/edgeai/NAME); the step cache stays.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Target device whose gates, budget and bandwidth apply.
    #[arg(long, default_value = DEFAULT_TARGET)]
    target: String,
    /// Evaluation text (default: /usr/share/common-licenses/GPL-3 + Apache-2.0 joined).
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Context of each evaluated chunk (llama-perplexity -c).
    #[arg(long, value_name = "N", default_value_t = 512)]
    ctx: u64,
    /// Evaluate only the first N chunks (default: the whole text).
    #[arg(long, value_name = "N")]
    chunks: Option<u32>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Skip llama-bench (no tokens/s or time to first token; a min_decode_tokens_per_s gate then fails).
    #[arg(long)]
    no_bench: bool,
    /// llama-bench prompt tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    bench_prompt: u32,
    /// llama-bench generated tokens.
    #[arg(long, value_name = "N", default_value_t = 32)]
    bench_gen: u32,
    /// llama-bench repetitions.
    #[arg(long, value_name = "N", default_value_t = 2)]
    bench_reps: u32,
    /// Reference-logits cache (default: ${XDG_CACHE_HOME:-~/.cache}/cargo-edgeai/validate).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Also write JUnit XML (one testcase per gate) here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write a self-contained HTML report with plots here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// The quantized GGUF (or MLX directory, validated with mlx-lm) to validate.
    #[arg(long, value_name = "CANDIDATE.gguf")]
    model: PathBuf,
    /// The unquantized GGUF (for MLX: the Hugging Face or MLX directory) it was made from.
    #[arg(long, value_name = "REF.gguf")]
    reference: PathBuf,
    /// ONNX models: a directory of sample inputs (.npz per sample, or INPUT.npy files).
    #[arg(long, value_name = "DIR")]
    inputs: Option<PathBuf>,
    /// ONNX text encoders: the WordPiece tokenizer.json that tokenizes --text (one sentence per line).
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// ONNX models: use at most N sentences of --text.
    #[arg(long, value_name = "N", default_value_t = 64)]
    sentences: usize,
    /// ONNX models: timed runs per model for latency p50/p95.
    #[arg(long, value_name = "N", default_value_t = 20)]
    runs: usize,
    /// ONNX models: untimed warm-up runs per model.
    #[arg(long, value_name = "N", default_value_t = 3)]
    warmup: usize,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Args, Debug)]
struct SweepArgs {
    /// The unquantized GGUF (F32/F16/BF16) to quantize.
    #[arg(long)]
    model: PathBuf,
    /// Reference to validate against (default: --model).
    #[arg(long, value_name = "REF.gguf")]
    reference: Option<PathBuf>,
    /// Comma-separated file types.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0"
    )]
    types: Vec<String>,
    /// Directory for the quantized files.
    #[arg(long, value_name = "DIR", default_value = "target/edgeai/sweep")]
    out_dir: PathBuf,
    /// Where to write the sweep result that `plan` uses (default: target/edgeai/<target>/sweep.json
    /// of the project, or of the current directory without one).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    eval: EvalArgs,
}

/// The validation options and target the eval flags describe, with the gates resolved.
fn eval_setup(
    global: &GlobalArgs,
    eval: &EvalArgs,
    candidate: PathBuf,
    reference: PathBuf,
) -> Result<(edgeai::manifest::Target, edgeai::validate::ValidateOptions)> {
    // Like `plan --model`: no project is needed, but one around us contributes targets and gates.
    let project = if global.manifest_path.is_none() {
        load_project(None).ok().flatten()
    } else {
        project(global)?
    };
    let targets = target_set(project.as_ref())?;
    let target = targets.get(&eval.target)?.clone();
    let mut opts = edgeai::validate::ValidateOptions::new(candidate, reference);
    opts.text = eval.text.clone();
    opts.ctx = eval.ctx;
    opts.chunks = eval.chunks;
    opts.threads = eval.threads;
    opts.bench = !eval.no_bench;
    opts.bench_prompt_tokens = eval.bench_prompt;
    opts.bench_gen_tokens = eval.bench_gen;
    opts.bench_repetitions = eval.bench_reps;
    opts.cache_dir = eval.cache_dir.clone();
    opts.gates = edgeai::validate::resolve_gates(&target, project.as_ref())?;
    Ok((target, opts))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json); for
    /// --format mlx also a GGUF (exported to Hugging Face first).
    input: PathBuf,
    /// Output file (GGUF) or directory (MLX).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Output format (gguf, mlx).
    #[arg(long = "format", value_name = "FORMAT", default_value = "gguf")]
    out_format: String,
    /// f32, f16, bf16, q8_0 or any quantize type (Q4_K_M, Q6_K, ...).
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    outtype: String,
    /// MLX: bits per weight (affine 2, 3, 4, 5, 6, 8; mxfp4 4). Default 4.
    #[arg(long, value_name = "BITS")]
    bits: Option<u32>,
    /// MLX: quantization group size (affine 32, 64, 128; mxfp4 32). Default 64 (mxfp4: 32).
    #[arg(long = "group-size", value_name = "N")]
    group_size: Option<usize>,
    /// MLX: quantization mode, affine or mxfp4.
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// MLX: mlx-lm mixed recipe (mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6).
    #[arg(long, value_name = "RECIPE")]
    recipe: Option<String>,
    /// ONNX: quantization scheme (int8-dynamic, int8-static, int4). Without it: FP32 export.
    #[arg(long = "quant", value_name = "SCHEME")]
    onnx_quant: Option<String>,
    /// ONNX int4: block size (32, 64, 128). Default 32.
    #[arg(long = "block", value_name = "N")]
    onnx_block: Option<usize>,
    /// ONNX int4: symmetric blocks (no zero points).
    #[arg(long = "symmetric")]
    onnx_symmetric: bool,
    /// ONNX int8-static (required) / int8-dynamic, int4 (optional: picks the nodes kept at higher precision): calibration
    /// data (folder of .npz/.npy samples keyed by input name, or a text file, one sample per
    /// line, tokenized with the model's tokenizer.json).
    #[arg(long = "calibration", value_name = "PATH")]
    onnx_calibration: Option<PathBuf>,
    /// ONNX quantization: `olive` runs an Olive workflow (`olive run`, olive toolchain) on an
    /// FP32 .onnx MODEL instead of onnxruntime's tools (`onnxruntime`, the default).
    #[arg(long = "framework", value_name = "FRAMEWORK")]
    onnx_framework: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Report format.
    #[arg(long = "report", value_enum, default_value_t = Format::Human)]
    report: Format,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Input GGUF (llama architecture).
    input: PathBuf,
    /// Target format (safetensors).
    #[arg(long, value_name = "FORMAT", default_value = "safetensors")]
    to: String,
    /// Output directory.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct QuantizeArgs {
    /// Input GGUF (F32/F16/BF16; the first part of a split model).
    input: PathBuf,
    /// Output GGUF.
    output: PathBuf,
    /// File type: Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, IQ4_NL, F16, ... (as llama-quantize).
    #[arg(long = "type", value_name = "TYPE")]
    file_type: String,
    /// Importance matrix (GGUF from llama-imatrix, or the legacy .dat format).
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// No k-quant mixture: every quantizable tensor gets the file type's base type.
    #[arg(long)]
    pure: bool,
    /// Type of output.weight (e.g. q8_0).
    #[arg(long, value_name = "TYPE")]
    output_tensor_type: Option<String>,
    /// Type of token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    token_embedding_type: Option<String>,
    /// Per-tensor type: REGEX=TYPE (regex searched in the tensor name); repeatable.
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_types: Vec<String>,
    /// Accept already-quantized input (dequantized first; quality suffers).
    #[arg(long)]
    allow_requantize: bool,
    /// Keep output.weight as it is.
    #[arg(long)]
    leave_output_tensor: bool,
    /// Write one output part per input part (OUTPUT-00001-of-0000N.gguf, ...).
    #[arg(long)]
    keep_split: bool,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct DequantizeArgs {
    /// Input GGUF (quantized).
    input: PathBuf,
    /// Output GGUF.
    output: PathBuf,
    /// F16 (default), F32 or BF16.
    #[arg(long = "type", value_name = "TYPE", default_value = "F16")]
    file_type: String,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Write one output part per input part.
    #[arg(long)]
    keep_split: bool,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct TargetsArgs {
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// Target device name (see `cargo edgeai targets`).
    #[arg(long, default_value = DEFAULT_TARGET)]
    target: String,
    /// Model: HF directory, .gguf, .onnx or .safetensors (default: [package.metadata.edgeai] model).
    #[arg(long)]
    model: Option<String>,
    /// Only consider this framework: llama.cpp, mlx, onnxruntime, olive, openvino, qnn.
    #[arg(long, value_parser = parse_framework)]
    framework: Option<Framework>,
    /// Which candidate list to walk when several quantizations fit.
    #[arg(long, value_enum, default_value_t = PreferArg::Balanced)]
    prefer: PreferArg,
    /// Context length to size the KV cache for (default: the target's).
    #[arg(long)]
    context: Option<u64>,
    /// Try exactly this quantization (e.g. Q5_K_M, affine-8bit-g64, int8).
    #[arg(long)]
    quant: Option<String>,
    /// Also show rejected candidates and the per-tensor type breakdown.
    #[arg(long)]
    explain: bool,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PreferArg {
    Balanced,
    Quality,
    Speed,
    Size,
}

impl From<PreferArg> for Prefer {
    fn from(p: PreferArg) -> Prefer {
        match p {
            PreferArg::Balanced => Prefer::Balanced,
            PreferArg::Quality => Prefer::Quality,
            PreferArg::Speed => Prefer::Speed,
            PreferArg::Size => Prefer::Size,
        }
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The model file or directory.
    model: PathBuf,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

#[derive(Args, Debug)]
struct ToolchainArgs {
    #[command(subcommand)]
    action: ToolchainAction,
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    format: Format,
}

#[derive(Subcommand, Debug)]
enum ToolchainAction {
    /// Create the pinned environment of a toolchain (rebuilt when its lock file changed).
    Install {
        /// Toolchain name (see `cargo edgeai toolchain list`).
        name: String,
        /// Install from this folder of wheels (pip/uv --find-links).
        #[arg(long, value_name = "DIR")]
        find_links: Option<PathBuf>,
        /// No network: only --find-links (and uv's cache).
        #[arg(long)]
        offline: bool,
        /// Rebuild even when the environment is up to date.
        #[arg(long)]
        force: bool,
    },
    /// List the known toolchains: installed or not, Python and package versions, path.
    List,
    /// Delete a toolchain's environment.
    Remove {
        /// Toolchain name.
        name: String,
    },
}

fn run_toolchain(global: &GlobalArgs, args: &ToolchainArgs) -> Result<()> {
    use std::io::IsTerminal;
    let root = edgeai_toolchain::root();
    match &args.action {
        ToolchainAction::Install {
            name,
            find_links,
            offline,
            force,
        } => {
            let spec = edgeai_toolchain::spec::spec(name)?;
            // Step lines for people; the installer's own progress bars only on a terminal.
            let progress = match args.format {
                Format::Json => edgeai_toolchain::Progress::Quiet,
                Format::Human if global.quiet => edgeai_toolchain::Progress::Quiet,
                Format::Human if std::io::stderr().is_terminal() => {
                    edgeai_toolchain::Progress::Live
                }
                Format::Human => edgeai_toolchain::Progress::Steps,
            };
            let opts = edgeai_toolchain::InstallOptions {
                find_links: find_links.clone(),
                offline: *offline,
                force: *force,
            };
            let started = std::time::Instant::now();
            let tc = edgeai_toolchain::install_spec(&spec, &root, &opts, progress)?;
            let status = edgeai_toolchain::status_in(&root, &spec);
            match args.format {
                Format::Json => {
                    let mut v = serde_json::to_value(&status)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    v["installer"] = tc.stamp.installer.clone().into();
                    v["elapsed_s"] = started.elapsed().as_secs_f64().into();
                    print(&report::to_json(&v))
                }
                Format::Human if global.quiet => Ok(()),
                Format::Human => print(&edgeai_toolchain::render_list(&[status])),
            }
        }
        ToolchainAction::List => {
            let all = edgeai_toolchain::list()?;
            match args.format {
                Format::Json => print(&report::to_json(&all)),
                Format::Human if global.quiet => Ok(()),
                Format::Human => print(&edgeai_toolchain::render_list(&all)),
            }
        }
        ToolchainAction::Remove { name } => {
            let spec = edgeai_toolchain::spec::spec(name)?;
            let dir = root.join(&spec.name);
            let existed = dir.exists();
            edgeai_toolchain::remove_in(&root, &spec.name)?;
            match args.format {
                Format::Json => print(&report::to_json(&serde_json::json!({
                    "name": spec.name,
                    "removed": existed,
                    "dir": dir,
                }))),
                Format::Human if global.quiet => Ok(()),
                Format::Human if existed => print(&format!(
                    "removed toolchain `{}` ({})\n",
                    spec.name,
                    dir.display()
                )),
                Format::Human => print(&format!(
                    "toolchain `{}` is not installed ({})\n",
                    spec.name,
                    dir.display()
                )),
            }
        }
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Model to write into the table.
    #[arg(long, default_value = "models/model.gguf")]
    model: String,
    /// Target to write into the table.
    #[arg(long, default_value = DEFAULT_TARGET)]
    target: String,
}

fn parse_framework(s: &str) -> std::result::Result<Framework, String> {
    Framework::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Framework::ALL.iter().map(|f| f.as_str()).collect();
        format!("unknown framework `{s}`; use one of {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    // `cargo edgeai ...` runs us as `cargo-edgeai edgeai ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "edgeai") {
        args.remove(1);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap: help/version are not errors; usage errors are the user's (exit 1).
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // Long messages stay on one line: they name files and byte counts that scripts grep for.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));
    let outcome = std::panic::catch_unwind(|| run(&cli));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            let code = err.exit_code();
            eprintln!("{:?}", miette::Report::new(err));
            ExitCode::from(code as u8)
        }
        Err(_) => {
            eprintln!("error: internal error (panic); this is a bug in cargo-edgeai, please report it with the command you ran");
            ExitCode::from(2)
        }
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| Error::io("<stdout>", e)),
    }
}

fn project(global: &GlobalArgs) -> Result<Option<Project>> {
    load_project(global.manifest_path.as_deref())
}

fn target_set(project: Option<&Project>) -> Result<TargetSet> {
    TargetSet::load(project.and_then(|p| p.targets_dir()).as_deref())
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Targets(args) => {
            let project = project(&cli.global)?;
            let targets = target_set(project.as_ref())?;
            match args.format {
                Format::Json => print(&report::to_json(&targets.iter().collect::<Vec<_>>())),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report::render_targets(&targets)),
            }
        }
        Command::Plan(args) => {
            let project = if args.model.is_some() && cli.global.manifest_path.is_none() {
                // A model on the command line needs no project, but a project's targets-dir
                // still applies when there is one around.
                load_project(None).ok().flatten()
            } else {
                project(&cli.global)?
            };
            let model = match (&args.model, project.as_ref().and_then(Project::model_ref)) {
                (Some(m), _) => m.clone(),
                (None, Some(m)) => m,
                (None, None) => {
                    return Err(Error::Usage {
                        message: "no model to plan for".into(),
                        help: "pass --model PATH, or set `model` in [package.metadata.edgeai] of your Cargo.toml (`cargo edgeai init` adds the table)".into(),
                    })
                }
            };
            let targets = target_set(project.as_ref())?;
            let target = targets.get(&args.target)?;
            if model.contains("://") {
                return Err(Error::Usage {
                    message: format!("`{model}` is a remote model; plan reads local headers"),
                    help: "download it first (cargo edgeai build fetches hf:// models into its cache), then pass the local path".into(),
                });
            }
            let facts = read_model_facts(Path::new(&model))?;
            // A `cargo edgeai sweep` of this model on this target replaces the matrix's prior.
            let sweep = edgeai::validate::sweep::default_record_path(
                project.as_ref().map_or(Path::new("."), |p| p.dir()),
                &target.name,
            );
            let options = PlanOptions {
                framework: args.framework,
                prefer: args.prefer.into(),
                context_length: args.context,
                quantization: args.quant.clone(),
                measured_quantization: edgeai::validate::sweep::load_measured(
                    &sweep,
                    &target.name,
                    Path::new(&model),
                )?,
            };
            let plan = make_plan(target, &facts, &model, &Matrix::builtin()?, &options)?;
            match args.format {
                Format::Json => print(&report::to_json(&plan)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report::render_plan(
                    &plan,
                    args.explain || cli.global.verbose > 0,
                )),
            }
        }
        Command::Inspect(args) => {
            // GGUF files get the full llama.cpp-style report (metadata, types, bits per weight);
            // everything else gets the model facts.
            if edgeai::facts::detect_format(&args.model)? == Some(edgeai::facts::ModelFormat::Gguf)
                && args.model.is_file()
            {
                let inspect = edgeai::gguf::inspect_gguf(&args.model)?;
                return match args.format {
                    Format::Json => print(&report::to_json(&inspect)),
                    Format::Human => {
                        print(&edgeai::gguf::render_gguf_inspect(&inspect, args.tensors))
                    }
                };
            }
            let facts = read_model_facts(&args.model)?;
            match args.format {
                Format::Json => print(&report::to_json(&facts)),
                Format::Human => print(&report::render_facts(&facts, args.tensors)),
            }
        }
        Command::Toolchain(args) => run_toolchain(&cli.global, args),
        Command::Doctor(args) => {
            let project = project(&cli.global).ok().flatten();
            let targets = target_set(project.as_ref())?;
            let report = edgeai::doctor::do_doctor(&targets, &Matrix::builtin()?);
            match args.format {
                Format::Json => print(&report::to_json(&report)),
                Format::Human => print(&edgeai::doctor::render_human(&report)),
            }
        }
        Command::Quantize(args) => {
            let report = edgeai::llama_quant::do_quantize(&edgeai::llama_quant::QuantizeOptions {
                input: args.input.clone(),
                output: args.output.clone(),
                file_type: args.file_type.clone(),
                imatrix: args.imatrix.clone(),
                threads: args.threads,
                pure: args.pure,
                output_tensor_type: args.output_tensor_type.clone(),
                token_embedding_type: args.token_embedding_type.clone(),
                tensor_types: args.tensor_types.clone(),
                allow_requantize: args.allow_requantize,
                leave_output_tensor: args.leave_output_tensor,
                keep_split: args.keep_split,
                progress: !cli.global.quiet,
            })?;
            match args.format {
                Format::Json => print(&report::to_json(&report)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report.render_human()),
            }
        }
        Command::Dequantize(args) => {
            let report =
                edgeai::llama_quant::do_dequantize(&edgeai::llama_quant::DequantizeOptions {
                    input: args.input.clone(),
                    output: args.output.clone(),
                    file_type: args.file_type.clone(),
                    threads: args.threads,
                    keep_split: args.keep_split,
                    progress: !cli.global.quiet,
                })?;
            match args.format {
                Format::Json => print(&report::to_json(&report)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report.render_human()),
            }
        }
        Command::Convert(args)
            if args
                .onnx_framework
                .as_deref()
                .is_some_and(|f| !f.eq_ignore_ascii_case("onnxruntime")) =>
        {
            let quant = edgeai::backends::olive::cli_quant(
                &args.out_format,
                args.onnx_framework.as_deref().unwrap_or_default(),
                args.onnx_quant.as_deref(),
            )?;
            let summary = edgeai::backends::olive::quantize_with_olive(
                &args.input,
                &args.output,
                &edgeai::backends::olive::OliveOptions {
                    quant,
                    calibration: args.onnx_calibration.clone(),
                    block: args.onnx_block,
                    symmetric: args.onnx_symmetric,
                },
            )?;
            match args.report {
                Format::Json => print(&report::to_json(&summary)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&summary.render_human()),
            }
        }
        Command::Convert(args) if args.out_format.eq_ignore_ascii_case("onnx") => {
            let quant = args
                .onnx_quant
                .as_deref()
                .map(str::parse::<edgeai::backends::onnx::OnnxQuant>)
                .transpose()?;
            let summary = edgeai::backends::onnx::convert_to_onnx(
                &args.input,
                &args.output,
                &edgeai::backends::onnx::OnnxConvertOptions {
                    quant,
                    block: args.onnx_block,
                    symmetric: args.onnx_symmetric,
                    calibration: args.onnx_calibration.clone(),
                },
            )?;
            match args.report {
                Format::Json => print(&report::to_json(&summary)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&summary.render_human()),
            }
        }
        Command::Convert(args) if args.out_format.eq_ignore_ascii_case("mlx") => {
            let mode = args.mode.clone().unwrap_or_else(|| "affine".into());
            let default_group = if mode == "mxfp4" { 32 } else { 64 };
            let summary = edgeai::mlx::convert_to_mlx(
                &args.input,
                &args.output,
                &edgeai::mlx::MlxConvertOptions {
                    bits: args.bits.unwrap_or(4),
                    group_size: args.group_size.unwrap_or(default_group),
                    mode,
                    recipe: args.recipe.clone(),
                    threads: args.threads,
                    ..Default::default()
                },
            )?;
            match args.report {
                Format::Json => print(&report::to_json(&summary)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&summary.render_human()),
            }
        }
        Command::Convert(args) => {
            if args.onnx_quant.is_some()
                || args.onnx_block.is_some()
                || args.onnx_symmetric
                || args.onnx_calibration.is_some()
            {
                return Err(Error::Usage {
                    message:
                        "--quant, --block, --symmetric and --calibration apply to --format onnx"
                            .into(),
                    help: "add --format onnx, or for GGUF pick the quantization with --outtype"
                        .into(),
                });
            }
            if args.bits.is_some()
                || args.group_size.is_some()
                || args.mode.is_some()
                || args.recipe.is_some()
            {
                return Err(Error::Usage {
                    message: "--bits, --group-size, --mode and --recipe apply to --format mlx"
                        .into(),
                    help: "for GGUF pick the quantization with --outtype (Q4_K_M, Q8_0, ...)"
                        .into(),
                });
            }
            let report = edgeai::convert::do_convert(&edgeai::convert::ConvertOptions {
                input: args.input.clone(),
                output: args.output.clone(),
                format: args.out_format.clone(),
                outtype: args.outtype.clone(),
                threads: args.threads,
            })?;
            match args.report {
                Format::Json => print(&report::to_json(&report)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report.render_human()),
            }
        }
        Command::Export(args) => {
            let report = edgeai::export::do_export(&edgeai::export::ExportOptions {
                input: args.input.clone(),
                output: args.output.clone(),
                to: args.to.clone(),
                threads: args.threads,
            })?;
            match args.format {
                Format::Json => print(&report::to_json(&report)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&report.render_human()),
            }
        }
        Command::Validate(args) if edgeai::validate::ort::is_onnx(&args.model) => {
            use edgeai::validate::ort as vo;
            let (target, opts) = eval_setup(
                &cli.global,
                &args.eval,
                args.model.clone(),
                args.reference.clone(),
            )?;
            let inputs = match (&args.inputs, &args.eval.text, &args.tokenizer) {
                (Some(dir), None, None) => vo::InputSource::Dir(dir.clone()),
                (None, Some(file), Some(tok)) => vo::InputSource::Text {
                    file: file.clone(),
                    tokenizer: tok.clone(),
                    max_sentences: args.sentences,
                },
                _ => {
                    return Err(Error::Usage {
                        message: format!(
                            "{}: an ONNX validation needs sample inputs: --inputs DIR, or --text FILE with --tokenizer tokenizer.json",
                            args.model.display()
                        ),
                        help: "pass --inputs DIR (.npz per sample / INPUT.npy files) or, for a text encoder, --text sentences.txt --tokenizer tokenizer.json".into(),
                    })
                }
            };
            let mut o = vo::OrtValidateOptions::new(target, inputs);
            o.runs = args.runs;
            o.warmup = args.warmup;
            o.threads = opts.threads;
            o.gates = opts.gates.clone();
            let r = vo::validate_onnx(&args.model, &args.reference, &o)?;
            if let Some(path) = &args.eval.junit {
                write_file(path, &vo::render_junit(&[&r]))?;
            }
            if let Some(path) = &args.eval.html {
                let title = format!(
                    "cargo edgeai validate: {} on {}",
                    r.candidate.label, r.target
                );
                let summary = if r.passed {
                    "all gates passed"
                } else {
                    "gates failed"
                };
                write_file(path, &vo::render_html(&title, &[&r], summary))?;
            }
            match args.eval.format {
                Format::Json => print(&report::to_json(&r))?,
                Format::Human if cli.global.quiet => {}
                Format::Human => print(&vo::render_human(&r))?,
            }
            let failed: Vec<_> = r.failures().collect();
            match edgeai::validate::gate_error(&failed, &r.candidate.path.display().to_string()) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
        Command::Validate(args) => {
            use edgeai::validate::report as vr;
            let (target, opts) = eval_setup(
                &cli.global,
                &args.eval,
                args.model.clone(),
                args.reference.clone(),
            )?;
            // An MLX directory (config.json `quantization` + safetensors format=mlx) is
            // measured with mlx-lm in the `mlx` toolchain; anything else with llama.cpp.
            let mlx = edgeai::validate::mlx::is_mlx_dir(&args.model);
            let r = if mlx {
                edgeai::validate::mlx::validate_mlx(
                    &opts.candidate,
                    &opts.reference,
                    &edgeai::validate::mlx::MlxValidateOptions::from_validate(&target, &opts),
                )?
            } else {
                edgeai::validate::do_validate(&target, &opts)?
            };
            if let Some(path) = &args.eval.junit {
                write_file(path, &vr::render_junit(&[&r]))?;
            }
            if let Some(path) = &args.eval.html {
                let title = format!(
                    "cargo edgeai validate: {} on {}",
                    r.candidate.label, r.target
                );
                let summary = if r.passed {
                    "all gates passed"
                } else {
                    "gates failed"
                };
                let html = if mlx {
                    edgeai::validate::mlx::render_html(&title, &[&r], summary)
                } else {
                    vr::render_html(&title, &[&r], summary)
                };
                write_file(path, &html)?;
            }
            match args.eval.format {
                Format::Json => print(&report::to_json(&r))?,
                Format::Human if cli.global.quiet => {}
                Format::Human if mlx => print(&edgeai::validate::mlx::render_human(&r))?,
                Format::Human => print(&vr::render_human(&r))?,
            }
            let failed: Vec<_> = r.failures().collect();
            match edgeai::validate::gate_error(&failed, &r.candidate.path.display().to_string()) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
        Command::Sweep(args) => {
            use edgeai::validate::report as vr;
            let reference = args.reference.clone().unwrap_or_else(|| args.model.clone());
            let (target, opts) =
                eval_setup(&cli.global, &args.eval, args.model.clone(), reference)?;
            let r = edgeai::validate::sweep::do_sweep(
                &target,
                &edgeai::validate::sweep::SweepOptions {
                    model: args.model.clone(),
                    reference: args.reference.clone(),
                    types: args.types.clone(),
                    out_dir: args.out_dir.clone(),
                    validate: opts,
                },
            )?;
            let record_path = match &args.out {
                Some(p) => p.clone(),
                None => {
                    let project = if cli.global.manifest_path.is_none() {
                        load_project(None).ok().flatten()
                    } else {
                        project(&cli.global)?
                    };
                    edgeai::validate::sweep::default_record_path(
                        project.as_ref().map_or(Path::new("."), |p| p.dir()),
                        &r.target,
                    )
                }
            };
            edgeai::validate::sweep::write_record(&record_path, &r.record())?;
            if !cli.global.quiet {
                eprintln!("sweep result written to {}", record_path.display());
            }
            let all: Vec<_> = r.results.iter().collect();
            if let Some(path) = &args.eval.junit {
                write_file(path, &vr::render_junit(&all))?;
            }
            if let Some(path) = &args.eval.html {
                let title = format!("cargo edgeai sweep: {} on {}", r.model.display(), r.target);
                let summary = match &r.recommended {
                    Some(t) => format!("recommended: {t} ({})", r.reason),
                    None => format!("no type passes: {}", r.reason),
                };
                write_file(path, &vr::render_html(&title, &all, &summary))?;
            }
            match args.eval.format {
                Format::Json => print(&report::to_json(&r))?,
                Format::Human if cli.global.quiet => {}
                Format::Human => print(&vr::render_sweep_human(&r))?,
            }
            if r.recommended.is_some() {
                return Ok(());
            }
            let failed: Vec<_> = r.results.iter().flat_map(|x| x.failures()).collect();
            match edgeai::validate::gate_error(&failed, "sweep: no type passes") {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
        Command::Build(args) => {
            use std::io::IsTerminal;
            let outcome = edgeai::pipeline::do_build(&edgeai::pipeline::BuildOptions {
                manifest_path: cli.global.manifest_path.clone(),
                targets: args.targets.clone(),
                all_targets: args.all_targets,
                release: args.release,
                offline: args.offline,
                key: args.key.clone(),
                skip_validation: args.skip_validation,
                // Progress only for a person watching: human output on a terminal.
                progress: matches!(args.format, Format::Human)
                    && !cli.global.quiet
                    && std::io::stdout().is_terminal(),
                threads: args.threads,
            })?;
            if !cli.global.quiet {
                for w in &outcome.warnings {
                    eprintln!("warning: {w}");
                }
            }
            match args.format {
                Format::Json => print(&report::to_json(&outcome)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&outcome.render_human()),
            }
        }
        Command::Clean(args) => {
            let outcome = edgeai::pipeline::do_clean(
                cli.global.manifest_path.as_deref(),
                args.target.as_deref(),
            )?;
            if !cli.global.quiet {
                for p in &outcome.removed {
                    eprintln!("removed {}", p.display());
                }
            }
            Ok(())
        }
        Command::Keygen(args) => {
            let public = public_key_path(&args.output);
            let protection = if args.unencrypted {
                edgeai_bundle::KeyProtection::Unencrypted
            } else {
                edgeai_bundle::KeyProtection::Password(key_password(
                    args.password_file.as_deref(),
                    true,
                )?)
            };
            edgeai_bundle::keygen(&args.output, &public, protection, args.force)?;
            if !cli.global.quiet {
                print(&format!(
                    "secret key: {} (mode 0600{}); keep it out of version control\npublic key: {} (give it to whoever verifies bundles)\n",
                    args.output.display(),
                    if args.unencrypted { ", NOT encrypted" } else { ", encrypted" },
                    public.display()
                ))?;
            }
            Ok(())
        }
        Command::Sign(args) => {
            let password = if edgeai_bundle::secret_key_is_encrypted(&args.key)? {
                Some(key_password(args.password_file.as_deref(), false)?)
            } else {
                None
            };
            let sig = edgeai_bundle::sign_bundle(&args.bundle, &args.key, password.as_deref())?;
            if !cli.global.quiet {
                print(&format!(
                    "signed {} -> {}\n",
                    args.bundle.display(),
                    sig.display()
                ))?;
            }
            Ok(())
        }
        Command::Verify(args) => match edgeai_bundle::verify_bundle(&args.bundle, &args.pubkey) {
            Ok(r) => match args.format {
                Format::Json => print(&report::to_json(&r)),
                Format::Human if cli.global.quiet => Ok(()),
                Format::Human => print(&r.render_human()),
            },
            Err(e) => {
                if let Format::Json = args.format {
                    print(&report::to_json(&serde_json::json!({
                        "bundle": args.bundle,
                        "passed": false,
                        "failed_check": e.failed_check(),
                        "error": e.to_string(),
                        "help": e.help_text(),
                    })))?;
                }
                Err(e.into())
            }
        },
        Command::Init(args) => {
            let Some(manifest) = find_manifest(cli.global.manifest_path.as_deref())? else {
                return Err(Error::Usage {
                    message: "no Cargo.toml here or above".into(),
                    help: "run `cargo edgeai init` inside a Cargo project (cargo new my-app), or pass --manifest-path".into(),
                });
            };
            let outcome = edgeai::init::do_init(&manifest, &args.model, &args.target)?;
            if !cli.global.quiet {
                let msg = match outcome {
                    edgeai::init::InitOutcome::Added => format!(
                        "added [package.metadata.edgeai] to {}; set `model` to your model and run `cargo edgeai plan`\n",
                        manifest.display()
                    ),
                    edgeai::init::InitOutcome::AlreadyPresent => format!(
                        "{} already has [package.metadata.edgeai]; nothing changed\n",
                        manifest.display()
                    ),
                };
                eprint!("{msg}");
            }
            Ok(())
        }
    }
}
