//! The `cargo edgeai` command line, run as a real process: targets, plan (memory fit, exit
//! codes, project metadata), bad input, init, doctor.

mod common;

use common::{stderr, stdout, TestContext};

/// A target manifest with a given budget, based on Apple M2 (MLX rule) so that bits step 8/6/4.
fn tight_apple_target(name: &str, budget_mb: u64) -> String {
    format!(
        r#"schema = 1
name = "{name}"
description = "test device with a tight budget"
triple = "aarch64-apple-darwin"
os = "macos"

[cpu]
model = "test"
cores = 8
isa = ["neon", "dotprod", "fp16"]

[memory]
total_mb = 16384
budget_mb = {budget_mb}
bandwidth_gbps = 100.0

[[accelerators]]
kind = "metal"
gpu_family = "apple8"

[[accelerators]]
kind = "cpu"

[defaults]
context_length = 2048
"#
    )
}

fn plan_json(ctx: &TestContext, args: &[&str]) -> serde_json::Value {
    let out = ctx.run(args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

#[test]
fn targets_json_lists_every_accelerator_kind() {
    let ctx = TestContext::new();
    let out = ctx.run(&["targets", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.len() >= 14, "{} targets", list.len());
    let mut kinds = std::collections::BTreeSet::new();
    for t in &list {
        for key in ["name", "triple", "accelerators", "memory"] {
            assert!(t.get(key).is_some(), "{key} missing in {t}");
        }
        for key in ["total_mb", "budget_mb", "bandwidth_gbps"] {
            assert!(t["memory"].get(key).is_some(), "memory.{key} missing");
        }
        for a in t["accelerators"].as_array().unwrap() {
            kinds.insert(a["kind"].as_str().unwrap().to_string());
        }
    }
    for kind in [
        "cpu",
        "cuda",
        "metal",
        "vulkan",
        "qnn-htp",
        "openvino-npu",
        "openvino-gpu",
        "openvino-cpu",
    ] {
        assert!(kinds.contains(kind), "no target with a {kind} accelerator");
    }
    insta::assert_snapshot!("targets_human", stdout(&ctx.run(&["targets"])));
}

#[test]
fn budget_that_holds_4_bits_but_not_8_gets_4_bits() {
    let ctx = TestContext::new();
    let model = common::smollm2_gguf();
    let model = model.to_str().unwrap();
    // Sizes at 2048 tokens from the planner's own arithmetic, checked by hand against the
    // tensor list: 8-bit 437.5 MiB, 6-bit 405.7 MiB, 4-bit 373.9 MiB in total.
    ctx.write("t/tight-380.toml", tight_apple_target("tight-380", 380));
    ctx.write("t/roomy-512.toml", tight_apple_target("roomy-512", 512));
    ctx.cargo_project("app", "targets-dir = \"../t\"\n");
    let manifest = ctx.path("app/Cargo.toml");
    let manifest = manifest.to_str().unwrap();
    let plan = |target: &str| {
        plan_json(
            &ctx,
            &[
                "plan",
                "--manifest-path",
                manifest,
                "--target",
                target,
                "--model",
                model,
                "--prefer",
                "quality",
                "--format",
                "json",
            ],
        )
    };
    let tight = plan("tight-380");
    assert_eq!(tight["quantization"], "affine-4bit-g64", "{tight:#}");
    let rejected: Vec<&str> = tight["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["quantization"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, ["affine-8bit-g64", "affine-6bit-g64"]);
    assert!(tight["estimate"]["fits"].as_bool().unwrap());
    let roomy = plan("roomy-512");
    assert_eq!(roomy["quantization"], "affine-8bit-g64");
}

#[test]
fn budget_below_every_candidate_exits_1_naming_the_missing_bytes() {
    let ctx = TestContext::new();
    let model = common::smollm2_gguf();
    // 230 MiB: MLX misses even at 2 bits (overhead 256 MiB), and the CPU fallback's smallest,
    // llama.cpp Q2_K, needs 255.4 MiB; every kind of suggestion applies: a shorter context,
    // fewer bits, a smaller model.
    ctx.write("t/tiny-budget.toml", tight_apple_target("tiny-budget", 230));
    ctx.cargo_project("app", "targets-dir = \"../t\"\n");
    let out = ctx.run(&[
        "plan",
        "--manifest-path",
        ctx.path("app/Cargo.toml").to_str().unwrap(),
        "--target",
        "tiny-budget",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not fit `tiny-budget`"), "{err}");
    assert!(err.contains("bytes") && err.contains("short"), "{err}");
    assert!(err.contains("what would fit"), "{err}");
    assert!(err.contains("a smaller model"), "{err}");
    assert!(err.contains("--context"), "{err}");
}

#[test]
fn plan_reads_the_model_from_project_metadata() {
    let ctx = TestContext::new();
    let model = common::fixture("tiny-llama-f32");
    ctx.cargo_project(
        "app",
        &format!(
            "model = {:?}\ntargets = [\"host-x86_64\"]\n",
            model.to_str().unwrap()
        ),
    );
    let out = ctx.run(&[
        "plan",
        "--manifest-path",
        ctx.path("app/Cargo.toml").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "target",
        "model",
        "framework",
        "format",
        "quantization",
        "kernel_backend",
        "estimate",
        "reasons",
        "steps",
    ] {
        assert!(plan.get(key).is_some(), "plan JSON lacks `{key}`");
    }
    for key in ["architecture", "class", "parameters", "dtype"] {
        assert!(plan["model"].get(key).is_some(), "model.{key}");
    }
    for key in [
        "weights_bytes",
        "kv_cache_bytes",
        "total_bytes",
        "budget_bytes",
        "fits",
        "decode_tokens_per_s",
    ] {
        assert!(plan["estimate"].get(key).is_some(), "estimate.{key}");
    }
    assert_eq!(plan["target"], "host-x86_64");
    assert_eq!(plan["model"]["architecture"], "llama");

    // Inside the project directory, with no flags at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"))
        .args(["edgeai", "plan", "--explain"])
        .current_dir(ctx.path("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("llama.cpp Q4_K_M as gguf"), "{text}");
    assert!(text.contains("tensor types"), "{text}");
}

#[test]
fn plan_human_output_snapshot() {
    let ctx = TestContext::new();
    let out = ctx.run(&[
        "plan",
        "--target",
        "jetson-orin-nano-8gb",
        "--model",
        common::fixture("tiny-llama-f32").to_str().unwrap(),
        "--explain",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out).replace(common::repo_root().to_str().unwrap(), "<repo>");
    insta::assert_snapshot!("plan_human_jetson_fixture", text);
}

#[test]
fn framework_and_quant_flags() {
    let ctx = TestContext::new();
    let model = common::fixture("tiny-llama-f32");
    let model = model.to_str().unwrap();
    let plan = plan_json(
        &ctx,
        &[
            "plan",
            "--target",
            "host-x86_64",
            "--model",
            model,
            "--quant",
            "Q5_K_M",
            "--format",
            "json",
        ],
    );
    assert_eq!(plan["quantization"], "Q5_K_M");
    let plan = plan_json(
        &ctx,
        &[
            "plan",
            "--target",
            "intel-core-ultra-7-155h",
            "--model",
            model,
            "--framework",
            "llama.cpp",
            "--format",
            "json",
        ],
    );
    assert_eq!(plan["framework"], "llama.cpp");
    let out = ctx.run(&[
        "plan",
        "--target",
        "jetson-orin-nano-8gb",
        "--model",
        model,
        "--framework",
        "mlx",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no rule of the decision matrix"),
        "{}",
        stderr(&out)
    );
    let out = ctx.run(&["plan", "--target", "no-such-device", "--model", model]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("known targets"), "{}", stderr(&out));
}

/// Every kind of bad input exits 1 with one message naming the file (and line:column for TOML)
/// and a help line; none panics.
#[test]
fn bad_input_exits_1_with_a_clear_message() {
    let ctx = TestContext::new();
    let good =
        std::fs::read_to_string(common::repo_root().join("targets/host-x86_64.toml")).unwrap();
    let with_name = |name: &str, text: &str| {
        text.replace("name = \"host-x86_64\"", &format!("name = \"{name}\""))
    };

    // Each bad manifest lives in its own targets-dir so one error does not hide another.
    let mut toml_cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown-key",
            with_name("unknown-key", &good).replace("[memory]\n", "[memory]\nswap_mb = 4\n"),
            "unknown field `swap_mb`",
        ),
        (
            "wrong-type",
            with_name("wrong-type", &good).replace("cores = ", "cores = \"two\" # was "),
            "invalid type",
        ),
        (
            "budget-above",
            with_name("budget-above", &good).replace("budget_mb = 16384", "budget_mb = 99999"),
            "above total_mb",
        ),
    ];
    let missing = with_name("missing-field", &good);
    let missing: String = missing
        .lines()
        .filter(|l| !l.starts_with("bandwidth_gbps"))
        .map(|l| format!("{l}\n"))
        .collect();
    toml_cases.push(("missing-field", missing, "missing field `bandwidth_gbps`"));
    for (name, text, expected) in &toml_cases {
        assert_ne!(text, &good, "{name}: the replacement did not apply");
        ctx.write(&format!("{name}/targets/{name}.toml"), text);
        ctx.cargo_project(name, "targets-dir = \"targets\"\n");
        let out = ctx.run(&[
            "targets",
            "--manifest-path",
            ctx.path(&format!("{name}/Cargo.toml")).to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}.toml:")),
            "{name}: no file name in {err}"
        );
        assert!(err.contains(expected), "{name}: {err}");
        let located = err
            .split(&format!("{name}.toml:"))
            .nth(1)
            .unwrap_or_default();
        let mut parts = located.split(':');
        let line: usize = parts.next().unwrap_or_default().trim().parse().unwrap_or(0);
        let column: usize = parts.next().unwrap_or_default().trim().parse().unwrap_or(0);
        assert!(line > 0 && column > 0, "{name}: no line:column in {err}");
        assert!(err.contains("help:"), "{name}: no help in {err}");
    }

    // Models.
    ctx.write(
        "no-config/model.safetensors",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    );
    let mut gguf = b"GGUF".to_vec();
    gguf.extend_from_slice(&3u32.to_le_bytes());
    gguf.extend_from_slice(&1u64.to_le_bytes()); // one tensor...
    gguf.extend_from_slice(&5u64.to_le_bytes()); // ...five metadata entries, then nothing
    ctx.write("truncated.gguf", &gguf);
    let mut st = (1_000_000u64).to_le_bytes().to_vec();
    st.extend_from_slice(b"{\"a\":1}");
    ctx.write("beyond.safetensors", &st);
    ctx.write("notes.txt", "these are not weights\n");
    let model_cases = [
        ("no-config", "config.json"),
        ("truncated.gguf", "truncated"),
        ("beyond.safetensors", "beyond the file"),
        ("notes.txt", "not a model"),
    ];
    for (file, expected) in model_cases {
        let path = ctx.path(file);
        let out = ctx.run(&["plan", "--model", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(file), "{file}: no file name in {err}");
        assert!(
            err.to_lowercase().contains(&expected.to_lowercase()),
            "{file}: {err}"
        );
        assert!(err.contains("help:"), "{file}: no help in {err}");
    }
}

#[test]
fn plan_on_a_4gib_sparse_safetensors_reads_headers_only() {
    let ctx = TestContext::new();
    let config =
        std::fs::read_to_string(common::fixture("tiny-llama-f32").join("config.json")).unwrap();
    ctx.write("big/config.json", config);
    // One F32 tensor of 2^30 elements: 4 GiB of data that is never read (a sparse hole).
    let header = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[1048576,1024],"data_offsets":[0,4294967296]}}"#;
    let mut header = header.as_bytes().to_vec();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let path = ctx.path("big/model.safetensors");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(bytes.len() as u64 + (4u64 << 30)).unwrap();
    drop(file);
    let start = std::time::Instant::now();
    let out = ctx.run(&[
        "plan",
        "--model",
        ctx.path("big").to_str().unwrap(),
        "--format",
        "json",
    ]);
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["model"]["parameters"], 1u64 << 30);
    // Reading 4 GiB would take many seconds; a generous bound keeps this robust on a busy machine.
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
}

#[test]
fn init_is_idempotent_and_doctor_reports() {
    let ctx = TestContext::new();
    ctx.write("app/src/main.rs", "fn main() {}\n");
    let original =
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n";
    ctx.write("app/Cargo.toml", original);
    let manifest = ctx.path("app/Cargo.toml");
    let m = manifest.to_str().unwrap();
    let out = ctx.run(&["init", "--manifest-path", m, "--model", "models/tiny"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let once = std::fs::read_to_string(&manifest).unwrap();
    assert!(once.starts_with(original));
    assert!(once.contains("[package.metadata.edgeai]"));
    let out = ctx.run(&["init", "--manifest-path", m]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), once);

    let out = ctx.run(&["doctor", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tool in [
        "cargo",
        "cmake",
        "python3",
        "nvcc",
        "glslc",
        "spirv-val",
        "xcrun metal",
    ] {
        assert!(tools.contains(&tool), "doctor does not probe {tool}");
    }
    let cargo = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cargo")
        .unwrap();
    assert_eq!(
        cargo["found"], true,
        "doctor did not find cargo, which is running this test"
    );
    assert!(report["targets"].as_array().unwrap().len() >= 14);
}
