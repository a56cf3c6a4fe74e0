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
    /// Add a commented [package.metadata.edgeai] table to Cargo.toml (idempotent).
    Init(InitArgs),
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
            let options = PlanOptions {
                framework: args.framework,
                prefer: args.prefer.into(),
                context_length: args.context,
                quantization: args.quant.clone(),
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
            let facts = read_model_facts(&args.model)?;
            match args.format {
                Format::Json => print(&report::to_json(&facts)),
                Format::Human => print(&report::render_facts(&facts, args.tensors)),
            }
        }
        Command::Doctor(args) => {
            let project = project(&cli.global).ok().flatten();
            let targets = target_set(project.as_ref())?;
            let report = edgeai::doctor::do_doctor(&targets, &Matrix::builtin()?);
            match args.format {
                Format::Json => print(&report::to_json(&report)),
                Format::Human => print(&edgeai::doctor::render_human(&report)),
            }
        }
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
