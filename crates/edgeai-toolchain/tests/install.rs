//! Installs real environments with the real Python and installer (uv when present, else venv +
//! pip) from a tiny pure-Python wheel built here, offline, into a temporary root.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeai_toolchain::{
    find_in, install_spec, remove_in, status_in, Error, InstallOptions, Progress, State,
    ToolchainSpec, STAMP_FILE,
};

/// Writes `NAME-VERSION-py3-none-any.whl` into `dir` with the stdlib's zipfile (fixed
/// timestamps: the same bytes every time) and prints its sha256. The package has a
/// `__version__` and a console script `NAME-hello`.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
name, version, out = sys.argv[1:4]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"__version__ = '{version}'\ndef main():\n    print('hello from {name}', __version__)\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: edgeai-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{dist}/entry_points.txt": f"[console_scripts]\n{name}-hello = {name}:main\n",
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
        info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
        z.writestr(info, text)
print(hashlib.sha256(open(wheel, "rb").read()).hexdigest())
"#;

fn make_wheel(dir: &Path, name: &str, version: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("python3")
        .args(["-c", MAKE_WHEEL, name, version])
        .arg(dir)
        .output()
        .expect("python3 must be installed (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn spec(name: &str, package: &str, version: &str, sha: &str) -> ToolchainSpec {
    ToolchainSpec {
        name: name.into(),
        description: "test toolchain".into(),
        requires_python: ">=3.8".into(),
        lock_source: "test".into(),
        lock: format!("{package}=={version} \\\n    --hash=sha256:{sha}\n"),
        packages: vec![package.into()],
        used_by: vec![],
    }
}

fn offline(wheels: &Path) -> InstallOptions {
    InstallOptions {
        find_links: Some(wheels.to_path_buf()),
        offline: true,
        force: false,
    }
}

fn run_python(python: &Path, code: &str) -> String {
    let out = Command::new(python).args(["-c", code]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn leftovers(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

#[test]
fn install_find_import_reinstall_on_lock_change_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, wheels) = (tmp.path().join("root"), tmp.path().join("wheels"));
    let sha1 = make_wheel(&wheels, "edgeai_tiny", "0.1.0");
    let sha2 = make_wheel(&wheels, "edgeai_tiny", "0.2.0");
    let v1 = spec("tiny", "edgeai-tiny", "0.1.0", &sha1);

    // Not installed yet: the error names the toolchain and the command.
    match find_in(&root, &v1) {
        Err(e @ Error::NotInstalled { .. }) => {
            assert!(e.to_string().contains("`tiny`"), "{e}");
            assert_eq!(e.help(), "run `cargo edgeai toolchain install tiny`");
        }
        other => panic!("expected NotInstalled, got {other:?}"),
    }
    assert_eq!(status_in(&root, &v1).state, State::Missing);

    let tc = install_spec(&v1, &root, &offline(&wheels), Progress::Quiet).unwrap();
    assert_eq!(tc.dir, root.join("tiny"));
    assert_eq!(tc.version("edgeai_tiny"), Some("0.1.0"));
    assert!(tc.versions()["python"].starts_with("3."));
    assert_eq!(
        run_python(
            &tc.python(),
            "import edgeai_tiny; print(edgeai_tiny.__version__)"
        ),
        "0.1.0"
    );
    // Built in a scratch directory and renamed: the console script still runs.
    let hello = Command::new(tc.bin("edgeai_tiny-hello")).output().unwrap();
    assert!(
        hello.status.success(),
        "{}",
        String::from_utf8_lossy(&hello.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout).trim(),
        "hello from edgeai_tiny 0.1.0"
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    let found = find_in(&root, &v1).unwrap();
    assert_eq!(found, tc);
    let st = status_in(&root, &v1);
    assert_eq!(st.state, State::Installed);
    assert_eq!(st.versions["edgeai-tiny"], "0.1.0");

    // Up to date: install is a no-op (same stamp, same install time).
    let again = install_spec(&v1, &root, &offline(&wheels), Progress::Quiet).unwrap();
    assert_eq!(again.stamp, tc.stamp);

    // A changed lock: the environment is outdated and install rebuilds it.
    let v2 = spec("tiny", "edgeai-tiny", "0.2.0", &sha2);
    assert!(matches!(find_in(&root, &v2), Err(Error::Outdated { .. })));
    assert_eq!(status_in(&root, &v2).state, State::Outdated);
    let tc2 = install_spec(&v2, &root, &offline(&wheels), Progress::Quiet).unwrap();
    assert_eq!(tc2.version("edgeai-tiny"), Some("0.2.0"));
    assert_eq!(
        run_python(
            &tc2.python(),
            "import edgeai_tiny; print(edgeai_tiny.__version__)"
        ),
        "0.2.0"
    );
    assert_ne!(tc2.stamp.lock_sha256, tc.stamp.lock_sha256);
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));

    remove_in(&root, "tiny").unwrap();
    assert!(!root.join("tiny").exists());
    assert!(matches!(
        find_in(&root, &v2),
        Err(Error::NotInstalled { .. })
    ));
    // Removing again is not an error.
    remove_in(&root, "tiny").unwrap();
}

#[test]
fn a_wrong_hash_fails_and_leaves_nothing_that_looks_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, wheels) = (tmp.path().join("root"), tmp.path().join("wheels"));
    make_wheel(&wheels, "edgeai_tiny", "0.1.0");
    let bad = spec("tiny", "edgeai-tiny", "0.1.0", &"0".repeat(64));
    let err = install_spec(&bad, &root, &offline(&wheels), Progress::Quiet).unwrap_err();
    match &err {
        Error::InstallFailed { step, output, .. } => {
            assert_eq!(step, "installing the locked packages");
            assert!(
                output.to_lowercase().contains("hash"),
                "installer output should name the hash mismatch: {output}"
            );
        }
        other => panic!("expected InstallFailed, got {other:?}"),
    }
    assert!(!root.join("tiny").exists());
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    assert!(matches!(
        find_in(&root, &bad),
        Err(Error::NotInstalled { .. })
    ));
}

#[test]
fn a_stamp_without_an_interpreter_is_not_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = spec("tiny", "edgeai-tiny", "0.1.0", &"0".repeat(64));
    std::fs::create_dir_all(root.join("tiny")).unwrap();
    std::fs::write(
        root.join("tiny").join(STAMP_FILE),
        format!(
            r#"{{"name":"tiny","lock_sha256":"{}","python":"3.11.7","base_python":"/usr/bin/python3","installer":"pip","packages":{{}},"installed_at":0}}"#,
            s.lock_sha256()
        ),
    )
    .unwrap();
    assert!(matches!(find_in(root, &s), Err(Error::NotInstalled { .. })));
    assert_eq!(status_in(root, &s).state, State::Missing);
}

#[test]
fn unknown_toolchain_lists_the_known_ones() {
    let err = edgeai_toolchain::find("no-such-toolchain").unwrap_err();
    assert!(matches!(err, Error::UnknownToolchain { .. }));
    assert!(err.help().contains("mlx"), "{}", err.help());
    assert!(err.help().contains("onnxruntime"), "{}", err.help());
}
