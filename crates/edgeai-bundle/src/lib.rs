//! Deterministic bundles (zip), their manifest and SBOM, minisign signatures and verification.
//!
//! A bundle is a zip whose bytes are a pure function of the [`BundleSpec`]: the input files'
//! names, bytes and executable bits, the generated manifest, SBOM, README and launcher, and
//! `source_date_epoch`. Nothing from the host (absolute paths, user names, file times,
//! permissions beyond the executable bit) reaches it. [`write_bundle`] never leaves a partial
//! file under the final name and refuses minisign secret keys among its inputs.
//! [`sign_bundle`] writes `BUNDLE.minisig` (prehashed Ed25519, minisign's format) and
//! [`verify_bundle`] checks the signature, the archive's safety, every file's sha256 and size
//! against the manifest, and that no entry is missing or extra.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod error;
mod keys;
pub mod sbom;
mod templates;
mod verify;
pub mod zip;

pub use error::{Check, Error};
pub use keys::{
    contains_secret_key, keygen, load_public_key, load_secret_key, prompt_password,
    read_password_file, secret_key_is_encrypted, sign_bundle, signature_path, KeyProtection,
    PASSWORD_ENV,
};
pub use verify::{verify_bundle, CheckResult, SignatureInfo, VerifyReport};

/// Name of the manifest entry.
pub const MANIFEST_NAME: &str = "edgeai-manifest.json";
/// Name of the SBOM entry.
pub const SBOM_NAME: &str = "sbom.cdx.json";
/// Name of the README entry.
pub const README_NAME: &str = "README.md";
/// Name of the launcher entry.
pub const LAUNCHER_NAME: &str = "run.sh";
/// Schema version of the manifest.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;
/// SOURCE_DATE_EPOCH when neither the environment nor git gives one: 1980-01-01T00:00:00Z,
/// the earliest time a zip can hold.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 315_532_800;

/// One file to put in the bundle.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// '/'-separated relative path inside the zip.
    pub path: String,
    /// Where the bytes come from on this machine (never recorded in the bundle).
    pub source: PathBuf,
    /// Mode 0755 instead of 0644.
    pub executable: bool,
}

/// Everything a bundle is made of.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub name: String,
    pub version: String,
    pub target: String,
    /// Model files, the app binary, anything else.
    pub files: Vec<BundleFile>,
    /// The plan as JSON (must hold no host paths: the caller sanitizes).
    pub plan: Value,
    /// Tool -> version string (rustc, cargo-edgeai, llama.cpp, mlx, ...).
    pub toolchains: BTreeMap<String, String>,
    /// Validation summary; `None` = not validated.
    pub validation: Option<Value>,
    /// CycloneDX JSON (see [`sbom::from_cargo_metadata`]); `None` = an SBOM naming only the bundle.
    pub sbom: Option<Value>,
    /// All timestamps in the archive.
    pub source_date_epoch: u64,
    /// Bundle path of the program the launcher script runs.
    pub launcher: Option<String>,
}

/// What [`write_bundle`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    pub path: PathBuf,
    /// sha256 of the whole bundle file.
    pub sha256: String,
    pub size: u64,
    /// Entry names, in archive order.
    pub entries: Vec<String>,
}

/// The manifest (`edgeai-manifest.json`), schema version 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema_version: u32,
    pub bundle: ManifestBundle,
    pub target: String,
    pub plan: Value,
    /// Every entry except the manifest itself, sorted by path.
    pub files: Vec<ManifestFile>,
    pub toolchains: BTreeMap<String, String>,
    pub validation: Option<Value>,
    pub source_date_epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestBundle {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// SOURCE_DATE_EPOCH from the environment, else the last commit time of the git repository
/// at `repo_dir`, else [`DEFAULT_SOURCE_DATE_EPOCH`].
pub fn source_date_epoch(repo_dir: &Path) -> u64 {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        if let Some(n) = v.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
            return n;
        }
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo_dir)
        .args(["log", "-1", "--format=%ct"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            if let Some(n) = std::str::from_utf8(&out.stdout)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                return n;
            }
        }
    }
    DEFAULT_SOURCE_DATE_EPOCH
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(zip::hex(&h.finalize()))
}

/// Write `bytes` to `dest` through a temp file in the same directory, fsync and rename.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = parent_dir(dest);
    let mut tmp = tempfile::Builder::new()
        .prefix(".edgeai-tmp-")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(dest, e))?;
    set_mode(tmp.path(), 0o644).map_err(|e| Error::io(dest, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(dest, e))?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    keys::sync_dir(&dir);
    Ok(())
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

fn check_label(what: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(Error::spec(
            format!("bundle {what} {value:?} is empty or holds control characters"),
            format!("set a plain one-line {what} (it is written into the README and the launcher)"),
        ));
    }
    Ok(())
}

/// Validate the spec before any file is read.
fn check_spec(spec: &BundleSpec) -> Result<(), Error> {
    check_label("name", &spec.name)?;
    check_label("version", &spec.version)?;
    check_label("target", &spec.target)?;
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for generated in [MANIFEST_NAME, SBOM_NAME, README_NAME, LAUNCHER_NAME] {
        seen.insert(generated.to_ascii_lowercase(), generated);
    }
    for f in &spec.files {
        if let Some(reason) = zip::unsafe_name_reason(&f.path) {
            return Err(Error::spec(
                format!(
                    "bundle path `{}` (from {}) is unsafe: {reason}",
                    f.path,
                    f.source.display()
                ),
                "use a relative '/'-separated path without `..`, `.` or empty components, e.g. model/model.gguf",
            ));
        }
        if let Some(prev) = seen.insert(f.path.to_ascii_lowercase(), &f.path) {
            let generated = [MANIFEST_NAME, SBOM_NAME, README_NAME, LAUNCHER_NAME].contains(&prev);
            return Err(Error::spec(
                if generated {
                    format!("bundle path `{}` is reserved for the generated `{prev}`", f.path)
                } else {
                    format!("bundle path `{}` appears twice (or differs only by case from `{prev}`)", f.path)
                },
                "give every bundle file its own path (paths that differ only by case collide when unpacked on macOS or Windows)",
            ));
        }
    }
    if let Some(l) = &spec.launcher {
        match spec.files.iter().find(|f| &f.path == l) {
            None => {
                return Err(Error::spec(
                    format!("the launcher program `{l}` is not one of the bundle's files"),
                    "set the launcher to the bundle path of the app binary (e.g. bin/app), and add that file",
                ))
            }
            Some(f) if !f.executable => {
                return Err(Error::spec(
                    format!("the launcher program `{l}` is not marked executable"),
                    "mark the app binary's BundleFile as executable",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Strings that would reveal the host if they appeared in the bundle's metadata.
fn host_strings(spec: &BundleSpec, out: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut push = |p: PathBuf| {
        let s = p.to_string_lossy().trim_end_matches('/').to_string();
        // Very short paths ("/", "/tmp") would match innocent text.
        if s.len() > 4 && !v.contains(&s) {
            v.push(s);
        }
    };
    if let Some(h) = std::env::var_os("HOME") {
        push(PathBuf::from(h));
    }
    if let Ok(d) = std::env::current_dir() {
        push(d);
    }
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    push(parent_dir(&abs(out)));
    for f in &spec.files {
        push(parent_dir(&abs(&f.source)));
    }
    v
}

struct Prepared {
    entry: String,
    source: PathBuf,
    executable: bool,
    size: u64,
    sha256: String,
    /// Deflate it, or store it (see [`zip::DeflateSampler`]).
    deflate: bool,
}

/// Read an input once: size, sha256, and whether it is a minisign secret key.
fn prepare(f: &BundleFile) -> Result<Prepared, Error> {
    let meta = std::fs::metadata(&f.source).map_err(|e| Error::io(&f.source, e))?;
    if !meta.is_file() {
        return Err(Error::spec(
            format!(
                "{}: not a regular file (bundle path `{}`)",
                f.source.display(),
                f.path
            ),
            "bundle files must be regular files; list the files of a directory one by one",
        ));
    }
    let mut file = std::fs::File::open(&f.source).map_err(|e| Error::io(&f.source, e))?;
    let mut h = Sha256::new();
    let mut scan = keys::SecretKeyScanner::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut sampler = zip::DeflateSampler::new(meta.len());
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(&f.source, e))?;
        if n == 0 {
            break;
        }
        sampler.feed(&buf[..n]);
        h.update(&buf[..n]);
        scan.feed(&buf[..n]);
        size += n as u64;
    }
    if scan.finish() {
        return Err(Error::SecretKeyInBundle {
            path: f.source.clone(),
            entry: f.path.clone(),
        });
    }
    Ok(Prepared {
        entry: f.path.clone(),
        source: f.source.clone(),
        executable: f.executable,
        size,
        sha256: zip::hex(&h.finalize()),
        deflate: sampler.worth_deflating(),
    })
}

fn to_json_text(v: &impl Serialize) -> Result<Vec<u8>, Error> {
    let mut s = serde_json::to_vec_pretty(v).map_err(|e| Error::Template {
        name: "json".into(),
        message: e.to_string(),
    })?;
    s.push(b'\n');
    Ok(s)
}

/// The SBOM that goes into the bundle: the caller's, or one naming only the bundle.
fn bundle_sbom(spec: &BundleSpec) -> Value {
    let bom = spec.sbom.clone().unwrap_or_else(|| {
        let purl = format!("pkg:generic/{}@{}", spec.name, spec.version);
        serde_json::json!({
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "serialNumber": "",
            "version": 1,
            "metadata": {
                "timestamp": "",
                "tools": { "components": [{
                    "type": "application",
                    "name": "cargo-edgeai",
                    "version": env!("CARGO_PKG_VERSION"),
                }]},
                "component": {
                    "type": "application", "bom-ref": purl, "name": spec.name,
                    "version": spec.version, "purl": purl,
                },
            },
            "components": [],
            "dependencies": [],
        })
    });
    sbom::finalize(bom, spec.source_date_epoch)
}

/// A generated entry: name, bytes, executable.
type Generated = (String, Vec<u8>, bool);

/// The generated entries (manifest first), for `spec` whose input
/// files have been read into `files`.
fn generate(spec: &BundleSpec, files: &[Prepared]) -> Result<Vec<Generated>, Error> {
    let sbom_bytes = to_json_text(&bundle_sbom(spec))?;
    let run_sh = templates::render_launcher(spec)?.into_bytes();
    let mut listed: Vec<ManifestFile> = files
        .iter()
        .map(|p| ManifestFile {
            path: p.entry.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
        })
        .collect();
    let mut executables: Vec<&str> = files
        .iter()
        .filter(|p| p.executable)
        .map(|p| p.entry.as_str())
        .collect();
    executables.push(LAUNCHER_NAME);
    for (name, bytes) in [(SBOM_NAME, &sbom_bytes), (LAUNCHER_NAME, &run_sh)] {
        listed.push(ManifestFile {
            path: name.to_string(),
            sha256: zip::hex(&Sha256::digest(bytes)),
            size: bytes.len() as u64,
        });
    }
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let readme = templates::render_readme(spec, &listed, &executables)?.into_bytes();
    listed.push(ManifestFile {
        path: README_NAME.to_string(),
        sha256: zip::hex(&Sha256::digest(&readme)),
        size: readme.len() as u64,
    });
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        bundle: ManifestBundle {
            name: spec.name.clone(),
            version: spec.version.clone(),
        },
        target: spec.target.clone(),
        plan: spec.plan.clone(),
        files: listed,
        toolchains: spec.toolchains.clone(),
        validation: spec.validation.clone(),
        source_date_epoch: spec.source_date_epoch,
    };
    let manifest_bytes = to_json_text(&manifest)?;
    Ok(vec![
        (MANIFEST_NAME.to_string(), manifest_bytes, false),
        (SBOM_NAME.to_string(), sbom_bytes, false),
        (README_NAME.to_string(), readme, false),
        (LAUNCHER_NAME.to_string(), run_sh, true),
    ])
}

/// The manifest, README, launcher and SBOM `write_bundle` would generate for `spec`, by entry
/// name (for previews and snapshot tests). Reads every input file once.
pub fn render_generated(spec: &BundleSpec) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    check_spec(spec)?;
    let files = spec
        .files
        .iter()
        .map(prepare)
        .collect::<Result<Vec<_>, _>>()?;
    let generated = generate(spec, &files)?;
    Ok(generated.into_iter().map(|(n, b, _)| (n, b)).collect())
}

/// Write the bundle for `spec` to `out`: a temp file in `out`'s directory, fsynced, renamed
/// over `out`. Fails before writing anything when an input is a minisign secret key, a path
/// is unsafe or duplicated, or the generated metadata would contain a host path.
pub fn write_bundle(spec: &BundleSpec, out: &Path) -> Result<BundleSummary, Error> {
    check_spec(spec)?;
    let mut files = spec
        .files
        .iter()
        .map(prepare)
        .collect::<Result<Vec<_>, _>>()?;
    files.sort_by(|a, b| a.entry.cmp(&b.entry));
    let generated = generate(spec, &files)?;

    let leaks = host_strings(spec, out);
    for (name, bytes, _) in &generated {
        let text = String::from_utf8_lossy(bytes);
        if let Some(leak) = leaks.iter().find(|l| text.contains(l.as_str())) {
            return Err(Error::spec(
                format!("the bundle's {name} would contain the host path `{leak}`"),
                "pass the plan, validation summary and toolchains with paths relative to the project (or file names only): a bundle must not reveal the machine it was built on",
            ));
        }
    }

    enum Source<'a> {
        File(&'a Prepared),
        Bytes(&'a [u8], bool),
    }
    let mut entries: Vec<(&str, Source<'_>)> = files
        .iter()
        .map(|p| (p.entry.as_str(), Source::File(p)))
        .collect();
    for (name, bytes, exec) in &generated {
        entries.push((name.as_str(), Source::Bytes(bytes, *exec)));
    }
    // Byte order of the names: the same on every platform and locale.
    entries.sort_by(|a, b| a.0.cmp(b.0));

    let dir = parent_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle.zip".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let (tmp_file, tmp_path) = tmp.into_parts();
    let mut w = zip::ZipWriter::new(tmp_file, &tmp_path, spec.source_date_epoch);
    for (name, source) in &entries {
        match source {
            Source::File(p) => {
                let written = w.add(
                    name,
                    p.size,
                    p.executable,
                    p.deflate,
                    || std::fs::File::open(&p.source).map_err(|e| Error::io(&p.source, e)),
                    &p.source,
                )?;
                if written.sha256 != p.sha256 {
                    return Err(Error::spec(
                        format!("{}: changed while bundling (sha256 differs between two reads)", p.source.display()),
                        "do not modify the bundle's input files while `cargo edgeai` runs; run it again",
                    ));
                }
            }
            Source::Bytes(bytes, exec) => {
                w.add_bytes(name, bytes, *exec)?;
            }
        }
    }
    let file = w.finish()?;
    file.sync_all().map_err(|e| Error::io(&*tmp_path, e))?;
    drop(file);
    set_mode(&tmp_path, 0o644).map_err(|e| Error::io(&*tmp_path, e))?;
    tmp_path.persist(out).map_err(|e| Error::io(out, e.error))?;
    keys::sync_dir(&dir);

    let size = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(BundleSummary {
        path: out.to_path_buf(),
        sha256: sha256_file(out)?,
        size,
        entries: entries.iter().map(|(n, _)| n.to_string()).collect(),
    })
}
