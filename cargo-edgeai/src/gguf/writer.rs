//! Streaming GGUF writer: the header first, then each tensor's data as it is produced, into a
//! temporary file that is renamed onto the destination only when everything was written, so a
//! crash or an error never leaves a partial model at the destination.
//!
//! The layout is llama.cpp's (`gguf_write_out` in ggml/src/gguf.cpp): header, zero padding to
//! the alignment, then every tensor's data followed by zero padding to the alignment (after the
//! last tensor too). Tensor offsets are the running sum of padded sizes (`gguf_add_tensor`).

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::NamedTempFile;

use super::file::{split_path, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use super::header::{encode_header, GgufTensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
use super::types::GgmlType;
use super::value::GgufValue;
use crate::{Error, Result};

/// Longest tensor name llama.cpp loads (`GGML_MAX_NAME` 64, including the NUL).
pub const MAX_TENSOR_NAME: usize = 63;

/// One tensor to write: name, dimensions in ggml order (`ne[0]` is the row length) and type.
///
/// `ne` is written as given. llama.cpp writes `ggml_n_dims` dimensions (trailing 1s dropped,
/// at least one); pass the same to produce identical files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name ("blk.0.attn_q.weight").
    pub name: String,
    /// Dimensions, innermost first.
    pub ne: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// Bytes of data for this tensor, or `None` when the row length is not a whole number of
    /// blocks or the size overflows.
    pub fn byte_size(&self) -> Option<u64> {
        let row = self.ne.first().copied().unwrap_or(1);
        if row % self.ggml_type.block_size() != 0 {
            return None;
        }
        let n = self
            .ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        self.ggml_type.bytes_for(n)
    }
}

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A GGUF file being written. See the module documentation.
///
/// Dropping it without calling [`GgufWriter::finish`] removes the temporary file.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<NamedTempFile>,
    /// Name and byte size of each tensor, in write order.
    tensors: Vec<(String, u64)>,
    next: usize,
    alignment: u64,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("tmp", &self.out.get_ref().path())
            .field("next", &self.next)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    /// Creates `<dir>/.<file name>.tmp-<pid>-<n>` next to `path`, writes the header (metadata
    /// in the given order, tensor infos in the given order with offsets computed from sizes and
    /// `alignment`).
    ///
    /// `alignment` must be what a reader will use: `general.alignment` when `metadata` has it,
    /// else 32. Invalid arguments (version other than 2 or 3, bad alignment, duplicate or empty
    /// keys, duplicate or over-long tensor names, shapes that are not whole blocks) are caller
    /// bugs and return [`Error::Internal`].
    pub fn create(
        path: &Path,
        version: u32,
        metadata: &[(String, GgufValue)],
        tensors: &[TensorSpec],
        alignment: u64,
    ) -> Result<GgufWriter> {
        check_args(version, metadata, tensors, alignment)?;
        let mut infos = Vec::with_capacity(tensors.len());
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            // `check_args` verified every size and that their padded sum fits in u64.
            let size = t.byte_size().unwrap_or(0);
            infos.push(GgufTensorInfo {
                name: t.name.clone(),
                ne: t.ne.clone(),
                ggml_type: t.ggml_type,
                offset,
            });
            sizes.push((t.name.clone(), size));
            offset = offset.saturating_add(size.next_multiple_of(alignment));
        }
        let header = encode_header(version, metadata, &infos, alignment);

        let tmp = create_temp(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        out.write_all(&header).map_err(|e| Error::io(path, e))?;
        Ok(GgufWriter {
            path: path.to_path_buf(),
            out,
            tensors: sizes,
            next: 0,
            alignment,
        })
    }

    /// Appends the next tensor's data (must be called once per tensor, in order; length must
    /// equal the spec's byte size, else [`Error::Internal`]) and the alignment padding.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some((name, size)) = self.tensors.get(self.next) else {
            return Err(Error::Internal(format!(
                "GgufWriter for {}: write_tensor called {} times but the header declares {} tensors",
                self.path.display(),
                self.next + 1,
                self.tensors.len()
            )));
        };
        if data.len() as u64 != *size {
            return Err(Error::Internal(format!(
                "GgufWriter for {}: tensor `{name}` needs {size} bytes of data, got {}",
                self.path.display(),
                data.len()
            )));
        }
        let pad = size.next_multiple_of(self.alignment) - size;
        self.out
            .write_all(data)
            .and_then(|()| write_zeros(&mut self.out, pad))
            .map_err(|e| Error::io(&self.path, e))?;
        self.next += 1;
        Ok(())
    }

    /// Checks all tensors were written, flushes, fsyncs, renames the temp file onto `path`.
    pub fn finish(self) -> Result<()> {
        if self.next != self.tensors.len() {
            return Err(Error::Internal(format!(
                "GgufWriter for {}: finish called after {} of {} tensors",
                self.path.display(),
                self.next,
                self.tensors.len()
            )));
        }
        let path = self.path;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(&path);
        Ok(())
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_zeros(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    // Alignment is at most a few KiB in practice; write in chunks so a huge one cannot
    // allocate.
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// The temporary file `.<name>.tmp-<pid>-<n>` in `path`'s directory. Same directory, so the
/// final rename is atomic; hidden, so a half-written model is not picked up by globs.
fn create_temp(path: &Path) -> Result<NamedTempFile> {
    let Some(name) = path.file_name() else {
        return Err(Error::Usage {
            message: format!("{} is not a file path", path.display()),
            help: "give an output path that ends in a file name, e.g. model-q4.gguf".into(),
        });
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix = format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).rand_bytes(0);
    // Temp files default to 0600; a model is not a secret, and llama.cpp's fopen gives
    // 0666 minus the umask, so do the same (the kernel applies the umask to this mode).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
        .tempfile_in(&dir)
        .map_err(|e| Error::io(dir.join(&prefix), e))
}

/// Make the rename durable. Best effort: some filesystems refuse to fsync a directory, and
/// the data itself is already synced.
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn internal(msg: String) -> Error {
    Error::Internal(format!("GgufWriter: {msg}"))
}

fn check_args(
    version: u32,
    metadata: &[(String, GgufValue)],
    tensors: &[TensorSpec],
    alignment: u64,
) -> Result<()> {
    if !matches!(version, 2 | 3) {
        return Err(internal(format!(
            "GGUF version {version} requested; only 2 and 3 are written"
        )));
    }
    if !alignment.is_power_of_two() {
        return Err(internal(format!(
            "alignment {alignment} is not a power of two"
        )));
    }
    let declared = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => v.as_u64(),
        None => Some(DEFAULT_ALIGNMENT),
    };
    if declared != Some(alignment) {
        return Err(internal(format!(
            "alignment {alignment} differs from the {} readers will use (general.alignment or 32)",
            declared.map_or_else(|| "invalid value".to_string(), |a| a.to_string())
        )));
    }
    let mut keys = HashSet::new();
    for (k, _) in metadata {
        if k.is_empty() || !keys.insert(k.as_str()) {
            return Err(internal(format!("metadata key `{k}` is empty or repeated")));
        }
    }
    let mut names = HashSet::new();
    let mut total = 0u64;
    for t in tensors {
        if t.name.len() > MAX_TENSOR_NAME || !names.insert(t.name.as_str()) {
            return Err(internal(format!(
                "tensor name `{}` is repeated or longer than {MAX_TENSOR_NAME} bytes",
                t.name
            )));
        }
        if t.ne.len() > MAX_DIMS as usize || t.ne.iter().any(|&d| d > i64::MAX as u64) {
            return Err(internal(format!(
                "tensor `{}` has impossible dimensions {:?}",
                t.name, t.ne
            )));
        }
        let size = t.byte_size().ok_or_else(|| {
            internal(format!(
                "tensor `{}` of shape {:?} is not a whole number of {} blocks of {} elements per row",
                t.name,
                t.ne,
                t.ggml_type,
                t.ggml_type.block_size()
            ))
        })?;
        total = size
            .checked_next_multiple_of(alignment)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| internal("total tensor data overflows u64".to_string()))?;
    }
    Ok(())
}

/// The paths llama.cpp gives the `count` parts of a split model (`llama_split_path`):
/// `BASE-00001-of-00003.gguf`, ... A trailing `.gguf` on `base` is dropped first, so
/// `out.gguf` and `out` both give `out-00001-of-00003.gguf`.
pub fn split_paths(base: &Path, count: usize) -> Vec<PathBuf> {
    let prefix = match base.to_str().and_then(|s| s.strip_suffix(".gguf")) {
        Some(stem) => PathBuf::from(stem),
        None => base.to_path_buf(),
    };
    (0..count).map(|i| split_path(&prefix, i, count)).collect()
}

/// The metadata of part `split_no` (0-based) of a `split_count`-part model, as
/// `llama-quantize --keep-split` writes it: the first part gets all of `metadata` (without any
/// `split.*` keys it had) followed by `split.no`, `split.count` (u16) and
/// `split.tensors.count` (i32, the tensors of all parts together); the other parts get only
/// those three keys. With `split_count == 1` the metadata is returned without `split.*` keys.
pub fn split_metadata(
    metadata: &[(String, GgufValue)],
    split_no: u16,
    split_count: u16,
    total_tensors: usize,
) -> Vec<(String, GgufValue)> {
    let is_split_key =
        |k: &str| k == KEY_SPLIT_NO || k == KEY_SPLIT_COUNT || k == KEY_SPLIT_TENSORS_COUNT;
    let mut out: Vec<(String, GgufValue)> = if split_no == 0 {
        metadata
            .iter()
            .filter(|(k, _)| !is_split_key(k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    if split_count > 1 {
        out.push((KEY_SPLIT_NO.to_string(), GgufValue::U16(split_no)));
        out.push((KEY_SPLIT_COUNT.to_string(), GgufValue::U16(split_count)));
        out.push((
            KEY_SPLIT_TENSORS_COUNT.to_string(),
            // llama.cpp stores it as i32; saturate rather than wrap for absurd counts.
            GgufValue::I32(i32::try_from(total_tensors).unwrap_or(i32::MAX)),
        ));
    }
    out
}
