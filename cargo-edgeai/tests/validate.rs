//! `cargo edgeai validate` on the real llama.cpp runtime and the real SmolLM2 model.
//!
//! The reference is SmolLM2 dequantized to F16 by `cargo edgeai dequantize`; candidates are made
//! by `cargo edgeai quantize`. To keep the runtime modest every run evaluates the first 8 chunks
//! of 256 tokens of the license text (`--chunks 8 --ctx 256`, 1,016 scored tokens); the CLI
//! default evaluates the whole text. llama.cpp's tools come from `LLAMA_CPP_BIN` or the cache
//! scripts/build-llama-cpp.sh fills; when they are missing the tests fail and say so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{smollm2_gguf, stderr, stdout};

const CHUNKS: &str = "8";
const CTX: &str = "256";

fn llama_bin() -> PathBuf {
    edgeai::validate::llama::find_bin_dir().unwrap_or_else(|e| {
        panic!("{e}: run scripts/build-llama-cpp.sh (CI does), or set LLAMA_CPP_BIN")
    })
}

/// Files shared by every test: made once per test binary.
struct Fixture {
    dir: PathBuf,
    f16: PathBuf,
    text: PathBuf,
    cache: PathBuf,
    /// A Cargo project with a `edge-test` target whose [gates] are strict on KLD.
    manifest: PathBuf,
    /// The Q8_0 validation run inside that project (it also fills the reference cache).
    q8_0: Output,
}

fn edgeai(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
        .arg("edgeai")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run cargo-edgeai")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn quantized(fx: &Fixture, ty: &str) -> PathBuf {
    fx.dir.join(format!("{ty}.gguf"))
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        llama_bin();
        // Leaked on purpose: the files serve every test of this binary.
        let dir = tempfile::tempdir().expect("tmp").keep();
        let f16 = dir.join("F16.gguf");
        let out = edgeai(
            &dir,
            &[
                "dequantize",
                s(&smollm2_gguf()),
                s(&f16),
                "--type",
                "F16",
                "-q",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        for ty in ["Q4_K_M", "Q2_K", "Q8_0"] {
            let q = dir.join(format!("{ty}.gguf"));
            let out = edgeai(&dir, &["quantize", s(&f16), s(&q), "--type", ty, "-q"]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let mut text = Vec::new();
        for p in edgeai::validate::DEFAULT_TEXT_PARTS {
            text.extend(std::fs::read(p).expect("license text"));
        }
        let text_path = dir.join("license.txt");
        std::fs::write(&text_path, text).expect("write text");
        let host =
            std::fs::read_to_string(common::repo_root().join("targets/host-x86_64.toml")).unwrap();
        let target = host.replace("name = \"host-x86_64\"", "name = \"edge-test\"")
            + "\n[gates]\nmax_kld = 0.02\nmax_ppl_ratio = 1.05\nmin_top1 = 0.5\n";
        std::fs::create_dir_all(dir.join("app/targets")).unwrap();
        std::fs::create_dir_all(dir.join("app/src")).unwrap();
        std::fs::write(dir.join("app/targets/edge-test.toml"), target).unwrap();
        std::fs::write(dir.join("app/src/main.rs"), "fn main() {}\n").unwrap();
        // The project's min_top1 overrides the target's 0.5.
        let manifest = dir.join("app/Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [package.metadata.edgeai]\ntargets-dir = \"targets\"\n\n\
             [package.metadata.edgeai.gates]\nmin_top1 = 0.9\n",
        )
        .unwrap();
        let cache = dir.join("cache");
        let mut fx = Fixture {
            dir: dir.clone(),
            f16,
            text: text_path,
            cache,
            manifest,
            q8_0: edgeai(&dir, &["--version"]),
        };
        fx.q8_0 = validate_in_project(&fx, "Q8_0", &[]);
        fx
    })
}

fn validate_in_project(fx: &Fixture, ty: &str, extra: &[&str]) -> Output {
    let q = quantized(fx, ty);
    let mut args = vec![
        "--manifest-path",
        s(&fx.manifest),
        "validate",
        "--target",
        "edge-test",
        "--model",
        s(&q),
        "--reference",
        s(&fx.f16),
        "--text",
        s(&fx.text),
        "--ctx",
        CTX,
        "--chunks",
        CHUNKS,
        "--no-bench",
        "--cache-dir",
        s(&fx.cache),
    ];
    args.extend_from_slice(extra);
    edgeai(&fx.dir, &args)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

fn f(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn q8_0_passes_the_gates_with_the_project_override() {
    let fx = fixture();
    let out = &fx.q8_0;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(out),
        stderr(out)
    );
    let text = stdout(out);
    assert!(text.contains("all gates passed"), "{text}");
    assert!(text.contains("pass max_kld: measured"), "{text}");
    // The project's min_top1 = 0.9, not the target's 0.5.
    assert!(text.contains("threshold 0.9"), "{text}");
    assert!(text.contains("target_memory_budget"), "{text}");
}

#[test]
fn q2_k_fails_a_strict_max_kld_with_exit_1_and_junit() {
    let fx = fixture();
    let junit = fx.dir.join("q2k-junit.xml");
    let out = validate_in_project(fx, "Q2_K", &["--format", "json", "--junit", s(&junit)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("max_kld: measured"), "{err}");
    assert!(err.contains("> threshold 0.02 nats"), "{err}");
    let v = json(&out);
    assert_eq!(v["passed"], false);
    // The reference logits of the Q8_0 run were reused.
    assert_eq!(v["reference_cache"]["hit"], true, "{v}");
    let kld = f(&v, "/quality/kld_mean");
    assert!(kld > 0.02, "{kld}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains("<testcase classname=\"edgeai.gates.Q2_K\" name=\"max_kld\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"max_kld: measured"),
        "{xml}"
    );
    assert!(xml.contains("name=\"target_memory_budget\"/>"), "{xml}");
    assert!(xml.contains("failures=\""), "{xml}");
}

/// Acceptance: our figures against a direct llama-perplexity run on the same files.
#[test]
fn q4_k_m_matches_a_direct_llama_perplexity_run() {
    let fx = fixture();
    let q = quantized(fx, "Q4_K_M");
    let html = fx.dir.join("q4.html");
    let junit = fx.dir.join("q4.xml");
    #[rustfmt::skip]
    let out = edgeai(&fx.dir, &[
        "validate", "--target", "raspberry-pi-5-8gb", "--model", s(&q), "--reference", s(&fx.f16),
        "--text", s(&fx.text), "--ctx", CTX, "--chunks", CHUNKS, "--cache-dir", s(&fx.cache),
        "--bench-prompt", "32", "--bench-gen", "8", "--bench-reps", "1",
        "--format", "json", "--html", s(&html), "--junit", s(&junit),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    // Every field the issue lists.
    for p in [
        "/quality/ppl",
        "/quality/ppl_reference",
        "/quality/ppl_ratio",
        "/quality/kld_mean",
        "/quality/kld_median",
        "/quality/kld_p99",
        "/quality/kld_max",
        "/quality/top1_agreement",
        "/host/prompt_tokens_per_s",
        "/host/decode_tokens_per_s",
        "/host/time_to_first_token_ms",
        "/host/peak_rss_bytes",
        "/target_side/total_bytes",
        "/target_side/kv_cache_bytes",
        "/target_side/budget_bytes",
        "/target_side/decode_tokens_per_s",
        "/candidate/size_bytes",
    ] {
        assert!(f(&v, p).is_finite() && f(&v, p) > 0.0, "{p} in {v}");
    }
    assert_eq!(v["quality"]["chunks"], 8);
    assert_eq!(
        v["target_side"]["context_length"], 2048,
        "raspberry-pi-5-8gb defaults.context_length"
    );
    assert!(v["target_side"]["label"]
        .as_str()
        .unwrap()
        .contains("not measured"));

    // Direct llama-perplexity: its own reference logits, then the candidate under /usr/bin/time -v.
    let bin = llama_bin();
    let base = fx.dir.join("direct-base.logits");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let common_args = |m: &Path| -> Vec<String> {
        [
            "-m",
            s(m),
            "-f",
            s(&fx.text),
            "-c",
            CTX,
            "--chunks",
            CHUNKS,
            "-t",
            &threads,
            "--kl-divergence-base",
            s(&base),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let ref_out = Command::new(bin.join("llama-perplexity"))
        .args(common_args(&fx.f16))
        .output()
        .unwrap();
    assert!(ref_out.status.success(), "{}", stderr(&ref_out));
    let cand = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(bin.join("llama-perplexity"))
        .args(common_args(&q))
        .arg("--kl-divergence")
        .output()
        .unwrap();
    assert!(cand.status.success(), "{}", stderr(&cand));
    let text = format!("{}{}", stdout(&cand), stderr(&cand));
    let direct = edgeai::validate::llama::parse_perplexity_output(&text, true).unwrap();
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    let ours_ppl = f(&v, "/quality/ppl");
    let ours_kld = f(&v, "/quality/kld_mean");
    let ours_top1 = f(&v, "/quality/top1_agreement");
    eprintln!(
        "PPL ours {ours_ppl} direct {}; reference ours {} direct {:?}; mean KLD ours {ours_kld} direct {:?}; top-1 ours {ours_top1} direct {:?}",
        direct.ppl, f(&v, "/quality/ppl_reference"), direct.ppl_base, direct.kld_mean, direct.top1
    );
    assert!(
        rel(ours_ppl, direct.ppl) < 0.001,
        "PPL {ours_ppl} vs {}",
        direct.ppl
    );
    assert!(rel(f(&v, "/quality/ppl_reference"), direct.ppl_base.unwrap()) < 0.001);
    assert!(rel(ours_kld, direct.kld_mean.unwrap()) < 0.02, "KLD");
    assert!(rel(ours_top1, direct.top1.unwrap()) < 0.02, "top-1");
    // Peak memory against `time -v`'s maximum resident set, within 10 %.
    let max_rss_kb: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|n| n.trim().parse().ok())
        .expect("time -v output");
    let ours_rss = f(&v, "/host/peak_rss_bytes") / 1024.0;
    eprintln!("peak RSS ours {ours_rss} KiB, time -v {max_rss_kb} KiB");
    assert!(
        rel(ours_rss, max_rss_kb) < 0.10,
        "{ours_rss} vs {max_rss_kb}"
    );

    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<svg").count(), 4, "four plots");
    assert!(page.contains("class=\"point\"") && page.contains("class=\"bar\""));
    assert!(page.contains("class=\"limit\""), "budget line");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("failures=\"0\""), "{xml}");
}

#[test]
fn bad_inputs_are_clear_errors_with_exit_1() {
    let fx = fixture();
    let q = quantized(fx, "Q8_0");
    // Unreadable model.
    let junk = fx.dir.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    let out = edgeai(
        &fx.dir,
        &[
            "validate",
            "--model",
            s(&junk),
            "--reference",
            s(&fx.f16),
            "--no-bench",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.gguf"), "{}", stderr(&out));
    // Evaluation text shorter than two contexts.
    let short = fx.dir.join("short.txt");
    std::fs::write(&short, "Too short to evaluate.").unwrap();
    #[rustfmt::skip]
    let out = edgeai(&fx.dir, &["validate", "--model", s(&q), "--reference", s(&fx.f16),
        "--text", s(&short), "--ctx", CTX, "--no-bench", "--cache-dir", s(&fx.cache)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shorter than two contexts"),
        "{}",
        stderr(&out)
    );
    // A different model (vocabulary) as the reference.
    let tiny = fx.dir.join("tiny.gguf");
    let conv = edgeai(
        &fx.dir,
        &[
            "convert",
            s(&common::fixture("tiny-llama-f32")),
            "-o",
            s(&tiny),
        ],
    );
    assert!(conv.status.success(), "{}", stderr(&conv));
    let out = edgeai(
        &fx.dir,
        &[
            "validate",
            "--model",
            s(&q),
            "--reference",
            s(&tiny),
            "--no-bench",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("vocabulary"), "{}", stderr(&out));
    // A percentage where a fraction belongs.
    let bad = fx.dir.join("bad/Cargo.toml");
    std::fs::create_dir_all(fx.dir.join("bad/src")).unwrap();
    std::fs::write(fx.dir.join("bad/src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(&bad, "[package]\nname = \"bad\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n[package.metadata.edgeai.gates]\nmin_top1 = 90\nmax_memory_mb = 2048\n").unwrap();
    let out = edgeai(
        &fx.dir,
        &[
            "--manifest-path",
            s(&bad),
            "validate",
            "--model",
            s(&q),
            "--reference",
            s(&fx.f16),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("min_top1"), "{}", stderr(&out));
}

/// Acceptance: a sweep over two types recommends the smallest that passes the gates, persists the
/// result under the project's target/edgeai/<target>/sweep.json, writes one self-contained HTML
/// report, and `plan` afterwards picks the measured type for the same model.
#[test]
fn sweep_recommends_persists_and_plan_uses_the_measured_type() {
    let fx = fixture();
    let html = fx.dir.join("sweep.html");
    let out_dir = fx.dir.join("sweep-out");
    #[rustfmt::skip]
    let out = edgeai(&fx.dir, &[
        "--manifest-path", s(&fx.manifest), "sweep", "--target", "edge-test",
        "--model", s(&fx.f16), "--types", "Q4_0,Q8_0", "--out-dir", s(&out_dir),
        "--text", s(&fx.text), "--ctx", CTX, "--chunks", "2", "--no-bench",
        "--cache-dir", s(&fx.cache), "--format", "json", "--html", s(&html),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    eprintln!(
        "sweep: Q4_0 mean KLD {} top-1 {}; Q8_0 mean KLD {} top-1 {}",
        v["results"][0]["quality"]["kld_mean"],
        v["results"][0]["quality"]["top1_agreement"],
        v["results"][1]["quality"]["kld_mean"],
        v["results"][1]["quality"]["top1_agreement"]
    );
    // The edge-test gates (max_kld 0.02, the project's min_top1 0.9): Q4_0 fails, Q8_0 passes.
    assert_eq!(v["results"][0]["passed"], false, "{v}");
    assert_eq!(v["results"][1]["passed"], true, "{v}");
    assert_eq!(v["recommended"], "Q8_0", "{v}");
    assert!(out_dir.join("F16-Q4_0.gguf").is_file() && out_dir.join("F16-Q8_0.gguf").is_file());

    // The persisted result.
    let record_path = fx.dir.join("app/target/edgeai/edge-test/sweep.json");
    let text = std::fs::read_to_string(&record_path).expect("sweep.json written");
    let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rec["schema"], 1);
    assert_eq!(rec["target"], "edge-test");
    assert_eq!(
        rec["model_sha256"].as_str().unwrap(),
        edgeai::validate::cache::sha256_file(&fx.f16).unwrap()
    );
    assert_eq!(rec["recommended"], "Q8_0");
    assert_eq!(rec["ctx"], 256);
    assert_eq!(rec["chunks"], 2);
    let types = rec["types"].as_array().unwrap();
    assert_eq!(types.len(), 2, "{rec}");
    assert_eq!(types[0]["type"], "Q4_0");
    assert_eq!(types[0]["passed"], false);
    assert!(!types[0]["failed_gates"].as_array().unwrap().is_empty());
    assert_eq!(types[1]["type"], "Q8_0");
    assert_eq!(types[1]["passed"], true);
    assert_eq!(types[1]["failed_gates"].as_array().unwrap().len(), 0);
    for t in types {
        for key in [
            "size_bytes",
            "ppl",
            "ppl_ratio",
            "kld_mean",
            "top1_agreement",
        ] {
            assert!(t[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {t}");
        }
    }
    assert!(
        types[0]["size_bytes"].as_u64().unwrap() < types[1]["size_bytes"].as_u64().unwrap(),
        "Q4_0 is the smaller file"
    );

    // One self-contained HTML file with SVG plots, one point per type in each quality plot.
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("recommended: Q8_0"));
    for external in ["<script src", "<link", "<img", "src=\"http", "href=\"http"] {
        assert!(!page.contains(external), "external resource {external}");
    }
    let svgs: Vec<&str> = page.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 4, "four plots");
    for plot in &svgs[..2] {
        let plot = plot.split("</svg>").next().unwrap();
        assert_eq!(plot.matches("class=\"point\"").count(), 2, "{plot}");
        assert!(plot.contains("Q4_0") && plot.contains("Q8_0"), "{plot}");
    }

    // `plan` for the same model and target now uses the measured type.
    #[rustfmt::skip]
    let plan = edgeai(&fx.dir, &[
        "--manifest-path", s(&fx.manifest), "plan", "--target", "edge-test",
        "--model", s(&fx.f16), "--format", "json",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let p = json(&plan);
    assert_eq!(p["quantization"], "Q8_0", "{p}");
    assert_eq!(p["framework"], "llama.cpp", "{p}");
    let reasons: Vec<&str> = p["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        reasons.contains(
            &"Q8_0 measured by `cargo edgeai sweep` (sweep.json): the smallest type that passed the gates"
        ),
        "{reasons:?}"
    );
    assert!(p["estimate"]["tensor_types"].get("Q8_0").is_some(), "{p}");
    // Another model's content (or another target) keeps the matrix's prior.
    #[rustfmt::skip]
    let other = edgeai(&fx.dir, &[
        "--manifest-path", s(&fx.manifest), "plan", "--target", "edge-test",
        "--model", s(&quantized(fx, "Q8_0")), "--format", "json",
    ]);
    assert_eq!(other.status.code(), Some(0), "{}", stderr(&other));
    let o = json(&other);
    assert!(!o["reasons"].to_string().contains("measured by"), "{o}");
    #[rustfmt::skip]
    let host = edgeai(&fx.dir, &[
        "--manifest-path", s(&fx.manifest), "plan", "--target", "host-x86_64",
        "--model", s(&fx.f16), "--format", "json",
    ]);
    assert_eq!(host.status.code(), Some(0), "{}", stderr(&host));
    assert_eq!(json(&host)["quantization"], "Q4_K_M");
}
