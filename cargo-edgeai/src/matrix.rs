//! The decision matrix: ordered rules, as data (`targets/matrix.toml`), that map an accelerator,
//! an OS, an architecture and a model class to a framework, a format, a kernel backend and
//! candidate quantizations in preference order.
//!
//! Invariant: every quantization named in a rule parses as a [`Scheme`] of the rule's framework,
//! so the planner never meets an unknown name at planning time.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::line_column;
use crate::facts::ModelClass;
use crate::manifest::{AcceleratorKind, Os};
use crate::quant::{Framework, Scheme};
use crate::{Error, Result};

/// File name of the built-in matrix inside `targets/`.
pub const MATRIX_FILE: &str = "matrix.toml";

/// ONNX Runtime execution providers a rule may name (ONNX Runtime's registered names).
pub const EXECUTION_PROVIDERS: [&str; 10] = [
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "CoreMLExecutionProvider",
    "XnnpackExecutionProvider",
    "NnapiExecutionProvider",
    "ROCMExecutionProvider",
];

/// Frameworks whose bundles run on ONNX Runtime: their rules must say which execution
/// provider the device needs, or a bundle could ship without the EP it was quantized for.
pub fn runs_on_onnxruntime(framework: Framework) -> bool {
    matches!(
        framework,
        Framework::OnnxRuntime | Framework::Olive | Framework::Qnn
    )
}

/// What the user prefers when several quantizations fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prefer {
    /// The rule's default order.
    #[default]
    Balanced,
    Quality,
    Speed,
    Size,
}

impl Prefer {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::Balanced => "balanced",
            Prefer::Quality => "quality",
            Prefer::Speed => "speed",
            Prefer::Size => "size",
        }
    }
}

/// One rule of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable identifier, quoted in plans and reasons.
    pub id: String,
    /// The accelerator kind this rule runs on.
    pub accelerator: AcceleratorKind,
    /// Operating systems it applies to (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Vec<Os>>,
    /// CPU architectures (first component of the triple) it applies to (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Vec<String>>,
    /// Model classes it applies to (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Vec<ModelClass>>,
    pub framework: Framework,
    /// Output format: gguf, mlx, onnx, openvino-ir, qnn-context-binary.
    pub format: String,
    /// Kernel backend the app is built for: cpu, cuda, metal, vulkan, qnn-htp, openvino-*, coreml.
    pub kernel_backend: String,
    /// ONNX Runtime execution provider the bundle expects on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider: Option<String>,
    /// Runtime memory besides weights and KV cache, MiB.
    pub overhead_mb: u64,
    /// Bytes per KV-cache element (0 for models without a KV cache).
    pub kv_bytes: u64,
    /// Candidates, best first, for `--prefer balanced` (the default).
    pub quantizations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Vec<String>>,
    /// Why this rule exists, quoted in the plan's reasons.
    pub why: String,
}

impl Rule {
    /// Candidate quantizations for a preference, best first.
    pub fn candidates(&self, prefer: Prefer) -> &[String] {
        let list = match prefer {
            Prefer::Balanced => None,
            Prefer::Quality => self.quality.as_ref(),
            Prefer::Speed => self.speed.as_ref(),
            Prefer::Size => self.size.as_ref(),
        };
        list.unwrap_or(&self.quantizations)
    }

    /// Whether the rule's conditions hold for this accelerator, OS, triple and model class.
    pub fn applies(&self, kind: AcceleratorKind, os: Os, triple: &str, class: ModelClass) -> bool {
        let arch = triple.split('-').next().unwrap_or_default();
        self.accelerator == kind
            && self.os.as_ref().is_none_or(|list| list.contains(&os))
            && self
                .arch
                .as_ref()
                .is_none_or(|list| list.iter().any(|a| a == arch))
            && self.class.as_ref().is_none_or(|list| list.contains(&class))
    }
}

/// The whole matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    /// Pinned tool versions per framework.
    pub tools: BTreeMap<String, String>,
    /// Rules in file order.
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    schema: Spanned<u32>,
    #[serde(default)]
    tools: BTreeMap<String, String>,
    rules: Vec<Spanned<Rule>>,
}

impl Matrix {
    /// The matrix embedded in this binary.
    pub fn builtin() -> Result<Matrix> {
        let text = crate::manifest::embedded_file(MATRIX_FILE)
            .ok_or_else(|| Error::Internal("targets/matrix.toml was not embedded".into()))?;
        Matrix::parse(&Path::new("targets").join(MATRIX_FILE), text)
    }

    /// Parse and validate a matrix file.
    pub fn parse(path: &Path, text: &str) -> Result<Matrix> {
        let at = |offset: usize, message: String, help: &str| {
            let (line, column) = line_column(text, offset);
            Error::Toml {
                path: path.to_path_buf(),
                line,
                column,
                message,
                help: help.into(),
            }
        };
        let raw: RawMatrix =
            toml::from_str(text).map_err(|e| crate::manifest::toml_error(path, text, &e))?;
        if *raw.schema.get_ref() != 1 {
            return Err(at(
                raw.schema.span().start,
                format!("unsupported matrix schema {}", raw.schema.get_ref()),
                "this cargo-edgeai reads `schema = 1`",
            ));
        }
        let mut rules = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for spanned in raw.rules {
            let start = spanned.span().start;
            let rule = spanned.into_inner();
            if !seen.insert(rule.id.clone()) {
                return Err(at(
                    start,
                    format!("duplicate rule id `{}`", rule.id),
                    "give every rule a unique id",
                ));
            }
            if rule.quantizations.is_empty() {
                return Err(at(
                    start,
                    format!("rule `{}` has no quantizations", rule.id),
                    "list at least one candidate quantization",
                ));
            }
            match (&rule.execution_provider, runs_on_onnxruntime(rule.framework)) {
                (None, true) => {
                    return Err(at(
                        start,
                        format!(
                            "rule `{}`: framework {} runs on ONNX Runtime but the rule names no execution_provider",
                            rule.id, rule.framework
                        ),
                        &format!(
                            "add execution_provider = one of: {}",
                            EXECUTION_PROVIDERS.join(", ")
                        ),
                    ))
                }
                (Some(ep), false) => {
                    return Err(at(
                        start,
                        format!(
                            "rule `{}`: execution_provider `{ep}` given, but framework {} does not run on ONNX Runtime",
                            rule.id, rule.framework
                        ),
                        "remove execution_provider from this rule",
                    ))
                }
                (Some(ep), true) if !EXECUTION_PROVIDERS.contains(&ep.as_str()) => {
                    return Err(at(
                        start,
                        format!("rule `{}`: unknown execution provider `{ep}`", rule.id),
                        &format!("use one of: {}", EXECUTION_PROVIDERS.join(", ")),
                    ))
                }
                _ => {}
            }
            let lists = [
                Some(&rule.quantizations),
                rule.quality.as_ref(),
                rule.speed.as_ref(),
                rule.size.as_ref(),
            ];
            for name in lists.into_iter().flatten().flatten() {
                if Scheme::parse(rule.framework, name).is_none() {
                    return Err(at(
                        start,
                        format!(
                            "rule `{}`: `{name}` is not a {} quantization",
                            rule.id, rule.framework
                        ),
                        &format!("use one of: {}", Scheme::examples(rule.framework)),
                    ));
                }
            }
            rules.push(rule);
        }
        Ok(Matrix {
            tools: raw.tools,
            rules,
        })
    }

    /// Version string of the tools a framework's steps run.
    pub fn tool_version(&self, framework: Framework) -> String {
        self.tools
            .get(framework.as_str())
            .cloned()
            .unwrap_or_else(|| "unpinned".into())
    }
}

/// The architectures the pinned mlx-lm can load (`cargo-edgeai/data/mlx-lm-architectures.toml`,
/// generated from mlx-lm's sources by `scripts/gen-mlx-lm-architectures.py`). Embedded, so the
/// planner stays pure and refuses MLX for a model mlx-lm cannot load before any download or
/// conversion.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlxLmSupport {
    /// The mlx-lm version the list was generated from.
    pub mlx_lm: String,
    /// Module names under `mlx_lm/models/` (each a `model_type` mlx-lm loads).
    pub model_types: Vec<String>,
    /// mlx-lm's MODEL_REMAPPING: model_type -> module.
    #[serde(default)]
    pub remapping: BTreeMap<String, String>,
    /// mlx-lm's MODEL_ARCHITECTURE_REMAPPING: (model_type, architectures[i]) -> module.
    #[serde(default)]
    pub architecture_remapping: Vec<MlxArchitectureRemap>,
}

/// One entry of mlx-lm's MODEL_ARCHITECTURE_REMAPPING.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlxArchitectureRemap {
    pub model_type: String,
    pub architecture: String,
    pub module: String,
}

/// The embedded mlx-lm architecture list.
pub const MLX_LM_ARCHITECTURES: &str = include_str!("../data/mlx-lm-architectures.toml");

impl MlxLmSupport {
    /// The list embedded in this binary.
    pub fn builtin() -> &'static MlxLmSupport {
        static CELL: std::sync::OnceLock<MlxLmSupport> = std::sync::OnceLock::new();
        // The file is generated and checked by the tests; a broken one is a build defect.
        CELL.get_or_init(|| {
            toml::from_str(MLX_LM_ARCHITECTURES)
                .expect("cargo-edgeai/data/mlx-lm-architectures.toml parses")
        })
    }

    /// The mlx-lm module a config.json's `model_type` (and `architectures`) resolves to, as
    /// mlx_lm.utils._get_classes resolves it; `None` when mlx-lm has no such module.
    pub fn module_for(&self, model_type: &str, architectures: &[&str]) -> Option<&str> {
        let module = architectures
            .iter()
            .find_map(|a| {
                self.architecture_remapping
                    .iter()
                    .find(|r| r.model_type == model_type && r.architecture == *a)
                    .map(|r| r.module.as_str())
            })
            .or_else(|| self.remapping.get(model_type).map(String::as_str))
            .unwrap_or(model_type);
        self.model_types
            .iter()
            .find(|t| *t == module)
            .map(String::as_str)
    }

    /// Whether mlx-lm loads a model whose facts name `architecture` (llama.cpp's naming for
    /// known architectures, the config's `model_type` otherwise): the name is tried as a
    /// model_type directly and through llama.cpp's spellings of Hugging Face model types.
    pub fn loads_architecture(&self, architecture: &str) -> bool {
        let alias = match architecture {
            "phi2" => "phi",
            "qwen2moe" => "qwen2_moe",
            "qwen3moe" => "qwen3_moe",
            "qwen3next" => "qwen3_next",
            "qwen2vl" => "qwen2_vl",
            "nomic-bert" => "nomic_bert",
            "command-r" => "cohere",
            "deepseek2" => "deepseek_v2",
            "gptneox" => "gpt_neox",
            "starcoder" => "gpt_bigcode",
            "glm4moe" => "glm4_moe",
            "bailingmoe" => "bailing_moe",
            "hunyuan-moe" => "hunyuan",
            "hunyuan-dense" => "hunyuan_v1_dense",
            "gpt-oss" => "gpt_oss",
            other => other,
        };
        self.module_for(alias, &[]).is_some()
            || self.module_for(&alias.replace('-', "_"), &[]).is_some()
    }

    /// The model types, comma-separated, for error messages.
    pub fn list(&self) -> String {
        let mut all: Vec<&str> = self
            .model_types
            .iter()
            .map(String::as_str)
            .chain(self.remapping.keys().map(String::as_str))
            .collect();
        all.sort_unstable_by_key(|s| s.to_ascii_lowercase());
        all.dedup();
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matrix_is_valid() {
        let matrix = Matrix::builtin().expect("built-in matrix parses");
        assert!(matrix.rules.len() >= 10);
        for fw in [
            Framework::LlamaCpp,
            Framework::Mlx,
            Framework::OpenVino,
            Framework::Qnn,
            Framework::Olive,
            Framework::OnnxRuntime,
        ] {
            assert!(matrix.rules.iter().any(|r| r.framework == fw), "{fw}");
            assert_ne!(matrix.tool_version(fw), "unpinned", "{fw}");
        }
    }

    #[test]
    fn bad_quantization_is_located() {
        let text = "schema = 1\n[[rules]]\nid = \"x\"\naccelerator = \"cpu\"\nframework = \"mlx\"\nformat = \"mlx\"\nkernel_backend = \"cpu\"\noverhead_mb = 1\nkv_bytes = 2\nquantizations = [\"Q4_K_M\"]\nwhy = \"\"\n";
        let err = Matrix::parse(Path::new("m.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("m.toml:2:1:"), "{msg}");
        assert!(msg.contains("not a mlx quantization"), "{msg}");
    }

    #[test]
    fn onnxruntime_rules_name_a_known_execution_provider() {
        let m = Matrix::builtin().unwrap();
        for r in &m.rules {
            assert_eq!(
                r.execution_provider.is_some(),
                runs_on_onnxruntime(r.framework),
                "{}",
                r.id
            );
        }
        let rule = |extra: &str| {
            format!(
                "schema = 1\n[[rules]]\nid = \"x\"\naccelerator = \"cpu\"\nframework = \"onnxruntime\"\nformat = \"onnx\"\nkernel_backend = \"cpu\"\noverhead_mb = 1\nkv_bytes = 0\nquantizations = [\"fp32\"]\nwhy = \"w\"\n{extra}"
            )
        };
        let err = Matrix::parse(Path::new("m.toml"), &rule("")).unwrap_err();
        assert!(
            err.to_string().contains("names no execution_provider"),
            "{err}"
        );
        let err = Matrix::parse(
            Path::new("m.toml"),
            &rule("execution_provider = \"FooExecutionProvider\"\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown execution provider"),
            "{err}"
        );
        assert!(Matrix::parse(
            Path::new("m.toml"),
            &rule("execution_provider = \"CPUExecutionProvider\"\n")
        )
        .is_ok());
    }

    #[test]
    fn mlx_lm_support_resolves_like_mlx_lm() {
        let s = MlxLmSupport::builtin();
        assert!(!s.mlx_lm.is_empty());
        assert_eq!(s.module_for("llama", &[]), Some("llama"));
        assert_eq!(s.module_for("mistral", &[]), Some("llama"));
        assert_eq!(s.module_for("bert", &[]), None);
        assert!(s.loads_architecture("llama"));
        assert!(s.loads_architecture("phi2"));
        assert!(s.loads_architecture("qwen2moe"));
        assert!(!s.loads_architecture("bert"));
        assert!(!s.loads_architecture("nomic-bert"));
        assert!(s.list().contains("llama, "));
    }
}
