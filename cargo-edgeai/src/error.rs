//! The one error type of the library. Every variant names the file it is about (when there is
//! one) and carries a help line that tells the user what to do next.

use std::path::PathBuf;

/// Library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cargo-edgeai, with the user's fix as miette help text.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    /// A TOML file (target manifest, decision matrix, Cargo.toml) that does not parse or does
    /// not match its schema. `line`/`column` are 1-based.
    #[error("{}:{line}:{column}: {message}", path.display())]
    #[diagnostic(code(edgeai::toml), help("{help}"))]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        help: String,
    },

    /// A manifest that parses but says something impossible (budget above total memory, ...).
    #[error("{}: {message}", path.display())]
    #[diagnostic(code(edgeai::manifest), help("{help}"))]
    InvalidManifest {
        path: PathBuf,
        message: String,
        help: String,
    },

    /// A model file or directory that cannot be read as a model.
    #[error("{}: {message}", path.display())]
    #[diagnostic(code(edgeai::model), help("{help}"))]
    InvalidModel {
        path: PathBuf,
        message: String,
        help: String,
    },

    /// A target name that is neither built in nor in the project's targets-dir.
    #[error("unknown target `{name}`")]
    #[diagnostic(code(edgeai::unknown_target), help("known targets: {known}. Run `cargo edgeai targets` to list them, or add targets/{name}.toml to the directory named by [package.metadata.edgeai] targets-dir"))]
    UnknownTarget { name: String, known: String },

    /// No candidate of any matching rule fits the target's memory budget.
    #[error("{message}")]
    #[diagnostic(code(edgeai::does_not_fit), help("{help}"))]
    DoesNotFit { message: String, help: String },

    /// The user's request cannot be satisfied (bad flag combination, missing model, ...).
    #[error("{message}")]
    #[diagnostic(code(edgeai::usage), help("{help}"))]
    Usage { message: String, help: String },

    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    #[diagnostic(code(edgeai::io), help("{help}"))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        help: String,
    },

    /// A bug or an environment failure that the user cannot fix by changing their input.
    #[error("internal error: {0}")]
    #[diagnostic(
        code(edgeai::internal),
        help("this is a bug in cargo-edgeai; please report it with the command you ran")
    )]
    Internal(String),

    /// `validate`/`sweep` measured a candidate and at least one production gate failed. The
    /// message names each failed gate with its measured value and threshold.
    #[error("{message}")]
    #[diagnostic(code(edgeai::gate_failed), help("{help}"))]
    GateFailed { message: String, help: String },

    /// Bundling, signing or verifying a bundle failed (edgeai-bundle names the file, the
    /// entry and the failed check, with its own help line).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bundle(#[from] edgeai_bundle::Error),

    /// A managed Python toolchain is unknown, not installed, outdated, or failed to install.
    /// `inner` keeps the toolchain error so callers can match on `NotInstalled` (not a
    /// `#[source]`: miette would print the same message twice). Boxed: keeps `Result` small.
    #[error("{inner}")]
    #[diagnostic(code(edgeai::toolchain), help("{help}"))]
    Toolchain {
        inner: Box<edgeai_toolchain::Error>,
        help: String,
    },

    /// The app cannot be linked for `triple` on this OS (Apple, MSVC from Linux). `cargo edgeai
    /// build` bundles without the app binary and records `reason`.
    #[error("cannot link `{triple}` binaries on this machine: {reason}")]
    #[diagnostic(code(edgeai::cannot_link_here), help("{help}"))]
    CannotLinkHere {
        triple: String,
        reason: String,
        help: String,
    },

    /// An external program the command needs (a cross linker, rustup, a Rust target) is missing.
    #[error("`{tool}` is missing: {message}")]
    #[diagnostic(code(edgeai::missing_tool), help("{help}"))]
    MissingTool {
        tool: String,
        message: String,
        help: String,
    },

    /// `cargo build` of the user's app failed; the message ends with Cargo's last lines.
    #[error("{message}")]
    #[diagnostic(code(edgeai::app_build), help("{help}"))]
    AppBuild { message: String, help: String },

    /// An external tool run on the user's model failed (Olive's `olive run`); the message ends
    /// with the tail of its log, the help line names the kept config and how to re-run it.
    #[error("{message}")]
    #[diagnostic(code(edgeai::tool_failed), help("{help}"))]
    ToolFailed {
        tool: String,
        message: String,
        help: String,
    },
}

impl From<edgeai_toolchain::Error> for Error {
    fn from(inner: edgeai_toolchain::Error) -> Self {
        Error::Toolchain {
            help: inner.help(),
            inner: Box::new(inner),
        }
    }
}

impl Error {
    /// The process exit code for this error: 1 for anything the user can fix, 2 for internal errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Internal(_) => 2,
            _ => 1,
        }
    }

    /// An I/O error on `path` with a generic help line.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let help = match source.kind() {
            std::io::ErrorKind::NotFound => "check the path; it does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "check the file's permissions for the current user".to_string()
            }
            _ => "check that the file is readable and the disk is healthy".to_string(),
        };
        Error::Io {
            path: path.into(),
            source,
            help,
        }
    }

    /// A model that cannot be read, with the fix.
    pub fn model(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Error::InvalidModel {
            path: path.into(),
            message: message.into(),
            help: help.into(),
        }
    }
}

/// 1-based line and column of byte offset `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_is_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 8), (2, 3));
    }
}
