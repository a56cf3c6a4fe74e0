//! `framework = "olive"`: Olive workflows written from the options (snapshots) and run for real
//! (`olive run --config` in the managed `olive` toolchain), the output validated on ONNX Runtime
//! from Rust (`validate::ort::validate_onnx`) against the FP32 export and compared with
//! cargo-edgeai's own onnxruntime quantization of the same model.
//!
//! Needs the `olive` toolchain (`cargo edgeai toolchain install olive`, ~6 GB), the `onnxruntime`
//! toolchain (export, validation library) and all-MiniLM-L6-v2 (scripts/fetch-test-models.sh).
//! The tests fail, not skip, without them (CI installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{fixture, minilm_dir, stderr, TestContext};
use edgeai::backends::olive::{quantize_with_olive, write_workflow, OliveOptions, OliveSummary};
use edgeai::backends::onnx::{convert_to_onnx, OnnxConvertOptions, OnnxQuant};
use edgeai::manifest::TargetSet;
use edgeai::validate::ort::{validate_onnx, InputSource, OrtValidateOptions, OrtValidationReport};
use edgeai::Error;

/// Validation sentences (not the calibration text).
const SENTENCES: &str = "The quick brown fox jumps over the lazy dog.
A man is playing a guitar on the street corner.
Edge devices run small models with tight memory budgets.
Quantization trades a little accuracy for a lot of speed.
The weather in Paris is mild in the spring.
She sold the old car and bought a bicycle instead.
How do I reset my password?
Neural networks learn representations from data.
The cat sat on the mat.
Stock markets fell sharply after the announcement of new tariffs on imported steel.
Please turn off the lights when you leave the room.
ONNX Runtime executes models on CPUs, GPUs and NPUs.
He plays the piano every evening after dinner.
The museum opens at nine and closes at five.
Rust guarantees memory safety without a garbage collector.
Fresh bread smells wonderful in the morning.
Voice activity detection finds speech in audio streams.
A child is reading a book under a tree.
Why is the sky blue?
Sentence embeddings map text to vectors so that similar meanings are close together.
";

const CALIBRATION_TEXT: &str = "A woman is slicing tomatoes in the kitchen.
The train to Berlin leaves at half past seven.
Machine learning models can be compressed for mobile phones.
Two dogs are running through a field of tall grass.
What time does the pharmacy close on Sundays?
The committee postponed its decision until next month.
Solar panels convert sunlight into electricity.
He forgot his umbrella and got soaked in the rain.
The library has a large collection of rare maps.
Please send me the report before the meeting.
A group of students is studying for the final exam.
The recipe calls for two cups of flour and one egg.
Traffic was heavy on the highway this morning.
Astronomers discovered a new planet orbiting a distant star.
The software update fixed several security vulnerabilities.
She painted the fence bright blue last weekend.
";

fn olive_toolchain() {
    if let Err(e) = edgeai_toolchain::find("olive") {
        panic!("the olive toolchain is needed (CI installs it): {e}");
    }
}

fn opts(quant: OnnxQuant) -> OliveOptions {
    OliveOptions {
        quant,
        calibration: None,
        block: None,
        symmetric: false,
    }
}

// ---- workflow snapshots ------------------------------------------------------------------------

#[test]
fn workflow_snapshots() {
    let input = Path::new("/models/minilm/model.onnx");
    let output = Path::new("/work/edgeai-olive-x/output");
    insta::assert_json_snapshot!(
        "workflow_int8_dynamic",
        write_workflow(input, output, &opts(OnnxQuant::Int8Dynamic))
    );
    let stat = OliveOptions {
        calibration: Some("/data/calibration.txt".into()),
        ..opts(OnnxQuant::Int8Static)
    };
    insta::assert_json_snapshot!("workflow_int8_static", write_workflow(input, output, &stat));
    let int4 = OliveOptions {
        block: Some(64),
        symmetric: true,
        ..opts(OnnxQuant::Int4)
    };
    insta::assert_json_snapshot!(
        "workflow_int4_b64_sym",
        write_workflow(input, output, &int4)
    );
}

// ---- models ------------------------------------------------------------------------------------

/// FP32 export of an HF BERT directory with the onnxruntime path, with tokenizer.json beside it
/// (text calibration and validation read it there). Made once per test binary run, under Cargo's
/// scratch directory for integration tests (target/tmp: replaced each run, never left in /tmp).
fn fp32_export(model: &Path, name: &str, slot: &'static OnceLock<PathBuf>) -> &'static Path {
    slot.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("olive")
            .join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = dir.join("model.onnx");
        convert_to_onnx(
            model,
            &out,
            &OnnxConvertOptions {
                quant: None,
                block: None,
                symmetric: false,
                calibration: None,
            },
        )
        .unwrap_or_else(|e| panic!("FP32 export of {} failed: {e:?}", model.display()));
        std::fs::copy(model.join("tokenizer.json"), dir.join("tokenizer.json"))
            .expect("copy tokenizer.json");
        out
    })
}

fn minilm_fp32() -> &'static Path {
    static FP32: OnceLock<PathBuf> = OnceLock::new();
    fp32_export(&minilm_dir(), "minilm", &FP32)
}

fn tiny_bert_fp32() -> &'static Path {
    static FP32: OnceLock<PathBuf> = OnceLock::new();
    fp32_export(&fixture("tiny-bert"), "tiny-bert", &FP32)
}

/// `candidate` against `reference` on the validation sentences, tokenized with the tokenizer.json
/// next to the reference.
fn validate(ctx: &TestContext, candidate: &Path, reference: &Path) -> OrtValidationReport {
    let targets = TargetSet::builtin().expect("built-in targets");
    let target = targets.get("host-x86_64").expect("host-x86_64").clone();
    let text = ctx.write("sentences.txt", SENTENCES);
    let mut o = OrtValidateOptions::new(
        target,
        InputSource::Text {
            file: text,
            tokenizer: reference.with_file_name("tokenizer.json"),
            max_sentences: 64,
        },
    );
    o.runs = 10;
    o.warmup = 2;
    validate_onnx(candidate, reference, &o).unwrap_or_else(|e| panic!("validation failed: {e:?}"))
}

/// Op counts of an .onnx file from cargo-edgeai's own protobuf reader (not the driver's).
fn ops(path: &Path) -> std::collections::BTreeMap<String, u64> {
    let m = edgeai::onnx::read_model(path).expect("read onnx");
    let mut all = std::collections::BTreeMap::new();
    m.graph.walk(&mut |g| {
        for (k, v) in &g.op_counts {
            *all.entry(k.clone()).or_insert(0) += v;
        }
    });
    all
}

fn op(ops: &std::collections::BTreeMap<String, u64>, name: &str) -> u64 {
    ops.get(name).copied().unwrap_or(0)
}

struct Figures {
    label: String,
    emb_mean: f64,
    emb_min: f64,
    size: u64,
    p50_ms: f64,
    seconds: f64,
}

fn figures(label: &str, r: &OrtValidationReport, out: &Path, seconds: f64) -> Figures {
    let e = r.embedding.as_ref().expect("embedding agreement");
    assert!(e.sentences >= 16, "{} sentences", e.sentences);
    Figures {
        label: label.into(),
        emb_mean: e.cosine_mean,
        emb_min: e.cosine_min,
        size: std::fs::metadata(out).expect("output").len(),
        p50_ms: r.latency[0].p50_ms,
        seconds,
    }
}

fn print_table(model: &str, rows: &[Figures], fp32: &Path, r: &OrtValidationReport) {
    let mut s = format!(
        "\n{model}: FP32 {:.1} MB, p50 {:.2} ms\n{:<28} {:>10} {:>10} {:>9} {:>9} {:>8}\n",
        std::fs::metadata(fp32).unwrap().len() as f64 / 1e6,
        r.latency[1].p50_ms,
        "quantization",
        "cos mean",
        "cos min",
        "MB",
        "p50 ms",
        "seconds"
    );
    for f in rows {
        s.push_str(&format!(
            "{:<28} {:>10.5} {:>10.5} {:>9.2} {:>9.2} {:>8.1}\n",
            f.label,
            f.emb_mean,
            f.emb_min,
            f.size as f64 / 1e6,
            f.p50_ms,
            f.seconds
        ));
    }
    eprintln!("{s}");
}

fn olive(input: &Path, out: &Path, o: &OliveOptions) -> OliveSummary {
    olive_toolchain();
    let s = quantize_with_olive(input, out, o).unwrap_or_else(|e| panic!("olive failed: {e:?}"));
    eprintln!(
        "olive {:?}: {:.1} s olive run ({} total), passes {:?}, {:?} nodes quantized, ops {}, kept float {}",
        o.quant,
        s.seconds,
        s.details["total_seconds"],
        s.passes,
        s.nodes_quantized,
        s.details["quantized_op_counts"],
        s.details["nodes_excluded"].as_object().map_or(0, |m| m.len()),
    );
    assert_eq!(s.output, std::path::absolute(out).unwrap());
    assert!(out.is_file());
    assert_eq!(
        s.details["output_bytes"].as_u64(),
        Some(std::fs::metadata(out).unwrap().len())
    );
    assert!(s.olive_version.starts_with("0.13"), "{}", s.olive_version);
    // The workflow as run: the pure one plus the driver's node exclusions.
    assert!(s.config["passes"]["quantize"]["nodes_to_exclude"].is_array());
    // Nothing beside OUT but OUT (no staging leftovers, no external data for small models).
    let beside: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".edgeai-") || n.ends_with(".data"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    s
}

fn ort_quant(input: &Path, out: &Path, quant: OnnxQuant, calibration: Option<PathBuf>) -> f64 {
    let t = std::time::Instant::now();
    convert_to_onnx(
        input,
        out,
        &OnnxConvertOptions {
            quant: Some(quant),
            block: None,
            symmetric: false,
            calibration,
        },
    )
    .unwrap_or_else(|e| panic!("onnxruntime quantization failed: {e:?}"));
    t.elapsed().as_secs_f64()
}

// ---- real runs ---------------------------------------------------------------------------------

#[test]
fn tiny_bert_int8_dynamic() {
    let ctx = TestContext::new();
    let fp32 = tiny_bert_fp32();
    let out = ctx.path("tiny-bert-int8.onnx");
    let s = olive(fp32, &out, &opts(OnnxQuant::Int8Dynamic));
    assert_eq!(s.passes, ["OnnxDynamicQuantization"]);
    let o = ops(&out);
    // 2 layers x 6 weight MatMuls, less those the probe sentences flag as outliers (kept FP32,
    // named); the 4 activation MatMuls (QK^T, PV) and the Gathers stay float.
    let kept = outliers(&s);
    assert_eq!(op(&o, "MatMulInteger") + kept, 12, "{o:?}");
    assert_eq!(op(&o, "MatMul"), 4 + kept, "{o:?}");
    assert!(op(&o, "DynamicQuantizeLinear") > 0, "{o:?}");
    assert_eq!(s.nodes_quantized, Some(12 - kept as usize));
    let r = validate(&ctx, &out, fp32);
    let e = r.embedding.as_ref().unwrap();
    eprintln!(
        "tiny-bert olive int8-dynamic: embedding cosine mean {:.5} min {:.5}",
        e.cosine_mean, e.cosine_min
    );
    // Random weights: only the plumbing is judged here, MiniLM judges accuracy.
    assert!(e.cosine_mean > 0.9, "{}", e.cosine_mean);
}

#[test]
fn minilm_int8_dynamic_matches_onnxruntime_path() {
    let ctx = TestContext::new();
    let fp32 = minilm_fp32();
    let out = ctx.path("olive-int8-dynamic.onnx");
    let s = olive(fp32, &out, &opts(OnnxQuant::Int8Dynamic));
    let o = ops(&out);
    let kept = outliers(&s);
    assert_eq!(op(&o, "MatMulInteger") + kept, 36, "{o:?}");
    assert_eq!(s.nodes_quantized, Some(36 - kept as usize));
    assert_eq!(s.details["probe_samples"].as_u64(), Some(24));
    let r = validate(&ctx, &out, fp32);
    let ort_out = ctx.path("ort-int8-dynamic.onnx");
    let ort_s = ort_quant(fp32, &ort_out, OnnxQuant::Int8Dynamic, None);
    let r2 = validate(&ctx, &ort_out, fp32);
    eprintln!(
        "MatMulInteger: olive {} (outliers kept FP32: {kept}), onnxruntime {}",
        op(&o, "MatMulInteger"),
        op(&ops(&ort_out), "MatMulInteger")
    );
    let a = figures("olive int8-dynamic", &r, &out, s.seconds);
    let b = figures("onnxruntime int8-dynamic", &r2, &ort_out, ort_s);
    print_table("all-MiniLM-L6-v2", &[a, b], fp32, &r);
    // The onnxruntime path adds an accuracy-aware search (more nodes FP32, slower); Olive runs
    // the outlier rule only. Both must meet the INT8 gate.
    for (who, e) in [("olive", &r), ("onnxruntime", &r2)] {
        let e = e.embedding.as_ref().unwrap();
        assert!(e.cosine_mean >= 0.99, "{who} cosine mean {}", e.cosine_mean);
    }
    // The word embeddings (47 MB) stay FP32: 90 MB -> < 80 MB.
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size * 10 < std::fs::metadata(fp32).unwrap().len() * 9,
        "{size}"
    );
}

/// Nodes the driver kept FP32 for activation outliers.
fn outliers(s: &OliveSummary) -> u64 {
    s.details["nodes_excluded"].as_object().map_or(0, |m| {
        m.values()
            .filter(|r| r.as_str().is_some_and(|r| r.contains("peak/RMS")))
            .count() as u64
    })
}

#[test]
fn minilm_int8_static_text_calibration() {
    let ctx = TestContext::new();
    let fp32 = minilm_fp32();
    let cal = ctx.write("calibration.txt", CALIBRATION_TEXT);
    let out = ctx.path("olive-int8-static.onnx");
    let o = OliveOptions {
        calibration: Some(cal.clone()),
        ..opts(OnnxQuant::Int8Static)
    };
    let s = olive(fp32, &out, &o);
    assert_eq!(s.passes, ["OnnxStaticQuantization"]);
    assert_eq!(s.details["calibration_samples"].as_u64(), Some(16));
    let ops_o = ops(&out);
    assert!(op(&ops_o, "QuantizeLinear") > 0, "{ops_o:?}");
    assert!(op(&ops_o, "DequantizeLinear") > 0, "{ops_o:?}");
    let r = validate(&ctx, &out, fp32);
    let ort_out = ctx.path("ort-int8-static.onnx");
    let ort_s = ort_quant(fp32, &ort_out, OnnxQuant::Int8Static, Some(cal));
    let r2 = validate(&ctx, &ort_out, fp32);
    let ops_r = ops(&ort_out);
    eprintln!(
        "QuantizeLinear/DequantizeLinear: olive {}/{}, onnxruntime {}/{}",
        op(&ops_o, "QuantizeLinear"),
        op(&ops_o, "DequantizeLinear"),
        op(&ops_r, "QuantizeLinear"),
        op(&ops_r, "DequantizeLinear")
    );
    let a = figures("olive int8-static", &r, &out, s.seconds);
    let b = figures("onnxruntime int8-static", &r2, &ort_out, ort_s);
    print_table("all-MiniLM-L6-v2", &[a, b], fp32, &r);
    let e = r.embedding.as_ref().unwrap();
    assert!(e.cosine_mean >= 0.99, "olive cosine mean {}", e.cosine_mean);
    assert_eq!(s.nodes_quantized, Some(36 - outliers(&s) as usize));
}

#[test]
fn minilm_int4_rtn() {
    let ctx = TestContext::new();
    let fp32 = minilm_fp32();
    let out = ctx.path("olive-int4.onnx");
    let s = olive(fp32, &out, &opts(OnnxQuant::Int4));
    assert_eq!(s.passes, ["OnnxBlockWiseRtnQuantization"]);
    let o = ops(&out);
    assert_eq!(op(&o, "MatMulNBits"), 36, "{o:?}");
    // Embeddings stay float (as in the onnxruntime path).
    assert_eq!(op(&o, "GatherBlockQuantized"), 0, "{o:?}");
    let r = validate(&ctx, &out, fp32);
    let f = figures("olive int4 (b32, asym)", &r, &out, s.seconds);
    print_table("all-MiniLM-L6-v2", &[f], fp32, &r);
    let e = r.embedding.as_ref().unwrap();
    assert!(
        e.cosine_mean >= 0.95,
        "olive int4 cosine mean {}",
        e.cosine_mean
    );
}

/// An input with external data (weights in `model.onnx.data`) gives a single-file output; the
/// same input without its data file is refused naming the file.
#[test]
fn external_data_input() {
    olive_toolchain();
    let ctx = TestContext::new();
    let tc = edgeai_toolchain::find("olive").expect("olive toolchain");
    let script = ctx.write(
        "ext.py",
        r#"
import os, shutil, sys, onnx
src, d = sys.argv[1], sys.argv[2]
for sub in ("ext", "missing"):
    os.makedirs(f"{d}/{sub}", exist_ok=True)
    onnx.save(onnx.load(src), f"{d}/{sub}/model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
os.remove(f"{d}/missing/model.onnx.data")
shutil.copy(os.path.join(os.path.dirname(src), "tokenizer.json"), f"{d}/ext/tokenizer.json")
"#,
    );
    let o = Command::new(tc.python())
        .arg(&script)
        .arg(tiny_bert_fp32())
        .arg(ctx.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let out = ctx.path("missing-int8.onnx");
    let e = quantize_with_olive(
        &ctx.path("missing/model.onnx"),
        &out,
        &opts(OnnxQuant::Int8Dynamic),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("external data file `model.onnx.data` is missing"),
        "{e}"
    );
    assert!(!out.exists());

    let input = ctx.path("ext/model.onnx");
    let out = ctx.path("ext-int8.onnx");
    let s = olive(&input, &out, &opts(OnnxQuant::Int8Dynamic));
    let kept = outliers(&s);
    assert_eq!(s.nodes_quantized, Some(12 - kept as usize));
    assert_eq!(op(&ops(&out), "MatMulInteger") + kept, 12);
    assert!(!edgeai::onnx::read_model(&out).unwrap().has_external_data());
    let r = validate(&ctx, &out, &input);
    assert!(r.embedding.as_ref().unwrap().cosine_mean > 0.9);
}

// ---- bad input ---------------------------------------------------------------------------------

#[test]
fn missing_input_is_named() {
    let ctx = TestContext::new();
    let input = ctx.path("nope.onnx");
    let out = ctx.path("out.onnx");
    let e = quantize_with_olive(&input, &out, &opts(OnnxQuant::Int8Dynamic)).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidModel { path, .. } if path == &input),
        "{e:?}"
    );
    assert!(e.to_string().contains("nope.onnx"), "{e}");
    assert!(!out.exists());
}

#[test]
fn corrupt_onnx_is_named_and_writes_nothing() {
    olive_toolchain();
    let ctx = TestContext::new();
    let input = ctx.write(
        "broken.onnx",
        b"\x08\x07this is not a protobuf model\xff\xff\xff",
    );
    let out = ctx.path("out.onnx");
    let e = quantize_with_olive(&input, &out, &opts(OnnxQuant::Int8Dynamic)).unwrap_err();
    let Error::InvalidModel { path, message, .. } = &e else {
        panic!("expected InvalidModel, got {e:?}");
    };
    assert_eq!(path, &std::path::absolute(&input).unwrap());
    assert!(message.contains("not a readable ONNX model"), "{message}");
    assert_eq!(e.exit_code(), 1);
    assert!(!out.exists());
}

#[test]
fn bad_calibration_is_named() {
    olive_toolchain();
    let ctx = TestContext::new();
    // A calibration text, but no tokenizer.json beside the model nor beside the text.
    let model = ctx.path("m/model.onnx");
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    std::fs::copy(tiny_bert_fp32(), &model).unwrap();
    let cal = ctx.write("cal/calibration.txt", "one line\n");
    let out = ctx.path("out.onnx");
    let o = OliveOptions {
        calibration: Some(cal),
        ..opts(OnnxQuant::Int8Static)
    };
    let e = quantize_with_olive(&model, &out, &o).unwrap_err();
    assert!(e.to_string().contains("calibration.txt"), "{e}");
    assert!(
        e.to_string().contains("needs the model's tokenizer.json"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Odd models, made with the olive toolchain's onnx: `custom.onnx` (a custom-domain op onnxruntime
/// does not know), `double.onnx` (a float64 MatMul, which Olive's static quantization fails on)
/// with calibration samples in `cal-double/`.
const MAKE_ODD_MODELS: &str = r#"
import os, sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
d = sys.argv[1]
def save(nodes, name, tp, dt, opsets):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(dt), "w")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", tp, ["n", 64])],
                          [helper.make_tensor_value_info("y", tp, ["n", 64])], [w])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    onnx.save(m, f"{d}/{name}")
save([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
      helper.make_node("Frobnicate", ["h"], ["y"], name="f", domain="com.example")],
     "custom.onnx", TensorProto.FLOAT, np.float32, [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
save([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "double.onnx", TensorProto.DOUBLE, np.float64,
     [helper.make_opsetid("", 17)])
os.makedirs(f"{d}/cal-double", exist_ok=True)
for i in range(4):
    np.savez(f"{d}/cal-double/s{i}.npz", x=np.random.default_rng(i).standard_normal((2, 64)))
"#;

fn odd_models(ctx: &TestContext) {
    let tc = edgeai_toolchain::find("olive").expect("olive toolchain");
    let script = ctx.write("odd.py", MAKE_ODD_MODELS);
    let o = Command::new(tc.python())
        .arg(&script)
        .arg(ctx.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn model_onnxruntime_cannot_load_is_named() {
    olive_toolchain();
    let ctx = TestContext::new();
    odd_models(&ctx);
    let input = ctx.path("custom.onnx");
    let out = ctx.path("out.onnx");
    let e = quantize_with_olive(&input, &out, &opts(OnnxQuant::Int8Dynamic)).unwrap_err();
    let Error::InvalidModel { path, message, .. } = &e else {
        panic!("expected InvalidModel, got {e:?}");
    };
    assert_eq!(path, &std::path::absolute(&input).unwrap());
    assert!(message.contains("cannot load the model"), "{message}");
    assert!(message.contains("Frobnicate"), "{message}");
    assert!(!out.exists());
}

#[test]
fn olive_failure_keeps_the_workflow_and_says_how_to_rerun() {
    olive_toolchain();
    let ctx = TestContext::new();
    odd_models(&ctx);
    let out = ctx.path("out.onnx");
    let o = OliveOptions {
        calibration: Some(ctx.path("cal-double")),
        ..opts(OnnxQuant::Int8Static)
    };
    let e = quantize_with_olive(&ctx.path("double.onnx"), &out, &o).unwrap_err();
    let Error::ToolFailed {
        tool,
        message,
        help,
    } = &e
    else {
        panic!("expected ToolFailed, got {e:?}");
    };
    eprintln!("{message}\nhelp: {help}");
    assert_eq!(tool, "olive");
    assert!(message.contains("olive run"), "{message}");
    assert!(message.contains("double.onnx"), "{message}");
    // The tail of Olive's log: onnxruntime's calibration failure.
    assert!(
        message.contains("Traceback") || message.contains("ERROR"),
        "{message}"
    );
    assert!(help.contains("olive run --config"), "{help}");
    assert_eq!(e.exit_code(), 1);
    assert!(!out.exists());
    // The kept work directory holds the workflow as run and Olive's log.
    let config = help
        .split_whitespace()
        .map(|w| w.trim_end_matches([',', '`']))
        .find(|w| w.ends_with("olive_config.json") && w.starts_with('/'))
        .map(PathBuf::from)
        .expect("config path in help");
    let kept = config.parent().unwrap().to_path_buf();
    let workflow: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        workflow["passes"]["quantize"]["type"],
        "OnnxStaticQuantization"
    );
    assert!(kept.join("olive.log").is_file());
    assert!(kept.join("edgeai_olive_data.py").is_file());
    std::fs::remove_dir_all(&kept).unwrap();
}

/// The CLI surface: `convert --framework olive`, and the missing toolchain names its install.
#[test]
fn cli_framework_olive() {
    let ctx = TestContext::new();
    let out = ctx.path("out.onnx");
    let fp32 = tiny_bert_fp32().to_str().unwrap().to_string();
    let empty = ctx.path("no-toolchains");
    std::fs::create_dir_all(&empty).unwrap();
    let run = |args: &[&str], toolchains: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"));
        c.arg("edgeai").args(args).env("NO_COLOR", "1");
        if let Some(t) = toolchains {
            c.env("EDGEAI_TOOLCHAINS_DIR", t);
        }
        c.output().unwrap()
    };
    let base = [
        "convert",
        fp32.as_str(),
        "--format",
        "onnx",
        "--framework",
        "olive",
        "--quant",
        "int8-dynamic",
        "-o",
        out.to_str().unwrap(),
    ];
    let o = run(&base, Some(&empty));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cargo edgeai toolchain install olive"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let no_quant: Vec<&str> = base[..6].iter().chain(&base[8..]).copied().collect();
    let o = run(&no_quant, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs --quant"), "{}", stderr(&o));
    let mut other = base;
    other[5] = "tensorrt";
    let o = run(&other, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown --framework"), "{}", stderr(&o));
}
