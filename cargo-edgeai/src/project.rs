//! The user's Cargo project: `[package.metadata.edgeai]` of the package being built.
//!
//! cargo_metadata finds the package and its manifest; the table itself is read from the manifest
//! text with spans, so a mistake in it is reported with file:line:column like a target manifest.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::manifest::toml_error;
use crate::quant::Framework;
use crate::{Error, Result};

/// `framework = "..."`: a framework name as `--framework` takes it; anything else is an error
/// (located by the TOML parser) that lists the frameworks.
fn framework<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Framework>, D::Error> {
    let name = String::deserialize(d)?;
    Framework::parse(&name).map(Some).ok_or_else(|| {
        let all: Vec<&str> = Framework::ALL.iter().map(|f| f.as_str()).collect();
        serde::de::Error::custom(format!(
            "unknown framework `{name}`: expected one of {}",
            all.join(", ")
        ))
    })
}

/// `[package.metadata.edgeai]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EdgeaiMetadata {
    /// The model: a path relative to the package, or `hf://org/name[@revision]`.
    pub model: Option<String>,
    /// Targets `cargo edgeai build` builds for.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Directory of extra or overriding target manifests, relative to the package.
    pub targets_dir: Option<PathBuf>,
    /// Production gates (read by `validate`).
    #[serde(default)]
    pub gates: Option<toml::Table>,
    /// Quantization `cargo edgeai build` uses instead of the plan's choice (`Q8_0`, ...).
    #[serde(default)]
    pub quantization: Option<String>,
    /// Only rules of this framework (`olive`, `onnxruntime`, `llama.cpp`, `mlx`, ...): the
    /// plan's `--framework` for `cargo edgeai build`.
    #[serde(default, deserialize_with = "framework")]
    pub framework: Option<Framework>,
    /// Sentences (one per line, relative to the package) that ONNX validation of a text model
    /// tokenizes, instead of the built-in ones.
    #[serde(default)]
    pub validation_text: Option<PathBuf>,
    /// A directory of `.npz`/`.npy` samples (relative to the package) that ONNX validation runs
    /// a model without a tokenizer on (vision, audio).
    #[serde(default)]
    pub validation_inputs: Option<PathBuf>,
    /// INT8 static calibration data for ONNX targets: a text file (text models) or a directory
    /// of `.npz`/`.npy` samples, relative to the package; default: the validation text.
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    /// Minisign secret key `cargo edgeai build` signs bundles with, relative to the package
    /// (overridden by `--key` and `EDGEAI_SIGNING_KEY`).
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Per-target overrides: `[package.metadata.edgeai.target.<target-name>]`, for projects whose
    /// targets use different frameworks (a GGUF type and its gates mean nothing to MLX).
    #[serde(default)]
    pub target: std::collections::BTreeMap<String, TargetOverride>,
}

/// `[package.metadata.edgeai.target.<target-name>]`: what differs for one target.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetOverride {
    /// Replaces the global `quantization` for this target.
    #[serde(default)]
    pub quantization: Option<String>,
    /// Replaces the global `framework` for this target.
    #[serde(default, deserialize_with = "framework")]
    pub framework: Option<Framework>,
    /// Gates for this target: each key replaces the same key of the global `[gates]`.
    #[serde(default)]
    pub gates: Option<toml::Table>,
}

/// The package the command runs for.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub name: String,
    pub version: String,
    /// Path of the package's Cargo.toml.
    pub manifest_path: PathBuf,
    pub metadata: EdgeaiMetadata,
}

impl Project {
    /// Directory of the package.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// The model reference, with a relative path resolved against the package directory.
    pub fn model_ref(&self) -> Option<String> {
        let model = self.metadata.model.as_ref()?;
        if model.contains("://") || Path::new(model).is_absolute() {
            Some(model.clone())
        } else {
            Some(self.dir().join(model).display().to_string())
        }
    }

    /// The project as target `name` sees it: the global `quantization`, `framework` and `[gates]` with that
    /// target's `[package.metadata.edgeai.target.<name>]` applied (gates merge key by key).
    /// Everything downstream reads `metadata.quantization`/`metadata.gates`, so applying the
    /// override here once keeps the per-target rule in one place.
    pub fn for_target(&self, name: &str) -> Project {
        let mut p = self.clone();
        if let Some(o) = self.metadata.target.get(name) {
            if o.quantization.is_some() {
                p.metadata.quantization = o.quantization.clone();
            }
            if o.framework.is_some() {
                p.metadata.framework = o.framework;
            }
            if let Some(g) = &o.gates {
                let mut merged = self.metadata.gates.clone().unwrap_or_default();
                merged.extend(g.iter().map(|(k, v)| (k.clone(), v.clone())));
                p.metadata.gates = Some(merged);
            }
        }
        p
    }

    /// The targets directory, resolved against the package directory.
    pub fn targets_dir(&self) -> Option<PathBuf> {
        self.metadata
            .targets_dir
            .as_ref()
            .map(|d| self.dir().join(d))
    }
}

/// Find the Cargo.toml for `manifest_path` or the nearest one above the current directory.
pub fn find_manifest(manifest_path: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(path) = manifest_path {
        if !path.is_file() {
            return Err(Error::Usage {
                message: format!("--manifest-path {} does not exist", path.display()),
                help: "pass the path of a Cargo.toml".into(),
            });
        }
        return Ok(Some(path.to_path_buf()));
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    Ok(cwd
        .ancestors()
        .map(|dir| dir.join("Cargo.toml"))
        .find(|p| p.is_file()))
}

/// Load the package at `manifest_path` (or the one around the current directory), if any.
pub fn load_project(manifest_path: Option<&Path>) -> Result<Option<Project>> {
    let Some(manifest) = find_manifest(manifest_path)? else {
        return Ok(None);
    };
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(&manifest)
        .no_deps()
        .exec()
        .map_err(|e| Error::InvalidManifest {
            path: manifest.clone(),
            message: format!("cargo metadata failed: {e}"),
            help: "fix the Cargo.toml so that `cargo metadata` accepts it".into(),
        })?;
    let manifest_canon = std::fs::canonicalize(&manifest).unwrap_or(manifest.clone());
    let package = metadata
        .packages
        .iter()
        .find(|p| {
            std::fs::canonicalize(p.manifest_path.as_std_path()).ok()
                == Some(manifest_canon.clone())
        })
        .or_else(|| metadata.root_package())
        .or_else(|| {
            let with_edgeai: Vec<_> = metadata
                .workspace_packages()
                .into_iter()
                .filter(|p| p.metadata.get("edgeai").is_some())
                .collect();
            (with_edgeai.len() == 1).then(|| with_edgeai[0])
        });
    let Some(package) = package else {
        return Ok(None);
    };
    let path = package.manifest_path.as_std_path().to_path_buf();
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let metadata = parse_edgeai_table(&path, &text)?;
    Ok(Some(Project {
        name: package.name.to_string(),
        version: package.version.to_string(),
        manifest_path: path,
        metadata,
    }))
}

/// The package of `manifest` read from the file alone, without running `cargo metadata`
/// (which costs a process and ~100 ms): `None` when the manifest has no literal
/// `package.name`/`package.version` (workspace inheritance needs cargo to resolve).
/// `cargo edgeai build` uses it so that a no-op rebuild spawns nothing.
pub fn load_package_manifest(manifest: &Path) -> Result<Option<Project>> {
    let text = std::fs::read_to_string(manifest).map_err(|e| Error::io(manifest, e))?;
    let value: toml::Table = match toml::from_str(&text) {
        Ok(v) => v,
        // cargo's error is the better one; let load_project report it.
        Err(_) => return Ok(None),
    };
    let package = value.get("package").and_then(|p| p.as_table());
    let field = |k: &str| {
        package
            .and_then(|p| p.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let (Some(name), Some(version)) = (field("name"), field("version")) else {
        return Ok(None);
    };
    let metadata = parse_edgeai_table(manifest, &text)?;
    let manifest_path = std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    Ok(Some(Project {
        name,
        version,
        manifest_path,
        metadata,
    }))
}

#[derive(Deserialize)]
struct ManifestShape {
    package: Option<PackageShape>,
}

#[derive(Deserialize)]
struct PackageShape {
    metadata: Option<MetadataShape>,
}

#[derive(Deserialize)]
struct MetadataShape {
    edgeai: Option<EdgeaiMetadata>,
}

/// Parse `[package.metadata.edgeai]` out of a Cargo.toml's text.
pub fn parse_edgeai_table(path: &Path, text: &str) -> Result<EdgeaiMetadata> {
    let shape: ManifestShape = toml::from_str(text).map_err(|e| {
        let mut err = toml_error(path, text, &e);
        if let Error::Toml { help, .. } = &mut err {
            *help = "[package.metadata.edgeai] takes model, targets, targets-dir, quantization, framework (llama.cpp, onnxruntime, olive, openvino, mlx, qnn), validation-text, validation-inputs, calibration, signing-key, [gates] and [target.<name>] (quantization, framework, [gates]); run `cargo edgeai init` in a fresh project to see a commented example".into();
        }
        err
    })?;
    Ok(shape
        .package
        .and_then(|p| p.metadata)
        .and_then(|m| m.edgeai)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_table_and_locates_mistakes() {
        let ok = "[package]\nname = \"a\"\n[package.metadata.edgeai]\nmodel = \"m.gguf\"\ntargets = [\"host-x86_64\"]\ntargets-dir = \"t\"\n";
        let meta = parse_edgeai_table(Path::new("Cargo.toml"), ok).unwrap();
        assert_eq!(meta.model.as_deref(), Some("m.gguf"));
        assert_eq!(meta.targets_dir.as_deref(), Some(Path::new("t")));
        let bad = "[package]\nname = \"a\"\n[package.metadata.edgeai]\nmodle = \"m.gguf\"\n";
        let err = parse_edgeai_table(Path::new("Cargo.toml"), bad).unwrap_err();
        assert!(err.to_string().starts_with("Cargo.toml:4:1:"), "{err}");
    }

    #[test]
    fn per_target_overrides_apply_and_unknown_keys_are_located() {
        let text = "[package]\nname = \"a\"\n[package.metadata.edgeai]\nquantization = \"Q8_0\"\n[package.metadata.edgeai.gates]\nmax_kld = 0.0001\nmin_top1 = 0.99\n[package.metadata.edgeai.target.apple-m2-16gb]\nquantization = \"affine-8bit-g64\"\n[package.metadata.edgeai.target.apple-m2-16gb.gates]\nmax_kld = 0.01\n";
        let meta = parse_edgeai_table(Path::new("Cargo.toml"), text).unwrap();
        let p = Project {
            name: "a".into(),
            version: "0.1.0".into(),
            manifest_path: PathBuf::from("Cargo.toml"),
            metadata: meta,
        };
        let mac = p.for_target("apple-m2-16gb");
        assert_eq!(
            mac.metadata.quantization.as_deref(),
            Some("affine-8bit-g64")
        );
        let g = mac.metadata.gates.unwrap();
        assert_eq!(g["max_kld"].as_float(), Some(0.01));
        assert_eq!(g["min_top1"].as_float(), Some(0.99));
        let host = p.for_target("host-x86_64");
        assert_eq!(host.metadata, p.metadata);
        let bad = "[package]\nname = \"a\"\n[package.metadata.edgeai.target.x]\nquantisation = \"Q8_0\"\n";
        let err = parse_edgeai_table(Path::new("Cargo.toml"), bad).unwrap_err();
        assert!(err.to_string().starts_with("Cargo.toml:4:1:"), "{err}");
    }

    #[test]
    fn framework_is_parsed_globally_and_per_target() {
        let text = "[package]\nname = \"a\"\n[package.metadata.edgeai]\nframework = \"onnxruntime\"\nvalidation-text = \"s.txt\"\n[package.metadata.edgeai.target.x]\nframework = \"olive\"\n";
        let meta = parse_edgeai_table(Path::new("Cargo.toml"), text).unwrap();
        assert_eq!(meta.framework, Some(Framework::OnnxRuntime));
        assert_eq!(meta.validation_text.as_deref(), Some(Path::new("s.txt")));
        let p = Project {
            name: "a".into(),
            version: "0.1.0".into(),
            manifest_path: PathBuf::from("Cargo.toml"),
            metadata: meta,
        };
        assert_eq!(p.for_target("x").metadata.framework, Some(Framework::Olive));
        assert_eq!(
            p.for_target("y").metadata.framework,
            Some(Framework::OnnxRuntime)
        );
        let bad = "[package]\nname = \"a\"\n[package.metadata.edgeai.target.x]\nframework = \"tensorflow\"\n";
        let err = parse_edgeai_table(Path::new("Cargo.toml"), bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("Cargo.toml:4:"), "{msg}");
        assert!(
            msg.contains("tensorflow") && msg.contains("olive") && msg.contains("llama.cpp"),
            "{msg}"
        );
    }
}
