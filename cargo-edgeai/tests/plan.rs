//! Plans for every (built-in target, model) pair: the defaults of the decision matrix, and
//! snapshots of the whole plan JSON.

mod common;

use edgeai::facts::{read_model_facts, ModelFacts};
use edgeai::manifest::TargetSet;
use edgeai::matrix::Matrix;
use edgeai::plan::{make_plan, PlanOptions};

/// (target, framework, quantization, kernel backend) a decoder LLM gets by default.
const LLM_DEFAULTS: &[(&str, &str, &str, &str)] = &[
    ("android-arm64-vulkan", "llama.cpp", "Q4_K_M", "vulkan"),
    ("apple-m2-16gb", "mlx", "affine-4bit-g64", "metal"),
    ("apple-m4-pro-48gb", "mlx", "affine-4bit-g64", "metal"),
    ("host-x86_64", "llama.cpp", "Q4_K_M", "cpu"),
    (
        "intel-core-ultra-7-155h",
        "openvino",
        "int4-sym-g128",
        "openvino-gpu",
    ),
    (
        "intel-core-ultra-7-258v",
        "openvino",
        "int4-sym-g128",
        "openvino-gpu",
    ),
    ("jetson-agx-orin-64gb", "llama.cpp", "Q4_K_M", "cuda"),
    ("jetson-orin-nano-8gb", "llama.cpp", "Q4_K_M", "cuda"),
    ("linux-x86_64-cuda-sm90", "llama.cpp", "Q4_K_M", "cuda"),
    ("qualcomm-qcs6490", "qnn", "w8a16", "qnn-htp"),
    ("raspberry-pi-5-8gb", "llama.cpp", "Q4_0", "cpu"),
    ("snapdragon-8-elite", "qnn", "w8a16", "qnn-htp"),
    ("snapdragon-8-gen-2", "qnn", "w8a16", "qnn-htp"),
    ("snapdragon-8-gen-3", "qnn", "w8a16", "qnn-htp"),
    ("snapdragon-x-elite", "qnn", "w8a16", "qnn-htp"),
    ("windows-x86_64-cpu", "olive", "int4-g32", "cpu"),
];

/// (target, framework, quantization) an encoder gets by default.
const ENCODER_DEFAULTS: &[(&str, &str, &str)] = &[
    ("android-arm64-vulkan", "onnxruntime", "int8-dynamic"),
    ("apple-m2-16gb", "onnxruntime", "fp16"),
    ("apple-m4-pro-48gb", "onnxruntime", "fp16"),
    ("host-x86_64", "onnxruntime", "int8-dynamic"),
    ("intel-core-ultra-7-155h", "openvino", "int8"),
    ("intel-core-ultra-7-258v", "openvino", "int8"),
    ("jetson-agx-orin-64gb", "onnxruntime", "fp16"),
    ("jetson-orin-nano-8gb", "onnxruntime", "fp16"),
    ("linux-x86_64-cuda-sm90", "onnxruntime", "fp16"),
    ("qualcomm-qcs6490", "qnn", "w8a16"),
    ("raspberry-pi-5-8gb", "onnxruntime", "int8-dynamic"),
    ("snapdragon-8-elite", "qnn", "w8a16"),
    ("snapdragon-8-gen-2", "qnn", "w8a16"),
    ("snapdragon-8-gen-3", "qnn", "w8a16"),
    ("snapdragon-x-elite", "qnn", "w8a16"),
    ("windows-x86_64-cpu", "onnxruntime", "int8-dynamic"),
];

fn check_all(facts: &ModelFacts, label: &str, llm: bool) {
    let targets = TargetSet::builtin().unwrap();
    let matrix = Matrix::builtin().unwrap();
    assert_eq!(
        targets.len(),
        LLM_DEFAULTS.len(),
        "a new target needs its expected default here"
    );
    for target in targets.iter() {
        let plan = make_plan(target, facts, label, &matrix, &PlanOptions::default())
            .unwrap_or_else(|e| panic!("{label} on {}: {e}", target.name));
        let got = (plan.framework.as_str(), plan.quantization.as_str());
        if llm {
            let expected = LLM_DEFAULTS.iter().find(|d| d.0 == target.name).unwrap();
            assert_eq!(
                (got.0, got.1, plan.kernel_backend.as_str()),
                (expected.1, expected.2, expected.3),
                "{}",
                target.name
            );
        } else {
            let expected = ENCODER_DEFAULTS
                .iter()
                .find(|d| d.0 == target.name)
                .unwrap();
            assert_eq!(got, (expected.1, expected.2), "{}", target.name);
        }
        assert!(plan.estimate.fits);
        assert!(plan.estimate.weights_bytes > 0);
        assert_eq!(
            plan.estimate.total_bytes,
            plan.estimate.weights_bytes
                + plan.estimate.kv_cache_bytes
                + plan.estimate.overhead_bytes
        );
        if llm {
            assert!(plan.estimate.kv_cache_bytes > 0);
            assert!(plan.estimate.decode_tokens_per_s.is_some());
        }
        let steps: Vec<&str> = plan.steps.iter().map(|s| s.step.as_str()).collect();
        assert!(
            steps.ends_with(&[
                "quantize",
                "kernels",
                "build-app",
                "validate",
                "package",
                "sign"
            ]),
            "{steps:?}"
        );
        let name = format!("{}__{}", label.replace(['/', '.'], "_"), target.name);
        insta::assert_json_snapshot!(name, plan);
    }
}

#[test]
fn smollm2_gguf_gets_the_defaults_on_every_target() {
    let facts = read_model_facts(&common::smollm2_gguf()).unwrap();
    check_all(&facts, "SmolLM2-135M-Instruct.Q4_1.gguf", true);
}

#[test]
fn fixture_llama_gets_the_defaults_on_every_target() {
    let facts = read_model_facts(&common::fixture("tiny-llama-f32")).unwrap();
    check_all(&facts, "fixtures/models/tiny-llama-f32", true);
}

#[test]
fn minilm_encoder_gets_the_encoder_defaults_on_every_target() {
    let facts = read_model_facts(&common::minilm_dir()).unwrap();
    check_all(&facts, "all-MiniLM-L6-v2", false);
}

#[test]
fn plan_is_a_pure_function() {
    let facts = read_model_facts(&common::fixture("tiny-llama-f16")).unwrap();
    let targets = TargetSet::builtin().unwrap();
    let target = targets.get("jetson-orin-nano-8gb").unwrap();
    let matrix = Matrix::builtin().unwrap();
    let a = make_plan(target, &facts, "m", &matrix, &PlanOptions::default()).unwrap();
    let b = make_plan(target, &facts, "m", &matrix, &PlanOptions::default()).unwrap();
    assert_eq!(a, b);
}
