//! hello-embed: the app `cargo edgeai build` bundles with an ONNX sentence encoder.
//!
//! At start it finds its bundle (`--bundle DIR`, else the directory holding its executable or
//! the one above it), checks every file `edgeai-manifest.json` lists against its sha256 and size,
//! then prints the model's facts: the ONNX graph's inputs and outputs (read from the protobuf
//! without an ONNX library), the tokenizer and config files next to it, and the validation the
//! bundle was built with. Exit 0 when all is well, 1 (naming the file) when a file is missing,
//! altered or not an ONNX model.

mod onnx;

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

/// The manifest's name inside a bundle (edgeai-bundle's `MANIFEST_NAME`).
const MANIFEST_NAME: &str = "edgeai-manifest.json";

/// The model inside the bundle.
const MODEL: &str = "model/model.onnx";

const USAGE: &str = "usage: hello-embed [--bundle DIR]\n\
    Verifies the bundle's files against edgeai-manifest.json and prints the ONNX model's facts.\n\
    Without --bundle, the bundle is the directory of this executable (or the one above it).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hello-embed: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// One file the manifest lists.
struct Listed {
    path: String,
    sha256: String,
    size: u64,
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut bundle: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bundle" => {
                let dir = args.next().ok_or("--bundle needs a directory")?;
                bundle = Some(PathBuf::from(dir));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "-V" | "--version" => {
                println!("hello-embed {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other => return Err(format!("unexpected argument `{other}`\n{USAGE}")),
        }
    }
    let bundle = match bundle {
        Some(dir) => dir,
        None => find_bundle()?,
    };
    let manifest_path = bundle.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON: {e}", manifest_path.display()))?;
    let files = listed_files(&manifest).map_err(|e| format!("{MANIFEST_NAME}: {e}"))?;
    for f in &files {
        verify(&bundle, f)?;
    }
    let str_at = |path: &[&str]| {
        let mut v = &manifest;
        for key in path {
            v = v.get(key).unwrap_or(&serde_json::Value::Null);
        }
        v.as_str().unwrap_or("?").to_string()
    };
    println!("hello-embed {}", env!("CARGO_PKG_VERSION"));
    println!(
        "bundle: {} {} for {} ({} files verified)",
        str_at(&["bundle", "name"]),
        str_at(&["bundle", "version"]),
        str_at(&["target"]),
        files.len()
    );
    if !files.iter().any(|f| f.path == MODEL) {
        return Err(format!("{MANIFEST_NAME} lists no {MODEL}"));
    }
    let graph = onnx::read_graph(&bundle.join(MODEL)).map_err(|e| format!("{MODEL}: {e}"))?;
    println!(
        "model: {MODEL} ({} {}, {} plan, execution provider {})",
        str_at(&["plan", "framework"]),
        str_at(&["plan", "quantization"]),
        str_at(&["plan", "rule"]),
        str_at(&["plan", "execution_provider"]),
    );
    println!(
        "  producer:          {} {}",
        graph.producer, graph.producer_version
    );
    println!("  opset:             {}", graph.opset);
    println!("  nodes:             {}", graph.nodes);
    println!("  inputs:            {}", graph.inputs.join(", "));
    println!("  outputs:           {}", graph.outputs.join(", "));
    let side: Vec<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.starts_with("model/") && *p != MODEL)
        .collect();
    println!("  files:             {}", side.join(", "));
    if let Some(v) = manifest.get("validation") {
        let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("?");
        match v
            .get("quality")
            .and_then(|q| q.get("embedding_cosine_mean"))
            .and_then(|c| c.as_f64())
        {
            Some(c) => println!(
                "validation:        {status}, embedding cosine vs FP32 {c:.5} over {} sentences ({})",
                v.get("samples").and_then(|s| s.as_u64()).unwrap_or(0),
                v.get("tool").and_then(|s| s.as_str()).unwrap_or("?")
            ),
            None => println!("validation:        {status}"),
        }
    }
    Ok(())
}

/// The bundle directory: the executable's directory, or its parent (a `bin/` layout), whichever
/// holds the manifest.
fn find_bundle() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|dir| dir.join(MANIFEST_NAME).is_file())
        .map(Path::to_path_buf)
        .ok_or(format!(
            "no {MANIFEST_NAME} next to {} or above it; pass --bundle DIR",
            exe.display()
        ))
}

/// `files: [{path, sha256, size}]`, with paths that stay inside the bundle.
fn listed_files(manifest: &serde_json::Value) -> Result<Vec<Listed>, String> {
    let files = manifest
        .get("files")
        .and_then(|f| f.as_array())
        .ok_or("no `files` array")?;
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let path = f.get("path").and_then(|v| v.as_str());
            let sha256 = f.get("sha256").and_then(|v| v.as_str());
            let size = f.get("size").and_then(|v| v.as_u64());
            let (Some(path), Some(sha256), Some(size)) = (path, sha256, size) else {
                return Err(format!("files[{i}] needs path, sha256 and size"));
            };
            let inside = Path::new(path)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if path.is_empty() || !inside {
                return Err(format!(
                    "files[{i}]: `{path}` is not a relative path inside the bundle"
                ));
            }
            Ok(Listed {
                path: path.to_string(),
                sha256: sha256.to_ascii_lowercase(),
                size,
            })
        })
        .collect()
}

/// Check one file's size, then its sha256.
fn verify(bundle: &Path, f: &Listed) -> Result<(), String> {
    let path = bundle.join(&f.path);
    let mut file = File::open(&path).map_err(|e| format!("{}: {e}", f.path))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", f.path))?
        .len();
    if size != f.size {
        return Err(format!(
            "{}: size {size} bytes, the manifest says {}",
            f.path, f.size
        ));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", f.path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != f.sha256 {
        return Err(format!(
            "{}: sha256 {digest} does not match the manifest's {}",
            f.path, f.sha256
        ));
    }
    Ok(())
}
