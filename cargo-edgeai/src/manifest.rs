//! Target manifests: `targets/<name>.toml`, schema 1.
//!
//! A target describes one device: CPU and ISA, memory (what the model may use and how fast it is
//! read), accelerators in order of preference, and defaults such as the context length to size the
//! KV cache for. Parsing is strict: an unknown key, a wrong type, a missing field or an impossible
//! value (budget above total memory, a `sm` on a Metal GPU) is an error with file:line:column and
//! the fix. Built-in targets are embedded at build time from the repository's `targets/`; a user
//! project adds or overrides them with `[package.metadata.edgeai] targets-dir`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::line_column;
use crate::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_targets.rs"));
}

/// The manifest schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The target used when none is named.
pub const DEFAULT_TARGET: &str = "host-x86_64";

/// Operating system of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Os {
    Linux,
    Android,
    Macos,
    Ios,
    Windows,
}

/// CPU instruction-set features that change which kernels and quantizations are fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsaFeature {
    Neon,
    Dotprod,
    I8mm,
    Sve,
    Fp16,
    Avx2,
    Avx512,
    AvxVnni,
    Amx,
}

/// Kind of compute unit a runtime can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcceleratorKind {
    Cpu,
    Cuda,
    Metal,
    Vulkan,
    QnnHtp,
    OpenvinoNpu,
    OpenvinoGpu,
    OpenvinoCpu,
}

impl AcceleratorKind {
    /// Every kind, in declaration order.
    pub const ALL: [AcceleratorKind; 8] = [
        AcceleratorKind::Cpu,
        AcceleratorKind::Cuda,
        AcceleratorKind::Metal,
        AcceleratorKind::Vulkan,
        AcceleratorKind::QnnHtp,
        AcceleratorKind::OpenvinoNpu,
        AcceleratorKind::OpenvinoGpu,
        AcceleratorKind::OpenvinoCpu,
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceleratorKind::Cpu => "cpu",
            AcceleratorKind::Cuda => "cuda",
            AcceleratorKind::Metal => "metal",
            AcceleratorKind::Vulkan => "vulkan",
            AcceleratorKind::QnnHtp => "qnn-htp",
            AcceleratorKind::OpenvinoNpu => "openvino-npu",
            AcceleratorKind::OpenvinoGpu => "openvino-gpu",
            AcceleratorKind::OpenvinoCpu => "openvino-cpu",
        }
    }
}

/// A validated target manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub schema: u32,
    pub name: String,
    pub description: String,
    pub triple: String,
    pub os: Os,
    pub cpu: Cpu,
    pub memory: Memory,
    pub accelerators: Vec<Accelerator>,
    pub defaults: Defaults,
    /// Production gates for `cargo edgeai validate` (optional `[gates]` table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<crate::validate::gates::Gates>,
    /// Where the manifest came from: `builtin` or the file path of a project override.
    pub source: String,
}

impl Target {
    /// Whether the target has an accelerator of `kind`.
    pub fn has(&self, kind: AcceleratorKind) -> bool {
        self.accelerators.iter().any(|a| a.kind == kind)
    }

    /// The first accelerator of `kind`.
    pub fn accelerator(&self, kind: AcceleratorKind) -> Option<&Accelerator> {
        self.accelerators.iter().find(|a| a.kind == kind)
    }

    /// The memory budget in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.memory.budget_mb.saturating_mul(1 << 20)
    }
}

/// The CPU of a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub model: String,
    pub cores: u32,
    #[serde(default)]
    pub isa: Vec<IsaFeature>,
}

/// Memory the model lives in (unified memory on SoCs, the GPU's memory on discrete GPUs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    pub total_mb: u64,
    /// What the model may use: weights + KV cache + runtime overhead.
    pub budget_mb: u64,
    pub bandwidth_gbps: f64,
}

/// One accelerator. Kind-specific fields are present exactly when the kind uses them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accelerator {
    pub kind: AcceleratorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_tops: Option<f64>,
    /// CUDA compute capability as an integer (87 = sm_87).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sm: Option<u32>,
    /// Metal GPU family (apple7, apple8, apple9, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_family: Option<String>,
    /// Vulkan API version ("1.1", "1.3").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Hexagon HTP architecture (68, 69, 73, 75, 79, 81).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htp_arch: Option<u32>,
    /// QNN SoC model id (43 = SM8550, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc_model: Option<u32>,
    /// OpenVINO device name (NPU, GPU, CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Planning defaults of a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub context_length: u64,
}

// ---- raw, spanned form used only while parsing ------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    schema: Spanned<u32>,
    name: Spanned<String>,
    description: String,
    triple: Spanned<String>,
    os: Os,
    cpu: Cpu,
    memory: RawMemory,
    accelerators: Spanned<Vec<RawAccelerator>>,
    defaults: RawDefaults,
    #[serde(default)]
    gates: Option<crate::validate::gates::Gates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    total_mb: u64,
    budget_mb: Spanned<u64>,
    bandwidth_gbps: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    context_length: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccelerator {
    kind: Spanned<AcceleratorKind>,
    name: Option<String>,
    peak_tops: Option<Spanned<f64>>,
    sm: Option<Spanned<u32>>,
    gpu_family: Option<Spanned<String>>,
    api_version: Option<Spanned<String>>,
    htp_arch: Option<Spanned<u32>>,
    soc_model: Option<Spanned<u32>>,
    device: Option<Spanned<String>>,
}

/// Which kind-specific keys each accelerator kind requires; any other kind-specific key is an error.
fn required_keys(kind: AcceleratorKind) -> &'static [&'static str] {
    match kind {
        AcceleratorKind::Cpu => &[],
        AcceleratorKind::Cuda => &["sm"],
        AcceleratorKind::Metal => &["gpu_family"],
        AcceleratorKind::Vulkan => &["api_version"],
        AcceleratorKind::QnnHtp => &["htp_arch", "soc_model"],
        AcceleratorKind::OpenvinoNpu
        | AcceleratorKind::OpenvinoGpu
        | AcceleratorKind::OpenvinoCpu => &["device"],
    }
}

/// HTP architectures QNN knows.
const HTP_ARCHS: [u32; 6] = [68, 69, 73, 75, 79, 81];

/// Parse and validate one manifest. `path` is used in error messages and for the
/// name-equals-file-stem rule; `source` is recorded in the result.
pub fn parse_target(path: &Path, text: &str, source: &str) -> Result<Target> {
    let at = |span: Range<usize>, message: String, help: &str| {
        let (line, column) = line_column(text, span.start);
        Error::Toml {
            path: path.to_path_buf(),
            line,
            column,
            message,
            help: help.to_string(),
        }
    };
    let raw: RawTarget = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;

    if *raw.schema.get_ref() != SCHEMA_VERSION {
        return Err(at(
            raw.schema.span(),
            format!("unsupported schema version {}", raw.schema.get_ref()),
            "this cargo-edgeai reads target manifests with `schema = 1`; upgrade cargo-edgeai or rewrite the manifest for schema 1",
        ));
    }
    let name = raw.name.get_ref().clone();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if stem.as_deref() != Some(name.as_str()) {
        return Err(at(
            raw.name.span(),
            format!(
                "target name `{name}` does not match the file name `{}`",
                path.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            ),
            "a target manifest must be named `<name>.toml`; rename the file or change `name`",
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(at(
            raw.name.span(),
            format!("target name `{name}` is not a valid name"),
            "use lowercase letters, digits, `-` and `_` only, e.g. `jetson-orin-nano-8gb`",
        ));
    }
    if raw.triple.get_ref().split('-').count() < 3 {
        return Err(at(
            raw.triple.span(),
            format!("`{}` is not a target triple", raw.triple.get_ref()),
            "use a Rust target triple such as aarch64-unknown-linux-gnu (see `rustup target list`)",
        ));
    }
    let memory = &raw.memory;
    if *memory.budget_mb.get_ref() > memory.total_mb {
        return Err(at(
            memory.budget_mb.span(),
            format!(
                "memory budget_mb = {} is above total_mb = {}",
                memory.budget_mb.get_ref(),
                memory.total_mb
            ),
            "budget_mb is the part of total memory the model may use; set it at or below total_mb (leave room for the OS and the app)",
        ));
    }
    if *memory.budget_mb.get_ref() == 0 {
        return Err(at(
            memory.budget_mb.span(),
            "memory budget_mb is 0".into(),
            "set budget_mb to the MiB the model may use on this device",
        ));
    }
    let bandwidth = *memory.bandwidth_gbps.get_ref();
    if !(bandwidth.is_finite() && bandwidth > 0.0) {
        return Err(at(
            memory.bandwidth_gbps.span(),
            format!("memory bandwidth_gbps = {bandwidth} is not a positive number"),
            "set bandwidth_gbps to the device's peak memory bandwidth in GB/s, e.g. 68.0",
        ));
    }
    if *raw.defaults.context_length.get_ref() == 0 {
        return Err(at(
            raw.defaults.context_length.span(),
            "defaults.context_length is 0".into(),
            "set the context length (tokens) the KV cache is sized for, e.g. 4096",
        ));
    }
    if raw.accelerators.get_ref().is_empty() {
        return Err(at(
            raw.accelerators.span(),
            "no accelerators".into(),
            "add at least one [[accelerators]] table, e.g. `kind = \"cpu\"`",
        ));
    }

    let mut accelerators = Vec::new();
    for acc in raw.accelerators.into_inner() {
        let kind = *acc.kind.get_ref();
        let present: [(&str, Option<Range<usize>>); 6] = [
            ("sm", acc.sm.as_ref().map(Spanned::span)),
            ("gpu_family", acc.gpu_family.as_ref().map(Spanned::span)),
            ("api_version", acc.api_version.as_ref().map(Spanned::span)),
            ("htp_arch", acc.htp_arch.as_ref().map(Spanned::span)),
            ("soc_model", acc.soc_model.as_ref().map(Spanned::span)),
            ("device", acc.device.as_ref().map(Spanned::span)),
        ];
        let required = required_keys(kind);
        for (key, span) in &present {
            match span {
                Some(span) if !required.contains(key) => {
                    return Err(at(
                        span.clone(),
                        format!(
                            "`{key}` does not apply to a `{}` accelerator",
                            kind.as_str()
                        ),
                        &format!(
                            "remove `{key}`; a `{}` accelerator takes {}",
                            kind.as_str(),
                            keys_phrase(required)
                        ),
                    ))
                }
                None if required.contains(key) => {
                    return Err(at(
                        acc.kind.span(),
                        format!("a `{}` accelerator needs `{key}`", kind.as_str()),
                        &format!("add {}", example_for(key)),
                    ))
                }
                _ => {}
            }
        }
        if let Some(arch) = &acc.htp_arch {
            if !HTP_ARCHS.contains(arch.get_ref()) {
                return Err(at(
                    arch.span(),
                    format!(
                        "htp_arch {} is not a Hexagon HTP architecture",
                        arch.get_ref()
                    ),
                    "use one of 68, 69, 73, 75, 79, 81 (e.g. SM8550 is 73, SM8650 is 75)",
                ));
            }
        }
        if let Some(tops) = &acc.peak_tops {
            if !(tops.get_ref().is_finite() && *tops.get_ref() > 0.0) {
                return Err(at(
                    tops.span(),
                    "peak_tops is not a positive number".into(),
                    "set the vendor's peak INT8 TOPS, or remove the key",
                ));
            }
        }
        accelerators.push(Accelerator {
            kind,
            name: acc.name,
            peak_tops: acc.peak_tops.map(Spanned::into_inner),
            sm: acc.sm.map(Spanned::into_inner),
            gpu_family: acc.gpu_family.map(Spanned::into_inner),
            api_version: acc.api_version.map(Spanned::into_inner),
            htp_arch: acc.htp_arch.map(Spanned::into_inner),
            soc_model: acc.soc_model.map(Spanned::into_inner),
            device: acc.device.map(Spanned::into_inner),
        });
    }

    if let Some(gates) = &raw.gates {
        gates.check("[gates]").map_err(|e| Error::InvalidManifest {
            path: path.to_path_buf(),
            message: e.to_string(),
            help: "gates are non-negative numbers; min_top1 is a fraction (0.85 = 85 %)".into(),
        })?;
    }

    Ok(Target {
        schema: SCHEMA_VERSION,
        name,
        description: raw.description,
        triple: raw.triple.into_inner(),
        os: raw.os,
        cpu: raw.cpu,
        memory: Memory {
            total_mb: raw.memory.total_mb,
            budget_mb: raw.memory.budget_mb.into_inner(),
            bandwidth_gbps: bandwidth,
        },
        accelerators,
        defaults: Defaults {
            context_length: raw.defaults.context_length.into_inner(),
        },
        gates: raw.gates,
        source: source.to_string(),
    })
}

fn keys_phrase(keys: &[&str]) -> String {
    if keys.is_empty() {
        "only `kind`, `name` and `peak_tops`".to_string()
    } else {
        let list: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
        format!("`kind`, `name`, `peak_tops` and {}", list.join(", "))
    }
}

fn example_for(key: &str) -> &'static str {
    match key {
        "sm" => "`sm = 87` (the CUDA compute capability, 87 for Jetson Orin)",
        "gpu_family" => "`gpu_family = \"apple8\"` (apple7 = M1, apple8 = M2, apple9 = M3/M4)",
        "api_version" => "`api_version = \"1.3\"`",
        "htp_arch" => "`htp_arch = 73` (68, 69, 73, 75, 79 or 81)",
        "soc_model" => "`soc_model = 43` (QNN's SoC id: 43 = SM8550, 57 = SM8650, 69 = SM8750)",
        "device" => "`device = \"NPU\"` (NPU, GPU or CPU)",
        _ => "the missing key",
    }
}

/// Turn a toml/serde error into our error with file:line:column and a help line.
pub(crate) fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> Error {
    let (line, column) = err
        .span()
        .map(|s| line_column(text, s.start))
        .unwrap_or((1, 1));
    let message = err.message().trim().to_string();
    let help = if message.contains("unknown field") {
        "remove or rename the key; the valid keys are listed in the message"
    } else if message.contains("missing field") {
        "add the missing key; a target needs schema, name, description, triple, os, [cpu], [memory], [[accelerators]] and [defaults]"
    } else if message.contains("unknown variant") {
        "use one of the values listed in the message"
    } else if message.contains("invalid type") {
        "change the value to the expected type (numbers unquoted, names quoted)"
    } else {
        "fix the TOML syntax at this position"
    };
    Error::Toml {
        path: path.to_path_buf(),
        line,
        column,
        message,
        help: help.to_string(),
    }
}

/// Built-in and project targets by name.
#[derive(Debug, Clone, Default)]
pub struct TargetSet {
    targets: BTreeMap<String, Target>,
}

impl TargetSet {
    /// The built-in targets embedded in this binary.
    pub fn builtin() -> Result<TargetSet> {
        let mut targets = BTreeMap::new();
        for (file, text) in builtin_files() {
            let path = PathBuf::from("targets").join(file);
            let target = parse_target(&path, text, "builtin")?;
            targets.insert(target.name.clone(), target);
        }
        Ok(TargetSet { targets })
    }

    /// Built-in targets, then every `*.toml` in `dir` (adding or replacing by name).
    pub fn load(targets_dir: Option<&Path>) -> Result<TargetSet> {
        let mut set = TargetSet::builtin()?;
        if let Some(dir) = targets_dir {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                help: "[package.metadata.edgeai] targets-dir must name a directory of <name>.toml target manifests".into(),
                source: e,
            })?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            paths.sort();
            for path in paths {
                let target = load_target_file(&path)?;
                set.targets.insert(target.name.clone(), target);
            }
        }
        Ok(set)
    }

    /// The target named `name`, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<&Target> {
        self.targets.get(name).ok_or_else(|| Error::UnknownTarget {
            name: name.to_string(),
            known: self.targets.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// All targets sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Read and validate one manifest file.
pub fn load_target_file(path: &Path) -> Result<Target> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_target(path, &text, &path.display().to_string())
}

/// Embedded `targets/*.toml` files that are target manifests (everything but the matrix).
pub fn builtin_files() -> impl Iterator<Item = (&'static str, &'static str)> {
    embedded::EMBEDDED
        .iter()
        .copied()
        .filter(|(file, _)| *file != crate::matrix::MATRIX_FILE)
}

/// The embedded file `file` of `targets/`, if any.
pub(crate) fn embedded_file(file: &str) -> Option<&'static str> {
    embedded::EMBEDDED
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, text)| *text)
}
