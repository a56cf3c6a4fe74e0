//! `cargo edgeai validate` of ONNX models on the real ONNX Runtime (the managed `onnxruntime`
//! toolchain's libonnxruntime, loaded by `ort` at run time).
//!
//! Test models are made here with the toolchain's python + `onnx`: a small MLP classifier in
//! FP32 and its onnxruntime `quantize_dynamic` INT8 version. The MiniLM test exports
//! all-MiniLM-L6-v2 with `cargo edgeai convert --format onnx`.
//!
//! Needs: the `onnxruntime` toolchain (`cargo edgeai toolchain install onnxruntime`; CI installs
//! it); for MiniLM the cached model (scripts/fetch-test-models.sh). A missing one fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{minilm_dir, stderr, stdout, TestContext};

fn ort_python() -> PathBuf {
    match edgeai_toolchain::find("onnxruntime") {
        Ok(tc) => tc.python(),
        Err(e) => panic!("the onnxruntime toolchain is needed (CI installs it): {e}"),
    }
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

const MAKE_MLP: &str = r#"
import os, sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
from onnxruntime.quantization import quantize_dynamic, QuantType
out = sys.argv[1]
rng = np.random.default_rng(0)
W1 = (rng.standard_normal((16, 64)) * 0.3).astype(np.float32)
b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
W2 = (rng.standard_normal((64, 10)) * 0.3).astype(np.float32)
b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)
nodes = [
    helper.make_node("MatMul", ["x", "W1"], ["h0"]),
    helper.make_node("Add", ["h0", "b1"], ["h1"]),
    helper.make_node("Relu", ["h1"], ["h"]),
    helper.make_node("MatMul", ["h", "W2"], ["l0"]),
    helper.make_node("Add", ["l0", "b2"], ["logits"]),
]
g = helper.make_graph(nodes, "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, f"{out}/mlp-fp32.onnx")
quantize_dynamic(f"{out}/mlp-fp32.onnx", f"{out}/mlp-int8.onnx", weight_type=QuantType.QInt8)
def d(name):
    os.makedirs(f"{out}/{name}", exist_ok=True)
    return f"{out}/{name}"
for i in range(8):
    np.savez(f"{d('inputs')}/s{i:02}.npz", x=rng.standard_normal((4, 16)).astype(np.float32))
np.savez_compressed(f"{d('compressed')}/s.npz", x=rng.standard_normal((2, 16)).astype(np.float32))
np.save(f"{d('npy')}/x.npy", rng.standard_normal((3, 16)).astype(np.float32))
np.savez(f"{d('bad_dtype')}/s.npz", x=rng.integers(0, 5, (4, 16)).astype(np.int64))
np.savez(f"{d('bad_shape')}/s.npz", x=rng.standard_normal((4, 8)).astype(np.float32))
np.savez(f"{d('bad_name')}/s.npz", input=rng.standard_normal((4, 16)).astype(np.float32))
"#;

/// The MLP pair and its input folders in `ctx`.
fn make_mlp(ctx: &TestContext) -> PathBuf {
    let script = ctx.write("make_mlp.py", MAKE_MLP);
    let o = Command::new(ort_python())
        .arg(&script)
        .arg(ctx.dir.path())
        .output()
        .expect("run python");
    assert_exit(&o, 0);
    ctx.dir.path().to_path_buf()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

#[test]
fn mlp_int8_against_fp32_reports_agreement_latency_memory() {
    let ctx = TestContext::new();
    make_mlp(&ctx);
    let o = ctx.run(&[
        "validate",
        "--model",
        "mlp-int8.onnx",
        "--reference",
        "mlp-fp32.onnx",
        "--inputs",
        "inputs",
        "--runs",
        "30",
        "--format",
        "json",
        "--junit",
        "junit.xml",
        "--html",
        "report.html",
    ]);
    assert_exit(&o, 0);
    let r = json(&o);
    assert_eq!(r["framework"], "onnxruntime");
    assert_eq!(r["tool"]["execution_provider"], "CPUExecutionProvider");
    assert!(r["tool"]["version"].as_str().unwrap().starts_with("1."));
    assert_eq!(r["inputs"]["samples"], 8);
    let out = &r["outputs"][0];
    assert_eq!(out["name"], "logits");
    let cos = out["cosine_mean"].as_f64().unwrap();
    let top1 = out["top1_agreement"].as_f64().unwrap();
    assert!(cos > 0.99 && cos <= 1.0 + 1e-9, "cosine {cos}");
    assert!(out["cosine_min"].as_f64().unwrap() <= cos);
    assert!(
        out["max_abs_error"].as_f64().unwrap() > 0.0,
        "INT8 is not bit-exact"
    );
    assert!(top1 >= 0.9, "top-1 {top1}");
    assert_eq!(out["rows"], 32);
    for (i, label) in ["mlp-int8", "mlp-fp32"].iter().enumerate() {
        let l = &r["latency"][i];
        assert_eq!(l["label"], *label);
        assert_eq!(l["runs"], 30);
        let (p50, p95) = (l["p50_ms"].as_f64().unwrap(), l["p95_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p95 >= p50, "{l}");
        let m = &r["memory"][i];
        let peak = m["peak_rss_bytes"].as_u64().unwrap();
        // The process with libonnxruntime loaded: tens of MiB, not bytes and not GiB.
        assert!(peak > 10 << 20 && peak < 2 << 30, "{m}");
        assert!(m["basis"].as_str().unwrap().contains("VmHWM"));
    }
    assert_eq!(r["passed"], true);
    assert!(r["gates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "target_memory_budget"));
    let junit = std::fs::read_to_string(ctx.path("junit.xml")).unwrap();
    assert!(junit.contains("name=\"target_memory_budget\"") && junit.contains("failures=\"0\""));
    let html = std::fs::read_to_string(ctx.path("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("logits") && !html.contains("<script"));

    // The terminal report: agreement table, latency table of both models.
    let o = ctx.run(&[
        "validate",
        "--model",
        "mlp-int8.onnx",
        "--reference",
        "mlp-fp32.onnx",
        "--inputs",
        "inputs",
    ]);
    assert_exit(&o, 0);
    let s = stdout(&o);
    assert!(
        s.contains("p50 ms") && s.contains("mlp-fp32") && s.contains("top-1 %"),
        "{s}"
    );
}

#[test]
fn compressed_npz_and_npy_inputs_are_read() {
    let ctx = TestContext::new();
    make_mlp(&ctx);
    for (dir, samples) in [("compressed", 1), ("npy", 1)] {
        let o = ctx.run(&[
            "validate",
            "--model",
            "mlp-int8.onnx",
            "--reference",
            "mlp-fp32.onnx",
            "--inputs",
            dir,
            "--runs",
            "2",
            "--format",
            "json",
        ]);
        assert_exit(&o, 0);
        assert_eq!(json(&o)["inputs"]["samples"], samples, "{dir}");
    }
}

#[test]
fn bad_inputs_name_the_input_expected_and_found() {
    let ctx = TestContext::new();
    make_mlp(&ctx);
    let cases = [
        (
            "bad_dtype",
            "input `x`: expected float32 [-1, 16], found int64 [4, 16]",
        ),
        (
            "bad_shape",
            "input `x`: expected float32 [-1, 16], found float32 [4, 8]",
        ),
        ("bad_name", "input `input` is not an input of mlp-int8.onnx"),
    ];
    for (dir, want) in cases {
        let o = ctx.run(&[
            "validate",
            "--model",
            "mlp-int8.onnx",
            "--reference",
            "mlp-fp32.onnx",
            "--inputs",
            dir,
        ]);
        assert_exit(&o, 1);
        let e = stderr(&o);
        assert!(e.contains(want), "{dir}: {e}");
        assert!(
            e.contains("x float32 [-1, 16]"),
            "help lists the inputs: {e}"
        );
    }
    // No inputs at all.
    let o = ctx.run(&[
        "validate",
        "--model",
        "mlp-int8.onnx",
        "--reference",
        "mlp-fp32.onnx",
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--inputs DIR"), "{}", stderr(&o));
}

#[test]
fn failed_gate_exits_1_naming_it() {
    let ctx = TestContext::new();
    make_mlp(&ctx);
    // A project around the working directory contributes its gates.
    ctx.cargo_project(".", "[package.metadata.edgeai.gates]\nmin_cosine = 0.999999\nmin_top1 = 0.5\nmax_latency_p95_ms = 10000\n");
    let o = ctx.run(&[
        "validate",
        "--model",
        "mlp-int8.onnx",
        "--reference",
        "mlp-fp32.onnx",
        "--inputs",
        "inputs",
        "--junit",
        "junit.xml",
    ]);
    assert_exit(&o, 1);
    let e = stderr(&o);
    assert!(
        e.contains("1 gate(s) failed") && e.contains("min_cosine: measured 0.99"),
        "{e}"
    );
    assert!(e.contains("< threshold 0.999999"), "{e}");
    let s = stdout(&o);
    assert!(
        s.contains("pass min_top1") && s.contains("pass max_latency_p95_ms"),
        "{s}"
    );
    let junit = std::fs::read_to_string(ctx.path("junit.xml")).unwrap();
    assert!(
        junit.contains("<failure message=\"min_cosine: measured"),
        "{junit}"
    );
}

#[test]
fn missing_model_and_missing_runtime_are_clear_errors() {
    let ctx = TestContext::new();
    make_mlp(&ctx);
    let o = ctx.run(&[
        "validate",
        "--model",
        "nope.onnx",
        "--reference",
        "mlp-fp32.onnx",
        "--inputs",
        "inputs",
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("nope.onnx"), "{}", stderr(&o));

    // A toolchain root without the onnxruntime environment: the help says how to install it.
    let o = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
        .args([
            "edgeai",
            "validate",
            "--model",
            "mlp-int8.onnx",
            "--reference",
            "mlp-fp32.onnx",
            "--inputs",
            "inputs",
        ])
        .current_dir(ctx.dir.path())
        .env("EDGEAI_TOOLCHAINS_DIR", ctx.path("no-toolchains"))
        .env_remove("ORT_DYLIB_PATH")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("cargo edgeai toolchain install onnxruntime"),
        "{}",
        stderr(&o)
    );
}

/// The ONE sentence set of every MiniLM comparison (shared with tests/onnx_convert.rs): 20
/// fixed, varied sentences (short, long, punctuation, numbers, URLs, non-ASCII scripts).
const SENTENCES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx/sentences.txt");
/// INT8 static calibration text: 32 other sentences (never the validation ones).
const CALIBRATION_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/onnx/calibration.txt"
);

fn convert(ctx: &TestContext, model: &Path, out: &str, quant: &[&str]) {
    let mut args = vec![
        "convert".to_string(),
        model.display().to_string(),
        "--format".into(),
        "onnx".into(),
        "-o".into(),
        out.into(),
    ];
    args.extend(quant.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ctx.run(&args);
    assert_exit(&o, 0);
}

/// all-MiniLM-L6-v2: FP32 vs INT8 dynamic / INT8 static / INT4 sentence-embedding cosine over
/// the 20 shared sentences, each sentence's cosine counted (the minimum is gated: >= 0.99 for
/// INT8, >= 0.95 for INT4, issue 8 acceptance), and a latency table FP32 vs quantized through
/// `ort` from Rust; a `min_cosine` gate the INT4 model misses fails with exit 1 naming it.
#[test]
fn minilm_quantizations_against_fp32() {
    let ctx = TestContext::new();
    let model = minilm_dir();
    let tokenizer = model.join("tokenizer.json");
    convert(&ctx, &model, "fp32.onnx", &[]);
    convert(
        &ctx,
        &model,
        "int8-dynamic.onnx",
        &["--quant", "int8-dynamic"],
    );
    convert(
        &ctx,
        &model,
        "int8-static.onnx",
        &["--quant", "int8-static", "--calibration", CALIBRATION_FILE],
    );
    convert(
        &ctx,
        &model,
        "int4.onnx",
        &["--quant", "int4", "--block", "32"],
    );
    let tok = tokenizer.display().to_string();
    let mut table = String::from(
        "\nall-MiniLM-L6-v2 on ONNX Runtime (CPU EP, through `ort` from Rust), 20 sentences, one per run\nmodel          cosine mean  cosine min   p50 ms   p95 ms   peak RSS MiB   size MB\n",
    );
    let mut fp32_line = None;
    let mut failures = Vec::new();
    for (q, min) in [
        ("int8-dynamic", 0.99),
        ("int8-static", 0.99),
        ("int4", 0.95),
    ] {
        let o = ctx.run(&[
            "validate",
            "--model",
            &format!("{q}.onnx"),
            "--reference",
            "fp32.onnx",
            "--text",
            SENTENCES_FILE,
            "--tokenizer",
            &tok,
            "--runs",
            "50",
            "--format",
            "json",
        ]);
        assert_exit(&o, 0);
        let r = json(&o);
        let e = &r["embedding"];
        assert_eq!(e["sentences"], 20);
        let cos_min = e["cosine_min"].as_f64().unwrap();
        let l = &r["latency"];
        let m = &r["memory"];
        let mb = |i: usize| {
            r[if i == 0 { "candidate" } else { "reference" }]["size_bytes"]
                .as_f64()
                .unwrap()
                / 1e6
        };
        table.push_str(&format!(
            "{q:<14} {:>11.5} {cos_min:>11.5} {:>8.2} {:>8.2} {:>14.1} {:>9.1}\n",
            e["cosine_mean"].as_f64().unwrap(),
            l[0]["p50_ms"].as_f64().unwrap(),
            l[0]["p95_ms"].as_f64().unwrap(),
            m[0]["peak_rss_bytes"].as_f64().unwrap() / 1048576.0,
            mb(0)
        ));
        fp32_line.get_or_insert_with(|| {
            format!(
                "{:<14} {:>11} {:>11} {:>8.2} {:>8.2} {:>14.1} {:>9.1}\n",
                "fp32",
                "1",
                "1",
                l[1]["p50_ms"].as_f64().unwrap(),
                l[1]["p95_ms"].as_f64().unwrap(),
                m[1]["peak_rss_bytes"].as_f64().unwrap() / 1048576.0,
                mb(1)
            )
        });
        if cos_min < min {
            failures.push(format!("{q}: lowest sentence cosine {cos_min} < {min}"));
        }
    }
    table.push_str(&fp32_line.unwrap_or_default());
    println!("{table}");
    assert!(failures.is_empty(), "{failures:?}");

    // A project gate INT4 misses.
    ctx.cargo_project(".", "[package.metadata.edgeai.gates]\nmin_cosine = 0.999\n");
    let o = ctx.run(&[
        "validate",
        "--model",
        "int4.onnx",
        "--reference",
        "fp32.onnx",
        "--text",
        SENTENCES_FILE,
        "--tokenizer",
        &tok,
        "--runs",
        "3",
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("min_cosine: measured"),
        "{}",
        stderr(&o)
    );
}

/// Every ONNX Runtime plan names the execution provider the bundle expects on the device, per
/// accelerator: CPU (x86 and Arm), CUDA, Core ML, OpenVINO EP, QNN EP and DirectML.
#[test]
fn onnxruntime_plans_name_the_execution_provider() {
    let ctx = TestContext::new();
    let model = minilm_dir().display().to_string();
    // A Windows laptop with a DirectX 12 GPU (seen as Vulkan) from the project's targets-dir.
    let windows = std::fs::read_to_string(common::repo_root().join("targets/windows-x86_64-cpu.toml"))
        .unwrap()
        .replace("name = \"windows-x86_64-cpu\"", "name = \"windows-gpu\"")
        .replacen(
            "[[accelerators]]\nkind = \"cpu\"",
            "[[accelerators]]\nkind = \"vulkan\"\nname = \"DirectX 12 GPU\"\napi_version = \"1.3\"\n\n[[accelerators]]\nkind = \"cpu\"",
            1,
        );
    ctx.write("targets/windows-gpu.toml", windows);
    ctx.cargo_project(".", "targets-dir = \"targets\"\n");
    let cases = [
        ("host-x86_64", "CPUExecutionProvider"),
        ("raspberry-pi-5-8gb", "CPUExecutionProvider"),
        ("jetson-orin-nano-8gb", "CUDAExecutionProvider"),
        ("apple-m2-16gb", "CoreMLExecutionProvider"),
        ("intel-core-ultra-7-155h", "OpenVINOExecutionProvider"),
        ("snapdragon-8-elite", "QNNExecutionProvider"),
        ("windows-gpu", "DmlExecutionProvider"),
    ];
    for (target, ep) in cases {
        let o = ctx.run(&[
            "plan",
            "--model",
            &model,
            "--target",
            target,
            "--framework",
            "onnxruntime",
            "--format",
            "json",
        ]);
        assert_exit(&o, 0);
        let p = json(&o);
        assert_eq!(p["framework"], "onnxruntime", "{target}");
        assert_eq!(p["execution_provider"], ep, "{target}: {p}");
    }
    // Without --framework the host plan for an encoder is ONNX Runtime on the CPU EP too.
    let o = ctx.run(&[
        "plan",
        "--model",
        &model,
        "--target",
        "host-x86_64",
        "--format",
        "json",
    ]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["execution_provider"], "CPUExecutionProvider");
}

/// The built-in WordPiece tokenizer gives the Hugging Face `tokenizers` library's ids on
/// MiniLM's tokenizer.json (the library from the onnxruntime toolchain is the reference).
#[test]
fn wordpiece_matches_hf_tokenizers() {
    let tokenizer = minilm_dir().join("tokenizer.json");
    let extra = "Don't panic: 3.14159 is π, naïve café ÉCOLE — ok?!\nunaffable antidisestablishmentarianism 東京 co-operate e-mail\n";
    let sentences = std::fs::read_to_string(SENTENCES_FILE).unwrap();
    let calibration = std::fs::read_to_string(CALIBRATION_FILE).unwrap();
    let text = format!("{sentences}{calibration}{extra}");
    let ctx = TestContext::new();
    let file = ctx.write("text.txt", &text);
    let script = ctx.write(
        "tok.py",
        "import sys, json\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\nt.no_padding()\nfor l in open(sys.argv[2], encoding='utf-8').read().splitlines():\n    print(json.dumps(t.encode(l).ids))\n",
    );
    let o = Command::new(ort_python())
        .arg(&script)
        .arg(&tokenizer)
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&o, 0);
    let wp = edgeai::validate::ort::wordpiece::WordPiece::from_file(&tokenizer).unwrap();
    for (line, want) in text.lines().zip(stdout(&o).lines()) {
        let want: Vec<i64> = serde_json::from_str(want).unwrap();
        assert_eq!(wp.encode(line), want, "{line}");
    }
}
