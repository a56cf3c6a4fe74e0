//! `cargo edgeai convert --format mlx` against the real mlx-lm (managed `mlx` toolchain, pinned
//! mlx 0.32.4 / mlx-lm 0.32.2 on CPU): every tensor byte-identical to `mlx_lm convert` for the
//! same input, config.json's quantization entries equal, and the same greedy tokens from
//! `mlx_lm` generation. Bad input exits 1 naming the tensor or option. Fails (does not skip)
//! when the toolchain or the SmolLM2 model is missing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, smollm2_gguf, stderr, stdout, TestContext};
use serde_json::Value;

fn mlx_python() -> PathBuf {
    match edgeai_toolchain::find("mlx") {
        Ok(t) => t.python(),
        Err(e) => panic!(
            "the mlx toolchain is needed to compare with mlx-lm: {e}\n\
             install it with `cargo edgeai toolchain install mlx`"
        ),
    }
}

/// `python -m mlx_lm convert ARGS` from the toolchain.
fn mlx_lm_convert(hf: &Path, out: &Path, args: &[&str]) {
    let o = Command::new(mlx_python())
        .args(["-m", "mlx_lm", "convert", "--hf-path"])
        .arg(hf)
        .arg("--mlx-path")
        .arg(out)
        .arg("-q")
        .args(args)
        .output()
        .expect("run mlx_lm convert");
    assert!(
        o.status.success(),
        "mlx_lm convert {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

/// Every tensor of an MLX directory (through its index), by name.
fn load_tensors(dir: &Path) -> Tensors {
    let index: Value = serde_json::from_slice(
        &std::fs::read(dir.join("model.safetensors.index.json")).expect("index json"),
    )
    .expect("index is JSON");
    let mut shards: Vec<String> = index["weight_map"]
        .as_object()
        .expect("weight_map")
        .values()
        .map(|v| v.as_str().expect("shard name").to_string())
        .collect();
    shards.sort();
    shards.dedup();
    let mut out = Tensors::new();
    for s in shards {
        let path = dir.join(&s);
        let h = edgeai::safetensors::read_header(&path).expect("safetensors header");
        assert!(
            h.metadata.iter().any(|(k, v)| k == "format" && v == "mlx"),
            "{} lacks metadata format=mlx",
            path.display()
        );
        let bytes = std::fs::read(&path).expect("read shard");
        for t in &h.tensors {
            let a = (h.data_start() + t.data_offsets.0) as usize;
            let b = (h.data_start() + t.data_offsets.1) as usize;
            out.insert(
                t.name.clone(),
                (t.dtype.clone(), t.shape.clone(), bytes[a..b].to_vec()),
            );
        }
    }
    out
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
        .expect("config.json is JSON")
}

/// Compare two MLX directories tensor by tensor; returns the number of identical tensors.
fn assert_same_model(ours: &Path, theirs: &Path, what: &str) -> usize {
    let a = load_tensors(ours);
    let b = load_tensors(theirs);
    let names_a: Vec<&String> = a.keys().collect();
    let names_b: Vec<&String> = b.keys().collect();
    assert_eq!(names_a, names_b, "{what}: tensor names differ");
    let mut diffs = Vec::new();
    for (name, (dt, shape, data)) in &a {
        let (dt2, shape2, data2) = &b[name];
        if dt != dt2 || shape != shape2 || data != data2 {
            let first = data.iter().zip(data2).position(|(x, y)| x != y);
            diffs.push(format!(
                "{name}: ours {dt} {shape:?}, mlx-lm {dt2} {shape2:?}, first differing byte {first:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} tensors differ from mlx-lm:\n{}",
        diffs.len(),
        a.len(),
        diffs.join("\n")
    );
    let (ca, cb) = (config(ours), config(theirs));
    for key in ["quantization", "quantization_config"] {
        assert_eq!(ca[key], cb[key], "{what}: config.json `{key}` differs");
    }
    a.len()
}

const GENERATE: &str = r#"
import sys, json
from mlx_lm import load
from mlx_lm.generate import stream_generate
prompt, paths = sys.argv[1], sys.argv[2:]
out = {}
for p in paths:
    model, tok = load(p)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    # No sampler: mlx-lm decodes greedily (argmax), as `mlx_lm generate --temp 0`.
    out[p] = [r.token for r in stream_generate(model, tok, ids, max_tokens=32)]
print(json.dumps(out))
"#;

/// Greedy tokens of each model directory for `prompt`.
fn greedy_tokens(ctx: &TestContext, prompt: &str, dirs: &[&Path]) -> Vec<Vec<u64>> {
    let script = ctx.write("generate.py", GENERATE);
    let o = Command::new(mlx_python())
        .arg(&script)
        .arg(prompt)
        .args(dirs)
        .output()
        .expect("run mlx_lm generation");
    assert!(
        o.status.success(),
        "mlx_lm generation failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("generation output is JSON");
    dirs.iter()
        .map(|d| {
            v[d.to_str().expect("utf-8 path")]
                .as_array()
                .expect("token list")
                .iter()
                .map(|t| t.as_u64().expect("token id"))
                .collect()
        })
        .collect()
}

fn convert_ok(ctx: &TestContext, args: &[&str]) {
    let o = ctx.run(args);
    assert!(
        o.status.success(),
        "cargo edgeai {args:?} failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn smollm2_matches_mlx_lm_convert_and_generates_the_same_tokens() {
    let ctx = TestContext::new();
    let gguf = smollm2_gguf();
    let gguf = gguf.to_str().expect("utf-8 path");
    convert_ok(&ctx, &["export", gguf, "-o", "hf"]);
    let hf = ctx.path("hf");
    let cases: [(&str, &[&str], &[&str]); 2] = [
        (
            "affine-4bit-g64",
            &[],
            &["--q-bits", "4", "--q-group-size", "64"],
        ),
        (
            "mixed_3_6",
            &["--recipe", "mixed_3_6"],
            &[
                "--q-bits",
                "4",
                "--q-group-size",
                "64",
                "--quant-predicate",
                "mixed_3_6",
            ],
        ),
    ];
    for (name, ours_args, mlx_args) in cases {
        let ours = format!("ours-{name}");
        let mut args = vec!["convert", "hf", "--format", "mlx", "-o", &ours];
        args.extend_from_slice(ours_args);
        convert_ok(&ctx, &args);
        let theirs = ctx.path(&format!("mlx-lm-{name}"));
        mlx_lm_convert(&hf, &theirs, mlx_args);
        let n = assert_same_model(&ctx.path(&ours), &theirs, name);
        assert!(n > 600, "{name}: only {n} tensors");
        eprintln!("{name}: {n} tensors byte-identical to mlx_lm convert");
        let toks = greedy_tokens(
            &ctx,
            "What is the capital of France?",
            &[&ctx.path(&ours), &theirs],
        );
        assert_eq!(toks[0], toks[1], "{name}: greedy tokens differ");
        assert_eq!(toks[0].len(), 32, "{name}: expected 32 tokens");
    }
    // The GGUF goes through the export path: the same model as from the exported directory.
    convert_ok(
        &ctx,
        &["convert", gguf, "--format", "mlx", "-o", "from-gguf"],
    );
    let a = load_tensors(&ctx.path("from-gguf"));
    let b = load_tensors(&ctx.path("ours-affine-4bit-g64"));
    assert!(
        a == b,
        "converting the GGUF directly differs from converting its export"
    );
    assert!(ctx.path("from-gguf/tokenizer.json").is_file());
}

#[test]
fn fixtures_in_every_float_dtype_match_mlx_lm() {
    let ctx = TestContext::new();
    for dtype in ["f32", "f16", "bf16"] {
        let src = fixture(&format!("tiny-llama-{dtype}"));
        let src_s = src.to_str().expect("utf-8 path");
        for (name, ours_args, mlx_args) in [
            (
                "affine-3bit-g32",
                vec!["--bits", "3", "--group-size", "32"],
                vec!["--q-bits", "3", "--q-group-size", "32"],
            ),
            ("mxfp4", vec!["--mode", "mxfp4"], vec!["--q-mode", "mxfp4"]),
        ] {
            let ours = format!("{dtype}-{name}");
            let mut args = vec!["convert", src_s, "--format", "mlx", "-o", &ours];
            args.extend(ours_args);
            convert_ok(&ctx, &args);
            let theirs = ctx.path(&format!("{dtype}-{name}-mlx-lm"));
            mlx_lm_convert(&src, &theirs, &mlx_args);
            assert_same_model(&ctx.path(&ours), &theirs, &format!("{dtype} {name}"));
        }
    }
}

/// A one-layer HF directory whose `down_proj` weight has `dtype` and `shape`.
fn tiny_dir(ctx: &TestContext, rel: &str, dtype: &str, shape: [usize; 2]) -> PathBuf {
    let elem = if dtype == "F32" || dtype == "I32" {
        4
    } else {
        2
    };
    let n = shape[0] * shape[1] * elem;
    let header = serde_json::json!({
        "model.layers.0.mlp.down_proj.weight": {"dtype": dtype, "shape": shape, "data_offsets": [0, n]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, n));
    ctx.write(&format!("{rel}/model.safetensors"), bytes);
    ctx.write(
        &format!("{rel}/config.json"),
        r#"{"model_type": "llama", "num_hidden_layers": 1, "torch_dtype": "float32"}"#,
    );
    ctx.path(rel)
}

fn fails_with(ctx: &TestContext, args: &[&str], needles: &[&str]) {
    let o = ctx.run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in:\n{err}");
    }
}

#[test]
fn bad_input_exits_1_naming_the_problem() {
    let ctx = TestContext::new();
    let f = fixture("tiny-llama-f32");
    let f = f.to_str().expect("utf-8 path");
    fails_with(
        &ctx,
        &["convert", f, "--format", "mlx", "--bits", "7", "-o", "o1"],
        &["--bits 7", "2, 3, 4, 5, 6 or 8"],
    );
    fails_with(
        &ctx,
        &[
            "convert", f, "--format", "mlx", "--mode", "mxfp4", "--bits", "8", "-o", "o2",
        ],
        &["--bits 8", "mxfp4"],
    );
    fails_with(
        &ctx,
        &[
            "convert",
            f,
            "--format",
            "mlx",
            "--group-size",
            "48",
            "-o",
            "o3",
        ],
        &["--group-size 48"],
    );
    fails_with(
        &ctx,
        &["convert", f, "--format", "mlx", "--mode", "nf4", "-o", "o4"],
        &["nf4"],
    );
    fails_with(
        &ctx,
        &[
            "convert",
            f,
            "--format",
            "mlx",
            "--recipe",
            "mixed_9_9",
            "-o",
            "o5",
        ],
        &["mixed_9_9", "mixed_3_6"],
    );
    fails_with(
        &ctx,
        &[
            "convert",
            f,
            "--format",
            "mlx",
            "--mode",
            "mxfp4",
            "--recipe",
            "mixed_3_6",
            "-o",
            "o6",
        ],
        &["--recipe"],
    );
    fails_with(
        &ctx,
        &["convert", f, "--bits", "4", "-o", "x.gguf"],
        &["--format mlx"],
    );
    let odd = tiny_dir(&ctx, "odd", "F32", [4, 96]);
    fails_with(
        &ctx,
        &[
            "convert",
            odd.to_str().unwrap(),
            "--format",
            "mlx",
            "-o",
            "o7",
        ],
        &["model.layers.0.mlp.down_proj.weight", "96", "64"],
    );
    let ints = tiny_dir(&ctx, "ints", "I32", [4, 64]);
    fails_with(
        &ctx,
        &[
            "convert",
            ints.to_str().unwrap(),
            "--format",
            "mlx",
            "-o",
            "o8",
        ],
        &["model.layers.0.mlp.down_proj.weight", "I32"],
    );
    // An architecture mlx-lm cannot load (BERT) is refused before any tensor is converted.
    let bert = fixture("tiny-bert");
    fails_with(
        &ctx,
        &[
            "convert",
            bert.to_str().expect("utf-8 path"),
            "--format",
            "mlx",
            "-o",
            "o9",
        ],
        &["cannot load model_type `bert`", "llama"],
    );
    assert!(
        !ctx.path("o7").exists() && !ctx.path("o8").exists() && !ctx.path("o9").exists(),
        "no partial output"
    );
}
