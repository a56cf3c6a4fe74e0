//! A whole MLX model directory as `mlx_lm.convert` writes it, from float tensors.
//!
//! Mirrors mlx-lm 0.32.2: `load` (config.json plus `eos_token_id` from
//! generation_config.json; the llama `sanitize`: rotary `inv_freq` dropped, `lm_head.weight`
//! dropped when embeddings are tied), `convert` (every floating tensor cast to config.json's
//! `torch_dtype`, or `text_config.dtype`, when it is float16/bfloat16/float32),
//! `quantize_model` (see [`crate::recipe`]), `save_model` (see [`crate::safetensors`]) and
//! `save_config` (`_name_or_path` and `vision_config` dropped, `quantization` and
//! `quantization_config`, keys sorted, Python's JSON layout). Tokenizer files,
//! generation_config.json and `*.py` are copied byte for byte.
//!
//! Output appears atomically: everything is written to a temporary directory next to the
//! destination, synced, then renamed.

use std::borrow::Cow;
use std::fs;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::quantize::{check, quantize, Quantized};
use crate::recipe::{Mixed, Recipe};
use crate::safetensors::{index_json, make_shards, shard_name, ShardWriter, TensorHeader};
use crate::{DType, Error, Mode, QuantSpec};

/// One input tensor: safetensors dtype name, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct SourceTensor<'a> {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// What to write.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Quantize (`-q`); false only casts.
    pub quantize: bool,
    /// Top-level mode, bits and group size.
    pub spec: QuantSpec,
    /// Mixed recipe (affine only).
    pub recipe: Option<Recipe>,
    /// Dtype of unquantized tensors (`--dtype`); None: config.json's, as mlx-lm.
    pub dtype: Option<DType>,
    /// Worker threads, 0 = all cores.
    pub threads: usize,
    /// Shard size limit (mlx-lm: 5 GiB).
    pub max_shard_bytes: u64,
    /// Leave Linear/Embedding weights whose rows the group size does not divide unquantized
    /// (mlx-lm's silent behaviour) instead of failing.
    pub skip_indivisible: bool,
    /// Per-module overrides (from a plan), first match wins: a module whose path contains the
    /// pattern gets the spec, or stays unquantized with `None`. Recorded in config.json as
    /// per-module entries, which mlx-lm's loader honours.
    pub overrides: Vec<(String, Option<QuantSpec>)>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            quantize: true,
            spec: QuantSpec::affine(4, 64),
            recipe: None,
            dtype: None,
            threads: 0,
            max_shard_bytes: crate::safetensors::MAX_SHARD_BYTES,
            skip_indivisible: false,
            overrides: Vec::new(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// Files in the output directory, relative names.
    pub files: Vec<String>,
    /// Output tensors.
    pub tensors: usize,
    /// Modules quantized.
    pub quantized_modules: usize,
    /// Modules left in float because the group size does not divide their rows.
    pub skipped_modules: Vec<String>,
    /// Bytes of tensor data.
    pub total_size: u64,
    /// Parameters (as mlx-lm counts them).
    pub total_parameters: u64,
    /// The `quantization` entry of config.json (Null when not quantized).
    pub quantization: Value,
}

enum Plan {
    Keep {
        src: usize,
        dtype: Option<DType>,
    },
    Quant {
        src: usize,
        dtype: DType,
        spec: QuantSpec,
    },
}

/// Side files copied as they are (mlx-lm re-saves the tokenizer through transformers; the
/// originals load the same).
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tiktoken.model",
    "generation_config.json",
];

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn layer_count(config: &Map<String, Value>, paths: &[&str]) -> usize {
    if let Some(n) = config.get("num_hidden_layers").and_then(Value::as_u64) {
        return n as usize;
    }
    // Fallback: one more than the largest `layers.N`.
    paths
        .iter()
        .filter_map(|p| {
            let parts: Vec<&str> = p.split('.').collect();
            parts
                .windows(2)
                .find(|w| w[0] == "layers")
                .and_then(|w| w[1].parse::<usize>().ok())
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Write an MLX model into `out_dir` (which must not exist, or be empty).
/// `src_dir`: where tokenizer files, generation_config.json and `*.py` are copied from.
pub fn write_model(
    out_dir: &Path,
    config: &Value,
    generation_config: Option<&Value>,
    tensors: &[SourceTensor<'_>],
    src_dir: Option<&Path>,
    opts: &ModelOptions,
) -> Result<ModelSummary, Error> {
    let cfg = config.as_object().ok_or_else(|| Error::Option {
        message: "config.json is not a JSON object".into(),
    })?;
    if opts.quantize {
        opts.spec.validate()?;
        if opts.recipe.is_some() && opts.spec.mode != Mode::Affine {
            return Err(Error::Option {
                message: "--recipe works only with --mode affine (as in mlx-lm)".into(),
            });
        }
        if cfg.contains_key("quantization") {
            return Err(Error::Option {
                message: "config.json already has a `quantization` entry: the model is already MLX-quantized".into(),
            });
        }
    }
    if out_dir.exists() {
        let empty = fs::read_dir(out_dir)
            .map_err(|e| Error::io(out_dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Option {
                message: format!(
                    "output directory {} already exists and is not empty: remove it or choose another",
                    out_dir.display()
                ),
            });
        }
    }

    // load_model: the llama sanitize.
    let tied = cfg
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let kept: Vec<usize> = (0..tensors.len())
        .filter(|&i| {
            let n = &tensors[i].name;
            let rotary = n.contains("self_attn.rotary_emb.inv_freq");
            let tied_head = tied && n == "lm_head.weight";
            !(rotary || tied_head)
        })
        .collect();

    // convert: dtype cast.
    let torch_dtype = cfg.get("torch_dtype").and_then(Value::as_str).or_else(|| {
        cfg.get("text_config")
            .and_then(|t| t.get("dtype"))
            .and_then(Value::as_str)
    });
    let cast = opts
        .dtype
        .or_else(|| torch_dtype.and_then(DType::from_torch));

    // quantize_model: which modules.
    let module_paths: Vec<&str> = kept
        .iter()
        .filter_map(|&i| {
            let t = &tensors[i];
            (t.shape.len() == 2)
                .then(|| t.name.strip_suffix(".weight"))
                .flatten()
        })
        .collect();
    let mixed = match (opts.quantize, opts.recipe) {
        (true, Some(r)) => Some(Mixed::new(
            r,
            opts.spec.group_size,
            &module_paths,
            layer_count(cfg, &module_paths),
        )?),
        _ => None,
    };
    let mut quantization = Map::new();
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    let mut quantized_modules = 0;
    for &i in &kept {
        let t = &tensors[i];
        let src_float = matches!(t.dtype.as_str(), "F32" | "F16" | "BF16" | "F64");
        let out_dtype = if src_float {
            cast.or(DType::from_name(&t.dtype))
        } else {
            None
        };
        let module = (t.shape.len() == 2)
            .then(|| t.name.strip_suffix(".weight"))
            .flatten();
        let Some(path) = module.filter(|_| opts.quantize) else {
            plans.push(Plan::Keep {
                src: i,
                dtype: if src_float { cast } else { None },
            });
            continue;
        };
        let k = t.shape[1];
        if !k.is_multiple_of(opts.spec.group_size) {
            if opts.skip_indivisible {
                skipped.push(t.name.clone());
                plans.push(Plan::Keep {
                    src: i,
                    dtype: if src_float { cast } else { None },
                });
                continue;
            }
            return Err(Error::Shape {
                tensor: t.name.clone(),
                message: format!(
                    "has rows of {k} values, which --group-size {} does not divide (mlx-lm would leave it unquantized); use a group size that divides {k}",
                    opts.spec.group_size
                ),
            });
        }
        let dtype = out_dtype.ok_or_else(|| Error::DType {
            tensor: t.name.clone(),
            dtype: t.dtype.clone(),
        })?;
        let over = opts
            .overrides
            .iter()
            .find(|(pat, _)| path.contains(pat.as_str()))
            .map(|(_, s)| *s);
        let spec = match (over, &mixed) {
            (Some(None), _) => {
                plans.push(Plan::Keep {
                    src: i,
                    dtype: if src_float { cast } else { None },
                });
                continue;
            }
            (Some(Some(s)), _) => {
                s.validate()?;
                quantization.insert(
                    path.to_string(),
                    json!({"group_size": s.group_size, "bits": s.bits, "mode": s.mode.name()}),
                );
                s
            }
            (None, Some(m)) => {
                let s = m.spec(path)?;
                quantization.insert(
                    path.to_string(),
                    json!({"group_size": s.group_size, "bits": s.bits, "mode": s.mode.name()}),
                );
                s
            }
            (None, None) => opts.spec,
        };
        check(&t.name, &t.shape, &spec)?;
        quantized_modules += 1;
        plans.push(Plan::Quant {
            src: i,
            dtype,
            spec,
        });
    }

    // Output tensor list, in order.
    let mut headers = Vec::new();
    let mut total_parameters = 0u64;
    for p in &plans {
        match *p {
            Plan::Keep { src, dtype } => {
                let t = &tensors[src];
                let n: usize = t.shape.iter().product();
                total_parameters += n as u64;
                let (name, nbytes) = match dtype {
                    Some(d) => (d.name().to_string(), (n * d.size()) as u64),
                    None => (t.dtype.clone(), t.data.len() as u64),
                };
                headers.push(TensorHeader {
                    name: t.name.clone(),
                    dtype: name,
                    shape: t.shape.clone(),
                    nbytes,
                });
            }
            Plan::Quant { src, dtype, spec } => {
                let t = &tensors[src];
                let n: usize = t.shape.iter().product();
                total_parameters += n as u64;
                let base = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                let mut wshape = t.shape.clone();
                wshape[1] = t.shape[1] * spec.bits as usize / 32;
                let mut sshape = t.shape.clone();
                sshape[1] = t.shape[1] / spec.group_size;
                let groups = (n / spec.group_size) as u64;
                headers.push(TensorHeader {
                    name: t.name.clone(),
                    dtype: "U32".into(),
                    shape: wshape,
                    nbytes: (n * spec.bits as usize / 8) as u64,
                });
                let (sdt, ssz) = match spec.mode {
                    Mode::Affine => (dtype.name(), dtype.size() as u64),
                    Mode::Mxfp4 => ("U8", 1),
                };
                headers.push(TensorHeader {
                    name: format!("{base}.scales"),
                    dtype: sdt.into(),
                    shape: sshape.clone(),
                    nbytes: groups * ssz,
                });
                if spec.mode == Mode::Affine {
                    headers.push(TensorHeader {
                        name: format!("{base}.biases"),
                        dtype: sdt.into(),
                        shape: sshape,
                        nbytes: groups * ssz,
                    });
                }
            }
        }
    }
    // Which plan produces each header.
    let mut producer = Vec::with_capacity(headers.len());
    for (pi, p) in plans.iter().enumerate() {
        let parts = match p {
            Plan::Keep { .. } => 1,
            Plan::Quant { spec, .. } if spec.mode == Mode::Affine => 3,
            Plan::Quant { .. } => 2,
        };
        for part in 0..parts {
            producer.push((pi, part));
        }
    }

    // Write into a temporary directory, then rename.
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let base = out_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mlx".into());
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<Vec<String>, Error> {
        let shards = make_shards(&headers, opts.max_shard_bytes);
        let mut files = Vec::new();
        let mut cache: Option<(usize, Quantized)> = None;
        for (si, idx) in shards.iter().enumerate() {
            let name = shard_name(si, shards.len());
            let hs: Vec<&TensorHeader> = idx.iter().map(|&i| &headers[i]).collect();
            let mut w = ShardWriter::create(&tmp.join(&name), &hs)?;
            for &hi in idx {
                let (pi, part) = producer[hi];
                match plans[pi] {
                    Plan::Keep { src, dtype } => {
                        let t = &tensors[src];
                        let data = cast_bytes(t, dtype)?;
                        w.write(&headers[hi].name, &data)?;
                    }
                    Plan::Quant { src, dtype, spec } => {
                        if cache.as_ref().map(|c| c.0) != Some(pi) {
                            let t = &tensors[src];
                            let data = cast_bytes(t, Some(dtype))?;
                            let q = quantize(&t.name, &data, dtype, &t.shape, &spec, opts.threads)?;
                            cache = Some((pi, q));
                        }
                        let Some((_, q)) = &cache else { unreachable!() };
                        let bytes: &[u8] = match part {
                            0 => &q.weight,
                            1 => &q.scales,
                            _ => q.biases.as_deref().unwrap_or(&[]),
                        };
                        w.write(&headers[hi].name, bytes)?;
                    }
                }
            }
            w.finish()?;
            files.push(name);
        }
        let index = index_json(&headers, &shards, total_parameters);
        write_file(&tmp.join("model.safetensors.index.json"), index.as_bytes())?;
        files.push("model.safetensors.index.json".into());

        // save_config.
        let mut c = cfg.clone();
        if let Some(eos) = generation_config.and_then(|g| g.get("eos_token_id")) {
            if truthy(eos) {
                c.insert("eos_token_id".into(), eos.clone());
            }
        }
        c.remove("_name_or_path");
        c.remove("vision_config");
        if opts.quantize {
            let mut q = Map::new();
            q.insert("group_size".into(), json!(opts.spec.group_size));
            q.insert("bits".into(), json!(opts.spec.bits));
            q.insert("mode".into(), json!(opts.spec.mode.name()));
            let mut entries: Vec<(String, Value)> = quantization.clone().into_iter().collect();
            entries.sort_by_key(|(k, _)| crate::recipe::module_order_key(k));
            q.extend(entries);
            c.insert("quantization".into(), Value::Object(q.clone()));
            c.insert("quantization_config".into(), Value::Object(q));
        }
        let mut keys: Vec<String> = c.keys().cloned().collect();
        keys.sort();
        let mut sorted = Map::new();
        for k in keys {
            if let Some(v) = c.remove(&k) {
                sorted.insert(k, v);
            }
        }
        let text = crate::pyjson::to_string(&Value::Object(sorted));
        write_file(&tmp.join("config.json"), text.as_bytes())?;
        files.push("config.json".into());

        if let Some(src) = src_dir {
            for f in side_files(src)? {
                let from = src.join(&f);
                fs::copy(&from, tmp.join(&f)).map_err(|e| Error::io(&from, e))?;
                files.push(f);
            }
        }
        Ok(files)
    })();
    let files = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out_dir.exists() {
        fs::remove_dir(out_dir).map_err(|e| Error::io(out_dir, e))?;
    }
    fs::rename(&tmp, out_dir).map_err(|e| Error::io(out_dir, e))?;
    let q = if opts.quantize {
        let mut q = Map::new();
        q.insert("group_size".into(), json!(opts.spec.group_size));
        q.insert("bits".into(), json!(opts.spec.bits));
        q.insert("mode".into(), json!(opts.spec.mode.name()));
        q.extend(quantization);
        Value::Object(q)
    } else {
        Value::Null
    };
    Ok(ModelSummary {
        files,
        tensors: headers.len(),
        quantized_modules,
        skipped_modules: skipped,
        total_size: headers.iter().map(|h| h.nbytes).sum(),
        total_parameters,
        quantization: q,
    })
}

/// The side files of `src` that mlx-lm's output carries: tokenizer files,
/// generation_config.json, `*.tiktoken` and `*.py`.
pub fn side_files(src: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let rd = fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if SIDE_FILES.contains(&name.as_str())
            || name.ends_with(".py")
            || name.ends_with(".tiktoken")
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn read_f32(dtype: &str, data: &[u8], i: usize) -> f32 {
    match dtype {
        "F32" => f32::from_le_bytes([
            data[4 * i],
            data[4 * i + 1],
            data[4 * i + 2],
            data[4 * i + 3],
        ]),
        "F16" => f16_to_f32(u16::from_le_bytes([data[2 * i], data[2 * i + 1]])),
        "BF16" => bf16_to_f32(u16::from_le_bytes([data[2 * i], data[2 * i + 1]])),
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[8 * i..8 * i + 8]);
            f64::from_le_bytes(b) as f32
        }
    }
}

/// The tensor's bytes in `dtype` (borrowed when it already is).
fn cast_bytes<'a>(t: &SourceTensor<'a>, dtype: Option<DType>) -> Result<Cow<'a, [u8]>, Error> {
    let n: usize = t.shape.iter().product();
    let src_size = match t.dtype.as_str() {
        "F32" => 4,
        "F16" | "BF16" => 2,
        "F64" => 8,
        _ => 0,
    };
    let Some(d) = dtype else {
        return Ok(Cow::Borrowed(t.data));
    };
    if src_size == 0 || t.data.len() != n * src_size {
        return Err(Error::Shape {
            tensor: t.name.clone(),
            message: format!(
                "holds {} bytes, which does not match shape {:?} of {}",
                t.data.len(),
                t.shape,
                t.dtype
            ),
        });
    }
    if t.dtype == d.name() {
        return Ok(Cow::Borrowed(t.data));
    }
    let mut out = vec![0u8; n * d.size()];
    // Conversion through f32 is exact for every pair here except F64 (mlx casts F64 -> F32
    // the same way, round to nearest).
    match d {
        DType::F32 => {
            for (i, o) in out.chunks_exact_mut(4).enumerate() {
                o.copy_from_slice(&read_f32(&t.dtype, t.data, i).to_le_bytes());
            }
        }
        DType::F16 => {
            for (i, o) in out.chunks_exact_mut(2).enumerate() {
                o.copy_from_slice(&f32_to_f16(read_f32(&t.dtype, t.data, i)).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (i, o) in out.chunks_exact_mut(2).enumerate() {
                o.copy_from_slice(&f32_to_bf16(read_f32(&t.dtype, t.data, i)).to_le_bytes());
            }
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight<'a>(name: &str, rows: usize, k: usize, data: &'a [u8]) -> SourceTensor<'a> {
        SourceTensor {
            name: name.into(),
            dtype: "F32".into(),
            shape: vec![rows, k],
            data: &data[..rows * k * 4],
        }
    }

    #[test]
    fn overrides_and_tied_head() {
        let data: Vec<u8> = (0..4 * 64 * 4).map(|i| (i % 251) as u8 & 0x3f).collect();
        let tensors = [
            weight("model.embed_tokens.weight", 4, 64, &data),
            weight("model.layers.0.mlp.down_proj.weight", 4, 64, &data),
            weight("model.layers.0.self_attn.q_proj.weight", 4, 64, &data),
            weight("lm_head.weight", 4, 64, &data),
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = json!({"model_type": "llama", "num_hidden_layers": 1, "_name_or_path": "x"});
        let opts = ModelOptions {
            overrides: vec![
                ("down_proj".into(), Some(QuantSpec::affine(8, 32))),
                ("q_proj".into(), None),
            ],
            ..Default::default()
        };
        let s = write_model(&out, &config, None, &tensors, None, &opts).unwrap();
        // lm_head dropped (tied by default), q_proj kept in float, two modules quantized.
        assert_eq!(s.quantized_modules, 2);
        assert_eq!(
            s.quantization,
            json!({"group_size": 64, "bits": 4, "mode": "affine",
                   "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8, "mode": "affine"}})
        );
        let cfg: Value =
            serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
        assert!(cfg.get("_name_or_path").is_none());
        assert_eq!(cfg["quantization_config"], s.quantization);
        let index = fs::read_to_string(out.join("model.safetensors.index.json")).unwrap();
        assert!(index.contains("\"model.layers.0.mlp.down_proj.scales\""));
        assert!(!index.contains("lm_head"));
        assert!(!index.contains("q_proj.scales"));
        // A second write into the now non-empty directory is refused.
        assert!(write_model(&out, &config, None, &tensors, None, &opts).is_err());
    }
}
