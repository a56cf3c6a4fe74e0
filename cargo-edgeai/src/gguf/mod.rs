//! GGUF (llama.cpp) files: reading, validating, writing, inspecting.
//!
//! [`read_header`] parses everything before the tensor data: version, metadata (typed, in file
//! order), tensor infos and the data offset. [`model_facts`] turns a header into
//! [`ModelFacts`](crate::facts::ModelFacts). [`GgufFile`] adds a memory map of the data and
//! checks the data layout; [`GgufModel`] follows llama.cpp's split files. [`GgufWriter`]
//! writes a file in llama.cpp's layout, atomically. [`inspect_gguf`] describes a model.

#![warn(missing_docs)]

mod file;
mod header;
mod inspect;
mod types;
mod value;
mod writer;

use std::path::Path;

pub use file::{
    split_path, GgufFile, GgufModel, TensorLoc, KEY_SPLIT_COUNT, KEY_SPLIT_NO,
    KEY_SPLIT_TENSORS_COUNT,
};
pub use header::{
    read_header, read_header_from, GgufHeader, GgufTensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC,
    MAX_ARRAY_NESTING, MAX_DIMS,
};
pub use inspect::{
    inspect_gguf, inspect_model, render_gguf_inspect, GgufInspect, MetadataEntry, TensorEntry,
    Totals, TypeTotals, ARRAY_HEAD, ARRAY_SUMMARY_LEN,
};
pub use types::{llama_file_type_name, removed_ggml_type_name, GgmlType, QK_K};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{split_metadata, split_paths, GgufWriter, TensorSpec, MAX_TENSOR_NAME};

use crate::facts::{dominant_dtype, ModelClass, ModelFacts, ModelFormat, TensorFact};
use crate::Result;

/// Read the facts of the GGUF file at `path` from its header.
pub fn read_facts(path: &Path) -> Result<ModelFacts> {
    let header = read_header(path)?;
    Ok(model_facts(&header, path))
}

/// The class of a llama.cpp architecture name.
pub fn class_of_architecture(arch: &str) -> ModelClass {
    let arch = arch.to_ascii_lowercase();
    let encoder = matches!(
        arch.as_str(),
        "bert" | "nomic-bert" | "nomic-bert-moe" | "modern-bert" | "neo-bert" | "t5encoder"
    ) || arch.starts_with("jina-bert");
    if encoder {
        ModelClass::Encoder
    } else if arch == "clip" || arch.contains("vision") || arch.starts_with("wavtokenizer") {
        ModelClass::Other
    } else {
        ModelClass::DecoderLlm
    }
}

/// A per-model or per-layer count: a scalar, or an array with one value per layer (the maximum
/// is taken).
fn count(header: &GgufHeader, key: &str) -> Option<u64> {
    match header.get(key)? {
        GgufValue::Array(a) => a.to_u64_vec()?.into_iter().max(),
        v => v.as_u64(),
    }
}

/// Build [`ModelFacts`] from a parsed header.
pub fn model_facts(header: &GgufHeader, path: &Path) -> ModelFacts {
    let arch = header.architecture().unwrap_or("unknown").to_string();
    let key = |k: &str| format!("{arch}.{k}");

    let layers = count(header, &key("block_count"));
    let hidden_size = count(header, &key("embedding_length"));
    let heads = count(header, &key("attention.head_count")).filter(|&h| h > 0);
    let kv_heads = count(header, &key("attention.head_count_kv"))
        .filter(|&h| h > 0)
        .or(heads);
    let head_dim =
        count(header, &key("attention.key_length")).or_else(|| match (hidden_size, heads) {
            (Some(h), Some(n)) => Some(h / n),
            _ => None,
        });
    let vocab_size = match header.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(a)) if !a.is_empty() => Some(a.len() as u64),
        _ => count(header, &key("vocab_size")),
    };
    let max_context = count(header, &key("context_length"));

    let tensors: Vec<TensorFact> = header
        .tensors
        .iter()
        .map(|t| TensorFact {
            name: t.name.clone(),
            shape: t.shape(),
            dtype: t.ggml_type.name().to_string(),
        })
        .collect();
    let parameters = tensors
        .iter()
        .fold(0u64, |acc, t| acc.saturating_add(t.elements()));
    let dtype = dominant_dtype(&tensors)
        .or_else(|| {
            header
                .get_u64("general.file_type")
                .and_then(llama_file_type_name)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    let class = if header.get_str("general.type") == Some("mmproj") {
        ModelClass::Other
    } else {
        class_of_architecture(&arch)
    };
    let tied_embeddings = header.tensor("output.weight").is_none();

    ModelFacts {
        path: path.to_path_buf(),
        format: ModelFormat::Gguf,
        architecture: arch,
        class,
        parameters,
        dtype,
        layers,
        hidden_size,
        heads,
        kv_heads,
        head_dim,
        vocab_size,
        max_context,
        tied_embeddings,
        tensors,
    }
}

#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod tests;
