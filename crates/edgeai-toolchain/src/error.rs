//! Errors of the toolchain manager. Every variant names the toolchain or file it is about and
//! [`Error::help`] says what the user should do next (cargo-edgeai shows it as the help line).

use std::path::PathBuf;

/// What can go wrong finding, installing, listing or removing a managed toolchain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A toolchain name that is neither built in nor in `$EDGEAI_TOOLCHAINS_FILE`.
    #[error("unknown toolchain `{name}`")]
    UnknownToolchain { name: String, known: Vec<String> },

    /// The toolchain is known but has no complete environment under the root.
    #[error("toolchain `{name}` is not installed (expected at {})", dir.display())]
    NotInstalled { name: String, dir: PathBuf },

    /// The environment was installed from a different lock file than the current one.
    #[error("toolchain `{name}` at {} was installed from an older lock file (lock sha256 {installed}, current {current})", dir.display())]
    Outdated {
        name: String,
        dir: PathBuf,
        installed: String,
        current: String,
    },

    /// No Python interpreter on this machine satisfies the toolchain's `requires-python`.
    #[error(
        "no Python interpreter satisfies `{requirement}` for toolchain `{name}` (tried: {tried})"
    )]
    NoPython {
        name: String,
        requirement: String,
        tried: String,
    },

    /// An installer step (venv creation, package installation, inspection) failed.
    #[error("installing toolchain `{name}`: {step} failed ({status}){}", tail_suffix(.output))]
    InstallFailed {
        name: String,
        step: String,
        status: String,
        /// The last lines the step printed (empty when its output went to the terminal).
        output: String,
        help: String,
    },

    /// A request that cannot be satisfied as given (bad option combination, bad environment variable).
    #[error("{message}")]
    Usage { message: String, help: String },

    /// The toolchains manifest (built in, or `$EDGEAI_TOOLCHAINS_FILE`) is invalid.
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },

    /// An I/O error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn tail_suffix(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", output.trim_end())
    }
}

impl Error {
    /// The one-line fix for the user.
    pub fn help(&self) -> String {
        match self {
            Error::UnknownToolchain { known, .. } => format!(
                "known toolchains: {}. Run `cargo edgeai toolchain list` to see them",
                known.join(", ")
            ),
            Error::NotInstalled { name, .. } => {
                format!("run `cargo edgeai toolchain install {name}`")
            }
            Error::Outdated { name, .. } => format!(
                "run `cargo edgeai toolchain install {name}` to rebuild it from the current lock file"
            ),
            Error::NoPython { requirement, .. } => format!(
                "install a CPython {requirement} with the venv module (Debian: apt-get install python3 python3-venv), or point EDGEAI_PYTHON at one"
            ),
            Error::InstallFailed { help, .. } => help.clone(),
            Error::Usage { help, .. } => help.clone(),
            Error::Manifest { .. } => {
                "fix the toolchains manifest (see toolchains/toolchains.toml in the cargo-edgeai repository for the format)".into()
            }
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => "check the path; it does not exist".into(),
                std::io::ErrorKind::PermissionDenied => {
                    "check the permissions of the toolchains directory (or set EDGEAI_TOOLCHAINS_DIR to a writable one)".into()
                }
                _ => "check that the disk is healthy and has free space".into(),
            },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
