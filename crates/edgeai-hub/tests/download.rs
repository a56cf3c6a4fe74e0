//! snapshot_download against a real HTTP server on 127.0.0.1 serving the Hub's layout.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{bytes, sha256_hex, HubServer, RepoFile};
use edgeai_hub::{repo_folder_name, snapshot_download, Error, HubOptions, HubRef, Snapshot};

const REPO: &str = "edge-org/tiny-model";

fn files() -> Vec<RepoFile> {
    vec![
        RepoFile::small("config.json", br#"{"architectures":["LlamaForCausalLM"]}"#),
        RepoFile::small("tokenizer.json", &bytes(3000, 1)),
        RepoFile::lfs("model.safetensors", bytes(300_000, 2)),
        RepoFile::lfs("onnx/model q8.onnx", bytes(70_000, 3)),
        RepoFile::small("empty.txt", b""),
    ]
}

fn opts(server: &HubServer, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: server.endpoint.clone(),
        cache_dir: cache.to_path_buf(),
        offline: false,
        token: None,
        progress: false,
    }
}

fn hub_ref(s: &str) -> HubRef {
    s.parse().unwrap()
}

fn assert_matches_served(snap: &Snapshot, served: &[RepoFile]) {
    let mut expected: Vec<(String, String)> = served
        .iter()
        .map(|f| (f.name.clone(), sha256_hex(&f.content)))
        .collect();
    expected.sort();
    assert_eq!(snap.files, expected);
    for f in served {
        let path = snap.dir.join(&f.name);
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "{} is not a plain file", path.display());
        assert_eq!(fs::read(&path).unwrap(), *f.content, "{}", f.name);
    }
}

fn blob_path(cache: &Path, f: &RepoFile) -> PathBuf {
    cache
        .join(repo_folder_name(REPO))
        .join("blobs")
        .join(f.etag())
}

/// Requests that fetched file bytes (resolve HEAD/GET and storage GETs).
fn file_requests(server: &HubServer) -> usize {
    server
        .log()
        .iter()
        .filter(|l| l.server == "storage" || l.path.contains("/resolve/"))
        .count()
}

#[test]
fn full_snapshot_equals_served_bytes_and_uses_the_hub_cache_layout() {
    let server = HubServer::start();
    let commit = server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();
    let snap = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();

    assert_eq!(snap.commit, commit);
    let repo_dir = cache.path().join("models--edge-org--tiny-model");
    assert_eq!(snap.dir, repo_dir.join("snapshots").join(&commit));
    assert_matches_served(&snap, &files());
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    for f in files() {
        assert_eq!(fs::read(blob_path(cache.path(), &f)).unwrap(), *f.content);
    }
    // Nothing half-written left behind.
    for entry in fs::read_dir(repo_dir.join("blobs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".incomplete") && !name.starts_with('.'),
            "{name}"
        );
    }
    // LFS bytes came from the storage server via the redirect, the token-less client sent no
    // Authorization anywhere.
    let log = server.log();
    assert!(log
        .iter()
        .any(|l| l.server == "storage" && l.method == "GET"));
    assert!(log.iter().all(|l| l.authorization.is_none()));
}

#[test]
fn second_call_makes_no_file_requests() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let first = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    assert!(file_requests(&server) > 0);
    server.clear_log();

    let second = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    assert_eq!(first, second);
    let log = server.log();
    assert_eq!(file_requests(&server), 0, "{log:?}");
    // Only the revision is resolved.
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0]
        .path
        .starts_with("/api/models/edge-org/tiny-model/revision/main"));
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let model = files()
        .into_iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    let sha = sha256_hex(&model.content);
    server.with(|st| st.faults.cut_after.insert(sha.clone(), (100_000, 1)));
    let cache = tempfile::tempdir().unwrap();

    let snap = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();
    assert_matches_served(&snap, &files());
    let gets: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.server == "storage" && l.path == format!("/blobs/{sha}"))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(
        sha256_hex(&fs::read(snap.dir.join("model.safetensors")).unwrap()),
        sha
    );
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let model = files()
        .into_iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join(repo_folder_name(REPO)).join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        blobs.join(format!("{}.incomplete", model.etag())),
        &model.content[..123_457],
    )
    .unwrap();

    let snap = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();
    assert_matches_served(&snap, &files());
    let ranges: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.path.ends_with(&model.etag()))
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, vec![Some("bytes=123457-".to_string())]);
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let model = files()
        .into_iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    server.with(|st| {
        st.faults.ignore_range = true;
        st.faults.cut_after.insert(model.etag(), (50_000, 1));
    });
    let cache = tempfile::tempdir().unwrap();
    let snap = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();
    assert_matches_served(&snap, &files());
    let ranges: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.path.ends_with(&model.etag()))
        .map(|l| l.range)
        .collect();
    // Asked to resume, got 200 with the whole file, and kept only that.
    assert_eq!(ranges, vec![None, Some("bytes=50000-".to_string())]);
}

#[test]
fn corrupted_lfs_file_is_deleted_and_reported_with_both_digests() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    server.with(|st| st.faults.corrupt.push("model.safetensors".into()));
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let err = snapshot_download(&r, &opts(&server, cache.path())).unwrap_err();

    let model = files()
        .into_iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    let mut bad = model.content.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let message = err.to_string();
    assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(message.contains(&sha256_hex(&model.content)), "{message}");
    assert!(message.contains(&sha256_hex(&bad)), "{message}");
    assert!(
        err.hint().contains("run the command again"),
        "{}",
        err.hint()
    );

    let blob = blob_path(cache.path(), &model);
    assert!(!blob.exists());
    assert!(!blob.with_extension("incomplete").exists());
    assert!(!blob
        .with_file_name(format!("{}.incomplete", model.etag()))
        .exists());
    let repo_dir = cache.path().join(repo_folder_name(REPO));
    let commit = fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    assert!(!repo_dir
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors")
        .exists());
    // Offline must not hand out the incomplete snapshot.
    let mut offline = opts(&server, cache.path());
    offline.offline = true;
    assert!(matches!(
        snapshot_download(&r, &offline),
        Err(Error::OfflineMiss { .. })
    ));

    // Once the storage serves the right bytes, the next run completes.
    server.with(|st| st.faults.corrupt.clear());
    let snap = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    assert_matches_served(&snap, &files());
}

#[test]
fn corrupted_small_file_fails_the_git_sha1_check() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    server.with(|st| st.faults.corrupt.push("tokenizer.json".into()));
    let cache = tempfile::tempdir().unwrap();
    let err = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap_err();
    let tok = files()
        .into_iter()
        .find(|f| f.name == "tokenizer.json")
        .unwrap();
    let message = err.to_string();
    assert!(message.contains("tokenizer.json"), "{message}");
    assert!(message.contains("git blob sha1"), "{message}");
    assert!(message.contains(&tok.etag()), "{message}");
    assert!(!blob_path(cache.path(), &tok).exists());
}

#[test]
fn missing_repo_and_bad_revision_are_clear_errors() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();

    let err = snapshot_download(&hub_ref("hf://edge-org/nope"), &opts(&server, cache.path()))
        .unwrap_err();
    assert!(matches!(err, Error::RepoNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("edge-org/nope: repository not found"),
        "{err}"
    );
    assert!(err.hint().contains("HF_TOKEN"), "{}", err.hint());

    let err = snapshot_download(
        &hub_ref(&format!("hf://{REPO}@no-such-branch")),
        &opts(&server, cache.path()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::RevisionNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("revision `no-such-branch` not found"),
        "{err}"
    );

    // No cache entries for failures.
    assert!(!cache.path().join("models--edge-org--nope").exists());
}

#[test]
fn gated_and_private_repos() {
    let server = HubServer::start();
    server.push("org/gated", "main", files());
    server.push("org/private", "main", files());
    server.with(|st| {
        st.repos.get_mut("org/gated").unwrap().gated = true;
        st.repos.get_mut("org/private").unwrap().token = Some("hf_secret".into());
    });
    let cache = tempfile::tempdir().unwrap();

    let err =
        snapshot_download(&hub_ref("hf://org/gated"), &opts(&server, cache.path())).unwrap_err();
    assert!(matches!(err, Error::Gated { .. }), "{err:?}");
    assert!(
        err.hint().contains("accept the conditions"),
        "{}",
        err.hint()
    );

    let err =
        snapshot_download(&hub_ref("hf://org/private"), &opts(&server, cache.path())).unwrap_err();
    assert!(matches!(err, Error::RepoNotFound { .. }), "{err:?}");

    let mut with_token = opts(&server, cache.path());
    with_token.token = Some("hf_secret".into());
    let snap = snapshot_download(&hub_ref("hf://org/private"), &with_token).unwrap();
    assert_matches_served(&snap, &files());
    // The token goes to the Hub, never to the storage host the Hub redirects to.
    let log = server.log();
    assert!(log
        .iter()
        .filter(|l| l.server == "hub" && l.path.contains("private"))
        .any(|l| l.authorization.as_deref() == Some("Bearer hf_secret")));
    assert!(log
        .iter()
        .filter(|l| l.server == "storage")
        .all(|l| l.authorization.is_none()));
    assert!(!format!("{with_token:?}").contains("hf_secret"));
}

#[test]
fn offline_without_cache_fails_with_help_and_with_cache_needs_no_server() {
    let server = HubServer::start();
    let commit = server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let mut offline = opts(&server, cache.path());
    offline.offline = true;

    let err = snapshot_download(&r, &offline).unwrap_err();
    assert!(matches!(err, Error::OfflineMiss { .. }), "{err:?}");
    assert!(err.to_string().contains(REPO), "{err}");
    assert!(err.hint().contains("drop --offline"), "{}", err.hint());
    assert!(err.hint().contains("once online"), "{}", err.hint());
    assert!(server.log().is_empty());

    let online = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    server.clear_log();
    let snap = snapshot_download(&r, &offline).unwrap();
    assert_eq!(snap, online);
    assert_eq!(snap.commit, commit);
    assert!(server.log().is_empty(), "offline made requests");

    // An unknown revision offline is a miss, not a wrong answer.
    let other = hub_ref(&format!("hf://{REPO}@v2"));
    assert!(matches!(
        snapshot_download(&other, &offline),
        Err(Error::OfflineMiss { .. })
    ));
    // A file deleted from the cache by hand makes the snapshot incomplete.
    fs::remove_file(snap.dir.join("config.json")).unwrap();
    assert!(matches!(
        snapshot_download(&r, &offline),
        Err(Error::OfflineMiss { .. })
    ));
    // Online repairs it, fetching only that file.
    server.clear_log();
    let repaired = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    assert_eq!(repaired, online);
    let fetched: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.path.contains("/resolve/") || l.server == "storage")
        .map(|l| l.path)
        .collect();
    assert!(
        fetched.iter().all(|p| p.ends_with("/config.json")),
        "{fetched:?}"
    );
}

#[test]
fn revision_pinned_by_commit() {
    let server = HubServer::start();
    let old = server.push(REPO, "main", files());
    let mut newer = files();
    newer[0] = RepoFile::small("config.json", br#"{"architectures":["BertModel"]}"#);
    let new = server.push(REPO, "main", newer.clone());
    assert_ne!(old, new);
    let cache = tempfile::tempdir().unwrap();

    let pinned = hub_ref(&format!("hf://{REPO}@{old}"));
    assert!(pinned.is_commit());
    let snap = snapshot_download(&pinned, &opts(&server, cache.path())).unwrap();
    assert_eq!(snap.commit, old);
    assert_matches_served(&snap, &files());
    let repo_dir = cache.path().join(repo_folder_name(REPO));
    assert!(
        !repo_dir.join("refs").join(&old).exists(),
        "a commit needs no ref"
    );

    // A complete snapshot pinned by commit is answered without the network, online too.
    server.clear_log();
    assert_eq!(
        snapshot_download(&pinned, &opts(&server, cache.path())).unwrap(),
        snap
    );
    assert!(server.log().is_empty());

    // main moved: only the changed file is downloaded, the shared blobs are reused.
    let main = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();
    assert_eq!(main.commit, new);
    assert_matches_served(&main, &newer);
    let fetched: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.path.contains("/resolve/") || l.server == "storage")
        .map(|l| l.path)
        .collect();
    assert!(
        fetched.iter().all(|p| p.ends_with("/config.json")),
        "{fetched:?}"
    );
    // The old snapshot is untouched.
    assert_matches_served(&snap, &files());
}

#[test]
fn unreachable_hub_falls_back_to_a_complete_cache() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let snap = snapshot_download(&r, &opts(&server, cache.path())).unwrap();

    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut o = opts(&server, cache.path());
    o.endpoint = dead_endpoint;
    assert_eq!(snapshot_download(&r, &o).unwrap(), snap);

    // Without a cache the error names the URL and says what to do.
    let empty = tempfile::tempdir().unwrap();
    o.cache_dir = empty.path().to_path_buf();
    let err = snapshot_download(&r, &o).unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/api/models/edge-org/tiny-model/revision/main"),
        "{err}"
    );
}

#[test]
fn concurrent_downloads_into_one_cache_fetch_each_blob_once() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let o = opts(&server, cache.path());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| snapshot_download(&r, &o)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        assert_matches_served(&result.unwrap(), &files());
    }
    for f in files().iter().filter(|f| f.lfs) {
        let gets = server
            .log()
            .iter()
            .filter(|l| l.server == "storage" && l.path.ends_with(&f.etag()))
            .count();
        assert_eq!(gets, 1, "{}", f.name);
    }
}

/// Throughput on loopback with a 256 MiB LFS file cut once at the middle (run with
/// `--ignored --nocapture`; figures go to stderr).
#[test]
#[ignore]
fn large_file_throughput() {
    let server = HubServer::start();
    let size = 256 << 20;
    let big = RepoFile::lfs("model.safetensors", bytes(size, 9));
    let etag = big.etag();
    server.push(REPO, "main", vec![big]);
    server.with(|st| st.faults.cut_after.insert(etag, (size / 2, 1)));
    let cache = tempfile::tempdir().unwrap();
    let r = hub_ref(&format!("hf://{REPO}"));
    let t = std::time::Instant::now();
    let snap = snapshot_download(&r, &opts(&server, cache.path())).unwrap();
    let cold = t.elapsed();
    let t = std::time::Instant::now();
    assert_eq!(
        snapshot_download(&r, &opts(&server, cache.path())).unwrap(),
        snap
    );
    let warm = t.elapsed();
    let mut offline = opts(&server, cache.path());
    offline.offline = true;
    let t = std::time::Instant::now();
    snapshot_download(&r, &offline).unwrap();
    let off = t.elapsed();
    eprintln!(
        "256 MiB with one interruption: {:.2} s ({:.0} MiB/s incl. sha256); second call {:.1} ms; offline {:.2} ms",
        cold.as_secs_f64(),
        256.0 / cold.as_secs_f64(),
        warm.as_secs_f64() * 1e3,
        off.as_secs_f64() * 1e3
    );
}

#[test]
fn storage_redirects_are_followed_and_keep_the_range() {
    let server = HubServer::start();
    server.push(REPO, "main", files());
    let model = files()
        .into_iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    server.with(|st| {
        st.faults.storage_redirect = true;
        st.faults.cut_after.insert(model.etag(), (64_000, 1));
    });
    let cache = tempfile::tempdir().unwrap();
    let snap = snapshot_download(
        &hub_ref(&format!("hf://{REPO}")),
        &opts(&server, cache.path()),
    )
    .unwrap();
    assert_matches_served(&snap, &files());
    let hops: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.server == "storage" && l.path.ends_with(&model.etag()))
        .map(|l| {
            (
                l.path.split('/').nth(1).unwrap_or_default().to_string(),
                l.range,
            )
        })
        .collect();
    let resumed = Some("bytes=64000-".to_string());
    assert_eq!(
        hops,
        vec![
            ("blobs".to_string(), None),
            ("data".to_string(), None),
            ("blobs".to_string(), resumed.clone()),
            ("data".to_string(), resumed),
        ]
    );
}
