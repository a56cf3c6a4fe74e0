//! What the build's cache keys are made of besides model files: the app's sources, the Rust
//! toolchain's identity, llama.cpp's version, cargo-edgeai's own identity and the bundle's
//! timestamp. Each is cheap on a no-op rebuild: files are stat-ed (digests memoised by the
//! [`StepCache`]), tool versions are memoised by the stamps of the files that identify the tool,
//! and nothing is spawned unless one of those changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cache::{hex, list_files, StepCache};
use crate::{Error, Result};

/// cargo-edgeai's identity in cache keys: its version and its executable's size and mtime,
/// so a rebuilt cargo-edgeai (new converter or quantizer code) never reuses old outputs.
pub fn self_identity() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| crate::cache::Stamp::of(&p).ok());
    match exe {
        Some(s) => format!("{} ({} {})", env!("CARGO_PKG_VERSION"), s.size, s.mtime_ns),
        None => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The file `program` names on PATH (no process spawned).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn rustup_home() -> Option<PathBuf> {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))
}

/// `rustc -vV` of the toolchain that builds the app in `project_dir`, memoised by the rustc
/// binary, rustup's settings and toolchains directory, and the project's rust-toolchain files
/// (an override there picks another compiler without touching rustc's file).
pub fn rustc_identity(cache: &StepCache, project_dir: &Path) -> Result<String> {
    let rustc = std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .or_else(|| which("rustc"))
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let mut identity = vec![rustc.clone()];
    if let Some(home) = rustup_home() {
        identity.push(home.join("settings.toml"));
        identity.push(home.join("toolchains"));
    }
    for dir in project_dir.ancestors() {
        identity.push(dir.join("rust-toolchain.toml"));
        identity.push(dir.join("rust-toolchain"));
    }
    let env_override = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_default();
    cache.tool_version(&format!("rustc {env_override}"), &identity, || {
        let out = Command::new(&rustc)
            .arg("-vV")
            .current_dir(project_dir)
            .output()
            .map_err(|e| Error::Usage {
                message: format!("cannot run {}: {e}", rustc.display()),
                help: "install Rust with rustup (https://rustup.rs), or set RUSTC".into(),
            })?;
        if !out.status.success() {
            return Err(Error::Usage {
                message: format!(
                    "`{} -vV` failed: {}",
                    rustc.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                help: "check the Rust toolchain (`rustup show`)".into(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

/// The first line of `rustc -vV` (`rustc 1.95.0 (59807616e 2026-04-14)`), for the manifest.
pub fn rustc_release(identity: &str) -> String {
    identity.lines().next().unwrap_or(identity).to_string()
}

/// llama.cpp's tool version (`llama-perplexity --version`), memoised by the binary's stamp.
pub fn llama_version(cache: &StepCache, bin_dir: &Path) -> Result<String> {
    let exe = bin_dir.join("llama-perplexity");
    cache.tool_version("llama.cpp", &[exe], || {
        crate::validate::llama::tool_version(bin_dir)
    })
}

/// The bundle's timestamp: `SOURCE_DATE_EPOCH`, else the last commit time of the project's
/// git repository, else 1980-01-01 (edgeai_bundle::source_date_epoch), memoised by the git
/// files that move when HEAD moves, so a no-op rebuild does not run git.
pub fn source_date_epoch(cache: &StepCache, project_dir: &Path) -> Result<u64> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
        return Ok(edgeai_bundle::source_date_epoch(project_dir));
    }
    let mut identity = Vec::new();
    for dir in project_dir.ancestors() {
        let git = dir.join(".git");
        identity.push(git.join("HEAD"));
        if git.exists() {
            identity.push(git.join("packed-refs"));
            if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
                if let Some(r) = head.trim().strip_prefix("ref: ") {
                    identity.push(git.join(r));
                }
            }
            break;
        }
    }
    let v = cache.tool_version(
        &format!("source-date-epoch {}", project_dir.display()),
        &identity,
        || Ok(edgeai_bundle::source_date_epoch(project_dir).to_string()),
    )?;
    v.parse()
        .map_err(|_| Error::Internal(format!("bad memoised source date epoch `{v}`")))
}

/// Environment variables that change what `cargo build` produces.
fn build_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "CARGO_BUILD_RUSTFLAGS"
                    | "CARGO_BUILD_TARGET_DIR"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTUP_TOOLCHAIN"
                    | "CC"
                    | "CXX"
                    | "AR"
                    | "CFLAGS"
                    | "CXXFLAGS"
                    | "ANDROID_NDK_HOME"
                    | "ANDROID_NDK_ROOT"
            ) || k.starts_with("CARGO_TARGET_")
                || k.starts_with("CARGO_PROFILE_")
                || k.starts_with("CC_")
                || k.starts_with("CXX_")
                || k.starts_with("AR_")
        })
        .collect()
}

/// Dependency tables of a manifest that affect the built binary.
fn dependency_tables(manifest: &toml::Table) -> Vec<&toml::Table> {
    let mut tables = Vec::new();
    for name in ["dependencies", "build-dependencies"] {
        if let Some(t) = manifest.get(name).and_then(|v| v.as_table()) {
            tables.push(t);
        }
    }
    if let Some(targets) = manifest.get("target").and_then(|v| v.as_table()) {
        for cfg in targets.values().filter_map(|v| v.as_table()) {
            for name in ["dependencies", "build-dependencies"] {
                if let Some(t) = cfg.get(name).and_then(|v| v.as_table()) {
                    tables.push(t);
                }
            }
        }
    }
    tables
}

/// The nearest directory at or above `dir` whose Cargo.toml has a `[workspace]` table.
fn workspace_root(dir: &Path) -> Option<(PathBuf, toml::Table)> {
    for d in dir.ancestors() {
        let manifest = d.join("Cargo.toml");
        if let Some(t) = std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        {
            if t.contains_key("workspace") {
                return Some((d.to_path_buf(), t));
            }
        }
    }
    None
}

/// The files of a package that go into its build: Cargo.toml, build.rs, src/**, and the same
/// for every path dependency (also through `workspace = true`), the workspace's Cargo.toml and
/// Cargo.lock, `.cargo/config.toml` files and rust-toolchain files around it.
pub fn app_source_files(project_dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![project_dir.to_path_buf()];
    while let Some(dir) = queue.pop() {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !seen.insert(dir.clone()) || seen.len() > 256 {
            continue;
        }
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|e| Error::Io {
            path: manifest.clone(),
            source: e,
            help: "a path dependency of the app has no readable Cargo.toml; fix its `path`".into(),
        })?;
        files.insert(manifest.clone());
        let build_rs = dir.join("build.rs");
        if build_rs.is_file() {
            files.insert(build_rs);
        }
        let src = dir.join("src");
        if src.is_dir() {
            for rel in list_files(&src)? {
                files.insert(src.join(rel));
            }
        }
        let Ok(table) = toml::from_str::<toml::Table>(&text) else {
            continue;
        };
        if let Some(b) = table
            .get("package")
            .and_then(|p| p.get("build"))
            .and_then(|b| b.as_str())
        {
            let p = dir.join(b);
            if p.is_file() {
                files.insert(p);
            }
        }
        let ws = workspace_root(&dir);
        if let Some((root, _)) = &ws {
            files.insert(root.join("Cargo.toml"));
            let lock = root.join("Cargo.lock");
            if lock.is_file() {
                files.insert(lock);
            }
        } else if dir.join("Cargo.lock").is_file() {
            files.insert(dir.join("Cargo.lock"));
        }
        for deps in dependency_tables(&table) {
            for (name, spec) in deps {
                if let Some(p) = spec.get("path").and_then(|p| p.as_str()) {
                    queue.push(dir.join(p));
                } else if spec.get("workspace").and_then(|w| w.as_bool()) == Some(true) {
                    if let Some((root, t)) = &ws {
                        let path = t
                            .get("workspace")
                            .and_then(|w| w.get("dependencies"))
                            .and_then(|d| d.get(name))
                            .and_then(|d| d.get("path"))
                            .and_then(|p| p.as_str());
                        if let Some(p) = path {
                            queue.push(root.join(p));
                        }
                    }
                }
            }
        }
    }
    for dir in project_dir.ancestors() {
        for name in [".cargo/config.toml", ".cargo/config"] {
            let p = dir.join(name);
            if p.is_file() {
                files.insert(p);
            }
        }
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        for name in ["config.toml", "config"] {
            let p = home.join(name);
            if p.is_file() {
                files.insert(p);
            }
        }
    }
    Ok(files)
}

/// One digest of the app's inputs: its source files (see [`app_source_files`]), the build
/// environment, triple, profile and compiler identity.
pub fn app_digest(
    cache: &StepCache,
    project_dir: &Path,
    triple: &str,
    release: bool,
    rustc: &str,
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("triple {triple}\nrelease {release}\nrustc {rustc}\n").as_bytes());
    for (k, v) in build_env() {
        h.update(format!("env {k}={v}\n").as_bytes());
    }
    for file in app_source_files(project_dir)? {
        let d = cache.file_digest(&file)?;
        let label = file
            .strip_prefix(project_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| file.display().to_string());
        h.update(format!("file {label}\0{d}\n").as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// The model of an `hf://org/name[@revision]` reference: downloads (or, offline, finds in
/// the hub cache `${XDG_CACHE_HOME}/cargo-edgeai/hub`) the snapshot and returns the model as
/// the build sees it, with the commit it resolved to.
///
/// - `path` is a directory named after the repository (`name`) under
///   `target/edgeai/models/`, whose files are symlinks into the snapshot: the converter names
///   the model after its directory (`general.name`, as llama.cpp's reference converter does),
///   and the hub's snapshot directory is named after the commit hash.
/// - `digest` covers the repository's name and every file's sha256 (not the commit): the same
///   bytes under another commit reuse the converted model, other bytes or another repository
///   (another directory name, so another `general.name`) do not.
/// - `public_name` is `hf://org/name@commit`, what the bundle's plan records (no host path).
pub(crate) fn resolve_hub(
    model: &str,
    manifest_path: &Path,
    edgeai_dir: &Path,
    offline: bool,
    progress: bool,
) -> Result<(super::ResolvedModel, String)> {
    let r: edgeai_hub::HubRef = model.parse().map_err(|e: edgeai_hub::Error| Error::Usage {
        message: format!("{}: model `{model}`: {e}", manifest_path.display()),
        help: "write the model as hf://org/name or hf://org/name@revision".into(),
    })?;
    let mut hub = edgeai_hub::HubOptions::from_env(crate::doctor::cache_dir().join("hub"));
    hub.offline |= offline;
    hub.progress = progress;
    let snap = edgeai_hub::snapshot_download(&r, &hub).map_err(|e| Error::Usage {
        message: format!("{}: model {model}: {e}", manifest_path.display()),
        help: e.hint(),
    })?;
    let mut h = Sha256::new();
    h.update(format!("hf {}\n", r.repo).as_bytes());
    for (path, sha) in &snap.files {
        h.update(format!("{path}\0{sha}\n").as_bytes());
    }
    let digest = hex(&h.finalize());
    let path = hub_model_view(edgeai_dir, &r.repo, &snap)?;
    Ok((
        super::ResolvedModel {
            path,
            digest,
            public_name: format!("hf://{}@{}", r.repo, snap.commit),
        },
        snap.commit,
    ))
}

/// `target/edgeai/models/<org>--<name>/<commit>/<name>/`: one symlink per snapshot file.
/// Checked on every build (a few lstat/readlink calls) and rebuilt when anything differs;
/// built under a temporary name and renamed, so a killed build leaves a complete view or none.
fn hub_model_view(edgeai_dir: &Path, repo: &str, snap: &edgeai_hub::Snapshot) -> Result<PathBuf> {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let parent = edgeai_dir
        .join("models")
        .join(repo.replace('/', "--"))
        .join(&snap.commit);
    let view = parent.join(name);
    let complete = |dir: &Path| {
        snap.files.iter().all(|(rel, _)| {
            std::fs::read_link(dir.join(rel)).is_ok_and(|t| t == snap.dir.join(rel))
        })
    };
    if complete(&view) {
        return Ok(view);
    }
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let remove = |p: &Path| -> Result<()> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e)),
            Ok(_) => std::fs::remove_file(p).map_err(|e| Error::io(p, e)),
            Err(_) => Ok(()),
        }
    };
    remove(&tmp)?;
    let staged = tmp.join(name);
    for (rel, _) in &snap.files {
        let link = staged.join(rel);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::os::unix::fs::symlink(snap.dir.join(rel), &link).map_err(|e| Error::io(&link, e))?;
    }
    if snap.files.is_empty() {
        std::fs::create_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
    }
    remove(&view)?;
    std::fs::rename(&staged, &view).map_err(|e| Error::io(&view, e))?;
    remove(&tmp)?;
    Ok(view)
}
