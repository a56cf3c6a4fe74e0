//! Copy of crates/edgeai-hub/tests/common/mod.rs (the build tests serve a model through it).
//!
//! A real HTTP server on 127.0.0.1 that serves the Hugging Face Hub's layout:
//! `GET /api/models/{org}/{name}/revision/{rev}` (JSON with `sha` and `siblings`),
//! `HEAD|GET /{org}/{name}/resolve/{rev}/{file}` (small files served directly with the git
//! blob sha1 as ETag; LFS files answered with a 302 to a second "storage" server, with
//! `X-Linked-Etag` = sha256 and `X-Linked-Size`), and `GET /blobs/{sha256}` on the storage
//! server with Range support. Every request is logged; faults (connection cut after N bytes,
//! corrupted bytes, Range ignored) are switched on per test.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use sha1::Sha1;
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or shifted range shows.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[derive(Clone)]
pub struct RepoFile {
    pub name: String,
    pub content: Arc<Vec<u8>>,
    pub lfs: bool,
    pub sha256: String,
    pub git_sha1: String,
}

impl RepoFile {
    fn new(name: &str, content: Vec<u8>, lfs: bool) -> Self {
        RepoFile {
            name: name.into(),
            sha256: sha256_hex(&content),
            git_sha1: git_sha1_hex(&content),
            content: Arc::new(content),
            lfs,
        }
    }
    pub fn small(name: &str, content: &[u8]) -> Self {
        RepoFile::new(name, content.to_vec(), false)
    }
    pub fn lfs(name: &str, content: Vec<u8>) -> Self {
        RepoFile::new(name, content, true)
    }
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256.clone()
        } else {
            self.git_sha1.clone()
        }
    }
}

#[derive(Default)]
pub struct Repo {
    /// commit -> files
    pub commits: BTreeMap<String, Vec<RepoFile>>,
    /// branch or tag -> commit
    pub refs: BTreeMap<String, String>,
    /// Needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub gated: bool,
}

#[derive(Debug, Clone)]
pub struct Logged {
    /// "hub" or "storage".
    pub server: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct Faults {
    /// sha256 -> (bytes to send before closing, how many more times to do it)
    pub cut_after: HashMap<String, (usize, usize)>,
    /// File names whose served bytes have one byte flipped.
    pub corrupt: Vec<String>,
    /// Answer 200 with the whole file to Range requests.
    pub ignore_range: bool,
    /// The storage answers `/blobs/{sha}` with a relative 302 to `/data/{sha}` (a second hop
    /// like a CDN's signed URL).
    pub storage_redirect: bool,
}

#[derive(Default)]
pub struct State {
    pub repos: BTreeMap<String, Repo>,
    /// sha256 -> LFS file, for the storage server.
    pub blobs: HashMap<String, RepoFile>,
    pub log: Vec<Logged>,
    pub faults: Faults,
}

pub struct HubServer {
    pub endpoint: String,
    pub storage: String,
    pub state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let storage_url = format!("http://{}", storage.local_addr().unwrap());
        for (listener, name) in [(hub, "hub"), (storage, "storage")] {
            let state = state.clone();
            let storage_url = storage_url.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    let storage_url = storage_url.clone();
                    thread::spawn(move || {
                        let _ = serve(stream, name, &state, &storage_url);
                    });
                }
            });
        }
        HubServer {
            endpoint,
            storage: storage_url,
            state,
        }
    }

    /// Adds a commit of `repo` and points `branch` at it. Returns the commit hash.
    pub fn push(&self, repo: &str, branch: &str, files: Vec<RepoFile>) -> String {
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        let mut h = Sha1::new();
        h.update(repo.as_bytes());
        h.update(r.commits.len().to_le_bytes());
        for f in &files {
            h.update(f.name.as_bytes());
            h.update(f.sha256.as_bytes());
        }
        let commit = hex(&h.finalize());
        for f in files.iter().filter(|f| f.lfs) {
            st.blobs.insert(f.sha256.clone(), f.clone());
        }
        let r = st.repos.get_mut(repo).unwrap();
        r.commits.insert(commit.clone(), files);
        r.refs.insert(branch.to_string(), commit.clone());
        commit
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Req> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Req {
        method,
        path,
        headers,
    })
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Where the body starts in `body` (a Range answer).
    offset: usize,
    /// Send only this many body bytes, then close (Content-Length still announces all).
    cut: Option<usize>,
}

impl Resp {
    fn new(status: u16) -> Self {
        Resp {
            status,
            headers: vec![],
            body: Arc::new(vec![]),
            offset: 0,
            cut: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut r = Resp::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json");
        r.body = Arc::new(format!("{{\"error\":\"{message}\"}}").into_bytes());
        r
    }
}

fn serve(
    mut stream: TcpStream,
    server: &'static str,
    state: &Mutex<State>,
    storage: &str,
) -> std::io::Result<()> {
    let Some(req) = read_request(&stream) else {
        return Ok(());
    };
    let resp = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            server,
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.headers.get("range").cloned(),
            authorization: req.headers.get("authorization").cloned(),
        });
        if server == "hub" {
            route_hub(&req, &mut st, storage)
        } else {
            route_storage(&req, &mut st)
        }
    };
    let reason = match resp.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !resp.headers.iter().any(|(k, _)| k == "Content-Length") {
        head.push_str(&format!(
            "Content-Length: {}\r\n",
            resp.body.len() - resp.offset
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        let body = &resp.body[resp.offset..];
        let n = resp.cut.unwrap_or(body.len()).min(body.len());
        stream.write_all(&body[..n])?;
    }
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

fn find_file<'a>(st: &'a State, sha: &str) -> Option<&'a RepoFile> {
    st.blobs.get(sha)
}

fn served_bytes(st: &State, f: &RepoFile) -> Arc<Vec<u8>> {
    if st.faults.corrupt.contains(&f.name) && !f.content.is_empty() {
        let mut b = f.content.to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        return Arc::new(b);
    }
    f.content.clone()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route_hub(req: &Req, st: &mut State, storage: &str) -> Resp {
    let (path, _query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let auth = req.headers.get("authorization").cloned();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // org/name/revision/rev (rev percent-encoded)
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() != 4 || parts[2] != "revision" {
            return Resp::error(404, "", "bad path");
        }
        let repo_id = format!("{}/{}", parts[0], parts[1]);
        let rev = percent_decode(parts[3]);
        let Some(repo) = st.repos.get(&repo_id) else {
            return Resp::error(401, "RepoNotFound", "Repository not found");
        };
        if let Some(denied) = access(repo, auth.as_deref()) {
            return denied;
        }
        let Some((commit, files)) = resolve(repo, &rev) else {
            return Resp::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({
                    "rfilename": f.name,
                    "size": f.content.len(),
                    "blobId": f.git_sha1,
                });
                if f.lfs {
                    v["lfs"] = serde_json::json!({
                        "sha256": f.sha256,
                        "size": f.content.len(),
                        "pointerSize": 134,
                    });
                }
                v
            })
            .collect();
        let body = serde_json::json!({ "id": repo_id, "sha": commit, "siblings": siblings });
        let mut r = Resp::new(200).header("Content-Type", "application/json");
        r.body = Arc::new(serde_json::to_vec(&body).unwrap());
        return r;
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return Resp::error(404, "", "no such route");
    }
    let repo_id = format!("{}/{}", parts[0], parts[1]);
    let rev = percent_decode(parts[3]);
    let file = percent_decode(parts[4]);
    let Some(repo) = st.repos.get(&repo_id) else {
        return Resp::error(401, "RepoNotFound", "Repository not found");
    };
    if let Some(denied) = access(repo, auth.as_deref()) {
        return denied;
    }
    let Some((commit, files)) = resolve(repo, &rev) else {
        return Resp::error(404, "RevisionNotFound", "Invalid rev id");
    };
    let Some(f) = files.iter().find(|f| f.name == file) else {
        return Resp::error(404, "EntryNotFound", "Entry not found");
    };
    if f.lfs {
        let sha = f.sha256.clone();
        Resp::new(302)
            .header("Location", format!("{storage}/blobs/{sha}"))
            .header("X-Repo-Commit", commit.clone())
            // The Hub's own ETag of the pointer is not the content digest: the client must
            // take X-Linked-Etag.
            .header("ETag", format!("W/\"{}\"", git_sha1_hex(b"pointer")))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", f.content.len().to_string())
    } else {
        let mut r = Resp::new(200)
            .header("X-Repo-Commit", commit.clone())
            .header("ETag", format!("\"{}\"", f.git_sha1));
        r.body = served_bytes(st, f);
        r
    }
}

fn access(repo: &Repo, auth: Option<&str>) -> Option<Resp> {
    if let Some(token) = &repo.token {
        if auth != Some(&format!("Bearer {token}")) {
            return Some(Resp::error(401, "RepoNotFound", "Repository not found"));
        }
    }
    if repo.gated {
        return Some(Resp::error(
            403,
            "GatedRepo",
            "Access to this model is restricted",
        ));
    }
    None
}

fn resolve(repo: &Repo, rev: &str) -> Option<(String, Vec<RepoFile>)> {
    let commit = repo
        .refs
        .get(rev)
        .cloned()
        .unwrap_or_else(|| rev.to_string());
    repo.commits.get(&commit).map(|f| (commit, f.clone()))
}

fn route_storage(req: &Req, st: &mut State) -> Resp {
    let sha = if let Some(sha) = req.path.strip_prefix("/blobs/") {
        if st.faults.storage_redirect {
            return Resp::new(302).header("Location", format!("/data/{sha}"));
        }
        sha
    } else if let Some(sha) = req.path.strip_prefix("/data/") {
        sha
    } else {
        return Resp::new(404);
    };
    let Some(f) = find_file(st, sha).cloned() else {
        return Resp::new(404);
    };
    let body = served_bytes(st, &f);
    let total = body.len();
    // Storage servers have their own ETag (an md5-like id), never the content sha256.
    let mut resp = Resp::new(200).header("ETag", "\"0123456789abcdef0123456789abcdef\"");
    let range = req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match range {
        Some(start) if !st.faults.ignore_range => {
            if start >= total {
                return Resp::new(416).header("Content-Range", format!("bytes */{total}"));
            }
            resp.status = 206;
            resp = resp.header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", total - 1),
            );
            resp.body = body;
            resp.offset = start;
        }
        _ => resp.body = body,
    }
    if let Some((after, times)) = st.faults.cut_after.get_mut(sha) {
        if *times > 0 {
            *times -= 1;
            resp.cut = Some(*after);
        }
    }
    resp
}
