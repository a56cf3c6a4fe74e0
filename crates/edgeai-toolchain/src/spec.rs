//! The toolchains manifest: which toolchains exist, their lock files and Python requirement.
//!
//! The built-in manifest and lock files are compiled into the binary, so an installed
//! cargo-edgeai needs no repository checkout. `$EDGEAI_TOOLCHAINS_FILE` names an extra manifest
//! (same format, lock paths relative to it) whose entries add to or replace the built-in ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

const BUILTIN_MANIFEST: &str = include_str!("../../../toolchains/toolchains.toml");
/// The lock files the built-in manifest may name, by file name.
const BUILTIN_LOCKS: &[(&str, &str)] = &[
    ("mlx.lock", include_str!("../../../toolchains/mlx.lock")),
    (
        "onnxruntime.lock",
        include_str!("../../../toolchains/onnxruntime.lock"),
    ),
    (
        "openvino.lock",
        include_str!("../../../toolchains/openvino.lock"),
    ),
    ("olive.lock", include_str!("../../../toolchains/olive.lock")),
];
const BUILTIN_PATH: &str = "<built-in>/toolchains/toolchains.toml";

/// Environment variable naming an extra toolchains manifest.
pub const TOOLCHAINS_FILE_ENV: &str = "EDGEAI_TOOLCHAINS_FILE";

/// One toolchain as the manifest describes it, with its lock file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolchainSpec {
    pub name: String,
    pub description: String,
    /// Interpreter versions, PEP 440 style comparisons joined by commas (">=3.11,<3.14").
    pub requires_python: String,
    /// Where the lock came from (`toolchains/mlx.lock` for built-in ones, else a path).
    pub lock_source: String,
    /// The lock file: `name==version --hash=sha256:...` lines, markers allowed.
    #[serde(skip)]
    pub lock: String,
    /// Packages whose versions `list` shows.
    pub packages: Vec<String>,
    /// The cargo-edgeai steps that need this toolchain.
    pub used_by: Vec<String>,
}

impl ToolchainSpec {
    /// sha256 of the lock file: an environment installed from another lock is outdated.
    pub fn lock_sha256(&self) -> String {
        hex(&Sha256::digest(self.lock.as_bytes()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    toolchain: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Entry {
    description: String,
    requires_python: String,
    lock: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation: the top-level requirements the lock was compiled from
    requirements: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    used_by: Vec<String>,
}

fn parse(text: &str, path: &Path) -> Result<Manifest, Error> {
    toml::from_str(text).map_err(|e| Error::Manifest {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn check_name(name: &str, path: &Path) -> Result<(), Error> {
    // The name becomes a directory name under the root: keep it a plain identifier.
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::Manifest {
            path: path.to_path_buf(),
            message: format!(
                "toolchain name `{name}` must be ASCII letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        })
    }
}

fn builtin() -> Result<Vec<ToolchainSpec>, Error> {
    let path = Path::new(BUILTIN_PATH);
    let manifest = parse(BUILTIN_MANIFEST, path)?;
    let mut out = Vec::new();
    for (name, e) in manifest.toolchain {
        check_name(&name, path)?;
        let lock = BUILTIN_LOCKS
            .iter()
            .find(|(file, _)| *file == e.lock)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| Error::Manifest {
                path: path.to_path_buf(),
                message: format!(
                    "toolchain `{name}`: lock `{}` is not embedded (add it to BUILTIN_LOCKS in edgeai-toolchain)",
                    e.lock
                ),
            })?;
        out.push(ToolchainSpec {
            name,
            description: e.description,
            requires_python: e.requires_python,
            lock_source: format!("toolchains/{}", e.lock),
            lock,
            packages: e.packages,
            used_by: e.used_by,
        });
    }
    Ok(out)
}

fn from_file(path: &Path) -> Result<Vec<ToolchainSpec>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let manifest = parse(&text, path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (name, e) in manifest.toolchain {
        check_name(&name, path)?;
        let lock_path: PathBuf = base.join(&e.lock);
        let lock = std::fs::read_to_string(&lock_path).map_err(|err| Error::io(&lock_path, err))?;
        out.push(ToolchainSpec {
            name,
            description: e.description,
            requires_python: e.requires_python,
            lock_source: lock_path.display().to_string(),
            lock,
            packages: e.packages,
            used_by: e.used_by,
        });
    }
    Ok(out)
}

/// Every known toolchain, sorted by name: the built-in ones, then `$EDGEAI_TOOLCHAINS_FILE`'s
/// (which replace built-in ones of the same name).
pub fn known() -> Result<Vec<ToolchainSpec>, Error> {
    let mut all: BTreeMap<String, ToolchainSpec> = builtin()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    if let Some(file) = std::env::var_os(TOOLCHAINS_FILE_ENV).filter(|v| !v.is_empty()) {
        for s in from_file(Path::new(&file))? {
            all.insert(s.name.clone(), s);
        }
    }
    Ok(all.into_values().collect())
}

/// The toolchain called `name`, or [`Error::UnknownToolchain`] listing the known ones.
pub fn spec(name: &str) -> Result<ToolchainSpec, Error> {
    let all = known()?;
    let known_names: Vec<String> = all.iter().map(|s| s.name.clone()).collect();
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::UnknownToolchain {
            name: name.to_string(),
            known: known_names,
        })
}

/// Whether interpreter `version` ("3.11.7") satisfies `requirement` (">=3.11,<3.14").
/// Unparseable clauses are an error so a typo in a manifest is not silently ignored.
pub fn python_satisfies(version: &str, requirement: &str) -> Result<bool, String> {
    let have = parse_version(version).ok_or_else(|| format!("bad Python version `{version}`"))?;
    for clause in requirement
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let (op, rest) = ["==", "!=", ">=", "<=", ">", "<"]
            .iter()
            .find_map(|op| clause.strip_prefix(op).map(|r| (*op, r.trim())))
            .ok_or_else(|| format!("bad requires-python clause `{clause}`"))?;
        let want = parse_version(rest.trim_end_matches(".*"))
            .ok_or_else(|| format!("bad requires-python clause `{clause}`"))?;
        // Compare on the components the clause gives: "==3.11" matches 3.11.7.
        let have = &have[..want.len().min(have.len())];
        let ok = match op {
            "==" => have == want.as_slice(),
            "!=" => have != want.as_slice(),
            ">=" => have >= want.as_slice(),
            "<=" => have <= want.as_slice(),
            ">" => have > want.as_slice(),
            _ => have < want.as_slice(),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v.trim().split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty() && p.len() <= 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_is_valid_and_every_lock_is_hashed() {
        let all = builtin().unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"mlx") && names.contains(&"onnxruntime"),
            "{names:?}"
        );
        for s in &all {
            python_satisfies("3.11.7", &s.requires_python).unwrap();
            let pins: Vec<&str> = s
                .lock
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("--"))
                .filter(|l| !l.trim().is_empty())
                .collect();
            assert!(!pins.is_empty(), "{} has an empty lock", s.name);
            for p in pins {
                assert!(p.contains("=="), "{}: unpinned line {p:?}", s.name);
            }
            assert!(
                s.lock.contains("--hash=sha256:"),
                "{} lock has no hashes",
                s.name
            );
        }
    }

    #[test]
    fn mlx_lock_pins_the_versions_the_mlx_backend_is_tested_against() {
        let mlx = builtin()
            .unwrap()
            .into_iter()
            .find(|s| s.name == "mlx")
            .unwrap();
        for pin in ["mlx==0.32.4", "mlx-cpu==0.32.4", "mlx-lm==0.32.2"] {
            assert!(
                mlx.lock.lines().any(|l| l.starts_with(pin)),
                "mlx.lock lacks {pin}"
            );
        }
    }

    #[test]
    fn requires_python_clauses() {
        assert!(python_satisfies("3.11.7", ">=3.11").unwrap());
        assert!(!python_satisfies("3.10.12", ">=3.11").unwrap());
        assert!(python_satisfies("3.12.1", ">=3.11,<3.14").unwrap());
        assert!(!python_satisfies("3.14.0", ">=3.11,<3.14").unwrap());
        assert!(python_satisfies("3.11.7", "==3.11").unwrap());
        assert!(python_satisfies("3.11.7", "==3.11.*").unwrap());
        assert!(!python_satisfies("3.12.0", "==3.11").unwrap());
        assert!(python_satisfies("3.11.7", "").unwrap());
        assert!(python_satisfies("3.11.7", "~=3.11").is_err());
    }
}
