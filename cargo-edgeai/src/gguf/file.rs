//! Whole GGUF files: the header plus a memory map of the tensor data, validated so that every
//! tensor's bytes can be handed out without further checks, and models split over several files
//! in llama.cpp's `NAME-00001-of-00003.gguf` convention.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::header::{read_header_from, GgufHeader, GgufTensorInfo};
use crate::{Error, Result};

/// Metadata key: index of this split, 0-based (`LLM_KV_SPLIT_NO`, u16).
pub const KEY_SPLIT_NO: &str = "split.no";
/// Metadata key: number of splits (`LLM_KV_SPLIT_COUNT`, u16).
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// Metadata key: number of tensors in all splits together (`LLM_KV_SPLIT_TENSORS_COUNT`, i32).
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

const HELP_LAYOUT: &str =
    "the file is corrupt or was written by a broken tool; re-download it or re-export it with llama.cpp";

/// The bytes of a GGUF file: a read-only memory map, or an owned buffer (tests, fuzzing, and
/// empty files, which cannot be mapped).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A validated GGUF file (version 2 or 3): its header and its bytes.
///
/// [`GgufFile::open`] guarantees, beyond what [`read_header`](super::read_header) checks
/// (magic, version, counts and lengths against the file size, known tensor types, rows that are
/// whole blocks, aligned offsets, data inside the file), that the tensors' data ranges do not
/// overlap and that each tensor's slot in the data section is exactly its ggml byte size
/// padded to the alignment, as llama.cpp requires. So [`GgufFile::tensor_data`] cannot fail.
pub struct GgufFile {
    path: PathBuf,
    header: GgufHeader,
    bytes: Bytes,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .field("file_size", &self.header.file_size)
            .finish()
    }
}

impl GgufFile {
    /// Open, map and validate the GGUF file at `path`.
    ///
    /// The file is memory-mapped read-only; like every mmap-based model loader (llama.cpp's
    /// included), this assumes nobody truncates or rewrites the file while it is open.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bytes = if len == 0 {
            // mmap(2) rejects empty mappings; the header reader reports the empty file.
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. Another process
            // truncating the file while it is mapped would make reads fault; that is the usual
            // mmap contract, shared with llama.cpp, and documented on this function.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Bytes::Mapped(map)
        };
        GgufFile::from_parts(path, bytes)
    }

    /// Validate a GGUF file held in memory; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<GgufFile> {
        GgufFile::from_parts(path, Bytes::Owned(bytes))
    }

    fn from_parts(path: &Path, bytes: Bytes) -> Result<GgufFile> {
        let header = read_header_from(&bytes[..], bytes.len() as u64, path)?;
        validate_layout(&header, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            bytes,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }

    /// The metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, super::GgufValue)] {
        &self.header.metadata
    }

    /// The whole file's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The data of tensor `i` (file order), exactly its ggml byte size.
    ///
    /// # Panics
    /// If `i >= self.tensors().len()`, like slice indexing.
    pub fn tensor_data(&self, i: usize) -> &[u8] {
        let range = self.header.data_range(&self.header.tensors[i]);
        // `validate_layout` checked that every range lies inside the file, so these
        // conversions and the slice cannot fail; `get` keeps that an invariant, not a panic
        // path, should it ever be broken.
        let start = usize::try_from(range.start).unwrap_or(usize::MAX);
        let end = usize::try_from(range.end).unwrap_or(usize::MAX);
        self.bytes.get(start..end).unwrap_or(&[])
    }

    /// The data of the tensor named `name`.
    pub fn tensor_data_by_name(&self, name: &str) -> Option<&[u8]> {
        let i = self.header.tensors.iter().position(|t| t.name == name)?;
        Some(self.tensor_data(i))
    }
}

/// Check the data section's layout: tensors sorted by offset must not overlap, must start at
/// offset 0, and each must fill exactly its padded ggml size before the next one begins (the
/// size implied by the shape must match the space the file gives the tensor). Bytes after the
/// last tensor are tolerated, as llama.cpp tolerates them.
fn validate_layout(h: &GgufHeader, path: &Path) -> Result<()> {
    let align = h.alignment;
    let mut order: Vec<&GgufTensorInfo> = h.tensors.iter().collect();
    // Zero-byte tensors sort first at a shared offset, so they never look like an overlap.
    order.sort_by_key(|t| (t.offset, t.size_bytes()));
    let mut expected = 0u64; // where the next tensor must start, relative to the data section
    let mut prev: Option<&GgufTensorInfo> = None;
    for t in order {
        let size = t.size_bytes();
        if t.offset < expected {
            // Only reachable with a predecessor: `expected` starts at 0.
            let p = prev.map_or("?", |p| p.name.as_str());
            return Err(Error::model(
                path,
                format!(
                    "corrupt GGUF file: tensor `{}` (data offset {}) overlaps tensor `{p}`, whose data runs to offset {expected}",
                    t.name, t.offset
                ),
                HELP_LAYOUT,
            ));
        }
        if t.offset > expected {
            let message = match prev {
                None => format!(
                    "corrupt GGUF file: the first tensor `{}` starts at data offset {}, not 0; the data section has unused bytes",
                    t.name, t.offset
                ),
                Some(p) => format!(
                    "corrupt GGUF file: shape/size mismatch for tensor `{}`: its shape {:?} of {} needs {} bytes ({} padded to {align}), but the next tensor `{}` starts {} bytes after it",
                    p.name,
                    p.ne,
                    p.ggml_type,
                    p.size_bytes(),
                    p.size_bytes().next_multiple_of(align),
                    t.name,
                    t.offset - p.offset
                ),
            };
            return Err(Error::model(path, message, HELP_LAYOUT));
        }
        // The header reader checked `data_offset + offset + size <= file size`, so none of
        // this overflows; saturate anyway so a broken invariant cannot panic.
        expected = t
            .offset
            .saturating_add(size)
            .checked_next_multiple_of(align)
            .unwrap_or(u64::MAX);
        prev = Some(t);
    }
    Ok(())
}

/// Where one tensor of a [`GgufModel`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorLoc {
    /// Index of the split file (0 for an unsplit model).
    pub split: usize,
    /// Index of the tensor within that file's tensor infos.
    pub index: usize,
}

/// A model stored in one GGUF file or split over several in llama.cpp's convention
/// (`NAME-00001-of-00003.gguf`, ..., each with `split.no` and `split.count`).
#[derive(Debug)]
pub struct GgufModel {
    splits: Vec<GgufFile>,
    tensors: Vec<TensorLoc>,
}

impl GgufModel {
    /// Open a model from its only file or its first split. The other splits must sit next to
    /// it under llama.cpp's names; each is opened and validated, and the tensor list is every
    /// split's tensors in split order then file order.
    pub fn open(path: &Path) -> Result<GgufModel> {
        let first = GgufFile::open(path)?;
        let count = match first.header().get(KEY_SPLIT_COUNT) {
            None => 1,
            Some(v) => v
                .as_u64()
                .filter(|&c| c >= 1 && c <= u64::from(u16::MAX))
                .ok_or_else(|| {
                    Error::model(
                        path,
                        format!("GGUF `{KEY_SPLIT_COUNT}` is {v:?}, not a split count"),
                        HELP_LAYOUT,
                    )
                })?,
        };
        let count = usize::try_from(count).unwrap_or(1);
        if count == 1 {
            return Ok(GgufModel::from_splits(vec![first]));
        }
        // llama.cpp's loader treats a missing `split.no` as 0.
        let no = first.header().get(KEY_SPLIT_NO).map(|v| v.as_u64());
        if !matches!(no, None | Some(Some(0))) {
            let no = no.flatten();
            let hint = split_prefix(path, count)
                .map(|p| split_path(&p, 0, count).display().to_string())
                .unwrap_or_else(|| format!("the file named NAME-00001-of-{count:05}.gguf"));
            return Err(Error::model(
                path,
                format!(
                    "this is split {} of a {count}-part GGUF model; a split model must be opened from its first part",
                    no.map_or_else(|| "?".to_string(), |n| (n + 1).to_string())
                ),
                format!("open {hint} instead"),
            ));
        }
        let Some(prefix) = split_prefix(path, count) else {
            return Err(Error::model(
                path,
                format!(
                    "this is the first part of a {count}-part GGUF model, but its name does not end in -00001-of-{count:05}.gguf, so the other parts cannot be found"
                ),
                "keep llama.cpp's split names (as written by llama-gguf-split or llama-quantize --keep-split), or merge the parts with `llama-gguf-split --merge`",
            ));
        };
        let mut splits = vec![first];
        for i in 1..count {
            let p = split_path(&prefix, i, count);
            if !p.exists() {
                return Err(Error::model(
                    &p,
                    format!(
                        "split {} of {count} of the GGUF model {} is missing",
                        i + 1,
                        path.display()
                    ),
                    format!(
                        "download or copy all {count} parts of the model into {}",
                        p.parent()
                            .map_or_else(|| ".".to_string(), |d| d.display().to_string())
                    ),
                ));
            }
            let f = GgufFile::open(&p)?;
            let got_no = f.header().get_u64(KEY_SPLIT_NO);
            let got_count = f.header().get_u64(KEY_SPLIT_COUNT);
            if got_no != Some(i as u64) || got_count != Some(count as u64) {
                return Err(Error::model(
                    &p,
                    format!(
                        "split file says it is part {} of {}, expected part {} of {count}",
                        got_no.map_or_else(|| "?".to_string(), |n| (n + 1).to_string()),
                        got_count.map_or_else(|| "?".to_string(), |n| n.to_string()),
                        i + 1
                    ),
                    "the parts come from different models or exports; download all parts of one model again",
                ));
            }
            splits.push(f);
        }
        let model = GgufModel::from_splits(splits);
        model.check_tensors()?;
        Ok(model)
    }

    /// A model of exactly this one file, without looking for other splits (for files held in
    /// memory; [`GgufModel::open`] follows splits).
    pub fn single(file: GgufFile) -> GgufModel {
        GgufModel::from_splits(vec![file])
    }

    fn from_splits(splits: Vec<GgufFile>) -> GgufModel {
        let tensors = splits
            .iter()
            .enumerate()
            .flat_map(|(split, f)| {
                (0..f.tensors().len()).map(move |index| TensorLoc { split, index })
            })
            .collect();
        GgufModel { splits, tensors }
    }

    /// Tensor names unique across splits, and their total as `split.tensors.count` says.
    fn check_tensors(&self) -> Result<()> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for loc in &self.tensors {
            let name = self.info(*loc).name.as_str();
            if let Some(other) = seen.insert(name, loc.split) {
                return Err(Error::model(
                    self.splits[loc.split].path(),
                    format!(
                        "tensor `{name}` is in both split {} and split {}",
                        other + 1,
                        loc.split + 1
                    ),
                    "the parts come from different exports; download all parts of one model again",
                ));
            }
        }
        let first = &self.splits[0];
        if let Some(v) = first.header().get(KEY_SPLIT_TENSORS_COUNT) {
            if v.as_u64() != Some(self.tensors.len() as u64) {
                return Err(Error::model(
                    first.path(),
                    format!(
                        "`{KEY_SPLIT_TENSORS_COUNT}` says {v:?} tensors but the {} parts hold {}",
                        self.splits.len(),
                        self.tensors.len()
                    ),
                    "a part is from a different export or is damaged; download all parts of one model again",
                ));
            }
        }
        Ok(())
    }

    /// The split files in order (one for an unsplit model).
    pub fn splits(&self) -> &[GgufFile] {
        &self.splits
    }

    /// The first file's header, which holds the model's metadata.
    pub fn header(&self) -> &GgufHeader {
        self.splits[0].header()
    }

    /// Every tensor, split by split, in file order.
    pub fn tensors(&self) -> &[TensorLoc] {
        &self.tensors
    }

    /// The info of the tensor at `loc`.
    ///
    /// # Panics
    /// If `loc` does not come from this model.
    pub fn info(&self, loc: TensorLoc) -> &GgufTensorInfo {
        &self.splits[loc.split].tensors()[loc.index]
    }

    /// The data of the tensor at `loc`.
    ///
    /// # Panics
    /// If `loc` does not come from this model.
    pub fn data(&self, loc: TensorLoc) -> &[u8] {
        self.splits[loc.split].tensor_data(loc.index)
    }

    /// Where the tensor named `name` lives.
    pub fn find(&self, name: &str) -> Option<TensorLoc> {
        self.tensors
            .iter()
            .copied()
            .find(|&l| self.info(l).name == name)
    }

    /// Bytes of all split files together.
    pub fn file_bytes(&self) -> u64 {
        self.splits.iter().map(|f| f.header().file_size).sum()
    }
}

/// llama.cpp's name of split `index` (0-based) of `count`: `PREFIX-00001-of-00003.gguf`
/// (`llama_split_path`).
pub fn split_path(prefix: &Path, index: usize, count: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(format!("-{:05}-of-{:05}.gguf", index + 1, count));
    PathBuf::from(s)
}

/// The prefix of a first split's path (`llama_split_prefix`): `dir/NAME` for
/// `dir/NAME-00001-of-00003.gguf`, or `None` when the name does not end that way.
fn split_prefix(first: &Path, count: usize) -> Option<PathBuf> {
    let name = first.file_name()?.to_str()?;
    let suffix = format!("-00001-of-{count:05}.gguf");
    let stem = name.strip_suffix(&suffix)?;
    Some(first.with_file_name(stem))
}
