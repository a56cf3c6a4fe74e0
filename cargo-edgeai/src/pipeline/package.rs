//! The app, its SBOM, the bundle and its signature.
//!
//! The app step is keyed on a digest of the app's sources, triple, profile and compiler (see
//! [`super::inputs::app_digest`]), so a no-op rebuild does not run cargo. The bundle step's key
//! covers every byte that goes into the bundle plus the signing key; it is stored in a stamp
//! next to the bundle (`.<bundle>.stamp.json`, written last) together with the bundle's and the
//! signature's file stamps, and the step is skipped when key and stamps still match.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{inputs, Ctx, ModelArtifacts, StepOutcome, TargetOutcome};
use crate::cache::{Stamp, StepKey};
use crate::manifest::Target;
use crate::plan::Plan;
use crate::{Error, Result};

/// Where the secret key comes from, if anywhere.
fn signing_key(ctx: &Ctx<'_>) -> Option<PathBuf> {
    if let Some(k) = &ctx.opts.key {
        return Some(k.clone());
    }
    if let Some(k) = std::env::var_os("EDGEAI_SIGNING_KEY").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    ctx.project
        .metadata
        .signing_key
        .as_ref()
        .map(|k| ctx.project.dir().join(k))
}

fn bundle_error(e: edgeai_bundle::Error) -> Error {
    Error::Usage {
        help: e.help_text(),
        message: e.to_string(),
    }
}

/// The stamp next to a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BundleStamp {
    key: String,
    /// What the key was made of (to see why a bundle was rebuilt).
    step: StepKey,
    sha256: String,
    size: u64,
    bundle: Stamp,
    signature: Option<Stamp>,
    unsigned_reason: Option<String>,
    app_included: bool,
    app_reason: Option<String>,
    framework: String,
    quantization: String,
    validation: String,
}

fn stamp_path(bundle: &Path) -> PathBuf {
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bundle.with_file_name(format!(".{name}.stamp.json"))
}

/// Temporary files a killed build left next to the bundle (edgeai_bundle's and ours). We hold
/// the build lock, so no live writer owns them.
fn remove_leftovers(dir: &Path, bundle: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let bundle_name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let temp = name.starts_with(".edgeai-tmp-")
            || (name.starts_with(&format!(".{bundle_name}.")) && name.ends_with(".tmp"))
            || (name.starts_with('.') && name.contains(".tmp-"));
        if temp {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct App {
    /// (path in the bundle, file).
    file: Option<(String, PathBuf)>,
    reason: Option<String>,
    rustc: String,
    digest: String,
}

fn build_app(ctx: &mut Ctx<'_>, target: &Target) -> Result<App> {
    let project_dir = ctx.project.dir().to_path_buf();
    let rustc = inputs::rustc_identity(ctx.cache, &project_dir)?;
    let release = ctx.opts.release;
    let digest = inputs::app_digest(ctx.cache, &project_dir, &target.triple, release, &rustc)?;
    let mut key = StepKey::new("build-app");
    key.inputs.insert("sources".into(), digest.clone());
    key.options = json!({ "triple": target.triple, "release": release });
    key.tools.insert("rustc".into(), rustc.clone());
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let b = crate::crossbuild::AppBuild {
        manifest_path: ctx.project.manifest_path.clone(),
        package: Some(ctx.project.name.clone()),
        triple: target.triple.clone(),
        release,
        target_dir: super::cargo_target_dir(&project_dir),
        offline: ctx.opts.offline,
    };
    let entry = ctx.step(
        &key,
        |e| match e.meta.result["binary"].as_str() {
            Some(b) => format!(
                "{b} for {}",
                e.meta.step.options["triple"].as_str().unwrap_or("")
            ),
            None => format!(
                "no app: {}",
                e.meta.result["reason"].as_str().unwrap_or("not built")
            ),
        },
        |out| match crate::crossbuild::build_app(&b) {
            Ok(built) => {
                let name = built
                    .binary
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Error::Internal("the app binary has no file name".into()))?;
                let dest = out.join("bin").join(&name);
                std::fs::create_dir_all(out.join("bin")).map_err(|e| Error::io(out, e))?;
                std::fs::copy(&built.binary, &dest).map_err(|e| Error::io(&built.binary, e))?;
                Ok(json!({ "binary": format!("bin/{name}"), "rustc": built.rustc_version }))
            }
            // Apple/MSVC from Linux: the host can never link it; the bundle goes without.
            Err(Error::CannotLinkHere { reason, .. }) => {
                Ok(json!({ "binary": null, "reason": reason }))
            }
            Err(e) => Err(e),
        },
    )?;
    let file = entry.meta.result["binary"]
        .as_str()
        .map(|rel| (rel.to_string(), entry.file(rel)));
    Ok(App {
        file,
        reason: entry.meta.result["reason"].as_str().map(str::to_string),
        rustc: entry.meta.result["rustc"]
            .as_str()
            .map_or_else(|| inputs::rustc_release(&rustc), str::to_string),
        digest,
    })
}

fn sbom(ctx: &mut Ctx<'_>, app_digest: &str, epoch: u64) -> Result<Value> {
    let mut key = StepKey::new("sbom");
    key.inputs.insert("sources".into(), app_digest.into());
    key.options = json!({ "source_date_epoch": epoch });
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let manifest = ctx.project.manifest_path.clone();
    let offline = ctx.opts.offline;
    let entry = ctx.step(
        &key,
        |e| {
            format!(
                "CycloneDX, {} components",
                e.meta.result["components"].as_u64().unwrap_or(0)
            )
        },
        |out| {
            let mut cmd = cargo_metadata::MetadataCommand::new();
            cmd.manifest_path(&manifest);
            if offline {
                cmd.other_options(vec!["--offline".to_string()]);
            }
            let md = cmd.exec().map_err(|e| Error::InvalidManifest {
                path: manifest.clone(),
                message: format!("cargo metadata failed: {e}"),
                help: "fix the Cargo.toml so that `cargo metadata` accepts it (or drop --offline to let cargo fetch the index)".into(),
            })?;
            let canon = std::fs::canonicalize(&manifest).unwrap_or(manifest.clone());
            let pkg = md
                .packages
                .iter()
                .find(|p| std::fs::canonicalize(p.manifest_path.as_std_path()).ok() == Some(canon.clone()))
                .ok_or_else(|| Error::Internal(format!("cargo metadata does not list {}", manifest.display())))?;
            let bom = edgeai_bundle::sbom::from_cargo_metadata_at(&md, &pkg.id, epoch);
            let text = serde_json::to_string_pretty(&bom)
                .map_err(|e| Error::Internal(format!("sbom: {e}")))?;
            std::fs::write(out.join("sbom.json"), text).map_err(|e| Error::io(out.join("sbom.json"), e))?;
            let n = bom["components"].as_array().map_or(0, |c| c.len());
            Ok(json!({ "components": n }))
        },
    )?;
    let path = entry.file("sbom.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

pub(crate) fn run(
    ctx: &mut Ctx<'_>,
    target: &Target,
    plan: &Plan,
    plan_json: Value,
    artifacts: ModelArtifacts,
) -> Result<(TargetOutcome, Vec<String>)> {
    let mut warnings = Vec::new();
    let app = build_app(ctx, target)?;
    if let Some(reason) = &app.reason {
        warnings.push(format!(
            "{}: the bundle has no app binary: {reason}",
            target.name
        ));
    }
    let epoch = inputs::source_date_epoch(ctx.cache, ctx.project.dir())?;
    let sbom = sbom(ctx, &app.digest, epoch)?;

    let started = Instant::now();
    let mut files: Vec<edgeai_bundle::BundleFile> = artifacts
        .files
        .iter()
        .map(|(path, source)| edgeai_bundle::BundleFile {
            path: path.clone(),
            source: source.clone(),
            executable: false,
        })
        .collect();
    if let Some((path, source)) = &app.file {
        files.push(edgeai_bundle::BundleFile {
            path: path.clone(),
            source: source.clone(),
            executable: true,
        });
    }
    let mut toolchains: BTreeMap<String, String> = artifacts.toolchains.clone();
    toolchains.insert("cargo-edgeai".into(), env!("CARGO_PKG_VERSION").into());
    if app.file.is_some() {
        toolchains.insert("rustc".into(), app.rustc.clone());
    }
    let mut plan_json = plan_json;
    if let Some(reason) = &app.reason {
        plan_json["app"] = json!({ "included": false, "reason": reason });
    } else {
        plan_json["app"] = json!({ "included": true, "profile": if ctx.opts.release { "release" } else { "dev" } });
    }
    let spec = edgeai_bundle::BundleSpec {
        name: ctx.project.name.clone(),
        version: ctx.project.version.clone(),
        target: target.name.clone(),
        files,
        plan: plan_json,
        toolchains,
        validation: artifacts.validation.clone(),
        sbom: Some(sbom),
        source_date_epoch: epoch,
        launcher: app.file.as_ref().map(|(p, _)| p.clone()),
    };

    let key_path = signing_key(ctx);
    let mut key = StepKey::new("package");
    for f in &spec.files {
        key.inputs
            .insert(f.path.clone(), ctx.cache.file_digest(&f.source)?);
    }
    if let Some(k) = &key_path {
        let digest = ctx.cache.file_digest(k).map_err(|e| match e {
            Error::Io { path, source, .. } => Error::Io {
                path,
                source,
                help: "the signing key (--key, EDGEAI_SIGNING_KEY or [package.metadata.edgeai] signing-key) must be a minisign secret key file; `cargo edgeai keygen` makes one".into(),
            },
            other => other,
        })?;
        key.inputs.insert("signing key".into(), digest);
    }
    key.options = json!({
        "name": spec.name,
        "version": spec.version,
        "target": spec.target,
        "executables": spec.files.iter().filter(|f| f.executable).map(|f| f.path.clone()).collect::<Vec<_>>(),
        "plan": spec.plan,
        "toolchains": spec.toolchains,
        "validation": spec.validation,
        "sbom": spec.sbom,
        "source_date_epoch": spec.source_date_epoch,
        "launcher": spec.launcher,
    });
    key.tools.insert("cargo-edgeai".into(), ctx.self_id.clone());
    let key_digest = key.digest();

    let dir = ctx.edgeai_dir.join(&target.name);
    let bundle = dir.join(format!(
        "{}-{}-{}.zip",
        ctx.project.name, ctx.project.version, target.name
    ));
    let sig_path = edgeai_bundle::signature_path(&bundle);
    let stamp_file = stamp_path(&bundle);
    remove_leftovers(&dir, &bundle);
    let existing: Option<BundleStamp> = std::fs::read_to_string(&stamp_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let up_to_date = existing.as_ref().is_some_and(|s| {
        s.key == key_digest
            && Stamp::of(&bundle).ok() == Some(s.bundle)
            && s.signature == Stamp::of(&sig_path).ok()
            && (s.signature.is_some() == key_path.is_some())
    });
    let stamp = if let (true, Some(s)) = (up_to_date, existing) {
        ctx.record("package", true, started, "bundle unchanged".into());
        s
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // The stamp goes first: a build killed from here on leaves no stamp claiming the old
        // bundle matches the new key.
        match std::fs::remove_file(&stamp_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&stamp_file, e)),
        }
        let summary = edgeai_bundle::write_bundle(&spec, &bundle).map_err(bundle_error)?;
        let (signature, unsigned_reason) = match &key_path {
            Some(k) => {
                let password = std::env::var(edgeai_bundle::PASSWORD_ENV).ok();
                let sig = edgeai_bundle::sign_bundle(&bundle, k, password.as_deref())
                    .map_err(bundle_error)?;
                (Some(Stamp::of(&sig).map_err(|e| Error::io(&sig, e))?), None)
            }
            None => {
                // A signature of an earlier bundle must not sit next to this one.
                match std::fs::remove_file(&sig_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&sig_path, e)),
                }
                (None, Some("no signing key".to_string()))
            }
        };
        let plan_file = dir.join("plan.json");
        crate::cache::write_atomic(
            &plan_file,
            crate::report::to_json(&spec.plan).as_bytes(),
            false,
        )?;
        let s = BundleStamp {
            key: key_digest,
            step: key.clone(),
            sha256: summary.sha256.clone(),
            size: summary.size,
            bundle: Stamp::of(&bundle).map_err(|e| Error::io(&bundle, e))?,
            signature,
            unsigned_reason,
            app_included: app.file.is_some(),
            app_reason: app.reason.clone(),
            framework: plan.framework.to_string(),
            quantization: plan.quantization.clone(),
            validation: artifacts.validation_status.clone(),
        };
        let text = serde_json::to_string_pretty(&s)
            .map_err(|e| Error::Internal(format!("bundle stamp: {e}")))?;
        crate::cache::write_atomic(&stamp_file, text.as_bytes(), true)?;
        ctx.record(
            "package",
            false,
            started,
            format!("{} entries, {} bytes", summary.entries.len(), summary.size),
        );
        s
    };
    if stamp.signature.is_none() {
        warnings.push(format!(
            "{}: the bundle is unsigned: no signing key. Create one with `cargo edgeai keygen` and pass it with --key KEY, EDGEAI_SIGNING_KEY, or `signing-key` in [package.metadata.edgeai]",
            target.name
        ));
    }
    let steps: Vec<StepOutcome> = std::mem::take(&mut ctx.steps);
    Ok((
        TargetOutcome {
            target: target.name.clone(),
            triple: target.triple.clone(),
            framework: stamp.framework.clone(),
            quantization: stamp.quantization.clone(),
            sha256: stamp.sha256.clone(),
            size: stamp.size,
            signed: stamp.signature.is_some(),
            signature: stamp.signature.map(|_| sig_path.clone()),
            unsigned_reason: stamp.unsigned_reason.clone(),
            app_included: stamp.app_included,
            app_reason: stamp.app_reason.clone(),
            validation: stamp.validation.clone(),
            bundle,
            steps,
        },
        warnings,
    ))
}
