//! Errors of Hub downloads. Every variant names the repository or file it is about and carries
//! a help line (miette) with what the user can do.

use std::path::PathBuf;

/// Everything that can go wrong resolving or downloading an `hf://` model.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Error {
    /// A string that is not `hf://org/name[@revision]`.
    #[error("`{input}` is not a Hub reference: {reason}")]
    #[diagnostic(
        code(edgeai_hub::invalid_ref),
        help("write hf://org/name or hf://org/name@revision (branch, tag or commit), e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct@main")
    )]
    InvalidRef { input: String, reason: String },

    /// The Hub says the repository does not exist, or it is private and the token (if any)
    /// gives no access: the Hub answers both the same way on purpose.
    #[error("{repo}: repository not found on {endpoint}{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::repo_not_found),
        help("check the spelling of org/name at {endpoint}/{repo}; if the repository is private, set HF_TOKEN to a token that can read it")
    )]
    RepoNotFound {
        repo: String,
        endpoint: String,
        message: String,
    },

    /// A gated repository whose conditions the token's user has not accepted (or no token).
    #[error("{repo}: access to this gated repository is restricted{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::gated),
        help("accept the conditions at {endpoint}/{repo} while logged in, then set HF_TOKEN to a token of that account")
    )]
    Gated {
        repo: String,
        endpoint: String,
        message: String,
    },

    /// The token was refused (expired, revoked, mistyped).
    #[error("{repo}: the Hub rejected the access token{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::bad_token),
        help("create a new read token at {endpoint}/settings/tokens and set HF_TOKEN to it, or unset HF_TOKEN for public models")
    )]
    TokenRejected {
        repo: String,
        endpoint: String,
        message: String,
    },

    /// The repository exists but has no such branch, tag or commit.
    #[error("{repo}: revision `{revision}` not found{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::revision_not_found),
        help("check the branches, tags and commits at {endpoint}/{repo}/tree/main, or drop `@{revision}` to use main")
    )]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
        message: String,
    },

    /// A file listed by the Hub that the resolve endpoint does not serve.
    #[error("{repo}@{commit}: file `{file}` not found{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::entry_not_found),
        help("the repository changed while downloading or the mirror is incomplete; run the command again")
    )]
    EntryNotFound {
        repo: String,
        commit: String,
        file: String,
        message: String,
    },

    /// `offline` was requested and the cache cannot answer.
    #[error("{repo}@{revision}: not in the download cache ({}) and offline mode is on: {reason}", cache_dir.display())]
    #[diagnostic(
        code(edgeai_hub::offline_miss),
        help("run the command once online (without --offline) to download the model, or drop --offline")
    )]
    OfflineMiss {
        repo: String,
        revision: String,
        cache_dir: PathBuf,
        reason: String,
    },

    /// Downloaded bytes whose digest differs from the one the Hub announced. The partial file
    /// has been deleted.
    #[error("{file}: {algorithm} mismatch after download: expected {expected}, got {actual}")]
    #[diagnostic(
        code(edgeai_hub::checksum),
        help("the corrupt download was deleted; run the command again. If it keeps failing, a proxy or mirror (HF_ENDPOINT) is altering files")
    )]
    Checksum {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },

    /// The network failed (after retries) talking to the Hub or its file storage.
    #[error("{url}: {message}")]
    #[diagnostic(
        code(edgeai_hub::network),
        help("check the network connection and HF_ENDPOINT, then run again (downloads resume where they stopped); with the model already downloaded, --offline works without network")
    )]
    Network { url: String, message: String },

    /// An HTTP status the Hub should not answer with.
    #[error("{url}: HTTP {status}{}", detail(.message))]
    #[diagnostic(
        code(edgeai_hub::http),
        help("run again later; if HF_ENDPOINT points at a mirror, check that it serves the Hub's API")
    )]
    Http {
        url: String,
        status: u16,
        message: String,
    },

    /// An answer that does not follow the Hub's protocol (missing or unusable headers, unsafe
    /// file names, bad JSON).
    #[error("{url}: {message}")]
    #[diagnostic(
        code(edgeai_hub::protocol),
        help("HF_ENDPOINT must point at the Hugging Face Hub or a faithful mirror of its API")
    )]
    Protocol { url: String, message: String },

    /// A local file system error on a named path in the cache.
    #[error("{}: {source}", path.display())]
    #[diagnostic(
        code(edgeai_hub::io),
        help("check that the cache directory is writable and the disk is not full")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl Error {
    /// The help line, for callers that wrap this error into their own type.
    pub fn hint(&self) -> String {
        use miette::Diagnostic;
        self.help().map(|h| h.to_string()).unwrap_or_default()
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
