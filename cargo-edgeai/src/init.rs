//! `cargo edgeai init`: add a commented `[package.metadata.edgeai]` table to a Cargo.toml.
//!
//! Invariant: the user's file is only ever appended to — existing bytes, comments and
//! formatting stay exactly as they were — and a second run changes nothing.

use std::path::Path;

use crate::{Error, Result};

/// What `init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Added,
    AlreadyPresent,
}

/// The table `init` appends, with `model` and `target` filled in.
pub fn edgeai_table(model: &str, target: &str) -> String {
    let model = toml_edit::Value::from(model).to_string();
    let target = toml_edit::Value::from(target).to_string();
    format!(
        r#"
# cargo-edgeai: `cargo edgeai plan` / `cargo edgeai build` read this table.
[package.metadata.edgeai]
# The model to deploy: a Hugging Face directory, a .gguf or .onnx file (relative to this file),
# or hf://org/name[@revision].
model = {model}
# Devices to build bundles for; `cargo edgeai targets` lists them.
targets = [{target}]
# A directory of your own target manifests (<name>.toml), adding to or replacing the built-in ones.
# targets-dir = "edgeai-targets"

# Production gates: `cargo edgeai validate` exits 1 when a measured value crosses one.
[package.metadata.edgeai.gates]
# Mean KL divergence of the quantized model's token distributions from the reference's.
max_kld = 0.1
# Perplexity of the quantized model over the reference's.
max_ppl_ratio = 1.1
# Share of positions where both models pick the same top token.
min_top1 = 0.85
# min_decode_tokens_per_s = 10.0
# max_memory_mb = 4096

# Per-target overrides, for targets whose framework differs (a GGUF type means nothing to MLX):
# `quantization` replaces the one above, each gate replaces the same gate above.
# [package.metadata.edgeai.target.apple-m2-16gb]
# quantization = "affine-8bit-g64"
# [package.metadata.edgeai.target.apple-m2-16gb.gates]
# max_kld = 0.0001
"#
    )
}

/// Append the table to `manifest` unless `[package.metadata.edgeai]` is already there.
pub fn do_init(manifest: &Path, model: &str, target: &str) -> Result<InitOutcome> {
    let text = std::fs::read_to_string(manifest).map_err(|e| Error::io(manifest, e))?;
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, column) = e
            .span()
            .map(|s| crate::error::line_column(&text, s.start))
            .unwrap_or((1, 1));
        Error::Toml {
            path: manifest.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
            help: "fix the Cargo.toml syntax first; init only appends to a valid file".into(),
        }
    })?;
    let Some(package) = doc.get("package") else {
        return Err(Error::InvalidManifest {
            path: manifest.to_path_buf(),
            message: "no [package] table (a virtual workspace manifest?)".into(),
            help: "run init in the package that deploys the model, or pass its Cargo.toml with --manifest-path".into(),
        });
    };
    if package
        .get("metadata")
        .and_then(|m| m.get("edgeai"))
        .is_some()
    {
        return Ok(InitOutcome::AlreadyPresent);
    }
    let mut new_text = text.clone();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&edgeai_table(model, target));
    // Refuse to write anything that does not parse back (e.g. a metadata key of another type).
    new_text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| Error::InvalidManifest {
            path: manifest.to_path_buf(),
            message: format!("adding [package.metadata.edgeai] would make the file invalid: {}", e.message()),
            help: "add the table by hand; `package.metadata` may be defined in a way init cannot extend".into(),
        })?;
    std::fs::write(manifest, new_text).map_err(|e| Error::io(manifest, e))?;
    Ok(InitOutcome::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_once_and_keeps_formatting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Cargo.toml");
        let original = "[package]\nname    = \"app\"   # aligned on purpose\nversion = \"0.1.0\"\n\n[dependencies]\n";
        std::fs::write(&path, original).unwrap();
        assert_eq!(
            do_init(&path, "models/m.gguf", "host-x86_64").unwrap(),
            InitOutcome::Added
        );
        let once = std::fs::read_to_string(&path).unwrap();
        assert!(once.starts_with(original));
        let meta = crate::project::parse_edgeai_table(&path, &once).unwrap();
        assert_eq!(meta.model.as_deref(), Some("models/m.gguf"));
        assert_eq!(meta.targets, vec!["host-x86_64".to_string()]);
        assert_eq!(
            do_init(&path, "other", "host-x86_64").unwrap(),
            InitOutcome::AlreadyPresent
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), once);
    }
}
