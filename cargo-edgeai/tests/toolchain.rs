//! `cargo edgeai toolchain install|list|remove` with the real Python, uv and pip: a tiny
//! toolchain (a pure-Python wheel built here, declared through $EDGEAI_TOOLCHAINS_FILE)
//! installed offline into a temporary root; and the real `mlx` toolchain CI installs with
//! `cargo edgeai toolchain install mlx`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{stderr, stdout};

/// Writes `NAME-VERSION-py3-none-any.whl` into `dir` with the stdlib's zipfile (fixed
/// timestamps: the same bytes every time) and prints its sha256.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
name, version, out = sys.argv[1:4]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"__version__ = '{version}'\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: edgeai-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append(f"{dist}/RECORD,,")
files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
wheel = f"{out}/{name}-{version}-py3-none-any.whl"
with zipfile.ZipFile(wheel, "w") as z:
    for path, text in files.items():
        z.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), text)
print(hashlib.sha256(open(wheel, "rb").read()).hexdigest())
"#;

/// A scratch root, a wheel folder with edgeai_tiny 0.1.0 and 0.2.0, and a manifest declaring
/// toolchain `tiny` locked to 0.1.0.
struct Scratch {
    dir: tempfile::TempDir,
    sha: [String; 2],
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wheels = dir.path().join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let make = |version: &str| {
            let out = Command::new("python3")
                .args(["-c", MAKE_WHEEL, "edgeai_tiny", version])
                .arg(&wheels)
                .output()
                .expect("python3 must be installed (CI installs it)");
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).trim().to_string()
        };
        let sha = [make("0.1.0"), make("0.2.0")];
        std::fs::write(
            dir.path().join("toolchains.toml"),
            "[toolchain.tiny]\ndescription = \"a tiny test toolchain\"\nrequires-python = \">=3.8\"\nlock = \"tiny.lock\"\npackages = [\"edgeai-tiny\"]\nused-by = [\"tests\"]\n",
        )
        .unwrap();
        let s = Scratch { dir, sha };
        s.lock("0.1.0");
        s
    }

    fn lock(&self, version: &str) {
        let sha = if version == "0.1.0" {
            &self.sha[0]
        } else {
            &self.sha[1]
        };
        std::fs::write(
            self.dir.path().join("tiny.lock"),
            format!("edgeai-tiny=={version} \\\n    --hash=sha256:{sha}\n"),
        )
        .unwrap();
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn wheels(&self) -> PathBuf {
        self.dir.path().join("wheels")
    }

    fn command(&self, installer: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"));
        c.arg("edgeai")
            .args(args)
            .current_dir(self.dir.path())
            .env("EDGEAI_TOOLCHAINS_DIR", self.root())
            .env(
                "EDGEAI_TOOLCHAINS_FILE",
                self.dir.path().join("toolchains.toml"),
            )
            .env("EDGEAI_TOOLCHAIN_INSTALLER", installer)
            .env("NO_COLOR", "1");
        c
    }

    fn run(&self, installer: &str, args: &[&str]) -> Output {
        self.command(installer, args).output().unwrap()
    }

    fn install(&self, installer: &str) -> serde_json::Value {
        let wheels = self.wheels();
        let out = self.run(
            installer,
            &[
                "toolchain",
                "install",
                "tiny",
                "--offline",
                "--find-links",
                wheels.to_str().unwrap(),
                "--format",
                "json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "--format json must be quiet on stderr");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run("auto", &["toolchain", "list", "--format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn tiny_state(&self) -> String {
        let list = self.list();
        let tiny = list.iter().find(|t| t["name"] == "tiny").unwrap();
        tiny["state"].as_str().unwrap().to_string()
    }
}

fn python_says(python: &Path, code: &str) -> String {
    let out = Command::new(python).args(["-c", code]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

const TINY_VERSION: &str = "import edgeai_tiny; print(edgeai_tiny.__version__)";

fn install_list_reinstall_remove(installer: &str) {
    let s = Scratch::new();
    let list = s.list();
    let names: Vec<&str> = list.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"mlx") && names.contains(&"tiny"),
        "{names:?}"
    );
    assert_eq!(s.tiny_state(), "missing");

    let report = s.install(installer);
    assert_eq!(report["state"], "installed");
    assert_eq!(report["versions"]["edgeai-tiny"], "0.1.0");
    assert!(
        report["installer"].as_str().unwrap().starts_with(installer),
        "{report}"
    );
    let dir = PathBuf::from(report["dir"].as_str().unwrap());
    assert_eq!(dir, s.root().join("tiny"));
    assert_eq!(
        python_says(&dir.join("bin").join("python"), TINY_VERSION),
        "0.1.0"
    );
    assert_eq!(s.tiny_state(), "installed");

    // The library finds what the command installed.
    let spec = edgeai_toolchain::ToolchainSpec {
        name: "tiny".into(),
        description: String::new(),
        requires_python: ">=3.8".into(),
        lock_source: String::new(),
        lock: std::fs::read_to_string(s.dir.path().join("tiny.lock")).unwrap(),
        packages: vec![],
        used_by: vec![],
    };
    let tc = edgeai_toolchain::find_in(&s.root(), &spec).unwrap();
    assert_eq!(tc.python(), dir.join("bin").join("python"));
    assert_eq!(tc.version("edgeai-tiny"), Some("0.1.0"));

    // Human list: name, state, versions, path.
    let out = s.run("auto", &["toolchain", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("tiny"), "{text}");
    assert!(text.contains("edgeai-tiny 0.1.0"), "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
    assert!(
        text.contains("cargo edgeai toolchain install mlx"),
        "{text}"
    );

    // The lock changes: outdated, and install rebuilds it.
    s.lock("0.2.0");
    assert_eq!(s.tiny_state(), "outdated");
    let report = s.install(installer);
    assert_eq!(report["versions"]["edgeai-tiny"], "0.2.0");
    assert_eq!(
        python_says(&dir.join("bin").join("python"), TINY_VERSION),
        "0.2.0"
    );

    let out = s.run("auto", &["toolchain", "remove", "tiny", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed["removed"], true);
    assert!(!dir.exists());
    assert_eq!(s.tiny_state(), "missing");
    let out = s.run("auto", &["toolchain", "remove", "tiny"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("not installed"), "{}", stdout(&out));
}

#[test]
fn uv_installs_lists_reinstalls_and_removes_offline() {
    install_list_reinstall_remove("uv");
}

#[test]
fn pip_installs_lists_reinstalls_and_removes_offline() {
    install_list_reinstall_remove("pip");
}

#[test]
fn unknown_toolchain_errors_with_the_known_names() {
    let s = Scratch::new();
    for args in [
        &["toolchain", "install", "nope"][..],
        &["toolchain", "remove", "nope"][..],
    ] {
        let out = s.run("auto", args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("unknown toolchain `nope`"), "{err}");
        assert!(err.contains("known toolchains: mlx, "), "{err}");
        for name in ["onnxruntime", "openvino", "olive", "tiny"] {
            assert!(err.contains(name), "{name} is not listed: {err}");
        }
    }
}

#[test]
fn offline_pip_without_a_wheel_folder_is_a_usage_error() {
    let s = Scratch::new();
    let out = s.run("pip", &["toolchain", "install", "tiny", "--offline"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--find-links"), "{}", stderr(&out));
    assert!(!s.root().join("tiny").exists());
}

#[test]
fn a_killed_install_does_not_count_as_installed() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let wheels = s.wheels();
    // pip: `python -m venv` runs ensurepip for seconds, a window to kill it in.
    let mut child = s
        .command(
            "pip",
            &[
                "toolchain",
                "install",
                "tiny",
                "--offline",
                "--find-links",
                wheels.to_str().unwrap(),
            ],
        )
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(s.root()).ok().and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tiny.partial-")
            })
        });
        if let Some(p) = found.filter(|p| p.join("bin").join("python").exists()) {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the install ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no partial environment appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    // SIGKILL the whole process group (cargo-edgeai and its python/pip), mid-way.
    let kill = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let _ = child.wait();

    assert!(!s.root().join("tiny").exists());
    assert!(partial.exists(), "the partial environment is a leftover");
    assert_eq!(s.tiny_state(), "missing");

    // The next install succeeds and cleans the leftover of the dead process.
    let report = s.install("pip");
    assert_eq!(report["state"], "installed");
    assert!(
        !partial.exists(),
        "leftover {} not cleaned",
        partial.display()
    );
}

#[test]
fn doctor_lists_every_toolchain_with_its_install_command() {
    let s = Scratch::new();
    let out = s.run("auto", &["doctor", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let toolchains = report["toolchains"].as_array().unwrap();
    for name in ["mlx", "onnxruntime", "tiny"] {
        let t = toolchains
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("doctor does not list {name}: {report}"));
        assert_eq!(t["installed"], false);
        assert_eq!(
            t["install_command"],
            format!("cargo edgeai toolchain install {name}")
        );
    }
    let out = s.run("auto", &["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("mlx")
            && text.contains("not installed: run `cargo edgeai toolchain install mlx`"),
        "{text}"
    );
}

/// The real toolchain CI installs before the tests (`cargo edgeai toolchain install mlx`).
#[test]
fn real_mlx_toolchain_imports_mlx_and_mlx_lm_at_the_pinned_versions() {
    let tc = edgeai_toolchain::find("mlx").unwrap_or_else(|e| {
        panic!(
            "{e}: {} (CI runs `cargo run -p cargo-edgeai -- edgeai toolchain install mlx`)",
            e.help()
        )
    });
    assert_eq!(tc.version("mlx"), Some("0.32.4"));
    assert_eq!(tc.version("mlx-lm"), Some("0.32.2"));
    if cfg!(target_os = "linux") {
        assert_eq!(tc.version("mlx-cpu"), Some("0.32.4"));
    }
    let said = python_says(
        &tc.python(),
        "import mlx.core as mx, mlx_lm, importlib.metadata as m\n\
         w = mx.quantize(mx.ones((2, 64)), group_size=64, bits=4)[0]\n\
         print(mx.__version__, m.version('mlx-lm'), w.shape)",
    );
    assert_eq!(said, "0.32.4 0.32.2 (2, 8)");
    assert!(tc.bin("mlx_lm.generate").exists());
}

#[test]
fn auto_picks_python_m_uv_without_uv_on_path_and_pip_without_uv() {
    let s = Scratch::new();
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = stdout(&out).trim().to_string();
    // No uv on this PATH: only the interpreter's `-m uv` module (CI: `python3 -m pip install uv`).
    let path = "/usr/bin:/bin";
    assert!(
        !Path::new("/usr/bin/uv").exists() && !Path::new("/bin/uv").exists(),
        "uv in /usr/bin or /bin defeats this test"
    );
    let install = |uv: Option<&str>| {
        let wheels = s.wheels();
        let mut c = s.command(
            "auto",
            &[
                "toolchain",
                "install",
                "tiny",
                "--force",
                "--offline",
                "--find-links",
                wheels.to_str().unwrap(),
                "--format",
                "json",
            ],
        );
        c.env("PATH", path).env("EDGEAI_PYTHON", &python);
        if let Some(uv) = uv {
            c.env("EDGEAI_UV", uv);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["installer"].as_str().unwrap().to_string()
    };
    let via_module = install(None);
    assert!(
        via_module.starts_with("uv "),
        "`{python} -m uv` was not used ({via_module}); CI must run `python3 -m pip install uv`"
    );
    // An unusable uv: fall back to venv + pip.
    assert!(install(Some("/nonexistent/uv")).starts_with("pip "));
}

#[test]
fn list_of_the_built_in_toolchains_on_an_empty_root() {
    let root = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
            .args(["edgeai", "toolchain", "list", "--format", format])
            .env("EDGEAI_TOOLCHAINS_DIR", root.path())
            .env_remove("EDGEAI_TOOLCHAINS_FILE")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).replace(&root.path().display().to_string(), "[ROOT]")
    };
    insta::assert_snapshot!("toolchain_list_human", run("human"));
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    insta::assert_json_snapshot!("toolchain_list_json", json);
}
