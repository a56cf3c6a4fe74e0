//! MLX on the real mlx-lm (the managed `mlx` toolchain): the planner's refusal of
//! architectures mlx-lm cannot load, and `cargo edgeai validate` of MLX directories against the
//! unquantized Hugging Face export of SmolLM2.
//!
//! Needs: the `mlx` toolchain (`cargo edgeai toolchain install mlx`; CI installs it) and the
//! SmolLM2 GGUF (scripts/fetch-test-models.sh). A missing one fails the tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, minilm_dir, smollm2_gguf, stderr, stdout, TestContext};

fn mlx_python() -> PathBuf {
    match edgeai_toolchain::find("mlx") {
        Ok(tc) => tc.python(),
        Err(e) => panic!("the mlx toolchain is needed (CI installs it): {e}"),
    }
}

fn assert_exit(o: &std::process::Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// The committed list of architectures is what the pinned mlx-lm loads.
#[test]
fn mlx_lm_architecture_list_is_current() {
    let out = Command::new(mlx_python())
        .arg(common::repo_root().join("scripts/gen-mlx-lm-architectures.py"))
        .output()
        .expect("run the generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(
        common::repo_root().join("cargo-edgeai/data/mlx-lm-architectures.toml"),
    )
    .expect("data file");
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "cargo-edgeai/data/mlx-lm-architectures.toml is stale: rerun scripts/gen-mlx-lm-architectures.py with the mlx toolchain's python"
    );
}

/// A decoder of a type mlx-lm cannot load: copy of the tiny llama fixture, renamed.
fn unknown_decoder(ctx: &TestContext) -> PathBuf {
    let src = fixture("tiny-llama-f32");
    let dir = ctx.path("foo-model");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "foo".into();
    cfg["architectures"] = serde_json::json!(["FooForCausalLM"]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    dir
}

#[test]
fn plan_falls_back_from_mlx_for_an_architecture_mlx_lm_cannot_load() {
    let ctx = TestContext::new();
    let model = unknown_decoder(&ctx);
    let model = model.to_str().unwrap();
    let o = ctx.run(&[
        "plan",
        "--model",
        model,
        "--target",
        "apple-m2-16gb",
        "--format",
        "json",
    ]);
    assert_exit(&o, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["framework"], "llama.cpp");
    assert_eq!(plan["rule"], "apple-llama-cpp-metal");
    assert_eq!(plan["kernel_backend"], "metal");
    let refused = plan["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "apple-mlx-llm")
        .expect("the MLX rule is recorded as rejected");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot load the `foo` architecture"),
        "{reason}"
    );
    assert!(
        reason.contains("llama, "),
        "lists the supported types: {reason}"
    );

    // The same model on a supported type keeps MLX.
    let o = ctx.run(&[
        "plan",
        "--model",
        fixture("tiny-llama-f32").to_str().unwrap(),
        "--target",
        "apple-m2-16gb",
        "--format",
        "json",
    ]);
    assert_exit(&o, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["framework"], "mlx");
}

#[test]
fn forced_mlx_on_an_unloadable_architecture_exits_1_with_the_list() {
    let ctx = TestContext::new();
    let model = unknown_decoder(&ctx);
    for (model, arch) in [(model, "foo"), (minilm_dir(), "bert")] {
        let o = ctx.run(&[
            "plan",
            "--model",
            model.to_str().unwrap(),
            "--target",
            "apple-m2-16gb",
            "--framework",
            "mlx",
        ]);
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("cannot load the `{arch}` architecture")),
            "{err}"
        );
        assert!(err.contains("llama,") && err.contains("qwen2,"), "{err}");
    }
}

/// A directory that looks like MLX output (config.json with `quantization`, safetensors with
/// format=mlx) but whose model_type mlx-lm has no code for.
#[test]
fn validate_refuses_an_mlx_directory_mlx_lm_cannot_load() {
    let ctx = TestContext::new();
    let header = br#"{"__metadata__":{"format":"mlx"}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    ctx.write("bert-mlx/model.safetensors", &st);
    ctx.write(
        "bert-mlx/config.json",
        r#"{"model_type":"bert","vocab_size":30522,"quantization":{"group_size":64,"bits":4,"mode":"affine"}}"#,
    );
    let dir = ctx.path("bert-mlx");
    let o = ctx.run(&[
        "validate",
        "--model",
        dir.to_str().unwrap(),
        "--reference",
        dir.to_str().unwrap(),
        "--target",
        "apple-m2-16gb",
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("cannot load model_type `bert`"), "{err}");
    assert!(err.contains("config.json"), "names the file: {err}");
    assert!(err.contains("llama,"), "lists the supported types: {err}");
}

/// `cargo edgeai convert HF --format mlx`: the MLX writer (tensor-identical to
/// `mlx_lm convert -q`, which its own tests check).
fn convert_mlx(ctx: &TestContext, hf: &Path, out: &Path, bits: u32) {
    let o = ctx.run(&[
        "convert",
        hf.to_str().unwrap(),
        "--format",
        "mlx",
        "--bits",
        &bits.to_string(),
        "--group-size",
        "64",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
}

fn validate_args<'a>(candidate: &'a str, reference: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec![
        "validate",
        "--model",
        candidate,
        "--reference",
        reference,
        "--target",
        "apple-m2-16gb",
        // Bounded: two chunks of 256 tokens, a 16-token greedy decode (mlx on a Linux CPU runs
        // about 45 s per 256-token chunk of SmolLM2 on one core).
        "--ctx",
        "256",
        "--chunks",
        "2",
        "--bench-prompt",
        "16",
        "--bench-gen",
        "16",
        "--cache-dir",
        cache,
        "--format",
        "json",
    ]
}

/// SmolLM2 exported to HF (F32), converted to MLX 4-bit g64 and 8-bit g64, validated
/// with mlx-lm against the export: figures reported, 8-bit closer than 4-bit, a gate that
/// 4-bit fails is exit 1 naming it, the reference run cached and reused.
#[test]
fn validate_smollm2_mlx_4bit_and_8bit_against_the_hf_export() {
    let started = std::time::Instant::now();
    // Fail early, before the export, when the toolchain is missing.
    mlx_python();
    let ctx = TestContext::new();
    let gguf = smollm2_gguf();
    let hf = ctx.path("hf");
    let o = ctx.run(&["export", gguf.to_str().unwrap(), "-o", hf.to_str().unwrap()]);
    assert_exit(&o, 0);
    let q4 = ctx.path("smollm2-4bit");
    let q8 = ctx.path("smollm2-8bit");
    convert_mlx(&ctx, &hf, &q4, 4);
    convert_mlx(&ctx, &hf, &q8, 8);
    let cache = ctx.path("cache");
    let (hf_s, q4_s, q8_s, cache_s) = (
        hf.to_str().unwrap(),
        q4.to_str().unwrap(),
        q8.to_str().unwrap(),
        cache.to_str().unwrap(),
    );

    // 4-bit inside a project whose gates it fails: max_kld is exceeded, min_top1 is met.
    ctx.cargo_project(
        "app",
        "[package.metadata.edgeai.gates]\nmax_kld = 0.05\nmin_top1 = 0.5\n",
    );
    let junit = ctx.path("q4.xml");
    let html = ctx.path("q4.html");
    let mut args = validate_args(q4_s, hf_s, cache_s);
    args.extend([
        "--junit",
        junit.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let o = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
        .arg("edgeai")
        .args(&args)
        .current_dir(ctx.path("app"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("max_kld: measured"), "{err}");
    assert!(!err.contains("min_top1:"), "min_top1 passed: {err}");
    let r4: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON report");

    // 8-bit, no project gates: passes (the target's memory budget only); the reference run
    // of the 4-bit validation is reused.
    let o = ctx.run(&validate_args(q8_s, hf_s, cache_s));
    assert_exit(&o, 0);
    let r8: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON report");

    for key in [
        "schema",
        "target",
        "candidate",
        "reference",
        "text",
        "ctx",
        "chunks_requested",
        "quality",
        "host",
        "target_side",
        "gates",
        "passed",
        "tool",
        "reference_cache",
        "greedy",
    ] {
        assert!(r4.get(key).is_some(), "report key {key} missing: {r4}");
    }
    for key in [
        "ppl",
        "ppl_error",
        "ppl_reference",
        "ppl_ratio",
        "kld_mean",
        "kld_mean_error",
        "kld_median",
        "kld_p99",
        "kld_max",
        "top1_agreement",
        "top1_agreement_error",
        "chunks",
        "tokens_scored",
    ] {
        assert!(
            r4["quality"][key].is_number() && r8["quality"][key].is_number(),
            "quality.{key}: {} / {}",
            r4["quality"],
            r8["quality"]
        );
    }
    let f = |r: &serde_json::Value, k: &str| r["quality"][k].as_f64().unwrap();
    assert_eq!(r4["quality"]["chunks"], 2);
    assert_eq!(r4["quality"]["tokens_scored"], 2 * 127);
    assert_eq!(r4["candidate"]["file_type"], "affine-4bit-g64");
    assert_eq!(r8["candidate"]["file_type"], "affine-8bit-g64");
    assert_eq!(r4["candidate"]["architecture"], "llama");
    assert!(r4["tool"]["version"]
        .as_str()
        .unwrap()
        .contains("mlx-lm 0.32"));
    // Same reference, same figures.
    assert_eq!(f(&r4, "ppl_reference"), f(&r8, "ppl_reference"));
    assert_eq!(r4["reference_cache"]["hit"], false);
    assert_eq!(r8["reference_cache"]["hit"], true);
    let ppl_ref = f(&r4, "ppl_reference");
    assert!(ppl_ref > 5.0 && ppl_ref < 60.0, "reference PPL {ppl_ref}");
    // 8-bit is closer to the reference than 4-bit on every figure.
    assert!(f(&r8, "kld_mean") < f(&r4, "kld_mean"), "{r8} vs {r4}");
    assert!(
        f(&r8, "kld_mean") < 0.05,
        "8-bit mean KLD {}",
        f(&r8, "kld_mean")
    );
    assert!(f(&r8, "top1_agreement") > f(&r4, "top1_agreement"));
    assert!((f(&r8, "ppl_ratio") - 1.0).abs() < (f(&r4, "ppl_ratio") - 1.0).abs());
    assert!(f(&r4, "kld_max") >= f(&r4, "kld_p99") && f(&r4, "kld_p99") >= f(&r4, "kld_median"));
    // The greedy decode: 16 tokens each, compared with the reference's.
    for r in [&r4, &r8] {
        let g = &r["greedy"];
        assert_eq!(g["tokens"].as_array().unwrap().len(), 16, "{g}");
        assert_eq!(g["reference_tokens"].as_array().unwrap().len(), 16, "{g}");
        assert_eq!(g["first_k"], 8);
        assert!(r["host"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["host"]["peak_rss_bytes"].as_u64().unwrap() > 50 << 20);
    }
    // The failed gate, in the report and in JUnit.
    let failed: Vec<&str> = r4["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["passed"] == false)
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["max_kld"]);
    assert_eq!(r4["passed"], false);
    assert_eq!(r8["passed"], true);
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        junit.contains("<failure message=\"max_kld: measured"),
        "{junit}"
    );
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("with mlx-lm") && html.contains("affine-4bit-g64"));

    eprintln!(
        "SmolLM2 on mlx-lm (ctx 256, 2 chunks) in {:.0} s: reference PPL {:.4}; 4-bit g64 PPL {:.4} KLD {:.5} (median {:.5}, p99 {:.5}, max {:.5}) top-1 {:.2} %; 8-bit g64 PPL {:.4} KLD {:.5} (median {:.5}, p99 {:.5}, max {:.5}) top-1 {:.2} %; greedy prefix agreement 4-bit {} / 8-bit {} of 16",
        started.elapsed().as_secs_f64(),
        ppl_ref,
        f(&r4, "ppl"),
        f(&r4, "kld_mean"),
        f(&r4, "kld_median"),
        f(&r4, "kld_p99"),
        f(&r4, "kld_max"),
        100.0 * f(&r4, "top1_agreement"),
        f(&r8, "ppl"),
        f(&r8, "kld_mean"),
        f(&r8, "kld_median"),
        f(&r8, "kld_p99"),
        f(&r8, "kld_max"),
        100.0 * f(&r8, "top1_agreement"),
        r4["greedy"]["agree_prefix"],
        r8["greedy"]["agree_prefix"],
    );
}
