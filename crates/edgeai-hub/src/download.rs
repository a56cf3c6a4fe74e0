//! HTTP: the Hub's API call, file metadata from the resolve endpoint, and resumable,
//! verified blob downloads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::blocking::{Client as HttpClient, RequestBuilder, Response};
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::{hex, Error, HubOptions, HubRef, RepoInfo};

/// Attempts per request on connection errors, timeouts, 429 and 5xx.
const ATTEMPTS: u32 = 5;
/// First pause between attempts; doubled each time.
const BACKOFF: Duration = Duration::from_millis(250);
/// Redirect hops followed by hand (the Hub answers renamed repositories with relative ones).
const MAX_REDIRECTS: usize = 10;

pub(crate) struct Client {
    http: HttpClient,
    endpoint: String,
    endpoint_origin: Option<(String, Option<u16>, String)>,
    token: Option<String>,
    progress: bool,
}

/// What the resolve endpoint says about one file.
pub(crate) struct FileMeta {
    /// Where the bytes are (the resolve URL itself, or the storage URL it redirects to).
    pub url: String,
    /// sha256 (LFS) or git blob sha1 (small file), lowercase hex.
    pub etag: String,
    pub size: u64,
}

/// The digest an etag is: sha256 for 64 hex digits, git's blob sha1 for 40.
pub(crate) fn digest_kind(etag: &str) -> Option<&'static str> {
    let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
    match etag.len() {
        64 if hex => Some("sha256"),
        40 if hex => Some("git-sha1"),
        _ => None,
    }
}

impl Client {
    pub fn new(opts: &HubOptions) -> Result<Self, Error> {
        let endpoint = opts.endpoint.trim_end_matches('/').to_string();
        let parsed = Url::parse(&endpoint).map_err(|e| Error::Protocol {
            url: endpoint.clone(),
            message: format!("the endpoint is not a URL: {e}"),
        })?;
        let mut builder = HttpClient::builder();
        // HTTP(S)_PROXY from the environment applies, except to a Hub on this machine (a local
        // mirror or a test server), which a proxy could not reach.
        let host = parsed.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            builder = builder.no_proxy();
        }
        let http = builder
            // Redirects are followed by hand: the headers that carry the digest are on the
            // Hub's redirect response, not on the storage server's answer, and the token must
            // not travel to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            // Blocking reqwest applies this to every read, not to the whole body, so large
            // files are fine while a stalled connection is noticed.
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("cargo-edgeai-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Network {
                url: endpoint.clone(),
                message: format!("cannot create the HTTP client: {e}"),
            })?;
        Ok(Client {
            http,
            endpoint_origin: Some(origin(&parsed)),
            endpoint,
            token: opts.token.clone(),
            progress: opts.progress,
        })
    }

    pub fn api_url(&self, r: &HubRef) -> String {
        format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint,
            r.repo,
            encode(&r.revision, false)
        )
    }

    /// Adds the token when `url` is on the endpoint's host.
    fn with_auth(&self, req: RequestBuilder, url: &str) -> RequestBuilder {
        let same_origin = Url::parse(url).ok().map(|u| origin(&u)) == self.endpoint_origin;
        match (&self.token, same_origin) {
            (Some(token), true) => req.bearer_auth(token),
            _ => req,
        }
    }

    /// Sends a request built by `build`, retrying connection errors, timeouts, 429 and 5xx.
    fn send(&self, url: &str, build: impl Fn() -> RequestBuilder) -> Result<Response, Error> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
            }
            match self.with_auth(build(), url).send() {
                Ok(resp) if retryable_status(resp.status()) => {
                    last = format!("HTTP {}", resp.status());
                }
                Ok(resp) => return Ok(resp),
                Err(e) => last = error_chain(&e),
            }
        }
        Err(Error::Network {
            url: url.to_string(),
            message: format!("failed after {ATTEMPTS} attempts: {last}"),
        })
    }

    /// `GET /api/models/{repo}/revision/{revision}?blobs=true`: commit and file list.
    pub fn repo_info(&self, r: &HubRef) -> Result<RepoInfo, Error> {
        let url = format!("{}?blobs=true", self.api_url(r));
        let resp = self.send(&url, || self.http.get(&url))?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &url, r, None));
        }
        let body = resp.text().map_err(|e| Error::Network {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        let info: RepoInfo = serde_json::from_str(&body).map_err(|e| Error::Protocol {
            url: url.clone(),
            message: format!("the revision info is not the Hub's JSON: {e}"),
        })?;
        if !crate::hubref::is_commit_hash(&info.sha.to_ascii_lowercase()) {
            return Err(Error::Protocol {
                url,
                message: format!("`{}` is not a commit hash", info.sha),
            });
        }
        Ok(RepoInfo {
            sha: info.sha.to_ascii_lowercase(),
            siblings: info.siblings,
        })
    }

    /// `HEAD {endpoint}/{repo}/resolve/{commit}/{file}` like huggingface_hub's
    /// `get_hf_file_metadata`: digest and size from the Hub's own response (following only
    /// redirects that stay on the Hub), and where to fetch the bytes.
    pub fn file_metadata(&self, r: &HubRef, commit: &str, file: &str) -> Result<FileMeta, Error> {
        let mut url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            r.repo,
            commit,
            encode(file, true)
        );
        for _ in 0..MAX_REDIRECTS {
            let resp = self.send(&url, || {
                self.http
                    .head(&url)
                    .header(header::ACCEPT_ENCODING, "identity")
            })?;
            let status = resp.status();
            let headers = resp.headers();
            let location = if status.is_redirection() {
                let loc = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Protocol {
                        url: url.clone(),
                        message: format!("HTTP {status} without a Location header"),
                    })?;
                let next = Url::parse(&url)
                    .and_then(|base| base.join(loc))
                    .map_err(|e| Error::Protocol {
                        url: url.clone(),
                        message: format!("bad redirect `{loc}`: {e}"),
                    })?;
                // A relative redirect stays on the Hub (renamed repository): ask again there.
                if loc.starts_with('/') && !has_digest(headers) {
                    url = next.to_string();
                    continue;
                }
                Some(next.to_string())
            } else if status.is_success() {
                None
            } else {
                return Err(self.status_error(resp, &url, r, Some((commit, file))));
            };
            let etag = header_str(headers, "x-linked-etag")
                .or_else(|| header_str(headers, "etag"))
                .map(normalize_etag)
                .ok_or_else(|| Error::Protocol {
                    url: url.clone(),
                    message: format!(
                        "{file}: the Hub sent no ETag, so the download cannot be verified"
                    ),
                })?;
            if digest_kind(&etag).is_none() {
                return Err(Error::Protocol {
                    url: url.clone(),
                    message: format!(
                        "{file}: ETag `{etag}` is neither a sha256 nor a git blob sha1, so the download cannot be verified"
                    ),
                });
            }
            if let Some(served) = header_str(headers, "x-repo-commit") {
                if !served.eq_ignore_ascii_case(commit) {
                    return Err(Error::Protocol {
                        url: url.clone(),
                        message: format!(
                            "{file}: asked for commit {commit}, the Hub answered for {served}"
                        ),
                    });
                }
            }
            let size = header_str(headers, "x-linked-size")
                .or_else(|| header_str(headers, "content-length"))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Protocol {
                    url: url.clone(),
                    message: format!("{file}: the Hub sent no file size"),
                })?;
            return Ok(FileMeta {
                url: location.unwrap_or(url),
                etag,
                size,
            });
        }
        Err(Error::Protocol {
            url,
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Downloads `meta.url` into `<blob>.incomplete` (resuming what is there with a Range
    /// request), verifies the digest, then renames to `blob`. Returns the sha256.
    pub fn download_blob(&self, meta: &FileMeta, file: &str, blob: &Path) -> Result<String, Error> {
        let incomplete = blob.with_file_name(format!(
            "{}.incomplete",
            blob.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let git = digest_kind(&meta.etag) == Some("git-sha1");
        let mut part = Partial::open(&incomplete, meta.size, git)?;
        let bar = self.progress_bar(file, meta.size, part.len);
        let mut last = String::new();
        // Failed attempts in a row; an attempt that brought bytes resets it, so a flaky but
        // working connection finishes the file.
        let mut attempt = 0;
        while part.len < meta.size {
            if attempt >= ATTEMPTS {
                bar.abandon();
                return Err(Error::Network {
                    url: meta.url.clone(),
                    message: format!(
                        "{file}: download failed after {ATTEMPTS} attempts ({} of {} bytes kept for the next run): {last}",
                        part.len, meta.size
                    ),
                });
            }
            if attempt > 0 {
                thread::sleep(BACKOFF * 2u32.pow(attempt - 1));
            }
            attempt += 1;
            last.clear();
            let start = part.len;
            let mut resp = match self.get_following(&meta.url, start) {
                Ok(resp) => resp,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT if start > 0 => {
                    let from = header_str(resp.headers(), "content-range")
                        .and_then(|v| content_range_start(&v));
                    if from != Some(start) {
                        // Not the range asked for: start over rather than splice wrong bytes.
                        part.truncate()?;
                        last = "the server answered a different range".into();
                        continue;
                    }
                }
                StatusCode::OK => {
                    // A server that ignores Range sends the whole file: restart from zero.
                    if start > 0 {
                        part.truncate()?;
                        bar.set_position(0);
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    part.truncate()?;
                    last = "HTTP 416 for the partial download".into();
                    continue;
                }
                s if retryable_status(s) => {
                    last = format!("HTTP {s}");
                    continue;
                }
                _ => {
                    bar.abandon();
                    return Err(Error::Http {
                        url: meta.url.clone(),
                        status: status.as_u16(),
                        message: format!("downloading {file}"),
                    });
                }
            }
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match resp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if part.len + n as u64 > meta.size {
                            // More bytes than announced: the digest check below rejects it;
                            // keep nothing beyond the announced size on disk.
                            let keep = (meta.size - part.len) as usize;
                            part.write(&buf[..keep])?;
                            part.overflow = true;
                            break;
                        }
                        part.write(&buf[..n])?;
                        bar.set_position(part.len);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        last = format!("connection lost after {} bytes: {e}", part.len);
                        break;
                    }
                }
            }
            if part.overflow {
                break;
            }
            if part.len > start {
                attempt = 0;
            }
            if part.len < meta.size && last.is_empty() {
                last = format!("the server closed the connection after {} bytes", part.len);
            }
        }
        bar.finish();
        part.finish(file, blob)
    }

    /// GET with `Range: bytes=start-` (when resuming), following storage redirects by hand
    /// so the token stays on the endpoint's host.
    fn get_following(&self, url: &str, start: u64) -> Result<Response, String> {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let mut req = self
                .http
                .get(&url)
                .header(header::ACCEPT_ENCODING, "identity");
            if start > 0 {
                req = req.header(header::RANGE, format!("bytes={start}-"));
            }
            let resp = self
                .with_auth(req, &url)
                .send()
                .map_err(|e| error_chain(&e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| Url::parse(&url).ok()?.join(loc).ok())
                .ok_or_else(|| format!("HTTP {} without a usable Location", resp.status()))?;
            url = next.to_string();
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    fn progress_bar(&self, file: &str, size: u64, done: u64) -> ProgressBar {
        if !self.progress || !io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.to_string());
        bar.set_position(done);
        bar
    }

    /// Maps an error status to what it means on the Hub (its `X-Error-Code` header first,
    /// then the status).
    fn status_error(
        &self,
        resp: Response,
        url: &str,
        r: &HubRef,
        entry: Option<(&str, &str)>,
    ) -> Error {
        let status = resp.status();
        let code = header_str(resp.headers(), "x-error-code").unwrap_or_default();
        let header_message = header_str(resp.headers(), "x-error-message");
        let body = resp.text().unwrap_or_default();
        let message = header_message
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            })
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>();
        let repo = r.repo.clone();
        let endpoint = self.endpoint.clone();
        match (code.as_str(), status.as_u16()) {
            ("GatedRepo", _) => Error::Gated {
                repo,
                endpoint,
                message,
            },
            ("RevisionNotFound", _) => Error::RevisionNotFound {
                repo,
                revision: r.revision.clone(),
                endpoint,
                message,
            },
            ("EntryNotFound", _) => Error::EntryNotFound {
                repo,
                commit: entry.map(|e| e.0).unwrap_or(&r.revision).to_string(),
                file: entry.map(|e| e.1).unwrap_or_default().to_string(),
                message,
            },
            ("RepoNotFound", _) => Error::RepoNotFound {
                repo,
                endpoint,
                message,
            },
            (_, 401)
                if message.to_ascii_lowercase().contains("invalid") && self.token.is_some() =>
            {
                Error::TokenRejected {
                    repo,
                    endpoint,
                    message,
                }
            }
            (_, 401) => Error::RepoNotFound {
                repo,
                endpoint,
                message,
            },
            (_, 403) => Error::Gated {
                repo,
                endpoint,
                message,
            },
            (_, 404) => match entry {
                Some((commit, file)) => Error::EntryNotFound {
                    repo,
                    commit: commit.to_string(),
                    file: file.to_string(),
                    message,
                },
                None => Error::RepoNotFound {
                    repo,
                    endpoint,
                    message: if message.is_empty() {
                        format!("or no revision `{}`", r.revision)
                    } else {
                        message
                    },
                },
            },
            (_, s) => Error::Http {
                url: url.to_string(),
                status: s,
                message,
            },
        }
    }
}

/// The partial file with running digests of what it holds.
struct Partial<'a> {
    path: &'a Path,
    file: File,
    len: u64,
    size: u64,
    sha256: Sha256,
    /// Only for small files, whose etag is the git blob sha1 (LFS files need sha256 only).
    sha1: Option<Sha1>,
    overflow: bool,
}

impl<'a> Partial<'a> {
    /// Opens (or creates) the partial file and hashes what a previous run left in it.
    fn open(path: &'a Path, size: u64, git: bool) -> Result<Self, Error> {
        let io_err = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        let mut part = Partial {
            path,
            len: 0,
            size,
            sha256: Sha256::new(),
            sha1: git.then(|| git_blob_hasher(size)),
            overflow: false,
            file: file.try_clone().map_err(io_err)?,
        };
        let existing = file.metadata().map_err(io_err)?.len();
        if existing > size {
            part.truncate()?;
            return Ok(part);
        }
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            part.sha256.update(&buf[..n]);
            if let Some(h) = &mut part.sha1 {
                h.update(&buf[..n]);
            }
            part.len += n as u64;
        }
        Ok(part)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(self.path, e))?;
        self.sha256.update(bytes);
        if let Some(h) = &mut self.sha1 {
            h.update(bytes);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), Error> {
        self.file.set_len(0).map_err(|e| Error::io(self.path, e))?;
        self.len = 0;
        self.sha256 = Sha256::new();
        if self.sha1.is_some() {
            self.sha1 = Some(git_blob_hasher(self.size));
        }
        self.overflow = false;
        Ok(())
    }

    /// Verifies the digest named by the blob's file name and renames into place; deletes the
    /// partial file when the bytes are wrong.
    fn finish(self, file_name: &str, blob: &Path) -> Result<String, Error> {
        let etag = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sha256 = hex(&self.sha256.finalize());
        let (algorithm, actual) = match self.sha1 {
            Some(h) => ("git blob sha1", hex(&h.finalize())),
            None => ("sha256", sha256.clone()),
        };
        if actual != etag || self.overflow {
            drop(self.file);
            let _ = fs::remove_file(self.path);
            let actual = if self.overflow {
                format!("{actual} (more bytes than the announced {})", self.size)
            } else {
                actual
            };
            return Err(Error::Checksum {
                file: file_name.to_string(),
                algorithm,
                expected: etag,
                actual,
            });
        }
        self.file.sync_all().map_err(|e| Error::io(self.path, e))?;
        drop(self.file);
        fs::rename(self.path, blob).map_err(|e| Error::io(blob, e))?;
        Ok(sha256)
    }
}

/// Git's blob id: sha1 over `blob <size>\0` and the content.
fn git_blob_hasher(size: u64) -> Sha1 {
    let mut h = Sha1::new();
    h.update(format!("blob {size}\0").as_bytes());
    h
}

fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

fn has_digest(headers: &HeaderMap) -> bool {
    headers.contains_key("x-linked-etag") || headers.contains_key("x-repo-commit")
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// `W/"abc"` -> `abc`, lowercase (huggingface_hub's `_normalize_etag`).
fn normalize_etag(etag: String) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// `bytes 100-999/1000` -> 100.
fn content_range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn origin(url: &Url) -> (String, Option<u16>, String) {
    (
        url.scheme().to_string(),
        url.port_or_known_default(),
        url.host_str().unwrap_or_default().to_string(),
    )
}

/// Percent-encodes a path segment (or a path, keeping `/`), like Python's `quote`.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// reqwest's error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
