//! Resumable, checksummed downloads of Hugging Face Hub models (hf://org/name@revision).
//!
//! Follows huggingface_hub's protocol and cache layout so the two can share a cache:
//! the file list and commit come from `GET {endpoint}/api/models/{repo}/revision/{revision}`,
//! each file's digest from the headers of `{endpoint}/{repo}/resolve/{commit}/{file}`
//! (`X-Linked-Etag` = sha256 for LFS files, `ETag` = git blob sha1 for small ones), and the
//! cache holds `models--org--name/{blobs/<etag>, snapshots/<commit>/<file>, refs/<revision>}`.
//! Differences: snapshot files are hard links (or copies), never symlinks, and a completed
//! snapshot is recorded in `edgeai-snapshots/<commit>.json`, so offline use never returns a
//! half-downloaded snapshot.

mod download;
mod error;
mod hubref;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::Error;
pub use hubref::{is_hub_ref, HubRef, DEFAULT_REVISION, SCHEME};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to download.
#[derive(Clone)]
pub struct HubOptions {
    /// Base URL of the Hub (`HF_ENDPOINT` or [`DEFAULT_ENDPOINT`]), without a trailing `/`.
    pub endpoint: String,
    /// Root of the cache (holds `models--org--name/`).
    pub cache_dir: PathBuf,
    /// Answer from the cache only; never touch the network.
    pub offline: bool,
    /// Sent as `Authorization: Bearer` to the endpoint's host (never to other hosts).
    pub token: Option<String>,
    /// Show a progress bar per file (only when stderr is a terminal).
    pub progress: bool,
}

impl fmt::Debug for HubOptions {
    // The token must not end up in logs or error reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubOptions {
    /// Options the way huggingface_hub reads its environment: endpoint from `HF_ENDPOINT`,
    /// token from `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file that
    /// `huggingface-cli login` writes (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else
    /// `~/.cache/huggingface/token`). Offline when `HF_HUB_OFFLINE` is `1`/`true`.
    pub fn from_env(cache_dir: PathBuf) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
                    var("HF_HOME")
                        .map(PathBuf::from)
                        .or_else(|| {
                            var("XDG_CACHE_HOME")
                                .map(|c| PathBuf::from(c).join("huggingface"))
                                .or_else(|| {
                                    var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
                                })
                        })
                        .map(|home| home.join("token"))
                })?;
                fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        HubOptions {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            offline,
            token,
            progress: true,
        }
    }
}

/// A complete local copy of a repository at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `<cache>/models--org--name/snapshots/<commit>`: the model files, as in the repository.
    pub dir: PathBuf,
    /// The commit the revision resolved to.
    pub commit: String,
    /// Every file (`/`-separated path relative to `dir`) with its sha256, sorted by path.
    pub files: Vec<(String, String)>,
}

/// Downloads (or finds in the cache) every file of `r` and returns the local snapshot.
///
/// Online, the revision is resolved with one API call; files already in the snapshot are not
/// downloaded again, and a revision given as a full commit hash whose snapshot is complete is
/// answered without any network I/O. Offline, the answer comes from `refs/` and the snapshot
/// record only.
pub fn snapshot_download(r: &HubRef, opts: &HubOptions) -> Result<Snapshot, Error> {
    r.validate()?;
    let repo_dir = opts.cache_dir.join(repo_folder_name(&r.repo));
    if opts.offline {
        return cached_snapshot(r, opts, &repo_dir);
    }
    if r.is_commit() {
        if let Some(snapshot) = complete_snapshot(&repo_dir, &r.revision)? {
            return Ok(snapshot);
        }
    }
    let client = download::Client::new(opts)?;
    let info = match client.repo_info(r) {
        Ok(info) => info,
        // Like huggingface_hub: when the Hub cannot be reached at all, a complete cached
        // snapshot of the revision is still a correct answer.
        Err(err @ Error::Network { .. }) => {
            return cached_snapshot(r, opts, &repo_dir).map_err(|_| err);
        }
        Err(err) => return Err(err),
    };
    let commit = info.sha.clone();
    if commit != r.revision {
        write_ref(&repo_dir, &r.revision, &commit)?;
    }
    if let Some(snapshot) = complete_snapshot(&repo_dir, &commit)? {
        let listed: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let cached: BTreeSet<&str> = snapshot.files.iter().map(|(f, _)| f.as_str()).collect();
        if listed == cached {
            return Ok(snapshot);
        }
    }

    let snapshot_dir = repo_dir.join("snapshots").join(&commit);
    let blobs_dir = repo_dir.join("blobs");
    mkdirs(&snapshot_dir)?;
    mkdirs(&blobs_dir)?;
    let mut siblings = info.siblings;
    siblings.sort_by(|a, b| a.rfilename.cmp(&b.rfilename));
    let mut records = Vec::with_capacity(siblings.len());
    for sibling in &siblings {
        records.push(ensure_file(
            &client,
            r,
            &commit,
            sibling,
            &blobs_dir,
            &snapshot_dir,
        )?);
    }
    let record = SnapshotRecord {
        repo: r.repo.clone(),
        commit: commit.clone(),
        files: records,
    };
    write_record(&repo_dir, &record)?;
    Ok(record.into_snapshot(snapshot_dir))
}

/// `org/name` -> `models--org--name` (huggingface_hub's `repo_folder_name`).
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The file list of a revision as the Hub's API returns it (`?blobs=true`).
#[derive(Debug, Deserialize)]
pub(crate) struct RepoInfo {
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Sibling {
    pub rfilename: String,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LfsInfo {
    pub sha256: String,
}

/// What `edgeai-snapshots/<commit>.json` records: written last, after every file of the
/// snapshot is in place, so its presence means "complete".
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    repo: String,
    commit: String,
    files: Vec<FileRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    path: String,
    sha256: String,
    etag: String,
    size: u64,
}

impl SnapshotRecord {
    fn into_snapshot(self, dir: PathBuf) -> Snapshot {
        Snapshot {
            dir,
            commit: self.commit,
            files: self.files.into_iter().map(|f| (f.path, f.sha256)).collect(),
        }
    }
}

fn record_path(repo_dir: &Path, commit: &str) -> PathBuf {
    repo_dir
        .join("edgeai-snapshots")
        .join(format!("{commit}.json"))
}

/// The snapshot of `commit` if it was completed and all its files are still there with their
/// recorded sizes (someone may have pruned the cache by hand).
fn complete_snapshot(repo_dir: &Path, commit: &str) -> Result<Option<Snapshot>, Error> {
    if !hubref::is_commit_hash(commit) {
        return Ok(None);
    }
    let path = record_path(repo_dir, commit);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    // A record that does not parse is treated as absent: it is rewritten after a download.
    let Ok(record) = serde_json::from_str::<SnapshotRecord>(&text) else {
        return Ok(None);
    };
    if record.commit != commit {
        return Ok(None);
    }
    let dir = repo_dir.join("snapshots").join(commit);
    for file in &record.files {
        if safe_relative_path(&file.path).is_err() {
            return Ok(None);
        }
        match fs::metadata(dir.join(&file.path)) {
            Ok(meta) if meta.is_file() && meta.len() == file.size => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(record.into_snapshot(dir)))
}

/// Offline answer: revision -> commit through `refs/` (or the revision itself when it is a
/// commit hash), then the completed snapshot of that commit.
fn cached_snapshot(r: &HubRef, opts: &HubOptions, repo_dir: &Path) -> Result<Snapshot, Error> {
    let miss = |reason: String| Error::OfflineMiss {
        repo: r.repo.clone(),
        revision: r.revision.clone(),
        cache_dir: opts.cache_dir.clone(),
        reason,
    };
    let commit = if r.is_commit() {
        r.revision.clone()
    } else {
        let ref_path = repo_dir.join("refs").join(&r.revision);
        match fs::read_to_string(&ref_path) {
            Ok(commit) => commit.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(miss(format!(
                    "revision `{}` was never resolved ({} is missing)",
                    r.revision,
                    ref_path.display()
                )))
            }
            Err(e) => return Err(Error::io(ref_path, e)),
        }
    };
    complete_snapshot(repo_dir, &commit)?.ok_or_else(|| {
        miss(format!(
            "the snapshot of commit {commit} was not completely downloaded"
        ))
    })
}

fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), Error> {
    let path = repo_dir.join("refs").join(revision);
    if fs::read_to_string(&path).ok().as_deref() == Some(commit) {
        return Ok(());
    }
    write_atomic(&path, commit.as_bytes())
}

fn write_record(repo_dir: &Path, record: &SnapshotRecord) -> Result<(), Error> {
    let path = record_path(repo_dir, &record.commit);
    let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Protocol {
        url: path.display().to_string(),
        message: format!("cannot serialize the snapshot record: {e}"),
    })?;
    write_atomic(&path, &json)
}

/// Temp file in the same directory + fsync + rename: readers see the old content or the new,
/// never a prefix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    mkdirs(parent)?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A name next to `path` that no other process uses at the same time.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

pub(crate) fn mkdirs(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// A repository file name must stay inside the snapshot directory.
pub(crate) fn safe_relative_path(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 4096 {
        return Err("empty or overlong file name".into());
    }
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(format!("unsafe file name `{name}`"));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("unsafe file name `{name}`"));
        }
    }
    Ok(())
}

/// Puts one file of the snapshot in place (downloading its blob if needed) and returns its
/// record.
fn ensure_file(
    client: &download::Client,
    r: &HubRef,
    commit: &str,
    sibling: &Sibling,
    blobs_dir: &Path,
    snapshot_dir: &Path,
) -> Result<FileRecord, Error> {
    let name = sibling.rfilename.as_str();
    safe_relative_path(name).map_err(|message| Error::Protocol {
        url: client.api_url(r),
        message: format!("the Hub listed a file that cannot be stored safely: {message}"),
    })?;
    let target = snapshot_dir.join(name);
    // The etag the API announced: sha256 for LFS files, the git blob id otherwise.
    let announced = sibling
        .lfs
        .as_ref()
        .map(|l| l.sha256.to_ascii_lowercase())
        .or_else(|| sibling.blob_id.as_ref().map(|b| b.to_ascii_lowercase()))
        .filter(|e| download::digest_kind(e).is_some());

    if let Some(etag) = &announced {
        // Already in the snapshot (a file there was renamed into place, so it is complete),
        // or the same content is in blobs/ from another revision: no network needed.
        let blob = blobs_dir.join(etag);
        if target.is_file() {
            return file_record(name, etag, &target);
        }
        if blob.is_file() {
            link_into_snapshot(&blob, &target)?;
            return file_record(name, etag, &target);
        }
    }

    let meta = client.file_metadata(r, commit, name)?;
    if let Some(etag) = &announced {
        if *etag != meta.etag {
            return Err(Error::Protocol {
                url: meta.url,
                message: format!(
                    "{name}: the file list announces digest {etag} but the file's headers say {}",
                    meta.etag
                ),
            });
        }
    }
    let blob = blobs_dir.join(&meta.etag);
    if target.is_file() && announced.is_none() {
        return file_record(name, &meta.etag, &target);
    }
    let sha256 = if blob.is_file() {
        None
    } else {
        // Two builds downloading the same blob would append to one `.incomplete` file; the
        // second waits here and then finds the blob in place.
        let _lock = lock_blob(blobs_dir, &meta.etag)?;
        if blob.is_file() {
            None
        } else {
            Some(client.download_blob(&meta, name, &blob)?)
        }
    };
    link_into_snapshot(&blob, &target)?;
    match sha256 {
        Some(sha256) => Ok(FileRecord {
            path: name.to_string(),
            sha256,
            etag: meta.etag.clone(),
            size: meta.size,
        }),
        None => file_record(name, &meta.etag, &target),
    }
}

/// An exclusive lock on `<cache>/.locks/models--org--name/<etag>.lock`, released when the file is dropped (or
/// the process dies, so a crash leaves no stale lock).
fn lock_blob(blobs_dir: &Path, etag: &str) -> Result<fs::File, Error> {
    // Where huggingface_hub keeps its locks: <cache>/.locks/models--org--name/.
    let repo_dir = blobs_dir.parent().unwrap_or(blobs_dir);
    let dir = match (repo_dir.parent(), repo_dir.file_name()) {
        (Some(cache), Some(folder)) => cache.join(".locks").join(folder),
        _ => blobs_dir.join(".locks"),
    };
    mkdirs(&dir)?;
    let path = dir.join(format!("{etag}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.lock().map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// The record of a file already in place; the sha256 is the etag for LFS files and is
/// computed for small (git blob) files.
fn file_record(name: &str, etag: &str, path: &Path) -> Result<FileRecord, Error> {
    let size = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let sha256 = if etag.len() == 64 {
        etag.to_string()
    } else {
        sha256_file(path)?
    };
    Ok(FileRecord {
        path: name.to_string(),
        sha256,
        etag: etag.to_string(),
        size,
    })
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hard link (no extra disk space, no symlink support needed), else a copy; through a temp
/// name and a rename so the snapshot path only ever holds a complete file.
fn link_into_snapshot(blob: &Path, target: &Path) -> Result<(), Error> {
    if let Some(parent) = target.parent() {
        mkdirs(parent)?;
    }
    let tmp = temp_sibling(target);
    if fs::hard_link(blob, &tmp).is_err() {
        fs::copy(blob, &tmp).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(target, e)
        })?;
    }
    fs::rename(&tmp, target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(target, e)
    })
}
