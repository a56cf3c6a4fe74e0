//! Building an environment: pick an interpreter and an installer (uv, else venv + pip), build
//! in `<root>/.<name>.partial-<pid>-<nanos>`, record the stamp last, rename into place.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::spec::{python_satisfies, ToolchainSpec};
use crate::{find_in, Error, InstallOptions, Stamp, Toolchain, STAMP_FILE};

/// Environment variable naming the interpreter to build environments from.
pub const PYTHON_ENV: &str = "EDGEAI_PYTHON";
/// Environment variable forcing the installer: `uv` or `pip` (default: uv when available).
pub const INSTALLER_ENV: &str = "EDGEAI_TOOLCHAIN_INSTALLER";
/// Environment variable naming the uv program (default: `uv` on PATH, else `python -m uv`).
pub const UV_ENV: &str = "EDGEAI_UV";

/// The lock file as written into the environment (what pip/uv installed from).
const LOCK_IN_ENV: &str = "edgeai-toolchain.lock";

/// How much an install tells the user (on stderr; stdout stays free for JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// Nothing; installer output is kept for the error message.
    #[default]
    Quiet,
    /// One line per step; installer output is kept for the error message.
    Steps,
    /// One line per step and the installer's own output (progress bars on a terminal).
    Live,
}

impl Progress {
    fn step(self, msg: &str) {
        if self != Progress::Quiet {
            eprintln!("{msg}");
        }
    }
}

/// A scratch name next to the environment (same filesystem, so renames are atomic).
pub(crate) fn scratch_path(root: &Path, name: &str, kind: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    root.join(format!(".{name}.{kind}-{}-{nanos}", std::process::id()))
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        // Without /proc we cannot tell: keep it (remove cleans it).
        true
    }
}

/// Delete leftovers of killed installs/removals of `name`: partial builds whose process is gone,
/// and old/removing directories. Errors are ignored: a leftover costs disk, not correctness.
pub(crate) fn cleanup_leftovers(root: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&format!(".{name}.")) else {
            continue;
        };
        let Some((kind, tail)) = rest.split_once('-') else {
            continue;
        };
        let pid: Option<u32> = tail.split('-').next().and_then(|p| p.parse().ok());
        let stale = match kind {
            "partial" => pid.is_some_and(|p| !process_alive(p)),
            "old" | "removing" => pid.is_some_and(|p| p != std::process::id()),
            _ => false,
        };
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Deletes the partial directory unless the install completed.
struct PartialGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A Python interpreter found on this machine.
#[derive(Debug, Clone)]
struct Interpreter {
    path: PathBuf,
    version: String,
    has_ensurepip: bool,
}

const PROBE: &str = "import sys\ntry:\n    import ensurepip\n    e = 1\nexcept Exception:\n    e = 0\nprint(sys.executable)\nprint('%d.%d.%d' % sys.version_info[:3])\nprint(e)\n";

fn probe_python(program: &OsString) -> Option<Interpreter> {
    let out = Command::new(program)
        .args(["-I", "-c", PROBE])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let path = PathBuf::from(lines.next()?.trim());
    let version = lines.next()?.trim().to_string();
    let has_ensurepip = lines.next()?.trim() == "1";
    Some(Interpreter {
        path,
        version,
        has_ensurepip,
    })
}

fn find_python(spec: &ToolchainSpec, need_ensurepip: bool) -> Result<Interpreter, Error> {
    let candidates: Vec<OsString> = match std::env::var_os(PYTHON_ENV).filter(|v| !v.is_empty()) {
        Some(p) => vec![p],
        None => [
            "python3",
            "python3.11",
            "python3.12",
            "python3.13",
            "python3.14",
            "python",
        ]
        .iter()
        .map(OsString::from)
        .collect(),
    };
    let mut tried = Vec::new();
    for c in &candidates {
        let label = c.to_string_lossy().into_owned();
        let Some(interp) = probe_python(c) else {
            tried.push(format!("{label} (not runnable)"));
            continue;
        };
        let ok = python_satisfies(&interp.version, &spec.requires_python).map_err(|message| {
            Error::Manifest {
                path: PathBuf::from(&spec.lock_source),
                message: format!("toolchain `{}`: {message}", spec.name),
            }
        })?;
        if !ok {
            tried.push(format!("{label} {}", interp.version));
        } else if need_ensurepip && !interp.has_ensurepip {
            tried.push(format!(
                "{label} {} (no ensurepip/venv module)",
                interp.version
            ));
        } else {
            return Ok(interp);
        }
    }
    Err(Error::NoPython {
        name: spec.name.clone(),
        requirement: spec.requires_python.clone(),
        tried: tried.join(", "),
    })
}

/// How packages get installed.
#[derive(Debug, Clone)]
enum Installer {
    /// The uv command line (program and leading arguments) and its version.
    Uv(Vec<OsString>, String),
    Pip,
}

fn uv_version(cmd: &[OsString]) -> Option<String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // "uv 0.13.9 (...)" -> "uv 0.13.9"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Some(format!("{} {}", words.next()?, words.next()?))
}

fn find_uv(python: &Path) -> Option<Installer> {
    let mut candidates: Vec<Vec<OsString>> = Vec::new();
    if let Some(uv) = std::env::var_os(UV_ENV).filter(|v| !v.is_empty()) {
        candidates.push(vec![uv]);
    } else {
        candidates.push(vec!["uv".into()]);
        candidates.push(vec![python.into(), "-m".into(), "uv".into()]);
    }
    candidates
        .into_iter()
        .find_map(|c| uv_version(&c).map(|v| Installer::Uv(c, v)))
}

fn choose_installer(spec: &ToolchainSpec) -> Result<(Installer, Interpreter), Error> {
    let forced = std::env::var(INSTALLER_ENV).unwrap_or_default();
    match forced.as_str() {
        "" | "auto" => {
            // uv needs no ensurepip; probe the interpreter without requiring it first.
            let python = find_python(spec, false)?;
            if let Some(uv) = find_uv(&python.path) {
                return Ok((uv, python));
            }
            Ok((Installer::Pip, find_python(spec, true)?))
        }
        "uv" => {
            let python = find_python(spec, false)?;
            let uv = find_uv(&python.path).ok_or_else(|| Error::Usage {
                message: format!("{INSTALLER_ENV}=uv but uv is not available"),
                help: format!(
                    "install uv (`python3 -m pip install uv`), set {UV_ENV} to its path, or unset {INSTALLER_ENV}"
                ),
            })?;
            Ok((uv, python))
        }
        "pip" => Ok((Installer::Pip, find_python(spec, true)?)),
        other => Err(Error::Usage {
            message: format!("{INSTALLER_ENV}={other} is not an installer"),
            help: format!("set {INSTALLER_ENV} to `uv` or `pip`, or unset it"),
        }),
    }
}

/// Run one installer step; on failure the error carries the step's last output lines.
fn run_step(
    spec: &ToolchainSpec,
    step: &str,
    cmd: &mut Command,
    progress: Progress,
    help: &str,
) -> Result<String, Error> {
    cmd.stdin(Stdio::null());
    let live = progress == Progress::Live;
    if live {
        // The installer's stdout goes to our stderr too: our stdout may carry JSON.
        cmd.stdout(Stdio::from(std::io::stderr()));
        cmd.stderr(Stdio::inherit());
    } else {
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }
    let program = format!("{:?}", cmd.get_program());
    let out = cmd.output().map_err(|e| Error::InstallFailed {
        name: spec.name.clone(),
        step: step.to_string(),
        status: format!("cannot run {program}: {e}"),
        output: String::new(),
        help: help.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let mut all = stdout;
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = all.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    Err(Error::InstallFailed {
        name: spec.name.clone(),
        step: step.to_string(),
        status: out.status.to_string(),
        output: tail,
        help: help.to_string(),
    })
}

const INSPECT: &str = "import sys, json, importlib.metadata as m\nprint(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'packages': {d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))\n";

#[derive(serde::Deserialize)]
struct Inspected {
    python: String,
    packages: BTreeMap<String, String>,
}

/// Replace the partial directory's path by the final one in the environment's scripts and
/// pyvenv.cfg: venvs hard-code their location in shebangs and activate scripts.
fn relocate(partial: &Path, final_dir: &Path) -> Result<(), Error> {
    let (from, to) = (
        partial.to_string_lossy().into_owned(),
        final_dir.to_string_lossy().into_owned(),
    );
    let bin = if cfg!(windows) { "Scripts" } else { "bin" };
    let mut files = vec![partial.join("pyvenv.cfg")];
    if let Ok(entries) = std::fs::read_dir(partial.join(bin)) {
        files.extend(entries.flatten().map(|e| e.path()));
    }
    for file in files {
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) => m,
            Err(_) => continue,
        };
        // Interpreter symlinks and binaries stay as they are; scripts are small text files.
        if !meta.is_file() || meta.len() > 1 << 20 {
            continue;
        }
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        if text.contains(&from) {
            std::fs::write(&file, text.replace(&from, &to)).map_err(|e| Error::io(&file, e))?;
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Install `spec` under `root` (see the crate docs for the invariants). Returns the existing
/// environment when it is up to date and `opts.force` is not set.
pub fn install_spec(
    spec: &ToolchainSpec,
    root: &Path,
    opts: &InstallOptions,
    progress: Progress,
) -> Result<Toolchain, Error> {
    if !opts.force {
        if let Ok(tc) = find_in(root, spec) {
            progress.step(&format!(
                "toolchain `{}` is up to date at {}",
                spec.name,
                tc.dir.display()
            ));
            return Ok(tc);
        }
    }
    if let Some(dir) = &opts.find_links {
        if !dir.is_dir() {
            return Err(Error::Usage {
                message: format!("--find-links {}: not a directory", dir.display()),
                help: "pass a folder of wheels (e.g. filled by `pip download -r toolchains/NAME.lock -d DIR`)".into(),
            });
        }
    }
    let started = Instant::now();
    let (installer, python) = choose_installer(spec)?;
    if opts.offline && opts.find_links.is_none() && matches!(installer, Installer::Pip) {
        return Err(Error::Usage {
            message: format!(
                "offline install of `{}` with pip needs a local wheel folder",
                spec.name
            ),
            help: "pass --find-links DIR (a folder of the lock's wheels), or install uv so its cache can be used".into(),
        });
    }
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    cleanup_leftovers(root, &spec.name);
    let final_dir = root.join(&spec.name);
    let partial = scratch_path(root, &spec.name, "partial");
    let mut guard = PartialGuard {
        path: partial.clone(),
        armed: true,
    };
    let installer_name = match &installer {
        Installer::Uv(_, v) => v.clone(),
        Installer::Pip => "pip".to_string(),
    };
    progress.step(&format!(
        "installing toolchain `{}` ({}) with {installer_name} and Python {} ({}) into {}",
        spec.name,
        spec.lock_source,
        python.version,
        python.path.display(),
        final_dir.display()
    ));
    let env_python = Toolchain::python_in(&partial);
    let net_help = if opts.offline {
        "check that the wheel folder holds every wheel of the lock for this platform and Python (`pip download --require-hashes --no-deps -r LOCK -d DIR`)"
    } else {
        "check the network and PyPI access (or pass --find-links DIR --offline with the wheels); the output above names the failing package"
    };

    // 1. The empty environment.
    progress.step("  creating the environment");
    let mut venv = match &installer {
        Installer::Uv(uv, _) => {
            let mut c = Command::new(&uv[0]);
            c.args(&uv[1..])
                .arg("venv")
                .arg("--python")
                .arg(&python.path)
                .arg("--no-project")
                .arg(&partial);
            if opts.offline {
                c.arg("--offline");
            }
            c
        }
        Installer::Pip => {
            let mut c = Command::new(&python.path);
            c.args(["-m", "venv"]).arg(&partial);
            c
        }
    };
    run_step(
        spec,
        "creating the virtual environment",
        &mut venv,
        progress,
        "check that the interpreter has the venv module (Debian: apt-get install python3-venv) and the disk has space",
    )?;

    // 2. The pinned packages, hashes required, nothing resolved.
    let lock_file = partial.join(LOCK_IN_ENV);
    write_synced(&lock_file, spec.lock.as_bytes())?;
    progress.step("  installing the locked packages");
    let mut pkgs = match &installer {
        Installer::Uv(uv, _) => {
            let mut c = Command::new(&uv[0]);
            c.args(&uv[1..])
                .args([
                    "pip",
                    "install",
                    "--require-hashes",
                    "--no-deps",
                    "--python",
                ])
                .arg(&env_python)
                .arg("-r")
                .arg(&lock_file);
            if let Some(dir) = &opts.find_links {
                c.arg("--find-links").arg(dir);
            }
            if opts.offline {
                // uv's cache is keyed by index: without a wheel folder keep the index so
                // cached wheels still resolve (--offline forbids the network either way).
                c.arg("--offline");
                if opts.find_links.is_some() {
                    c.arg("--no-index");
                }
            }
            if progress != Progress::Live {
                c.arg("--quiet");
            }
            c
        }
        Installer::Pip => {
            let mut c = Command::new(&env_python);
            c.args([
                "-m",
                "pip",
                "install",
                "--require-hashes",
                "--no-deps",
                "--no-input",
                "--disable-pip-version-check",
                // Bytecode compiled now would name the partial directory in tracebacks.
                "--no-compile",
                "-r",
            ])
            .arg(&lock_file);
            if let Some(dir) = &opts.find_links {
                c.arg("--find-links").arg(dir);
            }
            if opts.offline {
                c.arg("--no-index");
            }
            c
        }
    };
    run_step(
        spec,
        "installing the locked packages",
        &mut pkgs,
        progress,
        net_help,
    )?;

    // 3. What got installed, from the environment itself.
    let mut inspect = Command::new(&env_python);
    inspect
        .args(["-I", "-c", INSPECT])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let json = run_step(
        spec,
        "inspecting the environment",
        &mut inspect,
        Progress::Quiet,
        "the environment's interpreter does not run: remove it and install again",
    )?;
    let inspected: Inspected =
        serde_json::from_str(json.trim()).map_err(|e| Error::InstallFailed {
            name: spec.name.clone(),
            step: "inspecting the environment".into(),
            status: format!("unreadable output: {e}"),
            output: json.clone(),
            help: "this is a bug in cargo-edgeai; please report it".into(),
        })?;
    let installer_label = match &installer {
        Installer::Uv(_, v) => v.clone(),
        Installer::Pip => match inspected.packages.get("pip") {
            Some(v) => format!("pip {v}"),
            None => "pip".into(),
        },
    };
    relocate(&partial, &final_dir)?;

    // 4. The stamp, last: only now does the environment count as installed.
    let stamp = Stamp {
        name: spec.name.clone(),
        lock_sha256: spec.lock_sha256(),
        python: inspected.python,
        base_python: python.path.clone(),
        installer: installer_label,
        packages: inspected
            .packages
            .into_iter()
            .map(|(k, v)| (crate::normalize(&k), v))
            .collect(),
        installed_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let stamp_json = serde_json::to_string_pretty(&stamp)
        .map_err(|e| Error::io(partial.join(STAMP_FILE), std::io::Error::other(e)))?;
    write_synced(&partial.join(STAMP_FILE), stamp_json.as_bytes())?;

    // 5. Into place. An older environment is moved aside first, then deleted.
    if final_dir.exists() {
        if !opts.force {
            if let Ok(tc) = find_in(root, spec) {
                // Another install finished first with the same lock: keep it, drop ours.
                return Ok(tc);
            }
        }
        let old = scratch_path(root, &spec.name, "old");
        std::fs::rename(&final_dir, &old).map_err(|e| Error::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&partial, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    guard.armed = false;
    let tc = find_in(root, spec)?;
    progress.step(&format!(
        "installed toolchain `{}` in {:.1} s: {}",
        spec.name,
        started.elapsed().as_secs_f64(),
        spec.packages
            .iter()
            .filter_map(|p| tc.version(p).map(|v| format!("{p} {v}")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(tc)
}
