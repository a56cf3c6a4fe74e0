//! Reference logits, computed once and cached by content.
//!
//! The reference run is the slow half of a validation (the F16 model over the whole text) and
//! its result depends only on its inputs, so the logits file is stored under
//! sha256(reference sha256, text sha256, ctx, chunks, llama.cpp version) and reused by every
//! candidate of a sweep and every later CI run.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// sha256 of a file's contents, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache directory: `${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai/validate`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cargo-edgeai")
        .join("validate")
}

/// What a cache key is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub reference_sha256: String,
    pub text_sha256: String,
    pub ctx: u64,
    pub chunks: Option<u32>,
    pub tool_version: String,
}

impl KeyInputs {
    /// The content address: sha256 over the inputs, one per line, so no two input sets share
    /// a key by concatenation.
    pub fn key(&self) -> String {
        let text = format!(
            "cargo-edgeai reference logits v1\nreference {}\ntext {}\nctx {}\nchunks {}\nllama.cpp {}\n",
            self.reference_sha256,
            self.text_sha256,
            self.ctx,
            self.chunks.map_or("all".to_string(), |c| c.to_string()),
            self.tool_version
        );
        hex(&Sha256::digest(text.as_bytes()))
    }
}

/// What the reference run measured, stored next to its logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub inputs: KeyInputs,
    pub ppl: f64,
    pub ppl_error: f64,
    pub chunks: u64,
    pub peak_rss_bytes: Option<u64>,
}

/// One cache slot.
#[derive(Debug, Clone)]
pub struct Slot {
    pub key: String,
    /// The logits file (`llama-perplexity --kl-divergence-base`).
    pub logits: PathBuf,
    meta: PathBuf,
}

impl Slot {
    /// The slot for `inputs` in `dir`.
    pub fn new(dir: &Path, inputs: &KeyInputs) -> Slot {
        let key = inputs.key();
        Slot {
            logits: dir.join(format!("{key}.logits")),
            meta: dir.join(format!("{key}.json")),
            key,
        }
    }

    /// The stored entry, when both files are there and the metadata reads back. The metadata
    /// is written last, so its presence means the logits are complete.
    pub fn load(&self) -> Option<Entry> {
        if !self.logits.is_file() {
            return None;
        }
        let text = std::fs::read_to_string(&self.meta).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Where a new logits file is written before [`Slot::commit`] renames it into place, so a
    /// killed run leaves no half file under the key.
    pub fn staging(&self) -> PathBuf {
        // Unique per process and per call: two validations in one process (threads of a test
        // binary) may fill the same slot at once; the last rename wins with identical content.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.logits
            .with_extension(format!("logits.tmp-{}-{n}", std::process::id()))
    }

    /// Move the staged logits (from [`Slot::staging`]) into place and record `entry`.
    pub fn commit(&self, staging: &Path, entry: &Entry) -> Result<()> {
        std::fs::rename(staging, &self.logits).map_err(|e| Error::io(&self.logits, e))?;
        let json = serde_json::to_string_pretty(entry)
            .map_err(|e| Error::Internal(format!("cache entry: {e}")))?;
        let tmp = self
            .meta
            .with_extension(format!("json.tmp-{}", std::process::id()));
        std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.meta).map_err(|e| Error::io(&self.meta, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_input() {
        let a = KeyInputs {
            reference_sha256: "aa".into(),
            text_sha256: "bb".into(),
            ctx: 256,
            chunks: Some(8),
            tool_version: "v".into(),
        };
        let mut b = a.clone();
        b.ctx = 512;
        let mut c = a.clone();
        c.chunks = None;
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_eq!(a.key(), a.clone().key());
        assert_eq!(a.key().len(), 64);
    }
}
