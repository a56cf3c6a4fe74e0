//! `cargo edgeai build` with `model = "hf://org/name[@revision]"`, through the real binary,
//! against a real HTTP server on 127.0.0.1 that serves the Hub's revision/resolve layout
//! (edgeai-hub's own test server, crates/edgeai-hub/tests/common) with the fixture model
//! fixtures/models/tiny-llama-f32 as repo `edgeai-test/tiny-llama`.
//!
//! The hub cache is `${XDG_CACHE_HOME}/cargo-edgeai/hub` (edgeai::doctor::cache_dir()), so
//! each test points XDG_CACHE_HOME at its temp dir.
//!
//! Needs llama.cpp's tools (`LLAMA_CPP_BIN` or scripts/build-llama-cpp.sh) like tests/build.rs.

mod common;
#[path = "../../crates/edgeai-hub/tests/common/mod.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{
    bundle_entry, bundle_entry_names as bundle_names, copy_dir, llama_bin, repo_root, stderr,
    stdout,
};
use hub_server::{sha256_hex, HubServer, RepoFile};
use serde_json::Value;

const REPO: &str = "edgeai-test/tiny-llama";

/// The fixture's files as the Hub would hold them: the safetensors through LFS, the JSON
/// files as small git blobs.
fn fixture_files() -> Vec<RepoFile> {
    let dir = repo_root().join("fixtures/models/tiny-llama-f32");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(n)).unwrap();
            if n.ends_with(".safetensors") {
                RepoFile::lfs(n, bytes)
            } else {
                RepoFile::small(n, &bytes)
            }
        })
        .collect()
}

/// Set `model` (and optionally `quantization`) of the app in `dir`.
fn set_model(dir: &Path, model: &str, quantization: Option<&str>) {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    let edgeai = doc["package"]["metadata"]["edgeai"]
        .as_table_mut()
        .expect("hello-edge has [package.metadata.edgeai]");
    edgeai["model"] = toml_edit::value(model);
    if let Some(q) = quantization {
        edgeai["quantization"] = toml_edit::value(q);
    }
    edgeai.remove("signing-key");
    std::fs::write(&manifest, doc.to_string()).unwrap();
}

/// A copy of examples/hello-edge in `parent/name` with `model`.
fn hello_edge(parent: &Path, name: &str, model: &str) -> PathBuf {
    common::example_app("hello-edge", parent, name, |edgeai| {
        edgeai["model"] = toml_edit::value(model);
        edgeai["quantization"] = toml_edit::value("Q8_0");
    })
}

/// Where the user cache (and so the hub cache) of a test lives.
struct Env {
    endpoint: String,
    xdg_cache: PathBuf,
}

fn run(dir: &Path, env: &Env, args: &[&str]) -> Output {
    let mut c = common::edgeai(dir, args);
    c.env("LLAMA_CPP_BIN", llama_bin())
        .env("HF_ENDPOINT", &env.endpoint)
        .env("XDG_CACHE_HOME", &env.xdg_cache)
        // No real token or offline switch from the machine running the tests.
        .env("HF_HOME", env.xdg_cache.join("huggingface"))
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE");
    c.output().expect("run cargo-edgeai")
}

const BUILD: &[&str] = &[
    "build",
    "--target",
    "host-x86_64",
    "--skip-validation",
    "--format",
    "json",
];

fn build(dir: &Path, env: &Env, extra: &[&str]) -> (Output, Duration) {
    let mut args = BUILD.to_vec();
    args.extend_from_slice(extra);
    let started = Instant::now();
    let o = run(dir, env, &args);
    (o, started.elapsed())
}

fn build_ok(dir: &Path, env: &Env, extra: &[&str]) -> (Value, Duration) {
    let (o, wall) = build(dir, env, extra);
    assert!(
        o.status.success(),
        "build {extra:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    let v: Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("build JSON: {e}\n{}", stdout(&o)));
    (v, wall)
}

fn build_fails(dir: &Path, env: &Env, extra: &[&str]) -> String {
    let (o, _) = build(dir, env, extra);
    assert_eq!(
        o.status.code(),
        Some(1),
        "build {extra:?} should exit 1\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    eprintln!("build {extra:?} exit 1:\n{}", stderr(&o));
    stderr(&o)
}

fn step<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["targets"][0]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {summary}"))
}

/// The bundle's GGUF (name, bytes).
fn bundled_gguf(bundle: &Path) -> (String, Vec<u8>) {
    let name = bundle_names(bundle)
        .into_iter()
        .find(|n| n.ends_with(".gguf"))
        .unwrap_or_else(|| panic!("no .gguf in {:?}", bundle_names(bundle)));
    let bytes = bundle_entry(bundle, &name);
    (name, bytes)
}

fn resolve_paths(server: &HubServer) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|l| l.server == "hub" && l.path.contains("/resolve/"))
        .map(|l| l.path)
        .collect()
}

/// hf:// through the whole build: downloaded, converted (the same GGUF as from the local
/// fixture), the plan names the model `hf://…@commit` and no host path; `--offline` rebuilds
/// from the cache with no request; `@commit` pins it; a new commit rebuilds the bundle.
#[test]
fn build_downloads_the_hub_model_and_rebuilds_offline() {
    let server = HubServer::start();
    let files = fixture_files();
    let commit = server.push(REPO, "main", files.clone());
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        endpoint: server.endpoint.clone(),
        xdg_cache: tmp.path().join("xdg-cache"),
    };
    let app = hello_edge(tmp.path(), "app", &format!("hf://{REPO}"));

    let (summary, cold) = build_ok(&app, &env, &[]);
    let resolved = resolve_paths(&server);
    for f in &files {
        assert!(
            resolved
                .iter()
                .any(|p| p.ends_with(&format!("/resolve/{commit}/{}", f.name))
                    || p.ends_with(&format!("/resolve/main/{}", f.name))),
            "no resolve request for {}: {resolved:?}",
            f.name
        );
    }
    let storage_gets = server
        .log()
        .iter()
        .filter(|l| l.server == "storage" && l.method == "GET")
        .count();
    assert!(
        storage_gets >= 1,
        "the LFS file came from the storage server"
    );
    let resolve_s = step(&summary, "resolve")["seconds"].as_f64().unwrap();
    assert!(step(&summary, "resolve")["detail"]
        .as_str()
        .unwrap()
        .contains(&commit));

    // The snapshot is in the hub cache under XDG_CACHE_HOME, with the served bytes.
    let hub_cache = env.xdg_cache.join("cargo-edgeai/hub");
    assert!(
        hub_cache.is_dir(),
        "no hub cache at {}",
        hub_cache.display()
    );

    let bundle = PathBuf::from(summary["targets"][0]["bundle"].as_str().unwrap());
    let (gguf_name, gguf) = bundled_gguf(&bundle);
    assert_eq!(&gguf[..4], b"GGUF");

    // The manifest's plan names the model by its hf:// reference and holds no host path.
    let manifest_bytes = bundle_entry(&bundle, edgeai_bundle::MANIFEST_NAME);
    let manifest_text = String::from_utf8(manifest_bytes).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    let plan_model = manifest["plan"]["model"]["path"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| manifest["plan"]["model"].to_string());
    assert!(
        plan_model.contains(&format!("hf://{REPO}@{commit}")),
        "plan model is {plan_model}\n{manifest_text}"
    );
    for host in [
        hub_cache.display().to_string(),
        tmp.path().display().to_string(),
        "snapshots/".to_string(),
    ] {
        assert!(
            !manifest_text.contains(&host),
            "manifest holds host path {host}:\n{manifest_text}"
        );
    }

    // The same files in a local directory named like the repository give the same GGUF bytes
    // (the converter names the model after its directory: `general.name` "Tiny Llama", not
    // the snapshot's commit hash).
    let local_model = tmp.path().join("local-model/tiny-llama");
    copy_dir(
        &repo_root().join("fixtures/models/tiny-llama-f32"),
        &local_model,
    );
    let local = hello_edge(tmp.path(), "local", &local_model.display().to_string());
    let (local_summary, _) = build_ok(&local, &env, &[]);
    let local_bundle = PathBuf::from(local_summary["targets"][0]["bundle"].as_str().unwrap());
    let (local_name, local_gguf) = bundled_gguf(&local_bundle);
    assert_eq!(gguf_name, local_name);
    assert!(
        gguf == local_gguf,
        "the GGUF from the hub snapshot differs from the one from the local fixture ({} vs {})",
        sha256_hex(&gguf),
        sha256_hex(&local_gguf)
    );

    // --offline: from the cache, no request at all, same bundle, nothing reruns.
    server.clear_log();
    let (offline, offline_wall) = build_ok(&app, &env, &["--offline"]);
    assert!(
        server.log().is_empty(),
        "offline build made requests: {:?}",
        server.log()
    );
    assert_eq!(
        offline["targets"][0]["sha256"],
        summary["targets"][0]["sha256"]
    );
    for s in ["convert", "quantize", "package"] {
        assert_eq!(
            step(&offline, s)["cached"],
            true,
            "{s} reran offline: {offline}"
        );
    }

    // Pinned to the commit: offline too, from the same snapshot, convert cached.
    set_model(&app, &format!("hf://{REPO}@{commit}"), None);
    let (pinned, _) = build_ok(&app, &env, &["--offline"]);
    assert!(
        server.log().is_empty(),
        "pinned offline build made requests"
    );
    assert_eq!(step(&pinned, "convert")["cached"], true, "{pinned}");

    // A new commit on main with other bytes: downloaded, converted again, new bundle.
    set_model(&app, &format!("hf://{REPO}"), None);
    let mut changed = files.clone();
    for f in changed.iter_mut() {
        if f.name == "generation_config.json" {
            let mut text = String::from_utf8(f.content.to_vec()).unwrap();
            text = text.replacen('{', "{\n  \"_edited\": true,", 1);
            *f = RepoFile::small(&f.name, text.as_bytes());
        }
    }
    let commit2 = server.push(REPO, "main", changed);
    assert_ne!(commit, commit2);
    server.clear_log();
    let (second, _) = build_ok(&app, &env, &[]);
    assert!(!resolve_paths(&server).is_empty());
    assert!(step(&second, "resolve")["detail"]
        .as_str()
        .unwrap()
        .contains(&commit2));
    assert_eq!(step(&second, "package")["cached"], false, "{second}");
    let bundle2 = PathBuf::from(second["targets"][0]["bundle"].as_str().unwrap());
    let manifest2 =
        String::from_utf8(bundle_entry(&bundle2, edgeai_bundle::MANIFEST_NAME)).unwrap();
    assert!(
        manifest2.contains(&format!("hf://{REPO}@{commit2}")),
        "{manifest2}"
    );

    eprintln!(
        "hub build: cold {:.2} s (resolve/download {:.3} s), offline rebuild {:.0} ms",
        cold.as_secs_f64(),
        resolve_s,
        offline_wall.as_secs_f64() * 1000.0
    );
}

/// `--offline` with an empty hub cache: exit 1, says the model is not cached and how to fix it.
#[test]
fn offline_build_with_empty_cache_fails_clearly() {
    let server = HubServer::start();
    server.push(REPO, "main", fixture_files());
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        endpoint: server.endpoint.clone(),
        xdg_cache: tmp.path().join("xdg-cache"),
    };
    let app = hello_edge(tmp.path(), "app", &format!("hf://{REPO}"));
    let err = build_fails(&app, &env, &["--offline"]);
    assert!(err.contains(REPO), "{err}");
    assert!(err.to_lowercase().contains("offline"), "{err}");
    assert!(
        server.log().is_empty(),
        "offline build made requests: {:?}",
        server.log()
    );
}

/// A repo the Hub does not have: exit 1 naming it.
#[test]
fn unknown_repo_fails_naming_it() {
    let server = HubServer::start();
    server.push(REPO, "main", fixture_files());
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        endpoint: server.endpoint.clone(),
        xdg_cache: tmp.path().join("xdg-cache"),
    };
    let app = hello_edge(tmp.path(), "app", "hf://edgeai-test/no-such-model");
    let err = build_fails(&app, &env, &[]);
    assert!(err.contains("edgeai-test/no-such-model"), "{err}");
}

/// The storage serves wrong bytes for the advertised sha256: exit 1 naming the file and both
/// digests.
#[test]
fn corrupted_download_fails_naming_file_and_digests() {
    let server = HubServer::start();
    let files = fixture_files();
    server.push(REPO, "main", files.clone());
    server.with(|st| st.faults.corrupt.push("model.safetensors".into()));
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        endpoint: server.endpoint.clone(),
        xdg_cache: tmp.path().join("xdg-cache"),
    };
    let app = hello_edge(tmp.path(), "app", &format!("hf://{REPO}"));
    let err = build_fails(&app, &env, &[]);
    let model = files
        .iter()
        .find(|f| f.name == "model.safetensors")
        .unwrap();
    // The server flips one byte in the middle (hub_server: Faults::corrupt).
    let mut bad = model.content.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains(&model.sha256),
        "expected digest missing: {err}"
    );
    assert!(
        err.contains(&sha256_hex(&bad)),
        "actual digest missing: {err}"
    );
}
