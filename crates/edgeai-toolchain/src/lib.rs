//! Managed, pinned Python toolchains (uv or venv + pip) for vendor tools.
//!
//! A toolchain is an isolated Python environment at `<root>/<name>/`, built from a lock file of
//! the repository (`toolchains/*.lock`, embedded in the binary) with `--require-hashes --no-deps`,
//! so every machine gets the same packages. Invariants:
//! - An environment counts as installed only when its stamp file ([`STAMP_FILE`]) exists and
//!   records the current lock's sha256. The stamp is written last, inside a temporary directory
//!   that is then renamed into place: a killed install never looks installed.
//! - A changed lock makes [`find`] answer [`Error::Outdated`] and [`install`] rebuild.
//! - [`find`] never installs; steps that need a toolchain call it and pass the error (which
//!   says `cargo edgeai toolchain install NAME`) to the user.

mod error;
mod install;
pub mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::Error;
pub use install::{install_spec, Progress};
pub use spec::{known, ToolchainSpec};

/// The file in each environment that records how and from which lock it was installed.
pub const STAMP_FILE: &str = "edgeai-toolchain.json";
/// Environment variable that overrides the root directory of the environments.
pub const TOOLCHAINS_DIR_ENV: &str = "EDGEAI_TOOLCHAINS_DIR";

/// Where environments live: `$EDGEAI_TOOLCHAINS_DIR`, else
/// `${XDG_CACHE_HOME:-~/.cache}/cargo-edgeai/toolchains`.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os(TOOLCHAINS_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cargo-edgeai")
        .join("toolchains")
}

/// What the installer recorded in [`STAMP_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub name: String,
    pub lock_sha256: String,
    /// Interpreter version of the environment ("3.11.7").
    pub python: String,
    /// The interpreter the environment was created from.
    pub base_python: PathBuf,
    /// "uv 0.13.9" or "pip 23.2.1".
    pub installer: String,
    /// Every installed distribution, normalized name (PEP 503) -> version.
    pub packages: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
}

/// An installed, up-to-date toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Toolchain {
    pub name: String,
    pub dir: PathBuf,
    pub stamp: Stamp,
}

impl Toolchain {
    /// The environment's Python interpreter.
    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// A program of the environment (`mlx_lm.generate`, `olive`, ...).
    pub fn bin(&self, program: &str) -> PathBuf {
        if cfg!(windows) {
            let exe = if Path::new(program).extension().is_some() {
                program.to_string()
            } else {
                format!("{program}.exe")
            };
            self.dir.join("Scripts").join(exe)
        } else {
            self.dir.join("bin").join(program)
        }
    }

    /// Installed versions: every distribution by normalized name, plus `python`.
    pub fn versions(&self) -> BTreeMap<String, String> {
        let mut v = self.stamp.packages.clone();
        v.insert("python".into(), self.stamp.python.clone());
        v
    }

    /// The version of one distribution (`mlx-lm`, `mlx_lm` and `MLX-LM` are the same name).
    pub fn version(&self, package: &str) -> Option<&str> {
        self.stamp
            .packages
            .get(&normalize(package))
            .map(String::as_str)
    }
}

/// PEP 503 name normalization: lower case, runs of `-_.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Options of [`install`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// A local folder of wheels to install from (pip/uv `--find-links`).
    pub find_links: Option<PathBuf>,
    /// No network: only `find_links` (and, with uv, its cache).
    pub offline: bool,
    /// Rebuild even when an up-to-date environment exists.
    pub force: bool,
}

/// State of a known toolchain on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Installed,
    /// Installed from a different lock: `install` rebuilds it.
    Outdated,
    Missing,
}

/// One line of [`list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolchainStatus {
    pub name: String,
    pub description: String,
    pub state: State,
    pub installed: bool,
    pub dir: PathBuf,
    pub requires_python: String,
    /// Interpreter version of the environment, when there is one.
    pub python: Option<String>,
    /// Versions of the manifest's key packages that are installed.
    pub versions: BTreeMap<String, String>,
    pub lock: String,
    pub lock_sha256: String,
    pub used_by: Vec<String>,
    pub install_command: String,
}

/// The command that installs toolchain `name`.
pub fn install_command(name: &str) -> String {
    format!("cargo edgeai toolchain install {name}")
}

fn read_stamp(dir: &Path) -> Option<Stamp> {
    let text = std::fs::read_to_string(dir.join(STAMP_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The environment of `spec` under `root`, if it is complete and up to date.
pub fn find_in(root: &Path, spec: &ToolchainSpec) -> Result<Toolchain, Error> {
    let dir = root.join(&spec.name);
    let Some(stamp) = read_stamp(&dir) else {
        return Err(Error::NotInstalled {
            name: spec.name.clone(),
            dir,
        });
    };
    let current = spec.lock_sha256();
    if stamp.lock_sha256 != current {
        return Err(Error::Outdated {
            name: spec.name.clone(),
            dir,
            installed: stamp.lock_sha256,
            current,
        });
    }
    let tc = Toolchain {
        name: spec.name.clone(),
        dir,
        stamp,
    };
    // A stamp without an interpreter (deleted by hand, moved) is not an environment.
    if !tc.python().exists() {
        return Err(Error::NotInstalled {
            name: spec.name.clone(),
            dir: tc.dir,
        });
    }
    Ok(tc)
}

/// The installed toolchain `name`; [`Error::NotInstalled`] / [`Error::Outdated`] tell the user
/// to run `cargo edgeai toolchain install NAME`, [`Error::UnknownToolchain`] lists the known ones.
pub fn find(name: &str) -> Result<Toolchain, Error> {
    find_in(&root(), &spec::spec(name)?)
}

/// Install toolchain `name` (no output; see [`install_spec`] for progress). An up-to-date
/// environment is returned as it is unless `opts.force`.
pub fn install(name: &str, opts: &InstallOptions) -> Result<Toolchain, Error> {
    install_spec(&spec::spec(name)?, &root(), opts, Progress::Quiet)
}

/// The status of `spec` under `root`.
pub fn status_in(root: &Path, spec: &ToolchainSpec) -> ToolchainStatus {
    let dir = root.join(&spec.name);
    let stamp = read_stamp(&dir);
    let state = match &stamp {
        Some(_) if !Toolchain::python_in(&dir).exists() => State::Missing,
        Some(s) if s.lock_sha256 == spec.lock_sha256() => State::Installed,
        Some(_) => State::Outdated,
        None => State::Missing,
    };
    let (python, versions) = match (&stamp, state) {
        (Some(s), State::Installed | State::Outdated) => (
            Some(s.python.clone()),
            spec.packages
                .iter()
                .filter_map(|p| {
                    s.packages
                        .get(&normalize(p))
                        .map(|v| (normalize(p), v.clone()))
                })
                .collect(),
        ),
        _ => (None, BTreeMap::new()),
    };
    ToolchainStatus {
        name: spec.name.clone(),
        description: spec.description.clone(),
        state,
        installed: state == State::Installed,
        dir,
        requires_python: spec.requires_python.clone(),
        python,
        versions,
        lock: spec.lock_source.clone(),
        lock_sha256: spec.lock_sha256(),
        used_by: spec.used_by.clone(),
        install_command: install_command(&spec.name),
    }
}

impl Toolchain {
    fn python_in(dir: &Path) -> PathBuf {
        if cfg!(windows) {
            dir.join("Scripts").join("python.exe")
        } else {
            dir.join("bin").join("python")
        }
    }
}

/// Every known toolchain and whether it is installed here.
pub fn list() -> Result<Vec<ToolchainStatus>, Error> {
    let root = root();
    Ok(known()?.iter().map(|s| status_in(&root, s)).collect())
}

/// Delete toolchain `name`'s environment (and leftovers of interrupted installs). Removing a
/// toolchain that is not installed is not an error.
pub fn remove(name: &str) -> Result<(), Error> {
    let spec = spec::spec(name)?;
    remove_in(&root(), &spec.name)
}

/// [`remove`] under an explicit root.
pub fn remove_in(root: &Path, name: &str) -> Result<(), Error> {
    let dir = root.join(name);
    install::cleanup_leftovers(root, name);
    if !dir.exists() {
        return Ok(());
    }
    // Rename first so a killed removal leaves a leftover, never a half environment in place.
    let trash = install::scratch_path(root, name, "removing");
    std::fs::rename(&dir, &trash).map_err(|e| Error::io(&dir, e))?;
    std::fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))
}

/// The human table of [`list`]: one block per toolchain.
pub fn render_list(statuses: &[ToolchainStatus]) -> String {
    let mut out = format!("Managed Python toolchains ({})\n", root().display());
    for s in statuses {
        let state = match s.state {
            State::Installed => "installed",
            State::Outdated => "outdated",
            State::Missing => "not installed",
        };
        out.push_str(&format!(
            "  {:<12} {:<14} {}\n",
            s.name, state, s.description
        ));
        match s.state {
            State::Installed | State::Outdated => {
                let versions: Vec<String> =
                    s.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
                out.push_str(&format!(
                    "  {:<12} python {}; {}\n  {:<12} {}\n",
                    "",
                    s.python.as_deref().unwrap_or("?"),
                    versions.join(", "),
                    "",
                    s.dir.display()
                ));
                if s.state == State::Outdated {
                    out.push_str(&format!(
                        "  {:<12} lock changed: run `{}`\n",
                        "", s.install_command
                    ));
                }
            }
            State::Missing => out.push_str(&format!(
                "  {:<12} needs Python {}; install: `{}`\n",
                "", s.requires_python, s.install_command
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn pep503_names() {
        assert_eq!(normalize("MLX_lm"), "mlx-lm");
        assert_eq!(normalize("typing.extensions"), "typing-extensions");
        assert_eq!(normalize("a--_b"), "a-b");
    }
}
