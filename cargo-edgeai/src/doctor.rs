//! `cargo edgeai doctor`: which toolchains and runtimes this machine has, and therefore which
//! steps of which targets can run here.
//!
//! Probing runs each tool's own `--version` (bounded by a timeout) and never installs anything.
//! What a step needs is data ([`step_requirements`]), shared with the build pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::facts::ModelClass;
use crate::manifest::{Target, TargetSet};
use crate::matrix::Matrix;
use crate::quant::Framework;

/// One probed tool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolStatus {
    pub name: String,
    pub found: bool,
    pub version: Option<String>,
    pub path: Option<String>,
    /// Why it matters or what to do when it is missing.
    pub note: String,
}

/// Readiness of one step of one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReadiness {
    pub step: String,
    pub ready: bool,
    pub missing: Vec<String>,
}

/// Readiness of a target's default plan for a decoder LLM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReadiness {
    pub target: String,
    pub framework: Framework,
    pub kernel_backend: String,
    pub steps: Vec<StepReadiness>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoctorReport {
    pub tools: Vec<ToolStatus>,
    pub rustup_targets: Vec<String>,
    pub managed_toolchains: Vec<String>,
    /// Every known managed toolchain, installed or not, with versions and its install command.
    pub toolchains: Vec<edgeai_toolchain::ToolchainStatus>,
    pub targets: Vec<TargetReadiness>,
}

/// Cache directory of cargo-edgeai (`$XDG_CACHE_HOME/cargo-edgeai` or `~/.cache/cargo-edgeai`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cargo-edgeai")
}

/// First line of `program args...` stdout/stderr, if it runs and exits 0 within a few seconds.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Where `program` is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

struct Probe {
    name: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    note: &'static str,
}

const PROBES: &[Probe] = &[
    Probe {
        name: "cargo",
        program: "cargo",
        args: &["--version"],
        note: "builds the app",
    },
    Probe {
        name: "rustup",
        program: "rustup",
        args: &["--version"],
        note: "adds Rust targets for cross builds",
    },
    Probe {
        name: "cc",
        program: "cc",
        args: &["--version"],
        note: "C compiler for native kernels",
    },
    Probe {
        name: "cmake",
        program: "cmake",
        args: &["--version"],
        note: "builds llama.cpp (apt install cmake)",
    },
    Probe {
        name: "ninja",
        program: "ninja",
        args: &["--version"],
        note: "fast llama.cpp builds (apt install ninja-build)",
    },
    Probe {
        name: "aarch64-linux-gnu-gcc",
        program: "aarch64-linux-gnu-gcc",
        args: &["--version"],
        note: "linker for aarch64 Linux targets (apt install gcc-aarch64-linux-gnu)",
    },
    Probe {
        name: "qemu-aarch64",
        program: "qemu-aarch64",
        args: &["--version"],
        note: "runs aarch64 binaries here (apt install qemu-user)",
    },
    Probe {
        name: "llama-quantize",
        program: "llama-quantize",
        args: &["--help"],
        note: "llama.cpp reference quantizer",
    },
    Probe {
        name: "llama-perplexity",
        program: "llama-perplexity",
        args: &["--version"],
        note: "llama.cpp validation runtime",
    },
    Probe {
        name: "python3",
        program: "python3",
        args: &["--version"],
        note: "runs the managed toolchains (OpenVINO, ONNX Runtime, Olive, QNN, mlx-lm)",
    },
    Probe {
        name: "uv",
        program: "uv",
        args: &["--version"],
        note: "creates managed Python environments fast (pip install uv)",
    },
    Probe {
        name: "nvcc",
        program: "nvcc",
        args: &["--version"],
        note: "CUDA kernels (PyPI nvidia-cuda-nvcc)",
    },
    Probe {
        name: "glslc",
        program: "glslc",
        args: &["--version"],
        note: "Vulkan shaders (apt install glslc)",
    },
    Probe {
        name: "spirv-val",
        program: "spirv-val",
        args: &["--version"],
        note: "validates SPIR-V (apt install spirv-tools)",
    },
    Probe {
        name: "spirv-cross",
        program: "spirv-cross",
        args: &["--help"],
        note: "SPIR-V to MSL for Metal checks off macOS (apt install spirv-cross)",
    },
    Probe {
        name: "xcrun metal",
        program: "xcrun",
        args: &["-f", "metal"],
        note: "Metal shader compiler: macOS with Xcode only; Metal steps cannot run on Linux",
    },
    Probe {
        name: "minisign",
        program: "minisign",
        args: &["-v"],
        note: "optional: verifies bundle signatures (cargo edgeai verify does the same)",
    },
];

/// Probe the machine.
pub fn probe_tools() -> Vec<ToolStatus> {
    PROBES
        .iter()
        .map(|p| {
            let path = which(p.program);
            let version = path.as_ref().and_then(|_| version_of(p.program, p.args));
            ToolStatus {
                name: p.name.to_string(),
                found: version.is_some(),
                version,
                path: path.map(|p| p.display().to_string()),
                note: p.note.to_string(),
            }
        })
        .collect()
}

/// Installed rustup targets (empty without rustup).
pub fn rustup_targets() -> Vec<String> {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the managed Python toolchains that are installed and up to date.
pub fn managed_toolchains() -> Vec<String> {
    toolchain_statuses()
        .into_iter()
        .filter(|t| t.installed)
        .map(|t| t.name)
        .collect()
}

/// Every known managed toolchain (edgeai-toolchain), installed or not; none when its manifest
/// is unreadable (doctor reports, it does not fail).
pub fn toolchain_statuses() -> Vec<edgeai_toolchain::ToolchainStatus> {
    edgeai_toolchain::list().unwrap_or_default()
}

/// What each step of a plan needs, as names of tools or managed toolchains (`toolchain:NAME`)
/// or rustup targets (`rustup-target:TRIPLE`).
pub fn step_requirements(
    target: &Target,
    framework: Framework,
    kernel_backend: &str,
) -> Vec<(&'static str, Vec<String>)> {
    let toolchain = |name: &str| format!("toolchain:{name}");
    let quantize = match framework {
        Framework::LlamaCpp | Framework::Mlx => vec![],
        Framework::OnnxRuntime => vec![toolchain("onnxruntime")],
        Framework::Olive => vec![toolchain("olive")],
        Framework::OpenVino => vec![toolchain("openvino")],
        Framework::Qnn => vec![toolchain("qnn")],
    };
    let kernels = match kernel_backend {
        "cuda" => vec!["nvcc".to_string()],
        "vulkan" => vec!["glslc".into(), "spirv-val".into()],
        "metal" => vec!["xcrun metal".into()],
        "qnn-htp" => vec![toolchain("qnn")],
        b if b.starts_with("openvino") => vec![toolchain("openvino")],
        "coreml" => vec!["xcrun metal".into()],
        _ => vec!["cc".into(), "cmake".into()],
    };
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut build = vec!["cargo".to_string()];
    if target.triple != host {
        build.push(format!("rustup-target:{}", target.triple));
        match target.triple.as_str() {
            "aarch64-unknown-linux-gnu" => build.push("aarch64-linux-gnu-gcc".into()),
            t if t.contains("apple") => build.push("xcrun metal".into()),
            t if t.contains("android") => build.push("android-ndk".into()),
            t if t.contains("windows-msvc") => build.push("msvc-linker".into()),
            _ => {}
        }
    }
    let validate = match framework {
        Framework::LlamaCpp => vec!["llama-perplexity".to_string()],
        Framework::Mlx => vec![toolchain("mlx")],
        Framework::OnnxRuntime | Framework::Olive => vec![toolchain("onnxruntime")],
        Framework::OpenVino => vec![toolchain("openvino")],
        Framework::Qnn => vec![toolchain("qnn")],
    };
    vec![
        ("quantize", quantize),
        ("kernels", kernels),
        ("build-app", build),
        ("validate", validate),
        ("package", vec![]),
        ("sign", vec![]),
    ]
}

/// Probe everything and judge every target's default LLM plan.
pub fn do_doctor(targets: &TargetSet, matrix: &Matrix) -> DoctorReport {
    let tools = probe_tools();
    let rustup_targets = rustup_targets();
    let toolchains = toolchain_statuses();
    let managed: Vec<String> = toolchains
        .iter()
        .filter(|t| t.installed)
        .map(|t| t.name.clone())
        .collect();
    let mut have: BTreeSet<String> = tools
        .iter()
        .filter(|t| t.found)
        .map(|t| t.name.clone())
        .collect();
    have.extend(rustup_targets.iter().map(|t| format!("rustup-target:{t}")));
    have.extend(managed.iter().map(|t| format!("toolchain:{t}")));
    let mut readiness = Vec::new();
    for target in targets.iter() {
        // The rule a decoder LLM gets on the target's most preferred accelerator.
        let rule = target.accelerators.iter().find_map(|a| {
            matrix
                .rules
                .iter()
                .find(|r| r.applies(a.kind, target.os, &target.triple, ModelClass::DecoderLlm))
        });
        let Some(rule) = rule else { continue };
        let steps = step_requirements(target, rule.framework, &rule.kernel_backend)
            .into_iter()
            .map(|(step, needs)| {
                let missing: Vec<String> =
                    needs.into_iter().filter(|n| !have.contains(n)).collect();
                StepReadiness {
                    step: step.to_string(),
                    ready: missing.is_empty(),
                    missing,
                }
            })
            .collect();
        readiness.push(TargetReadiness {
            target: target.name.clone(),
            framework: rule.framework,
            kernel_backend: rule.kernel_backend.clone(),
            steps,
        });
    }
    DoctorReport {
        tools,
        rustup_targets,
        managed_toolchains: managed,
        toolchains,
        targets: readiness,
    }
}

/// Human rendering of the report.
pub fn render_human(report: &DoctorReport) -> String {
    let mut out = String::from("Tools\n");
    for t in &report.tools {
        let mark = if t.found { "ok " } else { "-- " };
        let detail = t.version.clone().unwrap_or_else(|| "not found".into());
        out.push_str(&format!(
            "  {mark}{:<22} {:<45} {}\n",
            t.name,
            truncate(&detail, 45),
            t.note
        ));
    }
    out.push_str(&format!(
        "\nRust targets installed: {}\n",
        if report.rustup_targets.is_empty() {
            "none".into()
        } else {
            report.rustup_targets.join(", ")
        }
    ));
    out.push_str(&format!(
        "Managed toolchains ({}): {}\n",
        edgeai_toolchain::root().display(),
        if report.managed_toolchains.is_empty() {
            "none installed".into()
        } else {
            report.managed_toolchains.join(", ")
        }
    ));
    for t in &report.toolchains {
        let mark = if t.installed { "ok " } else { "-- " };
        let detail = match t.state {
            edgeai_toolchain::State::Installed => {
                let mut v = vec![format!("python {}", t.python.as_deref().unwrap_or("?"))];
                v.extend(t.versions.iter().map(|(k, ver)| format!("{k} {ver}")));
                v.join(", ")
            }
            edgeai_toolchain::State::Outdated => {
                format!("outdated (lock changed): run `{}`", t.install_command)
            }
            edgeai_toolchain::State::Missing => {
                format!("not installed: run `{}`", t.install_command)
            }
        };
        out.push_str(&format!("  {mark}{:<22} {detail}\n", t.name));
    }
    out.push_str("\nSteps that can run here (default LLM plan per target)\n");
    for t in &report.targets {
        let ready: Vec<&str> = t
            .steps
            .iter()
            .filter(|s| s.ready)
            .map(|s| s.step.as_str())
            .collect();
        let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for s in t.steps.iter().filter(|s| !s.ready) {
            for m in &s.missing {
                missing.entry(m.as_str()).or_default().push(s.step.as_str());
            }
        }
        let missing: Vec<String> = missing
            .into_iter()
            .map(|(m, steps)| format!("{m} ({})", steps.join(", ")))
            .collect();
        out.push_str(&format!(
            "  {:<26} {:<12} {:<13} ready: {}{}\n",
            t.target,
            t.framework.as_str(),
            t.kernel_backend,
            ready.join(" "),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            }
        ));
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}
