//! Errors of edgeai-bundle. Every variant names the file (and the entry, where there is one)
//! and carries a help line telling the user what to do next.

use std::path::PathBuf;

/// Everything that can go wrong while bundling, signing or verifying.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    #[diagnostic(code(edgeai::bundle::io), help("{help}"))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        help: String,
    },

    /// The bundle's description is unusable (bad entry path, duplicate, unknown launcher, ...).
    #[error("{message}")]
    #[diagnostic(code(edgeai::bundle::spec), help("{help}"))]
    Spec { message: String, help: String },

    /// An input file is a minisign secret key: it must never end up inside a bundle.
    #[error("{}: refusing to bundle a minisign secret key (bundle entry `{entry}`)", path.display())]
    #[diagnostic(
        code(edgeai::bundle::secret_key),
        help("remove the secret key from the bundle's files; keep it outside the project (or in .gitignore) and pass it only to `cargo edgeai sign --key`")
    )]
    SecretKeyInBundle { path: PathBuf, entry: String },

    /// Key generation, reading a key, or signing failed.
    #[error("{}: {message}", path.display())]
    #[diagnostic(code(edgeai::bundle::key), help("{help}"))]
    Key {
        path: PathBuf,
        message: String,
        help: String,
    },

    /// A verification check failed. `check` is the name of the failed check (signature,
    /// archive, manifest, files, entries); the message names the entry and the mismatch.
    #[error("{}: verification failed ({check}): {message}", path.display())]
    #[diagnostic(code(edgeai::bundle::verify), help("{help}"))]
    Verify {
        path: PathBuf,
        check: Check,
        message: String,
        help: String,
    },

    /// Rendering a built-in template failed (a bug: the templates are embedded).
    #[error("internal error: rendering template {name}: {message}")]
    #[diagnostic(
        code(edgeai::bundle::template),
        help("this is a bug in cargo-edgeai; please report it with the command you ran")
    )]
    Template { name: String, message: String },
}

/// The checks `verify_bundle` runs, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The minisign signature over the whole bundle file.
    Signature,
    /// The zip structure: entry names, duplicates, symlinks, headers.
    Archive,
    /// The manifest entry: present, parses, schema version.
    Manifest,
    /// Every file's sha256 and size against the manifest.
    Files,
    /// No missing or extra entries.
    Entries,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Signature => "signature",
            Check::Archive => "archive",
            Check::Manifest => "manifest",
            Check::Files => "files",
            Check::Entries => "entries",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// An I/O error on `path` with a help line fitting the error kind.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let help = match source.kind() {
            std::io::ErrorKind::NotFound => "check the path; it does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "check the file's permissions for the current user".to_string()
            }
            std::io::ErrorKind::AlreadyExists => {
                "remove the existing file first, or pass --force to replace it".to_string()
            }
            _ => "check that the file is readable, the directory writable and the disk not full"
                .to_string(),
        };
        Error::Io {
            path: path.into(),
            source,
            help,
        }
    }

    pub(crate) fn spec(message: impl Into<String>, help: impl Into<String>) -> Self {
        Error::Spec {
            message: message.into(),
            help: help.into(),
        }
    }

    pub(crate) fn key(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Error::Key {
            path: path.into(),
            message: message.into(),
            help: help.into(),
        }
    }

    /// The check that failed, for `Error::Verify`.
    pub fn failed_check(&self) -> Option<Check> {
        match self {
            Error::Verify { check, .. } => Some(*check),
            _ => None,
        }
    }

    /// The help line (what the user should do).
    pub fn help_text(&self) -> String {
        use miette::Diagnostic;
        self.help().map(|h| h.to_string()).unwrap_or_default()
    }
}
