//! `verify_bundle`: the signature over the whole file, then the archive read safely, then the
//! manifest, then every file's sha256 and size, then no missing or extra entries. Nothing is
//! extracted to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::zip::{Archive, ReadError};
use crate::{Check, Error, ManifestFile, MANIFEST_NAME, MANIFEST_SCHEMA_VERSION};

/// Largest manifest we are willing to parse.
const MANIFEST_LIMIT: u64 = 64 << 20;
/// How many problems one error lists before "and N more".
const LIST_LIMIT: usize = 10;

/// The signature that was checked.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureInfo {
    /// minisign key id, as `minisign` prints it (16 upper-case hex digits).
    pub key_id: String,
    pub trusted_comment: String,
    /// The signature file.
    pub path: PathBuf,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub passed: bool,
    pub detail: String,
}

/// What `verify_bundle` checked (all checks passed when it is returned).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub bundle: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub name: String,
    pub version: String,
    pub target: String,
    pub signature: SignatureInfo,
    /// Number of entries in the archive (the manifest included).
    pub entries: usize,
    pub checks: Vec<CheckResult>,
    pub passed: bool,
}

impl VerifyReport {
    /// Terminal rendering.
    pub fn render_human(&self) -> String {
        let mut s = format!(
            "verified {} ({} {} for {}, {} bytes, sha256 {})\n",
            self.bundle.display(),
            self.name,
            self.version,
            self.target,
            self.size,
            self.sha256
        );
        for c in &self.checks {
            s.push_str(&format!(
                "  {:<9} {}  {}\n",
                c.check.as_str(),
                if c.passed { "ok" } else { "FAILED" },
                c.detail
            ));
        }
        s
    }
}

/// The part of the manifest verification needs; other fields are free to evolve.
#[derive(Deserialize)]
struct ManifestView {
    schema_version: u32,
    bundle: crate::ManifestBundle,
    target: String,
    files: Vec<ManifestFile>,
}

fn fail(path: &Path, check: Check, message: impl Into<String>, help: &str) -> Error {
    Error::Verify {
        path: path.to_path_buf(),
        check,
        message: message.into(),
        help: help.to_string(),
    }
}

fn list(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(LIST_LIMIT)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > LIST_LIMIT {
        s.push_str(&format!("; and {} more", problems.len() - LIST_LIMIT));
    }
    s
}

const HELP_TAMPERED: &str = "do not use this bundle: it differs from what was built and signed. Fetch the bundle and its .minisig again from a trusted source, or rebuild it with `cargo edgeai build`";
const HELP_ARCHIVE: &str = "do not unpack or use this bundle: its zip structure is unsafe or damaged. Fetch it again from a trusted source, or rebuild it with `cargo edgeai build`";

fn archive_error(path: &Path, e: ReadError) -> Error {
    match e {
        ReadError::Io(e) => Error::io(path, e),
        ReadError::Bad(Some(entry), msg) => fail(
            path,
            Check::Archive,
            format!("entry `{entry}`: {msg}"),
            HELP_ARCHIVE,
        ),
        ReadError::Bad(None, msg) => fail(path, Check::Archive, msg, HELP_ARCHIVE),
    }
}

/// Verify `bundle` against `public_key` (and `BUNDLE.minisig` next to it). Returns the report
/// when every check passes; otherwise the first failed check as `Error::Verify`, naming the
/// entry and the mismatch.
pub fn verify_bundle(bundle: &Path, public_key: &Path) -> Result<VerifyReport, Error> {
    let mut checks = Vec::new();

    // (a) The signature over the whole file comes first: nothing of an unsigned file is parsed.
    let pk = crate::load_public_key(public_key)?;
    let sig_path = crate::signature_path(bundle);
    let sig_text = std::fs::read_to_string(&sig_path).map_err(|e| {
        fail(
            bundle,
            Check::Signature,
            format!("cannot read the signature {}: {e}", sig_path.display()),
            "sign the bundle with `cargo edgeai sign BUNDLE --key KEY`, or put BUNDLE.minisig next to it",
        )
    })?;
    let sig = minisign::SignatureBox::from_string(&sig_text).map_err(|e| {
        fail(
            bundle,
            Check::Signature,
            format!("{} is not a minisign signature: {e}", sig_path.display()),
            "fetch the .minisig again or re-sign the bundle with `cargo edgeai sign`",
        )
    })?;
    let mut keynum = [0u8; 8];
    keynum.copy_from_slice(&sig.keynum()[..8.min(sig.keynum().len())]);
    let key_id = format!("{:016X}", u64::from_le_bytes(keynum));
    let file = std::fs::File::open(bundle).map_err(|e| Error::io(bundle, e))?;
    let size = file.metadata().map_err(|e| Error::io(bundle, e))?.len();
    minisign::verify(&pk, &sig, std::io::BufReader::with_capacity(1 << 20, file), true, false, false)
        .map_err(|e| {
            fail(
                bundle,
                Check::Signature,
                format!("{e} (signature {}, key id {key_id})", sig_path.display()),
                "do not use this bundle: it was modified after signing, or signed with another key. Check --pubkey, then fetch the bundle and its .minisig again from a trusted source",
            )
        })?;
    let trusted_comment = sig.trusted_comment().unwrap_or_default();
    let sha256 = crate::sha256_file(bundle)?;
    // The signed comment records the sha256 at signing time; it must agree (it always does for
    // a file we signed, so a difference means a signer bug or a file that changed since).
    if let Some(signed) = trusted_comment
        .split('\t')
        .find_map(|f| f.strip_prefix("sha256:"))
    {
        if signed != sha256 {
            return Err(fail(
                bundle,
                Check::Signature,
                format!("the signed sha256 {signed} differs from the file's {sha256}"),
                HELP_TAMPERED,
            ));
        }
    }
    checks.push(CheckResult {
        check: Check::Signature,
        passed: true,
        detail: format!("good signature by key {key_id}; trusted comment: {trusted_comment}"),
    });

    // (b) The archive, read safely.
    let archive = Archive::open(bundle).map_err(|e| archive_error(bundle, e))?;
    checks.push(CheckResult {
        check: Check::Archive,
        passed: true,
        detail: format!(
            "{} entries; no unsafe names, duplicates, links or overlaps",
            archive.entries().len()
        ),
    });

    // (c) The manifest.
    let entry = archive.entry(MANIFEST_NAME).ok_or_else(|| {
        fail(
            bundle,
            Check::Manifest,
            format!("no `{MANIFEST_NAME}` entry"),
            HELP_TAMPERED,
        )
    })?;
    let bytes = archive
        .read_entry(entry, MANIFEST_LIMIT)
        .map_err(|e| archive_error(bundle, e))?;
    let manifest: ManifestView = serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            bundle,
            Check::Manifest,
            format!("`{MANIFEST_NAME}` does not parse: {e}"),
            HELP_TAMPERED,
        )
    })?;
    if manifest.schema_version != MANIFEST_SCHEMA_VERSION {
        return Err(fail(
            bundle,
            Check::Manifest,
            format!(
                "`{MANIFEST_NAME}` has schema_version {}, this cargo-edgeai reads {MANIFEST_SCHEMA_VERSION}",
                manifest.schema_version
            ),
            "use the cargo-edgeai version that built the bundle (see README.md inside it), or rebuild the bundle",
        ));
    }
    let mut listed: BTreeMap<&str, &ManifestFile> = BTreeMap::new();
    for f in &manifest.files {
        if let Some(reason) = crate::zip::unsafe_name_reason(&f.path) {
            return Err(fail(
                bundle,
                Check::Manifest,
                format!("manifest lists the unsafe path `{}` ({reason})", f.path),
                HELP_TAMPERED,
            ));
        }
        if f.path == MANIFEST_NAME || listed.insert(&f.path, f).is_some() {
            return Err(fail(
                bundle,
                Check::Manifest,
                format!("manifest lists `{}` twice or lists itself", f.path),
                HELP_TAMPERED,
            ));
        }
    }
    checks.push(CheckResult {
        check: Check::Manifest,
        passed: true,
        detail: format!(
            "{} {} for {}, schema {}, {} files listed",
            manifest.bundle.name,
            manifest.bundle.version,
            manifest.target,
            manifest.schema_version,
            manifest.files.len()
        ),
    });

    // (d) Every listed file that is present: sha256 and size.
    let mut problems = Vec::new();
    for f in &manifest.files {
        let Some(e) = archive.entry(&f.path) else {
            continue; // reported by the entries check
        };
        if e.size != f.size {
            problems.push(format!(
                "entry `{}`: size expected {} bytes, actual {}",
                f.path, f.size, e.size
            ));
            continue;
        }
        let actual = archive
            .stream_entry(e, |_| {})
            .map_err(|err| archive_error(bundle, err))?;
        if actual != f.sha256 {
            problems.push(format!(
                "entry `{}`: sha256 expected {}, actual {actual}",
                f.path, f.sha256
            ));
        }
    }
    if !problems.is_empty() {
        return Err(fail(bundle, Check::Files, list(&problems), HELP_TAMPERED));
    }
    checks.push(CheckResult {
        check: Check::Files,
        passed: true,
        detail: format!("{} files match their sha256 and size", manifest.files.len()),
    });

    // (e) No missing or extra entries.
    let present: BTreeSet<&str> = archive.entries().iter().map(|e| e.name.as_str()).collect();
    let mut problems = Vec::new();
    for f in &manifest.files {
        if !present.contains(f.path.as_str()) {
            problems.push(format!(
                "missing entry `{}` (listed in the manifest)",
                f.path
            ));
        }
    }
    for name in &present {
        if *name != MANIFEST_NAME && !listed.contains_key(name) {
            problems.push(format!("extra entry `{name}` (not in the manifest)"));
        }
    }
    if !problems.is_empty() {
        return Err(fail(bundle, Check::Entries, list(&problems), HELP_TAMPERED));
    }
    checks.push(CheckResult {
        check: Check::Entries,
        passed: true,
        detail: "no missing or extra entries".into(),
    });

    Ok(VerifyReport {
        bundle: bundle.to_path_buf(),
        sha256,
        size,
        name: manifest.bundle.name,
        version: manifest.bundle.version,
        target: manifest.target,
        signature: SignatureInfo {
            key_id,
            trusted_comment,
            path: sig_path,
        },
        entries: archive.entries().len(),
        checks,
        passed: true,
    })
}
