//! `cargo edgeai build` and `cargo edgeai clean`: the whole pipeline for one project.
//!
//! For each target: resolve the model (local path or `hf://`), make the plan, run the plan's
//! framework steps (llama.cpp: convert → quantize → validate; MLX: convert → validate with
//! mlx-lm; ONNX Runtime / Olive: export → quantize → validate on ONNX Runtime), build
//! the app for the target's triple, write the deterministic bundle and sign it. Every step goes
//! through the [`StepCache`] and the whole build holds the [`BuildLock`], so
//!
//! - a no-op rebuild reads a few small JSON files and stats inputs: no process is spawned, no
//!   unchanged file is hashed, cargo does not run (the project is read without `cargo
//!   metadata`, tool versions and file digests are memoised, the app step is keyed on a digest
//!   of its sources, and the bundle step compares its key with the stamp of the bundle on disk);
//! - a build killed at any moment leaves valid cache entries or none, and the bundle under its
//!   final name is either the previous complete one or the new complete one.
//!
//! Boundary: the steps themselves are the library's ([`crate::convert`],
//! [`crate::llama_quant`], [`crate::validate`], [`crate::crossbuild`], `edgeai_bundle`,
//! `edgeai_hub`); this module only decides what to run, with which inputs, and caches it.

mod inputs;
mod llama;
mod mlx;
mod onnx;
mod package;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::cache::{BuildLock, Entry, StepCache, StepKey};
use crate::manifest::{Target, TargetSet, DEFAULT_TARGET};
use crate::matrix::Matrix;
use crate::plan::{make_plan, Plan, PlanOptions};
use crate::project::{find_manifest, load_package_manifest, load_project, Project};
use crate::quant::Framework;
use crate::{Error, Result};

pub use inputs::app_source_files;

/// Output schema of `cargo edgeai build --format json`.
pub const BUILD_SCHEMA: u32 = 1;

/// What `cargo edgeai build` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `--manifest-path`.
    pub manifest_path: Option<PathBuf>,
    /// `--target` (repeatable); empty: the project's first target, else host-x86_64.
    pub targets: Vec<String>,
    /// `--all-targets`: every target in `[package.metadata.edgeai] targets`.
    pub all_targets: bool,
    /// `--release`: build the app with the release profile.
    pub release: bool,
    /// `--offline`: no network (hub from cache, cargo offline).
    pub offline: bool,
    /// `--key`: the minisign secret key to sign with.
    pub key: Option<PathBuf>,
    /// `--skip-validation`.
    pub skip_validation: bool,
    /// Show progress on stderr (the CLI sets it for a terminal and human output).
    pub progress: bool,
    /// Worker threads for convert/quantize/validate (default: all cores).
    pub threads: Option<usize>,
}

/// One step as the summary reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    /// resolve, convert, quantize, validate, build-app, sbom, package.
    pub step: String,
    /// Taken from the cache (or, for package, the bundle on disk was already this one).
    pub cached: bool,
    /// Wall time of this step in this build.
    pub seconds: f64,
    /// One line: what it produced or why it was skipped.
    pub detail: String,
}

/// What was built for one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetOutcome {
    pub target: String,
    pub triple: String,
    pub framework: String,
    pub quantization: String,
    /// The bundle (`target/edgeai/<target>/<name>-<version>-<target>.zip`).
    pub bundle: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Whether a signature was written.
    pub signed: bool,
    /// `BUNDLE.minisig`, when signed.
    pub signature: Option<PathBuf>,
    /// Why the bundle is unsigned.
    pub unsigned_reason: Option<String>,
    /// Whether the app binary is in the bundle.
    pub app_included: bool,
    /// Why it is not (a triple that cannot be linked here).
    pub app_reason: Option<String>,
    /// passed, or skipped.
    pub validation: String,
    pub steps: Vec<StepOutcome>,
}

/// What `cargo edgeai build` did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildOutcome {
    pub schema: u32,
    /// Wall time of the whole build, measured in the process.
    pub elapsed_ms: f64,
    pub targets: Vec<TargetOutcome>,
    /// Things the user should know (unsigned bundle, missing app); the CLI prints them on stderr.
    pub warnings: Vec<String>,
}

impl BuildOutcome {
    /// The human summary.
    pub fn render_human(&self) -> String {
        let mut s = String::new();
        for t in &self.targets {
            s.push_str(&format!(
                "{}: {} {} → {} ({}, sha256 {}), {}\n",
                t.target,
                t.framework,
                t.quantization,
                t.bundle.display(),
                human_size(t.size),
                t.sha256,
                match &t.signature {
                    Some(p) => format!("signed ({})", p.display()),
                    None => "unsigned".to_string(),
                }
            ));
            for step in &t.steps {
                s.push_str(&format!(
                    "  {:<14} {:<7} {:>7.2} s  {}\n",
                    step.step,
                    if step.cached { "cached" } else { "ran" },
                    step.seconds,
                    step.detail
                ));
            }
        }
        s.push_str(&format!("finished in {:.0} ms\n", self.elapsed_ms));
        s
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The project for `manifest_path` (or the one around the current directory), read without
/// running cargo when the manifest allows it.
fn find_project(manifest_path: Option<&Path>) -> Result<Project> {
    let Some(manifest) = find_manifest(manifest_path)? else {
        return Err(Error::Usage {
            message: "no Cargo.toml here or above".into(),
            help: "run `cargo edgeai build` inside your Cargo project, or pass --manifest-path"
                .into(),
        });
    };
    let project = match load_package_manifest(&manifest)? {
        Some(p) => p,
        None => load_project(Some(&manifest))?.ok_or_else(|| Error::Usage {
            message: format!("{} has no package to build", manifest.display()),
            help: "pass --manifest-path of the app's package".into(),
        })?,
    };
    if project.metadata.model.is_none() {
        return Err(Error::Usage {
            message: format!(
                "{}: [package.metadata.edgeai] has no `model`",
                project.manifest_path.display()
            ),
            help: "set `model` (a path relative to Cargo.toml or hf://org/name) in [package.metadata.edgeai]; `cargo edgeai init` adds the table".into(),
        });
    }
    Ok(project)
}

/// `target/edgeai` of the project: `$CARGO_TARGET_DIR/edgeai`, else `target/edgeai` in the
/// workspace root (the nearest directory with a `[workspace]` Cargo.toml, as cargo decides),
/// else in the package directory.
pub fn edgeai_dir(project: &Project) -> PathBuf {
    cargo_target_dir(project.dir()).join("edgeai")
}

fn cargo_target_dir(project_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return std::path::absolute(&dir).unwrap_or(dir);
    }
    for d in project_dir.ancestors() {
        let is_ws = std::fs::read_to_string(d.join("Cargo.toml"))
            .ok()
            .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
            .is_some_and(|t| t.contains_key("workspace"));
        if is_ws {
            return d.join("target");
        }
    }
    project_dir.join("target")
}

/// The targets to build, in order.
fn target_names(project: &Project, opts: &BuildOptions) -> Result<Vec<String>> {
    if opts.all_targets {
        if project.metadata.targets.is_empty() {
            return Err(Error::Usage {
                message: format!(
                    "--all-targets: {} lists no targets",
                    project.manifest_path.display()
                ),
                help: "add `targets = [\"host-x86_64\", ...]` to [package.metadata.edgeai], or pass --target NAME".into(),
            });
        }
        let mut names = project.metadata.targets.clone();
        for t in &opts.targets {
            if !names.contains(t) {
                names.push(t.clone());
            }
        }
        return Ok(names);
    }
    if !opts.targets.is_empty() {
        return Ok(opts.targets.clone());
    }
    Ok(vec![project
        .metadata
        .targets
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_TARGET.to_string())])
}

/// Progress on stderr: one spinner line per step, only when asked and stderr is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn step(&self, target: &str, step: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{target}: {step}"));
        }
    }

    fn done(&self, target: &str, step: &StepOutcome) {
        if let Some(bar) = &self.bar {
            bar.println(format!(
                "  {target}: {:<14} {:<7} {:>6.2} s  {}",
                step.step,
                if step.cached { "cached" } else { "ran" },
                step.seconds,
                step.detail
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Shared state of one build.
pub(crate) struct Ctx<'a> {
    pub opts: &'a BuildOptions,
    pub project: &'a Project,
    pub cache: &'a StepCache,
    pub edgeai_dir: PathBuf,
    pub self_id: String,
    progress: &'a Progress,
    target_name: String,
    steps: Vec<StepOutcome>,
}

impl Ctx<'_> {
    /// Run (or reuse) one cached step and record it.
    pub fn step(
        &mut self,
        key: &StepKey,
        describe: impl Fn(&Entry) -> String,
        make: impl FnOnce(&Path) -> Result<Value>,
    ) -> Result<Entry> {
        self.progress.step(&self.target_name, &key.kind);
        let started = Instant::now();
        let (entry, cached) = self.cache.get_or_run(key, make)?;
        self.record(&key.kind, cached, started, describe(&entry));
        Ok(entry)
    }

    /// Record a step that does not go through the cache.
    pub fn record(&mut self, step: &str, cached: bool, started: Instant, detail: String) {
        let outcome = StepOutcome {
            step: step.to_string(),
            cached,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        };
        self.progress.done(&self.target_name, &outcome);
        self.steps.push(outcome);
    }

    /// `--skip-validation`: record the skipped step; the manifest's validation value and the
    /// bundle's validation status say so.
    pub fn validation_skipped(&mut self) -> (Option<Value>, String) {
        const WHY: &str = "skipped (--skip-validation)";
        self.record("validate", false, Instant::now(), WHY.into());
        (
            Some(serde_json::json!({ "status": "skipped", "reason": "--skip-validation" })),
            WHY.to_string(),
        )
    }

    pub fn threads(&self) -> usize {
        self.opts.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// The model's files: a local directory or file, or a hub snapshot.
pub(crate) struct ResolvedModel {
    /// Local path of the model (directory or file).
    pub path: PathBuf,
    /// Digest of the model's content.
    pub digest: String,
    /// How the bundle's plan names the model (no host path): `hf://...` or the file name.
    pub public_name: String,
}

fn resolve_model(ctx: &mut Ctx<'_>) -> Result<ResolvedModel> {
    let started = Instant::now();
    let model = ctx.project.metadata.model.clone().unwrap_or_default();
    if edgeai_hub::is_hub_ref(&model) {
        let (resolved, commit) = inputs::resolve_hub(
            &model,
            &ctx.project.manifest_path,
            &ctx.edgeai_dir,
            ctx.opts.offline,
            ctx.opts.progress,
        )?;
        ctx.record(
            "resolve",
            false,
            started,
            format!("{model} at commit {commit}"),
        );
        return Ok(resolved);
    }
    let path = ctx
        .project
        .model_ref()
        .map(PathBuf::from)
        .unwrap_or_default();
    let meta = std::fs::metadata(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
        help: format!(
            "`model` in {} [package.metadata.edgeai] must name an existing file or directory (relative to Cargo.toml)",
            ctx.project.manifest_path.display()
        ),
    })?;
    let public_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let digest = if meta.is_dir() {
        // The converter names the model (GGUF general.name) after its directory, as llama.cpp's
        // does: the same files under another directory name convert to other bytes.
        let tree = ctx.cache.tree_digest(&path)?;
        let named = format!("hf-dir\0{public_name}\0{tree}");
        <sha2::Sha256 as sha2::Digest>::digest(named.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        ctx.cache.file_digest(&path)?
    };
    ctx.record(
        "resolve",
        true,
        started,
        format!("{} (sha256 {})", public_name, &digest[..16]),
    );
    Ok(ResolvedModel {
        path,
        digest,
        public_name,
    })
}

/// The model files a framework step produced, and what validation said.
pub(crate) struct ModelArtifacts {
    /// (path inside the bundle, source file).
    pub files: Vec<(String, PathBuf)>,
    /// The summary that goes into the manifest (deterministic figures only).
    pub validation: Option<Value>,
    /// "passed" or "skipped (...)".
    pub validation_status: String,
    /// Tool versions for the manifest.
    pub toolchains: BTreeMap<String, String>,
}

/// Replace every occurrence of `from` in the strings of `v` by `to`.
fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if !from.is_empty() && s.contains(from) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_strings(x, from, to)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_strings(x, from, to)),
        _ => {}
    }
}

/// The plan as the bundle records it: no host paths (the model is named by `public_name`).
fn public_plan(plan: &Plan, model: &ResolvedModel, project: &Project) -> Result<Value> {
    let mut v = serde_json::to_value(plan).map_err(|e| Error::Internal(format!("plan: {e}")))?;
    replace_strings(&mut v, &plan.model.path, &model.public_name);
    replace_strings(
        &mut v,
        &model.path.display().to_string(),
        &model.public_name,
    );
    replace_strings(&mut v, &project.dir().display().to_string(), ".");
    if let Some(home) = std::env::var_os("HOME") {
        replace_strings(&mut v, &home.to_string_lossy(), "~");
    }
    Ok(v)
}

fn build_target(
    ctx: &mut Ctx<'_>,
    targets: &TargetSet,
    matrix: &Matrix,
    name: &str,
) -> Result<(TargetOutcome, Vec<String>)> {
    let target: &Target = targets.get(name)?;
    let model = resolve_model(ctx)?;
    let started = Instant::now();
    let facts = crate::facts::read_model_facts(&model.path)?;
    let options = PlanOptions {
        // `framework = "..."` in [package.metadata.edgeai] (or the target's table).
        framework: ctx.project.metadata.framework,
        quantization: ctx.project.metadata.quantization.clone(),
        measured_quantization: if ctx.project.metadata.quantization.is_some() {
            None
        } else {
            crate::validate::sweep::load_measured(
                &crate::validate::sweep::default_record_path(ctx.project.dir(), &target.name),
                &target.name,
                &model.path,
            )?
        },
        ..PlanOptions::default()
    };
    let model_ref = model.path.display().to_string();
    let plan = make_plan(target, &facts, &model_ref, matrix, &options).map_err(|e| {
        match (e, options.framework) {
            // The framework came from Cargo.toml, not from a --framework flag: say so.
            (Error::Usage { message, .. }, Some(f)) => Error::Usage {
                message: format!(
                    "{message} (framework = \"{f}\" in {})",
                    ctx.project.manifest_path.display()
                ),
                help: format!(
                    "change or remove `framework` in [package.metadata.edgeai.target.{}] or [package.metadata.edgeai]; `cargo edgeai plan --target {} --framework NAME` shows what each framework would plan",
                    target.name, target.name
                ),
            },
            (e, _) => e,
        }
    })?;
    ctx.record(
        "plan",
        true,
        started,
        format!("{} {} ({})", plan.framework, plan.quantization, plan.rule),
    );

    let artifacts = match plan.framework {
        Framework::LlamaCpp => llama::run(ctx, target, &plan, &facts, &model)?,
        Framework::Mlx => mlx::run(ctx, target, &plan, &facts, &model)?,
        Framework::OnnxRuntime | Framework::Olive => {
            onnx::run(ctx, target, &plan, &facts, &model)?
        }
        other => {
            return Err(Error::Usage {
                message: format!(
                    "target `{}` plans framework {other}, which `cargo edgeai build` does not run yet",
                    target.name
                ),
                help: format!("pick a target whose plan is llama.cpp, MLX, onnxruntime or olive (`cargo edgeai plan --target NAME`), or set `framework` in [package.metadata.edgeai.target.{}] to one of those", target.name),
            })
        }
    };
    let plan_json = public_plan(&plan, &model, ctx.project)?;
    package::run(ctx, target, &plan, plan_json, artifacts)
}

/// Run `cargo edgeai build`.
pub fn do_build(opts: &BuildOptions) -> Result<BuildOutcome> {
    let started = Instant::now();
    let project = find_project(opts.manifest_path.as_deref())?;
    let names = target_names(&project, opts)?;
    let edgeai_dir = edgeai_dir(&project);
    let progress = Progress::new(opts.progress);
    let _lock = BuildLock::acquire(&edgeai_dir, || {
        if opts.progress {
            eprintln!(
                "waiting for another build to release {}",
                edgeai_dir.join(".lock").display()
            );
        }
    })?;
    let cache = StepCache::open(&edgeai_dir)?;
    let targets = TargetSet::load(project.targets_dir().as_deref())?;
    let matrix = Matrix::builtin()?;
    let mut outcomes = Vec::new();
    let mut warnings = Vec::new();
    let self_id = inputs::self_identity();
    let mut result = Ok(());
    for name in &names {
        // `[package.metadata.edgeai.target.<name>]` applied: every step sees this target's
        // quantization and gates.
        let project = project.for_target(name);
        let mut ctx = Ctx {
            opts,
            project: &project,
            cache: &cache,
            edgeai_dir: edgeai_dir.clone(),
            self_id: self_id.clone(),
            progress: &progress,
            target_name: name.clone(),
            steps: Vec::new(),
        };
        match build_target(&mut ctx, &targets, &matrix, name) {
            Ok((outcome, w)) => {
                outcomes.push(outcome);
                warnings.extend(w);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    progress.finish();
    // The memo is worth keeping even when a later step failed (the digests are still right).
    let saved = cache.save_memo();
    result?;
    saved?;
    Ok(BuildOutcome {
        schema: BUILD_SCHEMA,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        targets: outcomes,
        warnings,
    })
}

/// What `cargo edgeai clean` removed.
#[derive(Debug, Clone, Serialize)]
pub struct CleanOutcome {
    pub removed: Vec<PathBuf>,
}

/// `cargo edgeai clean [--target T]`: remove `target/edgeai` (or one target's outputs) under
/// the build lock. The lock file itself stays (another build may be waiting on it).
pub fn do_clean(manifest_path: Option<&Path>, target: Option<&str>) -> Result<CleanOutcome> {
    let Some(manifest) = find_manifest(manifest_path)? else {
        return Err(Error::Usage {
            message: "no Cargo.toml here or above".into(),
            help: "run `cargo edgeai clean` inside your Cargo project, or pass --manifest-path"
                .into(),
        });
    };
    let project = match load_package_manifest(&manifest)? {
        Some(p) => p,
        None => load_project(Some(&manifest))?.ok_or_else(|| Error::Usage {
            message: format!("{} has no package", manifest.display()),
            help: "pass --manifest-path of the app's package".into(),
        })?,
    };
    let dir = edgeai_dir(&project);
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(CleanOutcome { removed });
    }
    let _lock = BuildLock::acquire(&dir, || {})?;
    let doomed: Vec<PathBuf> = match target {
        Some(t) => {
            if t.is_empty() || t.contains(['/', '\\']) || t == "." || t == ".." {
                return Err(Error::Usage {
                    message: format!("`{t}` is not a target name"),
                    help: "pass a target name as `cargo edgeai targets` lists it".into(),
                });
            }
            vec![dir.join(t)]
        }
        None => std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .filter(|e| e.file_name() != ".lock")
            .map(|e| e.path())
            .collect(),
    };
    for path in doomed {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| Error::io(&path, e))?;
        removed.push(path);
    }
    Ok(CleanOutcome { removed })
}
