//! Safetensors output as mlx-lm's `save_model` lays it out: shards of at most
//! [`MAX_SHARD_BYTES`] (a tensor larger than that gets a shard of its own), named
//! `model.safetensors` or `model-0000i-of-0000n.safetensors`, each with metadata
//! `{"format": "mlx"}`, and `model.safetensors.index.json` (`total_size`, `total_parameters`,
//! sorted `weight_map`). Data is streamed: the caller produces one tensor's bytes at a time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::Error;

/// mlx-lm's `MAX_FILE_SIZE_GB` (5) in bytes.
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

/// One output tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    /// Safetensors dtype name (`F32`, `F16`, `BF16`, `U32`, `U8`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nbytes: u64,
}

/// Split `tensors` (in order) into shards as mlx-lm's `make_shards`.
pub fn make_shards(tensors: &[TensorHeader], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        if shards.is_empty() || size + t.nbytes > max_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
        size += t.nbytes;
    }
    shards
}

/// File name of shard `i` (0-based) of `n`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n > 1 {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    } else {
        "model.safetensors".to_string()
    }
}

/// The JSON header of a shard, padded with spaces to a multiple of 8 bytes.
pub fn header_bytes(tensors: &[&TensorHeader]) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("__metadata__".into(), json!({"format": "mlx"}));
    let mut offset = 0u64;
    for t in tensors {
        m.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes]}),
        );
        offset += t.nbytes;
    }
    let mut text = Value::Object(m).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    text
}

/// Streaming writer of one shard: header first, then each tensor's bytes in header order.
pub struct ShardWriter {
    path: PathBuf,
    out: BufWriter<File>,
    expected: Vec<(String, u64)>,
    next: usize,
}

impl ShardWriter {
    /// Create `path` and write the header of `tensors`.
    pub fn create(path: &Path, tensors: &[&TensorHeader]) -> Result<ShardWriter, Error> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = header_bytes(tensors);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&header))
            .map_err(|e| Error::io(path, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            out,
            expected: tensors.iter().map(|t| (t.name.clone(), t.nbytes)).collect(),
            next: 0,
        })
    }

    /// Append the next tensor's data; its size must match the header.
    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<(), Error> {
        let (want, n) = self
            .expected
            .get(self.next)
            .cloned()
            .ok_or_else(|| Error::Shape {
                tensor: name.to_string(),
                message: "was not announced in the shard header".into(),
            })?;
        if want != name || n != data.len() as u64 {
            return Err(Error::Shape {
                tensor: name.to_string(),
                message: format!(
                    "has {} bytes where the header announced `{want}` with {n}",
                    data.len()
                ),
            });
        }
        self.out
            .write_all(data)
            .map_err(|e| Error::io(&self.path, e))?;
        self.next += 1;
        Ok(())
    }

    /// Flush and sync; fails if a tensor is missing.
    pub fn finish(mut self) -> Result<(), Error> {
        if self.next != self.expected.len() {
            return Err(Error::Shape {
                tensor: self.expected[self.next].0.clone(),
                message: "was announced but never written".into(),
            });
        }
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// `model.safetensors.index.json` as mlx-lm writes it.
pub fn index_json(
    tensors: &[TensorHeader],
    shards: &[Vec<usize>],
    total_parameters: u64,
) -> String {
    let total: u64 = tensors.iter().map(|t| t.nbytes).sum();
    let mut names: Vec<(String, String)> = Vec::new();
    for (si, idx) in shards.iter().enumerate() {
        for &i in idx {
            names.push((tensors[i].name.clone(), shard_name(si, shards.len())));
        }
    }
    names.sort();
    let mut map = Map::new();
    for (k, v) in names {
        map.insert(k, Value::String(v));
    }
    let v = json!({
        "metadata": {"total_size": total, "total_parameters": total_parameters},
        "weight_map": Value::Object(map),
    });
    crate::pyjson::to_string(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, nbytes: u64) -> TensorHeader {
        TensorHeader {
            name: name.into(),
            dtype: "U8".into(),
            shape: vec![nbytes as usize],
            nbytes,
        }
    }

    #[test]
    fn shards_like_mlx_lm() {
        let ts = [t("a", 4), t("b", 4), t("c", 10), t("d", 1)];
        assert_eq!(make_shards(&ts, 8), vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(shard_name(0, 1), "model.safetensors");
        assert_eq!(shard_name(1, 3), "model-00002-of-00003.safetensors");
    }

    #[test]
    fn header_is_aligned() {
        let a = t("a", 3);
        let h = header_bytes(&[&a]);
        assert_eq!(h.len() % 8, 0);
        let v: Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["__metadata__"]["format"], "mlx");
        assert_eq!(v["a"]["data_offsets"], json!([0, 3]));
    }
}
