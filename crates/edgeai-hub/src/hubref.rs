//! `hf://org/name[@revision]` references.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The scheme every Hub reference starts with.
pub const SCHEME: &str = "hf://";
/// The revision used when a reference names none (the Hub's default branch).
pub const DEFAULT_REVISION: &str = "main";

/// A model repository on the Hugging Face Hub at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubRef {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit hash; `"main"` when the reference names none.
    pub revision: String,
}

impl HubRef {
    /// Checks both fields with the parser's rules. The fields are public, so a value built by
    /// hand is checked again before any of it becomes part of a URL or a cache path.
    pub fn validate(&self) -> Result<(), Error> {
        let shown = format!("{SCHEME}{}@{}", self.repo, self.revision);
        check_repo(&self.repo).map_err(|reason| invalid(&shown, reason))?;
        check_revision(&self.revision).map_err(|reason| invalid(&shown, reason))?;
        Ok(())
    }

    /// True when the revision is a full commit hash (then the cache can answer without asking
    /// the Hub what the revision points at).
    pub fn is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

/// True for strings that start with `hf://` (to tell Hub references from local paths).
pub fn is_hub_ref(s: &str) -> bool {
    s.starts_with(SCHEME)
}

impl FromStr for HubRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(invalid(s, "it does not start with hf://".into()));
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (rest, DEFAULT_REVISION),
        };
        check_repo(repo).map_err(|reason| invalid(s, reason))?;
        check_revision(revision).map_err(|reason| invalid(s, reason))?;
        Ok(HubRef {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.repo, self.revision)
    }
}

fn invalid(input: &str, reason: String) -> Error {
    Error::InvalidRef {
        input: input.chars().take(200).collect(),
        reason,
    }
}

/// huggingface_hub's repo id rule (`validate_repo_id`), restricted to `org/name`: each part of
/// ASCII letters, digits, `-`, `_`, `.`, not starting or ending with `-` or `.`, no `--` or
/// `..` anywhere (`--` is the cache's separator), at most 96 characters in all.
fn check_repo(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository is empty; expected org/name".into());
    }
    if repo.len() > 96 {
        return Err(format!(
            "the repository is {} characters long; the Hub allows at most 96",
            repo.len()
        ));
    }
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 {
        return Err(format!(
            "`{repo}` is not of the form org/name (exactly one `/`)"
        ));
    }
    for part in parts {
        if part.is_empty() {
            return Err(format!("`{repo}` has an empty org or name"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "`{repo}` contains {c:?}; names may hold only letters, digits, `-`, `_` and `.`"
            ));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(format!(
                "`{part}` starts or ends with `-` or `.`, which the Hub does not allow"
            ));
        }
    }
    if repo.contains("--") || repo.contains("..") {
        return Err(format!(
            "`{repo}` contains `--` or `..`, which the Hub does not allow"
        ));
    }
    Ok(())
}

/// Branch, tag or commit. Git allows more than this, but the Hub's names fit in it, and the
/// revision becomes a path under `refs/`, so every `/`-separated part must be a plain name.
fn check_revision(revision: &str) -> Result<(), String> {
    if revision.is_empty() {
        return Err("the revision after `@` is empty".into());
    }
    if revision.len() > 255 {
        return Err("the revision is longer than 255 characters".into());
    }
    if let Some(c) = revision
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+')))
    {
        return Err(format!(
            "the revision `{revision}` contains {c:?}; use a branch, tag or commit hash"
        ));
    }
    for part in revision.split('/') {
        if part.is_empty() || part.starts_with('.') || part.ends_with(".lock") {
            return Err(format!(
                "the revision `{revision}` is not a valid git ref (empty part, part starting with `.`, or `.lock`)"
            ));
        }
    }
    Ok(())
}

/// A 40-digit (SHA-1) or 64-digit (SHA-256) lowercase hex commit hash.
pub(crate) fn is_commit_hash(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
