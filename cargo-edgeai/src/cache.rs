//! The step cache of `cargo edgeai build`: content-addressed outputs under `target/edgeai/cache/`.
//!
//! A step's key is sha256 over its kind, the digests of its inputs, its options (JSON) and the
//! versions of the tools that run it ([`StepKey`]). Its outputs live in
//! `cache/<kind>/<key>/out/`, described by `cache/<kind>/<key>/entry.json` (every file's size and
//! sha256, and what the step returned).
//!
//! Invariants:
//! - An entry is valid only when `entry.json` is there, parses, names this key, and every file
//!   it lists is present with its recorded size and sha256. Anything else (a killed build, a
//!   disk error, a hand edit) is ignored and rebuilt, never used.
//! - Outputs are written to a directory in `cache/tmp/` and fsynced, the metadata is written
//!   last into that directory, and one rename moves the whole directory under its key, so a
//!   SIGKILL at any moment leaves either no entry or a complete one (`cache/tmp/` is emptied by
//!   the next build). A damaged entry is moved aside in one rename before it is deleted.
//! - One build at a time per `target/edgeai/`: [`BuildLock`] holds an exclusive `File::lock` on
//!   `target/edgeai/.lock` for the whole build (and `clean`), so concurrent builds wait.
//! - A no-op rebuild stays cheap: file digests are memoised by (path, size, mtime, inode) and
//!   tool versions by the tool binary's (size, mtime), in `cache/memo.json`; a memo that does not
//!   parse is dropped, and a file changed within the last seconds is never memoised (its mtime
//!   could still tick without a visible change).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Schema of `entry.json` and `memo.json`; part of every key, so a format change starts afresh.
pub const CACHE_SCHEMA: u32 = 1;

/// Files changed this recently are hashed but not memoised (mtime granularity, racy writers).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of bytes, hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file's contents, hex (no memo).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// What identifies a file's contents without reading it: size, mtime (ns) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    /// The stamp of `path` (following symlinks).
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp::from_meta(&meta))
    }

    fn from_meta(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let ino = 0;
        Stamp {
            size: meta.len(),
            mtime_ns,
            ino,
        }
    }

    /// Whether the file was modified within [`RACY_WINDOW`] of now.
    fn is_racy(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.mtime_ns < RACY_WINDOW.as_nanos() as i128
    }
}

/// The exclusive lock on `target/edgeai/.lock`, held while it lives.
#[derive(Debug)]
pub struct BuildLock {
    file: File,
    path: PathBuf,
}

impl BuildLock {
    /// Take the lock on `<edgeai_dir>/.lock`, waiting for another build to finish. Calls
    /// `on_wait` once when the lock is held by someone else (to tell the user why we wait).
    pub fn acquire(edgeai_dir: &Path, on_wait: impl FnOnce()) -> Result<BuildLock> {
        std::fs::create_dir_all(edgeai_dir).map_err(|e| Error::io(edgeai_dir, e))?;
        let path = edgeai_dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|e| Error::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        Ok(BuildLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it explicit.
        let _ = self.file.unlock();
    }
}

/// A step's identity. Its [`StepKey::digest`] is the cache address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepKey {
    /// convert, quantize, validate, build-app, sbom, ...
    pub kind: String,
    /// Input name -> sha256 of its contents.
    pub inputs: BTreeMap<String, String>,
    /// Everything else the output depends on.
    pub options: Value,
    /// Tool -> version (identity) string.
    pub tools: BTreeMap<String, String>,
}

impl StepKey {
    pub fn new(kind: &str) -> StepKey {
        StepKey {
            kind: kind.to_string(),
            inputs: BTreeMap::new(),
            options: Value::Null,
            tools: BTreeMap::new(),
        }
    }

    /// sha256 over the schema, kind, inputs, options and tools as canonical JSON (maps are
    /// sorted; `serde_json` with `preserve_order` keeps the options' insertion order, which the
    /// callers build deterministically).
    pub fn digest(&self) -> String {
        let doc = serde_json::json!({
            "schema": CACHE_SCHEMA,
            "kind": self.kind,
            "inputs": self.inputs,
            "options": self.options,
            "tools": self.tools,
        });
        sha256_bytes(doc.to_string().as_bytes())
    }
}

/// One output file of an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// '/'-separated, relative to the entry's `out/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The file's stamp when the entry was committed: while it is unchanged, the digest is
    /// trusted without rereading the file.
    pub stamp: Stamp,
}

/// `entry.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub schema: u32,
    pub kind: String,
    pub key: String,
    pub step: StepKey,
    pub files: Vec<FileRecord>,
    /// What the step returned (its report), for reuse on a hit.
    pub result: Value,
    /// Seconds the step took when it ran.
    pub seconds: f64,
}

/// A valid entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's `out/` directory.
    pub out: PathBuf,
    pub meta: EntryMeta,
}

impl Entry {
    /// An output file of this entry.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.out.join(rel)
    }

    /// The recorded sha256 of output `rel`.
    pub fn digest_of(&self, rel: &str) -> Option<&str> {
        self.meta
            .files
            .iter()
            .find(|f| f.path == rel)
            .map(|f| f.sha256.as_str())
    }

    /// One digest over every output file (path and sha256).
    pub fn outputs_digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.meta.files {
            h.update(format!("{}\0{}\n", f.path, f.sha256).as_bytes());
        }
        hex(&h.finalize())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Memo {
    schema: u32,
    /// Absolute path -> (stamp, sha256).
    files: BTreeMap<String, (Stamp, String)>,
    /// Tool key -> (stamps of the files that identify it, version string).
    tools: BTreeMap<String, (Vec<Option<Stamp>>, String)>,
}

/// The cache of one `target/edgeai/`.
#[derive(Debug)]
pub struct StepCache {
    dir: PathBuf,
    memo: Mutex<Memo>,
    memo_dirty: std::sync::atomic::AtomicBool,
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

impl StepCache {
    /// The cache in `<edgeai_dir>/cache`. The caller holds the [`BuildLock`]; leftovers of
    /// killed builds in `cache/tmp` are removed here.
    pub fn open(edgeai_dir: &Path) -> Result<StepCache> {
        let dir = edgeai_dir.join("cache");
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let memo = std::fs::read_to_string(dir.join("memo.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Memo>(&t).ok())
            .filter(|m| m.schema == CACHE_SCHEMA)
            .unwrap_or(Memo {
                schema: CACHE_SCHEMA,
                ..Memo::default()
            });
        Ok(StepCache {
            dir,
            memo: Mutex::new(memo),
            memo_dirty: Default::default(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        // A poisoned memo is still a valid map: a panicking thread cannot leave it half-updated.
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// sha256 of a file, memoised by its stamp.
    pub fn file_digest(&self, path: &Path) -> Result<String> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let key = abs.display().to_string();
        let stamp = Stamp::of(&abs).map_err(|e| Error::io(&abs, e))?;
        if let Some((s, d)) = self.memo().files.get(&key) {
            if *s == stamp {
                return Ok(d.clone());
            }
        }
        let digest = sha256_file(&abs)?;
        // Re-stat: a file rewritten while we read it must not be memoised under the old stamp.
        let after = Stamp::of(&abs).map_err(|e| Error::io(&abs, e))?;
        if after == stamp && !stamp.is_racy() {
            self.memo().files.insert(key, (stamp, digest.clone()));
            self.memo_dirty.store(true, Ordering::Relaxed);
        }
        Ok(digest)
    }

    /// One digest over a directory tree: every regular file's relative path and sha256, in
    /// sorted order. Names starting with `.` are skipped (VCS and editor state).
    pub fn tree_digest(&self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files)?;
        files.sort();
        let mut h = Sha256::new();
        for rel in &files {
            let d = self.file_digest(&dir.join(rel))?;
            h.update(format!("{rel}\0{d}\n").as_bytes());
        }
        Ok(hex(&h.finalize()))
    }

    /// A tool's version, memoised while the files in `identity` keep their stamps (missing
    /// files count as part of the identity, so appearing ones invalidate it). `probe` runs the
    /// tool; it is only called on a miss.
    pub fn tool_version(
        &self,
        name: &str,
        identity: &[PathBuf],
        probe: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let stamps: Vec<Option<Stamp>> = identity.iter().map(|p| Stamp::of(p).ok()).collect();
        let key = format!(
            "{name}\0{}",
            identity
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\0")
        );
        if let Some((s, v)) = self.memo().tools.get(&key) {
            if *s == stamps {
                return Ok(v.clone());
            }
        }
        let version = probe()?;
        if !stamps.iter().flatten().any(Stamp::is_racy) {
            self.memo().tools.insert(key, (stamps, version.clone()));
            self.memo_dirty.store(true, Ordering::Relaxed);
        }
        Ok(version)
    }

    /// Write the memo back (temp file + rename) when it changed.
    pub fn save_memo(&self) -> Result<()> {
        if !self.memo_dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let text = serde_json::to_string(&*self.memo())
            .map_err(|e| Error::Internal(format!("cache memo: {e}")))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        write_atomic(&self.dir.join("memo.json"), text.as_bytes(), false)
    }

    fn entry_dir(&self, key: &StepKey) -> PathBuf {
        self.dir.join(&key.kind).join(key.digest())
    }

    /// The valid entry for `key`, if there is one (see the module's invariants).
    pub fn lookup(&self, key: &StepKey) -> Option<Entry> {
        let dir = self.entry_dir(key);
        let text = std::fs::read_to_string(dir.join("entry.json")).ok()?;
        let meta: EntryMeta = serde_json::from_str(&text).ok()?;
        if meta.schema != CACHE_SCHEMA || meta.key != key.digest() || meta.kind != key.kind {
            return None;
        }
        let out = dir.join("out");
        for f in &meta.files {
            let path = out.join(&f.path);
            let stamp = Stamp::of(&path).ok()?;
            if stamp.size != f.size {
                return None;
            }
            if stamp != f.stamp && sha256_file(&path).ok()? != f.sha256 {
                return None;
            }
        }
        Some(Entry { out, meta })
    }

    /// Check every entry of the cache (used by tests and `clean`-like tooling): the keys of
    /// entries that are not valid (no or bad metadata, a file missing or with another digest).
    /// Digests are recomputed from the bytes, not trusted from stamps.
    pub fn audit(edgeai_dir: &Path) -> Result<Vec<String>> {
        let dir = edgeai_dir.join("cache");
        let mut bad = Vec::new();
        let Ok(kinds) = std::fs::read_dir(&dir) else {
            return Ok(bad);
        };
        for kind in kinds.flatten() {
            if !kind.path().is_dir() || kind.file_name() == "tmp" {
                continue;
            }
            let entries = std::fs::read_dir(kind.path()).map_err(|e| Error::io(kind.path(), e))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ok = (|| -> Option<()> {
                    let text = std::fs::read_to_string(entry.path().join("entry.json")).ok()?;
                    let meta: EntryMeta = serde_json::from_str(&text).ok()?;
                    (meta.key == name && meta.step.digest() == name).then_some(())?;
                    let mut listed: Vec<String> =
                        meta.files.iter().map(|f| f.path.clone()).collect();
                    listed.sort();
                    let mut present = Vec::new();
                    walk(
                        &entry.path().join("out"),
                        &entry.path().join("out"),
                        &mut present,
                    )
                    .ok()?;
                    present.sort();
                    (listed == present).then_some(())?;
                    for f in &meta.files {
                        let p = entry.path().join("out").join(&f.path);
                        (sha256_file(&p).ok()? == f.sha256).then_some(())?;
                    }
                    Some(())
                })();
                if ok.is_none() {
                    bad.push(format!("{}/{name}", kind.file_name().to_string_lossy()));
                }
            }
        }
        Ok(bad)
    }

    /// The entry for `key`: the cached one (`true`), or a fresh one made by `make` (`false`).
    /// `make` writes its outputs into the directory it is given and returns its report.
    pub fn get_or_run(
        &self,
        key: &StepKey,
        make: impl FnOnce(&Path) -> Result<Value>,
    ) -> Result<(Entry, bool)> {
        if let Some(entry) = self.lookup(key) {
            return Ok((entry, true));
        }
        let started = std::time::Instant::now();
        let digest = key.digest();
        let tmp_root = self.dir.join("tmp");
        let tmp = tmp_root.join(format!(
            "{}-{}-{}",
            &digest[..16],
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let out = tmp.join("out");
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        let result = match make(&out) {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        // Digest and flush every output, then write the metadata inside the temporary entry:
        // one rename makes the complete entry visible under its key, or nothing is.
        let mut rels = Vec::new();
        walk(&out, &out, &mut rels)?;
        rels.sort();
        let mut records = Vec::new();
        for rel in rels {
            let path = out.join(&rel);
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
            let sha256 = sha256_file(&path)?;
            // Renaming the entry's directory keeps its files' inodes and mtimes.
            let stamp = Stamp::of(&path).map_err(|e| Error::io(&path, e))?;
            records.push(FileRecord {
                path: rel,
                size: stamp.size,
                sha256,
                stamp,
            });
        }
        let meta = EntryMeta {
            schema: CACHE_SCHEMA,
            kind: key.kind.clone(),
            key: digest,
            step: key.clone(),
            files: records,
            result,
            seconds: started.elapsed().as_secs_f64(),
        };
        let text = serde_json::to_string_pretty(&meta)
            .map_err(|e| Error::Internal(format!("cache entry: {e}")))?;
        write_atomic(&tmp.join("entry.json"), text.as_bytes(), true)?;
        sync_dir(&out);
        let final_dir = self.entry_dir(key);
        if final_dir.exists() {
            // Invalid (lookup refused it): a damaged entry. Move it aside in one rename before
            // deleting, so a kill never leaves a half-deleted entry under the key. We hold the
            // build lock, so nobody else is using it.
            let trash = tmp_root.join(format!(
                "trash-{}-{}",
                std::process::id(),
                NEXT_TMP.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::rename(&final_dir, &trash).map_err(|e| Error::io(&final_dir, e))?;
            let _ = std::fs::remove_dir_all(&trash);
        }
        let parent = final_dir.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(parent);
        let out = final_dir.join("out");
        // Hand back what a later hit will read (the JSON as written), so a fresh run and a
        // cached one give their callers identical values.
        let meta = serde_json::from_str(&text).unwrap_or(meta);
        Ok((Entry { out, meta }, false))
    }
}

/// Regular files under `dir` as '/'-separated paths relative to `root`; names starting with
/// `.` are skipped.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// Regular files under `dir`, relative and '/'-separated, sorted (hidden names skipped).
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable across a power cut; not needed for SIGKILL safety.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old file or the whole new one. `durable`: fsync before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name()
            .map_or("file".into(), |n| n.to_string_lossy()),
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    if durable {
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    if durable {
        sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, opt: u32) -> StepKey {
        let mut k = StepKey::new(kind);
        k.inputs.insert("model".into(), "aa".into());
        k.options = serde_json::json!({ "n": opt });
        k
    }

    #[test]
    fn keys_change_with_every_part() {
        let a = key("quantize", 1);
        assert_eq!(a.digest(), key("quantize", 1).digest());
        assert_ne!(a.digest(), key("quantize", 2).digest());
        assert_ne!(a.digest(), key("convert", 1).digest());
        let mut b = a.clone();
        b.tools.insert("rustc".into(), "1".into());
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.inputs.insert("model".into(), "ab".into());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn runs_once_then_hits_and_rebuilds_damaged_entries() {
        let root = tempfile::tempdir().unwrap();
        let _lock = BuildLock::acquire(root.path(), || {}).unwrap();
        let cache = StepCache::open(root.path()).unwrap();
        let k = key("quantize", 1);
        let mut runs = 0;
        let mut make = |out: &Path| {
            runs += 1;
            std::fs::create_dir_all(out.join("sub")).unwrap();
            std::fs::write(out.join("sub/a.bin"), b"hello").unwrap();
            Ok(serde_json::json!({"ok": true}))
        };
        let (e, hit) = cache.get_or_run(&k, &mut make).unwrap();
        assert!(!hit);
        assert_eq!(std::fs::read(e.file("sub/a.bin")).unwrap(), b"hello");
        assert_eq!(e.digest_of("sub/a.bin").unwrap(), sha256_bytes(b"hello"));
        let (_, hit) = cache.get_or_run(&k, &mut make).unwrap();
        assert!(hit);
        // Same size, other bytes: the stamp changes, the digest check refuses the entry.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(e.file("sub/a.bin"), b"HELLO").unwrap();
        assert!(cache.lookup(&k).is_none());
        assert_eq!(StepCache::audit(root.path()).unwrap().len(), 1);
        let (e, hit) = cache.get_or_run(&k, &mut make).unwrap();
        assert!(!hit);
        assert_eq!(std::fs::read(e.file("sub/a.bin")).unwrap(), b"hello");
        // No metadata: ignored.
        std::fs::remove_file(e.out.parent().unwrap().join("entry.json")).unwrap();
        assert!(cache.lookup(&k).is_none());
        let (_, hit) = cache.get_or_run(&k, &mut make).unwrap();
        assert!(!hit);
        assert_eq!(runs, 3);
        assert!(StepCache::audit(root.path()).unwrap().is_empty());
    }

    #[test]
    fn failed_steps_leave_nothing() {
        let root = tempfile::tempdir().unwrap();
        let cache = StepCache::open(root.path()).unwrap();
        let k = key("convert", 1);
        let err = cache.get_or_run(&k, |out| {
            std::fs::write(out.join("half"), b"x").unwrap();
            Err(Error::Internal("boom".into()))
        });
        assert!(err.is_err());
        assert!(cache.lookup(&k).is_none());
        assert!(list_files(&cache.dir().join("tmp")).unwrap().is_empty());
    }

    #[test]
    fn file_digests_and_tool_versions_are_memoised() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("model.bin");
        std::fs::write(&f, b"weights").unwrap();
        // Backdate so the file is not "racy".
        let old = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache = StepCache::open(root.path()).unwrap();
        assert_eq!(cache.file_digest(&f).unwrap(), sha256_bytes(b"weights"));
        let mut probes = 0;
        for _ in 0..2 {
            let v = cache
                .tool_version("tool", std::slice::from_ref(&f), || {
                    probes += 1;
                    Ok("1.0".into())
                })
                .unwrap();
            assert_eq!(v, "1.0");
        }
        assert_eq!(probes, 1);
        cache.save_memo().unwrap();
        let again = StepCache::open(root.path()).unwrap();
        assert!(again.memo().files.contains_key(&f.display().to_string()));
    }

    #[test]
    fn the_lock_is_exclusive() {
        let root = tempfile::tempdir().unwrap();
        let a = BuildLock::acquire(root.path(), || {}).unwrap();
        let f = File::options()
            .write(true)
            .open(root.path().join(".lock"))
            .unwrap();
        assert!(f.try_lock().is_err());
        drop(a);
        assert!(f.try_lock().is_ok());
    }
}
