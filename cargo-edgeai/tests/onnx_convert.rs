//! `cargo edgeai convert --format onnx` against the real onnxruntime toolchain: the torch-free
//! BERT export matches an independent float64 numpy forward pass, INT8/INT4 MiniLM embeddings
//! stay close to FP32 (measured by the Rust `ort` validator and cross-checked in Python over
//! the same sentences), silero-vad INT8 static calibrated on generated speech agrees with FP32
//! on other generated speech, and bad input exits 1 with a clear message and no output file.
//! Needs `cargo edgeai toolchain install onnxruntime` (the tests fail, not skip, without it),
//! the models of scripts/fetch-test-models.sh and `espeak-ng` (Debian package) for the audio.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{minilm_dir, stderr, stdout, TestContext};

/// Independent checks run in the toolchain's Python: its own safetensors reader and numpy BERT,
/// embedding comparison, silero-vad calibration audio and agreement.
const CHECK_PY: &str = r##"
"""Test helper for cargo-edgeai's ONNX backend tests (runs in the `onnxruntime` toolchain).
Independent of the driver under test: its own safetensors reader and numpy BERT forward pass."""
import json
import struct
import sys

import numpy as np
import onnxruntime as ort



def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def tokenize(model_dir, sentences):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(128)
    enc = tok.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}


def load_st(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        if v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], np.float32).reshape(v["shape"]).astype(np.float64)
    return out


def numpy_bert(model_dir, feed):
    """float64 BertModel forward (HF semantics) + mean pooling + L2 normalisation."""
    from math import erf, sqrt
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = load_st(f"{model_dir}/model.safetensors")
    nh, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    ids, mask, tt = feed["input_ids"], feed["attention_mask"], feed["token_type_ids"]
    B, S = ids.shape

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    verf = np.vectorize(erf)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][np.arange(S)][None] \
        + w["embeddings.token_type_embeddings.weight"][tt]
    x = ln(x, "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float64).min
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        H = x.shape[-1]
        dh = H // nh

        def split(y):
            return y.reshape(B, S, nh, dh).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / sqrt(dh) + bias
        s = s - s.max(-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(-1, keepdims=True)
        c = (pr @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = ln(lin(c, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        f = lin(x, f"{p}.intermediate.dense")
        f = 0.5 * f * (1.0 + verf(f / sqrt(2.0)))
        x = ln(lin(f, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return x, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def cos(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def embed(s, feed):
    names = {i.name for i in s.get_inputs()}
    out = s.run(["sentence_embedding"], {k: v for k, v in feed.items() if k in names})[0]
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def cmd_reference(model_dir, onnx_path, sentences_file):
    sentences = read_sentences(sentences_file)
    feed = tokenize(model_dir, sentences)
    hid, emb = session(onnx_path).run(["last_hidden_state", "sentence_embedding"], feed)
    rhid, remb = numpy_bert(model_dir, feed)
    m = feed["attention_mask"].astype(bool)
    tok_cos = cos(hid[m], rhid[m])
    emb_cos = cos(emb, remb)
    return {"sentences": len(sentences), "tokens": int(m.sum()), "token_cos_min": float(tok_cos.min()),
            "embedding_cos_min": float(emb_cos.min()), "hidden_max_abs": float(np.abs(hid[m] - rhid[m]).max()),
            "embedding_norm_max_dev": float(np.abs(np.linalg.norm(emb, axis=-1) - 1).max())}


def read_sentences(path):
    return [l.strip() for l in open(path, encoding="utf-8").read().splitlines() if l.strip()]


def cmd_compare(model_dir, fp32, cand, sentences_file):
    # One sentence per run (unpadded, batch 1), as the Rust validator does: dynamic
    # quantization's activation ranges are per run, and an embedding service typically embeds
    # one text at a time. Embedding = the model's `sentence_embedding` (mean pooling over the
    # attention mask + L2 normalisation, as sentence-transformers' Pooling + Normalize).
    sentences = read_sentences(sentences_file)
    feeds = [tokenize(model_dir, [s]) for s in sentences]
    a, b = session(fp32), session(cand)
    c = np.concatenate([cos(embed(a, f), embed(b, f)) for f in feeds])
    return {"sentences": len(sentences), "cos_min": float(c.min()), "cos_mean": float(c.mean()),
            "per_sentence": [float(x) for x in c]}


SR = 16000
FRAME = 512    # new samples per call at 16 kHz
CONTEXT = 64   # silero-vad v5 sees the last 64 samples of the previous call before each frame

CAL_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Please call me back when you get this message.",
             "Seven apples and twelve oranges were sold today.", "Turn left at the next traffic light.",
             "The weather will be sunny tomorrow morning.", "I would like a cup of coffee with milk."]
CAL_VOICES = ["en-us", "en-gb+f2", "en-us+m3"]
VAL_TEXTS = ["Voice activity detection finds the parts of a recording where somebody speaks.",
             "Our flight to Lisbon was delayed by forty minutes.", "Can you hear me now? Good, let's begin the meeting.",
             "The library closes at nine o'clock on Fridays.", "Numbers like three hundred and sixty five are read aloud.",
             "She whispered the answer so nobody else could hear it.", "Put the red box on the top shelf, please.",
             "Rain is expected in the north later this evening."]
VAL_VOICES = ["en-gb", "en-us+f4", "en-us+klatt", "en-gb-scotland"]


def espeak(text, voice, speed, pitch):
    """Synthetic speech from espeak-ng (22.05 kHz), resampled to 16 kHz (FFT resampling)."""
    import subprocess, tempfile, wave
    import shutil
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to generate the speech audio: apt-get install espeak-ng")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, text], check=True)
        w = wave.open(f.name)
        sr = w.getframerate()
        a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768
    n = int(round(len(a) * SR / sr))
    return np.fft.irfft(np.fft.rfft(a)[: n // 2 + 1], n) * (n / len(a))


def speech_stream(seed, texts, voices):
    """Utterances separated by non-speech: near-silence, or low-pass (brown) noise every third
    gap; light noise under the speech. Returns 16 kHz float32 audio and per-frame labels
    (True: the frame is mostly speech)."""
    rng = np.random.default_rng(int(seed))
    parts, labels = [], []
    for i, text in enumerate(texts):
        n = int(rng.uniform(0.8, 1.6) * SR)
        if i % 3 == 2:
            gap = np.cumsum(rng.standard_normal(n))
            gap -= np.convolve(gap, np.ones(400) / 400, "same")
            gap *= 0.01 / (gap.std() + 1e-9)
        else:
            gap = rng.standard_normal(n) * 0.001
        parts.append(gap)
        labels.append(np.zeros(n, bool))
        s = espeak(text, voices[i % len(voices)], int(rng.uniform(130, 175)), int(rng.uniform(30, 70)))
        s = s / (np.abs(s).max() + 1e-9) * rng.uniform(0.3, 0.8) + rng.standard_normal(len(s)) * 0.003
        parts.append(s)
        labels.append(np.ones(len(s), bool))
    parts.append(rng.standard_normal(SR) * 0.001)
    labels.append(np.zeros(SR, bool))
    audio, lab = np.concatenate(parts).astype(np.float32), np.concatenate(labels)
    n = len(audio) // FRAME * FRAME
    return audio[:n], lab[:n].reshape(-1, FRAME).mean(1) > 0.5


def windows(audio):
    """Model inputs [1, CONTEXT + FRAME]: each frame with the previous 64 samples before it."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return [padded[None, i:i + CONTEXT + FRAME] for i in range(0, len(audio), FRAME)]


def vad_run(path, audio):
    s = session(path)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SR, np.int64)
    probs, states = [], []
    for x in windows(audio):
        states.append(state)
        p, state = s.run(None, {"input": x, "state": state, "sr": sr})
        probs.append(float(p.reshape(-1)[0]))
    return np.array(probs), states


def cmd_silero_calib(fp32, out_dir, seed):
    import os
    os.makedirs(out_dir, exist_ok=True)
    audio, lab = speech_stream(seed, CAL_TEXTS, CAL_VOICES)
    # Real recurrent states: the FP32 model's own state at each frame.
    probs, states = vad_run(fp32, audio)
    win = windows(audio)
    idx = np.linspace(0, len(probs) - 1, 64).astype(int)
    for k, i in enumerate(idx):
        np.savez(f"{out_dir}/frame{k:03}.npz", input=win[i], state=states[i], sr=np.array(SR, np.int64))
    return {"frames": int(len(idx)), "speech_fraction": float((probs[idx] > 0.5).mean()),
            "stream_seconds": len(audio) / SR}


def cmd_silero_stream(fp32, out_dir, seed):
    """Validation stream (other texts and voices than calibration): every frame as one .npz, in
    order (the validator feeds the state back); FP32 probabilities on speech and non-speech."""
    import os
    os.makedirs(out_dir, exist_ok=True)
    audio, lab = speech_stream(seed, VAL_TEXTS, VAL_VOICES)
    zero = np.zeros((2, 1, 128), np.float32)
    for i, x in enumerate(windows(audio)):
        np.savez(f"{out_dir}/f{i:05}.npz", input=x, state=zero, sr=np.array(SR, np.int64))
    p, _ = vad_run(fp32, audio)
    return {"frames": int(len(p)), "seconds": len(audio) / SR, "speech_frames": int(lab.sum()),
            "fp32_speech_mean": float(p[lab].mean()), "fp32_speech_above": float((p[lab] > 0.5).mean()),
            "fp32_silence_mean": float(p[~lab].mean()), "fp32_silence_above": float((p[~lab] > 0.5).mean()),
            "fp32_silence_max": float(p[~lab].max())}


if __name__ == "__main__":
    cmd = {"reference": cmd_reference, "compare": cmd_compare, "silero-calib": cmd_silero_calib,
           "silero-stream": cmd_silero_stream}[sys.argv[1]]
    print(json.dumps(cmd(*sys.argv[2:])))
"##;

fn python() -> PathBuf {
    edgeai_toolchain::find("onnxruntime")
        .unwrap_or_else(|e| panic!("{e}: run `cargo edgeai toolchain install onnxruntime`"))
        .python()
}

/// Run CHECK_PY `args` in the toolchain; its JSON answer.
fn check(ctx: &TestContext, args: &[&str]) -> serde_json::Value {
    let script = ctx.write("onnx_check.py", CHECK_PY);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run toolchain python");
    assert!(
        out.status.success(),
        "onnx_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("onnx_check.py JSON")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn silero_dir() -> PathBuf {
    std::env::var_os("EDGEAI_SILERO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            minilm_dir()
                .parent()
                .and_then(Path::parent)
                .expect("models cache")
                .join("silero_vad/data")
        })
}

/// The FP32 MiniLM export, made once per test binary (a leaked temp dir keeps it alive).
fn minilm_fp32() -> &'static Path {
    static FP32: OnceLock<PathBuf> = OnceLock::new();
    FP32.get_or_init(|| {
        let ctx = Box::leak(Box::new(TestContext::new()));
        let out = ctx.path("minilm-fp32.onnx");
        let o = ctx.run(&[
            "convert",
            s(&minilm_dir()),
            "--format",
            "onnx",
            "-o",
            s(&out),
        ]);
        assert!(o.status.success(), "export failed: {}", stderr(&o));
        out
    })
}

/// The ONE sentence set every MiniLM comparison uses (this file and tests/ort_validate.rs):
/// 20 fixed, varied sentences (one- and two-word, questions, numbers and units, URLs and
/// e-mail, heavy punctuation, accented Latin, German, Spanish, Japanese, Russian, two long).
const SENTENCES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx/sentences.txt");
/// Calibration text for INT8 static (32 other sentences of the same variety: never the
/// validation sentences).
const CALIBRATION_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/onnx/calibration.txt"
);

/// What one quantization measured: the Rust `ort` validator's figures and the summary.
struct Measured {
    min: f64,
    mean: f64,
    summary: serde_json::Value,
}

/// Quantize MiniLM with `flags`, then measure the embedding cosine vs FP32 over SENTENCES_FILE
/// with `cargo edgeai validate` (Rust, `ort`) and with the toolchain's Python onnxruntime; the
/// two must agree (same sentences, same tokenization, same pooled output).
fn minilm_quant(flags: &[&str]) -> Measured {
    let ctx = TestContext::new();
    let fp32 = minilm_fp32();
    let out = ctx.path("q.onnx");
    let model = minilm_dir();
    let mut args = vec![
        "convert",
        s(&model),
        "--format",
        "onnx",
        "-o",
        s(&out),
        "--report",
        "json",
    ];
    args.extend_from_slice(flags);
    if flags.contains(&"int8-static") {
        args.extend_from_slice(&["--calibration", CALIBRATION_FILE]);
    }
    let o = ctx.run(&args);
    assert!(o.status.success(), "{flags:?} failed: {}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("summary JSON");
    let size = std::fs::metadata(&out).expect("output").len();
    assert_eq!(summary["output_bytes"].as_u64(), Some(size));
    let tok = model.join("tokenizer.json");
    let v = ctx.run(&[
        "validate",
        "--model",
        s(&out),
        "--reference",
        s(fp32),
        "--text",
        SENTENCES_FILE,
        "--tokenizer",
        s(&tok),
        "--runs",
        "5",
        "--format",
        "json",
    ]);
    assert!(v.status.success(), "validate: {}", stderr(&v));
    let r: serde_json::Value = serde_json::from_str(&stdout(&v)).expect("report JSON");
    let e = &r["embedding"];
    let (min, mean) = (
        e["cosine_min"].as_f64().expect("cosine_min"),
        e["cosine_mean"].as_f64().expect("cosine_mean"),
    );
    let py = check(
        &ctx,
        &["compare", s(&model), s(fp32), s(&out), SENTENCES_FILE],
    );
    eprintln!(
        "MiniLM {flags:?}: embedding cosine over {} sentences: Rust ort min {min:.5} mean {mean:.5}; Python onnxruntime min {:.5} mean {:.5}; {:.1} MB (FP32 {:.1} MB)\n  per sentence: {}",
        e["sentences"],
        py["cos_min"].as_f64().unwrap_or(f64::NAN),
        py["cos_mean"].as_f64().unwrap_or(f64::NAN),
        size as f64 / 1e6,
        std::fs::metadata(fp32).expect("fp32").len() as f64 / 1e6,
        py["per_sentence"]
    );
    assert_eq!(e["sentences"].as_u64(), Some(20));
    assert_eq!(py["sentences"].as_u64(), Some(20));
    // Same sentences, same tokens (tests/ort_validate.rs checks the WordPiece ids), same output:
    // the two runtimes' measurements agree to float32 noise.
    assert!(
        (py["cos_min"].as_f64().unwrap() - min).abs() < 1e-4
            && (py["cos_mean"].as_f64().unwrap() - mean).abs() < 1e-4,
        "Rust {min} / {mean} vs Python {py}"
    );
    Measured { min, mean, summary }
}

#[test]
fn minilm_export_matches_numpy_reference() {
    let ctx = TestContext::new();
    let r = check(
        &ctx,
        &[
            "reference",
            s(&minilm_dir()),
            s(minilm_fp32()),
            SENTENCES_FILE,
        ],
    );
    eprintln!("MiniLM export vs numpy float64: {r}");
    assert!(r["token_cos_min"].as_f64().unwrap() >= 0.9999, "{r}");
    assert!(r["embedding_cos_min"].as_f64().unwrap() >= 0.9999, "{r}");
    assert!(r["embedding_norm_max_dev"].as_f64().unwrap() < 1e-4, "{r}");
}

/// The INT8 recipe is in the summary: which nodes stay FP32 and why, and the accuracy target
/// met on the calibration/probe samples.
fn assert_recipe(summary: &serde_json::Value, source: &str) {
    let r = &summary["recipe"];
    assert_eq!(r["weights"], "int8, symmetric, per output channel", "{r}");
    assert_eq!(r["reduce_range"], false);
    let kept = r["kept_fp32"].as_array().expect("kept_fp32");
    assert!(!kept.is_empty(), "{r}");
    for k in kept {
        assert!(k["node"].is_string() && k["op"] == "MatMul", "{k}");
        let why = k["reason"].as_str().unwrap_or("");
        assert!(
            why.starts_with("activation peak/RMS") || why.starts_with("accuracy search"),
            "{k}"
        );
    }
    // MiniLM's FFN projections read GELU/LayerNorm outputs with outlier channels.
    assert!(kept.iter().any(|k| k["node"] == "l0_ff2_mm_node"), "{r}");
    let a = &r["accuracy"];
    assert_eq!(a["met"], true, "{a}");
    assert!(a["achieved"].as_f64().unwrap() >= 0.99, "{a}");
    assert!(a["source"].as_str().unwrap().contains(source), "{a}");
    // The FP32 nodes and the quantized ones add up to every candidate.
    assert_eq!(
        summary["quantized_nodes"].as_u64().unwrap() + kept.len() as u64,
        36,
        "{summary}"
    );
}

#[test]
fn minilm_int8_dynamic() {
    let m = minilm_quant(&["--quant", "int8-dynamic"]);
    assert!(m.min >= 0.99, "cosine min {} (mean {})", m.min, m.mean);
    assert_recipe(&m.summary, "built-in probe text");
    assert_eq!(
        m.summary["quantized_op_counts"]["MatMulInteger"].as_u64(),
        m.summary["quantized_nodes"].as_u64(),
        "{}",
        m.summary
    );
    // Embedding tables (Gather) are not quantized by this scheme: listed by name.
    assert!(m.summary["unquantized_weight_ops"]["Gather"]["nodes"]
        .as_array()
        .is_some_and(|n| !n.is_empty()));
    assert!(
        m.summary["output_bytes"].as_u64().unwrap()
            < std::fs::metadata(minilm_fp32()).unwrap().len()
    );
}

#[test]
fn minilm_int8_static_text_calibration() {
    let m = minilm_quant(&["--quant", "int8-static"]);
    assert!(m.min >= 0.99, "cosine min {} (mean {})", m.min, m.mean);
    assert_recipe(&m.summary, "calibration data");
    assert_eq!(
        m.summary["calibration_samples"].as_u64(),
        Some(32),
        "{}",
        m.summary
    );
    assert!(m.summary["quantized_op_counts"]["QuantizeLinear"].as_u64() > Some(0));
}

#[test]
fn minilm_int4_block32() {
    let m = minilm_quant(&["--quant", "int4", "--block", "32"]);
    assert!(m.min >= 0.95, "cosine min {} (mean {})", m.min, m.mean);
    // Every weight MatMul is MatMulNBits: 4-bit, or 8-bit for the sensitive ones (listed).
    assert_eq!(
        m.summary["quantized_op_counts"]["MatMulNBits"].as_u64(),
        Some(36)
    );
    let r = &m.summary["recipe"];
    assert_eq!(r["accuracy"]["met"], true, "{r}");
    let kept = r["kept_int8"].as_array().expect("kept_int8");
    assert!(!kept.is_empty() && kept.len() <= 21, "{r}");
    assert_eq!(
        m.summary["kept_int8_sensitive"]
            .as_object()
            .map(|o| o.len()),
        Some(kept.len())
    );
}

#[test]
fn minilm_int4_block128_symmetric() {
    let m = minilm_quant(&["--quant", "int4", "--block", "128", "--symmetric"]);
    // Symmetric 128-blocks are the coarsest INT4 setting: the mean meets the INT4 gate, single
    // sentences dip below it (measured).
    assert!(m.mean >= 0.95, "cosine mean {}", m.mean);
    assert!(m.min >= 0.93, "cosine min {}", m.min);
    assert_eq!(m.summary["symmetric"], serde_json::json!(true));
    assert_eq!(m.summary["block"].as_u64(), Some(128));
}

/// silero-vad INT8 static, calibrated on generated speech (espeak-ng, needs the Debian package
/// `espeak-ng`), validated by `cargo edgeai validate` on another generated stream (other texts,
/// voices and seed) run frame by frame with the recurrent state fed back.
#[test]
fn silero_vad_int8_static_agrees_with_fp32() {
    let ctx = TestContext::new();
    let fp32 = silero_dir().join("silero_vad_16k_op15.onnx");
    assert!(
        fp32.is_file(),
        "{} missing: run scripts/fetch-test-models.sh",
        fp32.display()
    );
    let cal = ctx.path("calibration");
    let g = check(&ctx, &["silero-calib", s(&fp32), s(&cal), "7"]);
    assert_eq!(g["frames"].as_u64(), Some(64));
    // Calibration frames reach speech: activation ranges cover it.
    assert!(g["speech_fraction"].as_f64().unwrap() > 0.3, "{g}");
    let out = ctx.path("vad-int8.onnx");
    let o = ctx.run(&[
        "convert",
        s(&fp32),
        "--format",
        "onnx",
        "--quant",
        "int8-static",
        "--calibration",
        s(&cal),
        "-o",
        s(&out),
        "--report",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["calibration_samples"].as_u64(), Some(64));
    // The two LSTMs keep float weights: the scheme lists them.
    assert!(
        summary["unquantized_weight_ops"]["LSTM"]["count"].as_u64() >= Some(1),
        "{summary}"
    );
    eprintln!("silero-vad INT8 static recipe: {}", summary["recipe"]);

    // Validation stream: the FP32 model finds the speech and not the silence, so agreement on
    // it means something.
    let val = ctx.path("validation");
    let st = check(&ctx, &["silero-stream", s(&fp32), s(&val), "1234"]);
    eprintln!("silero-vad validation stream (FP32): {st}");
    assert!(st["frames"].as_u64().unwrap() >= 900, "{st}");
    assert!(st["fp32_speech_mean"].as_f64().unwrap() > 0.5, "{st}");
    assert!(st["fp32_speech_above"].as_f64().unwrap() >= 0.75, "{st}");
    assert!(st["fp32_silence_mean"].as_f64().unwrap() < 0.5, "{st}");
    assert!(st["fp32_silence_above"].as_f64().unwrap() <= 0.05, "{st}");

    let o = ctx.run(&[
        "validate",
        "--model",
        s(&out),
        "--reference",
        s(&fp32),
        "--inputs",
        s(&val),
        "--runs",
        "20",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["inputs"]["samples"], st["frames"]);
    assert_eq!(r["inputs"]["recurrent_state"][0], "state <- stateN", "{r}");
    let prob = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "output")
        .expect("output `output`")
        .clone();
    let d = &prob["decision"];
    eprintln!(
        "silero-vad INT8 static vs FP32 over {} frames: decision agreement {:.2}% (speech: FP32 {:.1}%, INT8 {:.1}%), max |diff| {:.4}, probability cosine {:.5}",
        d["samples"],
        d["agreement"].as_f64().unwrap() * 100.0,
        d["reference_positive"].as_f64().unwrap() * 100.0,
        d["candidate_positive"].as_f64().unwrap() * 100.0,
        prob["max_abs_error"].as_f64().unwrap(),
        prob["cosine_mean"].as_f64().unwrap()
    );
    assert_eq!(d["threshold"].as_f64(), Some(0.5));
    assert!(d["agreement"].as_f64().unwrap() >= 0.95, "{prob}");
    assert!(prob["max_abs_error"].as_f64().unwrap() < 1.0, "{prob}");
    // The terminal report says it too.
    let o = ctx.run(&[
        "validate",
        "--model",
        s(&out),
        "--reference",
        s(&fp32),
        "--inputs",
        s(&val),
        "--runs",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("output decision (> 0.5): agreement")
            && text.contains("recurrent state fed back: state <- stateN"),
        "{text}"
    );
}

/// Run a convert that must fail: exit 1, `needle` in stderr, no OUT and no temp leftovers.
fn assert_rejected(ctx: &TestContext, args: &[&str], out: &Path, needle: &str) {
    let o = ctx.run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in:\n{err}"
    );
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".edgeai-onnx-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// Write `code` (Python using onnx/numpy, `D` = the context dir) and run it in the toolchain.
fn py(ctx: &TestContext, code: &str) {
    let f = ctx.write("gen.py", code);
    let o = Command::new(python())
        .arg(&f)
        .arg(ctx.path(""))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_calibration_is_rejected_with_names() {
    let ctx = TestContext::new();
    let fp32 = minilm_fp32();
    py(
        &ctx,
        r#"
import sys, os, numpy as np
d = sys.argv[1]
ok = np.array([[101, 7592, 102]], np.int64)
for name, feed in {
    "shape": dict(input_ids=ok[None], attention_mask=np.ones_like(ok), token_type_ids=np.zeros_like(ok)),
    "dtype": dict(input_ids=ok.astype(np.int32), attention_mask=np.ones_like(ok), token_type_ids=np.zeros_like(ok)),
    "name": dict(input_idz=ok, attention_mask=np.ones_like(ok), token_type_ids=np.zeros_like(ok)),
}.items():
    os.makedirs(f"{d}/{name}", exist_ok=True)
    np.savez(f"{d}/{name}/s0.npz", **feed)
"#,
    );
    let out = ctx.path("out.onnx");
    let base = |cal: &str| {
        vec![
            "convert".to_string(),
            s(fp32).to_string(),
            "--format".into(),
            "onnx".into(),
            "--quant".into(),
            "int8-static".into(),
            "--calibration".into(),
            s(&ctx.path(cal)).to_string(),
            "-o".into(),
            s(&out).to_string(),
        ]
    };
    for (cal, needle) in [
        ("shape", "`input_ids`"),
        ("shape", "expected shape [batch, sequence], found [1, 1, 3]"),
        ("dtype", "expected dtype int64, found int32"),
        ("name", "`input_idz`"),
        ("name", "is not an input of the model"),
    ] {
        let args = base(cal);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_rejected(&ctx, &args, &out, needle);
    }
}

#[test]
fn missing_external_data_is_named() {
    let ctx = TestContext::new();
    py(
        &ctx,
        r#"
import sys, os, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
d = sys.argv[1]
w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], [w])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
onnx.save(m, f"{d}/ext.onnx", save_as_external_data=True, location="ext.weights", size_threshold=0)
os.remove(f"{d}/ext.weights")
"#,
    );
    let out = ctx.path("out.onnx");
    assert_rejected(
        &ctx,
        &[
            "convert",
            s(&ctx.path("ext.onnx")),
            "--format",
            "onnx",
            "--quant",
            "int8-dynamic",
            "-o",
            s(&out),
        ],
        &out,
        "external data file `ext.weights` is missing",
    );
}

#[test]
fn int4_without_matmul_exits_1() {
    let ctx = TestContext::new();
    let vad = silero_dir().join("silero_vad_16k_op15.onnx");
    let out = ctx.path("out.onnx");
    assert_rejected(
        &ctx,
        &[
            "convert",
            s(&vad),
            "--format",
            "onnx",
            "--quant",
            "int4",
            "-o",
            s(&out),
        ],
        &out,
        "int4 can quantize nothing in this model",
    );
}

/// "Ops the chosen scheme cannot quantize (listed by name)": a scheme with nothing to quantize
/// exits 1 naming the op types the model has and the ones the scheme handles.
#[test]
fn schemes_with_nothing_to_quantize_list_the_ops() {
    let ctx = TestContext::new();
    let vad = silero_dir().join("silero_vad_16k_op15.onnx");
    let out = ctx.path("out.onnx");
    let int4 = [
        "convert",
        s(&vad),
        "--format",
        "onnx",
        "--quant",
        "int4",
        "-o",
        s(&out),
    ];
    // silero-vad: Conv and LSTM, no MatMul with a constant weight.
    for needle in [
        "quantizes MatMul nodes with a constant weight (2-D)",
        "Conv",
        "LSTM",
    ] {
        assert_rejected(&ctx, &int4, &out, needle);
    }
    // A model of float ops without weights (an embedding lookup, Relu, Add): INT8 neither.
    py(
        &ctx,
        r#"
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
d = sys.argv[1]
table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32), "table")
g = helper.make_graph([
    helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup"),
    helper.make_node("Relu", ["e"], ["r"], name="relu"),
    helper.make_node("Add", ["r", "e"], ["y"], name="add")], "g",
    [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [table])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), f"{d}/noweights.onnx")
"#,
    );
    let model = ctx.path("noweights.onnx");
    for quant in ["int8-dynamic", "int4"] {
        let args = [
            "convert",
            s(&model),
            "--format",
            "onnx",
            "--quant",
            quant,
            "-o",
            s(&out),
        ];
        assert_rejected(
            &ctx,
            &args,
            &out,
            &format!("{quant} can quantize nothing in this model"),
        );
        assert_rejected(&ctx, &args, &out, "the model has Add, Gather, Relu");
    }
}

#[test]
fn flags_of_other_schemes_are_refused() {
    let ctx = TestContext::new();
    let out = ctx.path("out.onnx");
    let model = s(minilm_fp32());
    assert_rejected(
        &ctx,
        &[
            "convert",
            model,
            "--format",
            "onnx",
            "--quant",
            "int8-static",
            "-o",
            s(&out),
        ],
        &out,
        "needs --calibration",
    );
    assert_rejected(
        &ctx,
        &[
            "convert",
            model,
            "--format",
            "onnx",
            "--quant",
            "int8-dynamic",
            "--block",
            "32",
            "-o",
            s(&out),
        ],
        &out,
        "--block and --symmetric apply to --quant int4",
    );
}

#[test]
fn npy_calibration_folders_are_read() {
    let ctx = TestContext::new();
    let fp32 = silero_dir().join("silero_vad_16k_op15.onnx");
    let npz = ctx.path("npz");
    check(&ctx, &["silero-calib", s(&fp32), s(&npz), "3"]);
    // One sub-folder per sample, one `<input>.npy` per model input.
    py(
        &ctx,
        r#"
import sys, os, glob, numpy as np
d = sys.argv[1]
for k, f in enumerate(sorted(glob.glob(f"{d}/npz/*.npz"))[:8]):
    os.makedirs(f"{d}/npy/s{k}", exist_ok=True)
    for name, arr in np.load(f).items():
        np.save(f"{d}/npy/s{k}/{name}.npy", arr)
"#,
    );
    let out = ctx.path("vad-int8.onnx");
    let o = ctx.run(&[
        "convert",
        s(&fp32),
        "--format",
        "onnx",
        "--quant",
        "int8-static",
        "--calibration",
        s(&ctx.path("npy")),
        "-o",
        s(&out),
        "--report",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        summary["calibration_samples"].as_u64(),
        Some(8),
        "{summary}"
    );
}
