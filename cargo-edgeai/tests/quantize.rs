//! `cargo edgeai quantize` / `dequantize` against llama.cpp's llama-quantize: the files must be
//! byte-identical (whole-file sha256) for every supported file type, on the real SmolLM2 model
//! and on a fixture whose rows are multiples of 256 (so the K-quants apply), with and without an
//! importance matrix, and with the per-tensor options.
//!
//! llama-quantize is found through `LLAMA_CPP_BIN` or the cache that scripts/build-llama-cpp.sh
//! fills (`${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci/llama.cpp-*/bin`); when it is missing
//! the tests fail and say how to build it (CI builds it).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{smollm2_gguf, stderr, stdout, TestContext};
use edgeai::gguf::{
    split_metadata, split_paths, GgmlType, GgufArray, GgufFile, GgufValue, GgufWriter, TensorSpec,
};
use edgeai::llama_quant::{
    do_dequantize, do_quantize, DequantizeOptions, FileType, QuantizeOptions,
};
use sha2::{Digest, Sha256};

// ---- llama.cpp -------------------------------------------------------------------------------

/// The directory holding llama-quantize.
fn llama_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMA_CPP_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("llama-quantize").is_file(),
            "LLAMA_CPP_BIN={} has no llama-quantize",
            dir.display()
        );
        return dir;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("cargo-edgeai-ci");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("llama-quantize").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "llama-quantize not found under {}/llama.cpp-*/bin: run scripts/build-llama-cpp.sh \
             (CI does), or set LLAMA_CPP_BIN to the directory holding it",
            cache.display()
        )
    })
}

/// Run llama-quantize with `args`; returns whether it succeeded (its log goes to a file next to
/// the output on failure, for the assertion message).
fn llama_quantize(args: &[OsString]) -> std::process::Output {
    Command::new(llama_bin_dir().join("llama-quantize"))
        .args(args)
        .output()
        .expect("run llama-quantize")
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// llama-quantize `flags IN OUT TYPE 2`, asserting success.
fn reference(flags: &[OsString], input: &Path, output: &Path, ftype: &str) {
    let mut args = flags.to_vec();
    args.extend([os(input), os(output), os(ftype), os("2")]);
    let out = llama_quantize(&args);
    assert!(
        out.status.success(),
        "llama-quantize {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

/// Whole files equal; on a difference, say which part differs (metadata/tensor infos or which
/// tensor's data), which is what one needs to fix it.
fn assert_same_file(ours: &Path, theirs: &Path, what: &str) {
    if sha256(ours) == sha256(theirs) {
        return;
    }
    let a = GgufFile::open(ours).expect("ours parses");
    let b = GgufFile::open(theirs).expect("reference parses");
    let mut diffs = Vec::new();
    if a.metadata() != b.metadata() {
        diffs.push(format!(
            "metadata differs:\n ours {:?}\n ref  {:?}",
            a.metadata().iter().map(|(k, _)| k).collect::<Vec<_>>(),
            b.metadata().iter().map(|(k, _)| k).collect::<Vec<_>>()
        ));
    }
    for (i, (ta, tb)) in a.tensors().iter().zip(b.tensors()).enumerate() {
        if ta.name != tb.name || ta.ne != tb.ne || ta.ggml_type != tb.ggml_type {
            diffs.push(format!(
                "tensor info {i}: ours {} {:?} {} vs ref {} {:?} {}",
                ta.name, ta.ne, ta.ggml_type, tb.name, tb.ne, tb.ggml_type
            ));
        } else if a.tensor_data(i) != b.tensor_data(i) {
            diffs.push(format!(
                "tensor data of {} ({}) differs",
                ta.name, ta.ggml_type
            ));
        }
    }
    if a.tensors().len() != b.tensors().len() {
        diffs.push(format!(
            "{} tensors vs {}",
            a.tensors().len(),
            b.tensors().len()
        ));
    }
    diffs.truncate(12);
    panic!(
        "{what}: {} differs from llama-quantize's {}:\n{}",
        ours.display(),
        theirs.display(),
        diffs.join("\n")
    );
}

/// The planner's per-tensor types (`cargo edgeai plan`'s size estimate) are the ones the
/// quantizer wrote.
fn assert_plan_matches(input: &Path, output: &Path, ftype: &str) {
    let facts = edgeai::facts::read_model_facts(input).expect("facts");
    let mut state = edgeai::quant::GgufMixState::new(&facts);
    let out = GgufFile::open(output).expect("open output");
    for t in &facts.tensors {
        let planned = edgeai::quant::gguf_tensor_type(ftype, t, &mut state);
        let written = out
            .tensors()
            .iter()
            .find(|o| o.name == t.name)
            .unwrap_or_else(|| panic!("{} missing from the output", t.name));
        assert_eq!(planned, written.ggml_type.name(), "{ftype}: {}", t.name);
    }
}

fn quantize_opts(input: &Path, output: &Path, ftype: &str) -> QuantizeOptions {
    QuantizeOptions {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        file_type: ftype.to_string(),
        threads: Some(2),
        ..QuantizeOptions::default()
    }
}

/// Every file type this crate supports, by name.
fn all_types() -> Vec<&'static str> {
    FileType::ALL.iter().map(|t| t.name()).collect()
}

// ---- (a) SmolLM2 -----------------------------------------------------------------------------

#[test]
fn smollm2_dequantize_and_every_type_match_llama_quantize() {
    let ctx = TestContext::new();
    let q4_1 = smollm2_gguf();

    // F16 from the Q4_1 file: ours vs `llama-quantize --allow-requantize Q4_1 F16`.
    let f16_ref = ctx.path("ref-F16-from-Q4_1.gguf");
    reference(&[os("--allow-requantize")], &q4_1, &f16_ref, "F16");
    let f16 = ctx.path("smollm2-f16.gguf");
    do_dequantize(&DequantizeOptions {
        input: q4_1.clone(),
        output: f16.clone(),
        file_type: "F16".into(),
        threads: Some(2),
        ..DequantizeOptions::default()
    })
    .expect("dequantize");
    assert_same_file(&f16, &f16_ref, "dequantize Q4_1 -> F16");

    // Every file type from that F16. Q2_K_S needs an importance matrix (llama.cpp refuses it
    // without one, and so do we); it is covered with one below.
    for ftype in all_types() {
        let ours = ctx.path(&format!("ours-{ftype}.gguf"));
        let theirs = ctx.path(&format!("ref-{ftype}.gguf"));
        if ftype == "Q2_K_S" {
            let err = do_quantize(&quantize_opts(&f16, &ours, ftype)).unwrap_err();
            assert!(err.to_string().contains("importance matrix"), "{err}");
            assert!(!ours.exists());
            continue;
        }
        reference(&[], &f16, &theirs, ftype);
        let report = do_quantize(&quantize_opts(&f16, &ours, ftype))
            .unwrap_or_else(|e| panic!("{ftype}: {e}"));
        assert_eq!(report.tensors, 272, "{ftype}");
        assert_same_file(&ours, &theirs, ftype);
        assert_plan_matches(&f16, &ours, ftype);
        std::fs::remove_file(&ours).ok();
        std::fs::remove_file(&theirs).ok();
    }

    // With an importance matrix (synthetic, GGUF format) the imatrix-aware quantizers and the
    // imatrix-dependent mixture rules (Q4_0's ffn_down, Q2_K_S) must match too.
    let names: Vec<(String, u64)> = {
        let f = GgufFile::open(&f16).expect("open f16");
        f.tensors()
            .iter()
            .filter(|t| t.ne.len() >= 2 && t.name != "token_embd.weight")
            .map(|t| (t.name.clone(), t.ne[0]))
            .collect()
    };
    let imatrix = ctx.path("smollm2.imatrix.gguf");
    write_gguf_imatrix(&imatrix, &names);
    for ftype in ["Q2_K_S", "Q4_0", "Q4_K_M"] {
        let ours = ctx.path(&format!("ours-im-{ftype}.gguf"));
        let theirs = ctx.path(&format!("ref-im-{ftype}.gguf"));
        reference(&[os("--imatrix"), os(&imatrix)], &f16, &theirs, ftype);
        let mut o = quantize_opts(&f16, &ours, ftype);
        o.imatrix = Some(imatrix.clone());
        do_quantize(&o).unwrap_or_else(|e| panic!("{ftype} with imatrix: {e}"));
        assert_same_file(&ours, &theirs, &format!("{ftype} with imatrix"));
    }
}

// ---- (b) a llama-architecture fixture with 256-wide rows -------------------------------------

/// Read an F32 tensor of the tiny-llama fixture.
fn fixture_tensor(path: &Path, name: &str) -> (Vec<u64>, Vec<f32>) {
    let header = edgeai::safetensors::read_header(path).expect("safetensors header");
    let t = header.tensor(name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(t.dtype, "F32");
    let bytes = std::fs::read(path).expect("read safetensors");
    let start = (header.data_start() + t.data_offsets.0) as usize;
    let end = (header.data_start() + t.data_offsets.1) as usize;
    let data = bytes[start..end]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // safetensors shapes are outermost first; ggml's ne innermost first.
    (t.shape.iter().rev().copied().collect(), data)
}

const FIXTURE_LAYERS: usize = 8;

/// A llama GGUF (F32) built from fixtures/models/tiny-llama-f32 with llama.cpp tensor names:
/// its one decoder layer repeated `FIXTURE_LAYERS` times with a per-layer change so that the
/// layers differ, and an untied `output.weight` when `untied`.
fn write_fixture_gguf(path: &Path, untied: bool) {
    let (meta, tensors) = fixture_model(untied);
    write_f32_gguf(path, &meta, &tensors);
}

/// A fixture tensor: name, ggml `ne`, F32 values.
type FixtureTensor = (String, Vec<u64>, Vec<f32>);

/// The metadata and tensors of [`write_fixture_gguf`]'s model.
fn fixture_model(untied: bool) -> (Vec<(String, GgufValue)>, Vec<FixtureTensor>) {
    let st = common::fixture("tiny-llama-f32").join("model.safetensors");
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = Vec::new();
    let (ne, embd) = fixture_tensor(&st, "model.embed_tokens.weight");
    tensors.push(("token_embd.weight".into(), ne.clone(), embd.clone()));
    if untied {
        let out: Vec<f32> = embd.iter().map(|x| x * 0.5 - 0.001).collect();
        tensors.push(("output.weight".into(), ne, out));
    }
    let (ne, norm) = fixture_tensor(&st, "model.norm.weight");
    tensors.push(("output_norm.weight".into(), ne, norm));
    let per_layer = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    for layer in 0..FIXTURE_LAYERS {
        for (gguf_name, hf_name) in per_layer {
            let (ne, data) = fixture_tensor(&st, &format!("model.layers.0.{hf_name}"));
            let scale = 1.0 + 0.15 * layer as f32;
            let data = data
                .iter()
                .enumerate()
                .map(|(k, x)| {
                    // Columns of different magnitude make the importance weights matter.
                    let col = (k % ne[0] as usize) as f32;
                    x * scale * (1.0 + (col % 7.0) * 0.1)
                        + ((k * 7 + layer * 13) % 17) as f32 * 1e-3
                })
                .collect();
            tensors.push((format!("blk.{layer}.{gguf_name}"), ne, data));
        }
    }
    let arch = "llama";
    let meta: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        (
            "general.name".into(),
            GgufValue::String("tiny-llama".into()),
        ),
        (
            format!("{arch}.block_count"),
            GgufValue::U32(FIXTURE_LAYERS as u32),
        ),
        (format!("{arch}.context_length"), GgufValue::U32(512)),
        (format!("{arch}.embedding_length"), GgufValue::U32(256)),
        (format!("{arch}.feed_forward_length"), GgufValue::U32(256)),
        (format!("{arch}.attention.head_count"), GgufValue::U32(4)),
        (format!("{arch}.attention.head_count_kv"), GgufValue::U32(1)),
        (format!("{arch}.rope.freq_base"), GgufValue::F32(10000.0)),
        (format!("{arch}.rope.dimension_count"), GgufValue::U32(64)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            GgufValue::F32(1e-5),
        ),
        (format!("{arch}.vocab_size"), GgufValue::U32(320)),
        // An F32 source, as convert_hf_to_gguf.py --outtype f32 records it.
        ("general.file_type".into(), GgufValue::U32(0)),
    ];
    (meta, tensors)
}

/// Write F32 `tensors` with `meta` as a GGUF file.
fn write_f32_gguf(path: &Path, meta: &[(String, GgufValue)], tensors: &[FixtureTensor]) {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(name, ne, _)| TensorSpec {
            name: name.clone(),
            ne: ne.clone(),
            ggml_type: GgmlType::F32,
        })
        .collect();
    let mut w = GgufWriter::create(path, 3, meta, &specs, 32).expect("create fixture gguf");
    for (_, _, data) in tensors {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(&bytes).expect("write tensor");
    }
    w.finish().expect("finish fixture gguf");
}

/// Synthetic per-column importance for a tensor with rows of `n`: uneven, deterministic.
fn importance(name: &str, n: u64) -> Vec<f32> {
    let salt = name.bytes().map(u64::from).sum::<u64>();
    (0..n)
        .map(|j| 0.05 + ((j * 31 + salt) % 97) as f32 * 0.37)
        .collect()
}

/// A GGUF-format imatrix (as llama-imatrix writes): `NAME.in_sum2` (sums over 10 calls) and
/// `NAME.counts` per tensor, with the `imatrix.*` metadata llama-quantize requires.
fn write_gguf_imatrix(path: &Path, tensors: &[(String, u64)]) {
    let meta = vec![
        (
            "general.type".to_string(),
            GgufValue::String("imatrix".into()),
        ),
        (
            "imatrix.datasets".to_string(),
            GgufValue::Array(GgufArray::String(vec!["GPL-3.txt".into()])),
        ),
        ("imatrix.chunk_count".to_string(), GgufValue::U32(10)),
        ("imatrix.chunk_size".to_string(), GgufValue::U32(512)),
    ];
    let mut specs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for (name, n) in tensors {
        let sums: Vec<f32> = importance(name, *n).iter().map(|v| v * 10.0).collect();
        specs.push(TensorSpec {
            name: format!("{name}.in_sum2"),
            ne: vec![*n, 1],
            ggml_type: GgmlType::F32,
        });
        data.push(sums.iter().flat_map(|x| x.to_le_bytes()).collect());
        specs.push(TensorSpec {
            name: format!("{name}.counts"),
            ne: vec![1, 1],
            ggml_type: GgmlType::F32,
        });
        data.push(10f32.to_le_bytes().to_vec());
    }
    let mut w = GgufWriter::create(path, 3, &meta, &specs, 32).expect("create imatrix");
    for d in &data {
        w.write_tensor(d).expect("write imatrix tensor");
    }
    w.finish().expect("finish imatrix");
}

/// The legacy `.dat` imatrix format: entries (name, ncall, values × ncall) then chunk count and
/// dataset name.
fn write_legacy_imatrix(path: &Path, tensors: &[(String, u64)]) {
    let mut out = Vec::new();
    out.extend_from_slice(&(tensors.len() as i32).to_le_bytes());
    for (name, n) in tensors {
        out.extend_from_slice(&(name.len() as i32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&7i32.to_le_bytes());
        out.extend_from_slice(&(*n as i32).to_le_bytes());
        for v in importance(name, *n) {
            out.extend_from_slice(&(v * 7.0).to_le_bytes());
        }
    }
    out.extend_from_slice(&7i32.to_le_bytes());
    let dataset = b"license-text";
    out.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
    out.extend_from_slice(dataset);
    std::fs::write(path, out).expect("write legacy imatrix");
}

/// The 2-D weights of a GGUF file (name, row length), as an imatrix covers them.
fn matrix_weights(path: &Path) -> Vec<(String, u64)> {
    let f = GgufFile::open(path).expect("open fixture");
    f.tensors()
        .iter()
        .filter(|t| t.ne.len() >= 2 && t.name != "token_embd.weight")
        .map(|t| (t.name.clone(), t.ne[0]))
        .collect()
}

#[test]
fn fixture_every_type_with_and_without_imatrix_matches_llama_quantize() {
    let ctx = TestContext::new();
    let input = ctx.path("tiny-llama-f32.gguf");
    write_fixture_gguf(&input, true);
    let weights = matrix_weights(&input);
    let gguf_imatrix = ctx.path("tiny.imatrix.gguf");
    write_gguf_imatrix(&gguf_imatrix, &weights);
    let legacy_imatrix = ctx.path("tiny.imatrix.dat");
    write_legacy_imatrix(&legacy_imatrix, &weights);

    for ftype in all_types() {
        for (label, imatrix) in [
            ("plain", None),
            ("gguf-imatrix", Some(&gguf_imatrix)),
            ("legacy-imatrix", Some(&legacy_imatrix)),
        ] {
            let ours = ctx.path(&format!("ours-{ftype}-{label}.gguf"));
            let theirs = ctx.path(&format!("ref-{ftype}-{label}.gguf"));
            let mut o = quantize_opts(&input, &ours, ftype);
            o.imatrix = imatrix.cloned();
            if ftype == "Q2_K_S" && imatrix.is_none() {
                assert!(
                    do_quantize(&o).is_err(),
                    "Q2_K_S without an imatrix must fail"
                );
                continue;
            }
            let flags: Vec<OsString> = match imatrix {
                Some(m) => vec![os("--imatrix"), os(m)],
                None => vec![],
            };
            reference(&flags, &input, &theirs, ftype);
            do_quantize(&o).unwrap_or_else(|e| panic!("{ftype} {label}: {e}"));
            assert_same_file(&ours, &theirs, &format!("{ftype} {label}"));
            if imatrix.is_none() {
                assert_plan_matches(&input, &ours, ftype);
            }
        }
    }
}

#[test]
fn fixture_options_match_llama_quantize() {
    let ctx = TestContext::new();
    let tied = ctx.path("tiny-tied.gguf");
    write_fixture_gguf(&tied, false);
    let untied = ctx.path("tiny-untied.gguf");
    write_fixture_gguf(&untied, true);

    type Case = (&'static str, &'static [&'static str], &'static str);
    let cases: &[Case] = &[
        ("pure", &["--pure"], "Q4_K_M"),
        ("output-type", &["--output-tensor-type", "q8_0"], "Q4_K_S"),
        ("embd-type", &["--token-embedding-type", "q4_k"], "Q5_K_M"),
        (
            "tensor-type",
            &[
                "--tensor-type",
                "attn_v=q8_0",
                "--tensor-type",
                "blk\\.[0-3]\\.ffn_down=Q5_0",
            ],
            "Q4_K_M",
        ),
        ("leave-output", &["--leave-output-tensor"], "Q3_K_M"),
    ];
    for input in [&tied, &untied] {
        for (label, flags, ftype) in cases {
            let stem = input.file_stem().unwrap().to_string_lossy().into_owned();
            let ours = ctx.path(&format!("ours-{stem}-{label}.gguf"));
            let theirs = ctx.path(&format!("ref-{stem}-{label}.gguf"));
            let flags_os: Vec<OsString> = flags.iter().map(os).collect();
            reference(&flags_os, input, &theirs, ftype);
            // Through the CLI, so that the flags' parsing is covered too.
            let mut args: Vec<String> = vec!["quantize".into()];
            args.extend(flags.iter().map(|s| s.to_string()));
            args.extend([
                input.display().to_string(),
                ours.display().to_string(),
                "--type".into(),
                ftype.to_string(),
                "--threads".into(),
                "2".into(),
                "--format".into(),
                "json".into(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = ctx.run(&args);
            assert!(out.status.success(), "{label}: {}", stderr(&out));
            let report: serde_json::Value =
                serde_json::from_str(&stdout(&out)).expect("--format json prints the report");
            assert_eq!(report["file_type"], *ftype);
            assert_same_file(&ours, &theirs, &format!("{stem} {label}"));
        }
    }

    // Output does not depend on the thread count.
    let one = ctx.path("threads-1.gguf");
    let three = ctx.path("threads-3.gguf");
    for (path, n) in [(&one, 1), (&three, 3)] {
        let mut o = quantize_opts(&untied, path, "Q4_K_M");
        o.threads = Some(n);
        do_quantize(&o).expect("quantize");
    }
    assert_eq!(sha256(&one), sha256(&three));
}

#[test]
fn fixture_split_model_matches_llama_quantize() {
    let ctx = TestContext::new();
    let (meta, tensors) = fixture_model(true);
    // Two parts as llama-gguf-split writes them: all metadata in the first, only the split keys
    // in the second.
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let parts = split_paths(&ctx.path("in.gguf"), 2);
    write_f32_gguf(
        &parts[0],
        &split_metadata(&meta, 0, 2, tensors.len()),
        first,
    );
    write_f32_gguf(
        &parts[1],
        &split_metadata(&meta, 1, 2, tensors.len()),
        second,
    );

    // Merged output.
    let ours = ctx.path("ours-merged.gguf");
    let theirs = ctx.path("ref-merged.gguf");
    reference(&[], &parts[0], &theirs, "Q4_K_M");
    do_quantize(&quantize_opts(&parts[0], &ours, "Q4_K_M")).expect("quantize split input");
    assert_same_file(&ours, &theirs, "split input, merged output");

    // --keep-split: one output part per input part.
    reference(
        &[os("--keep-split")],
        &parts[0],
        &ctx.path("ref-kept.gguf"),
        "Q5_K_M",
    );
    let mut o = quantize_opts(&parts[0], &ctx.path("ours-kept.gguf"), "Q5_K_M");
    o.keep_split = true;
    let report = do_quantize(&o).expect("quantize --keep-split");
    let ours = split_paths(&ctx.path("ours-kept.gguf"), 2);
    let theirs = split_paths(&ctx.path("ref-kept.gguf"), 2);
    assert_eq!(report.outputs, ours);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_same_file(a, b, "--keep-split part");
    }
}

// ---- (c) bad input ---------------------------------------------------------------------------

/// Files in the scratch directory other than `keep` (to prove nothing was left behind,
/// temporary files included).
fn leftovers(ctx: &TestContext, keep: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(ctx.dir.path())
        .expect("read scratch dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !keep.contains(&p.as_path()))
        .collect()
}

#[test]
fn bad_input_fails_cleanly() {
    let ctx = TestContext::new();
    let input = ctx.path("tiny.gguf");
    write_fixture_gguf(&input, true);
    let out_path = ctx.path("out.gguf");
    let out = out_path.to_str().unwrap();
    let inp = input.to_str().unwrap();

    // An override pattern that matches nothing is an error naming it.
    let r = ctx.run(&[
        "quantize",
        inp,
        out,
        "--type",
        "Q4_K_M",
        "--tensor-type",
        "attn_v=q8_0",
        "--tensor-type",
        "no_such_tensor=q8_0",
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("no_such_tensor"), "{}", stderr(&r));
    assert_eq!(leftovers(&ctx, &[&input]), Vec::<PathBuf>::new());

    // An unknown file type lists the valid ones.
    let r = ctx.run(&["quantize", inp, out, "--type", "Q9_X"]);
    assert_eq!(r.status.code(), Some(1));
    let err = stderr(&r);
    assert!(err.contains("Q9_X"), "{err}");
    for t in ["Q4_K_M", "Q6_K", "Q8_0", "IQ4_NL", "F16"] {
        assert!(err.contains(t), "valid types listed: {err}");
    }
    assert_eq!(leftovers(&ctx, &[&input]), Vec::<PathBuf>::new());

    // Quantized input without --allow-requantize, and an imatrix for another model.
    let q = ctx.path("q8.gguf");
    do_quantize(&quantize_opts(&input, &q, "Q8_0")).expect("Q8_0");
    let r = ctx.run(&["quantize", q.to_str().unwrap(), out, "--type", "Q4_0"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("--allow-requantize"), "{}", stderr(&r));
    let wrong = ctx.path("wrong.imatrix.gguf");
    write_gguf_imatrix(&wrong, &[("blk.0.attn_q.weight".to_string(), 128)]);
    let r = ctx.run(&[
        "quantize",
        inp,
        out,
        "--type",
        "Q4_K_M",
        "--imatrix",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("imatrix size"), "{}", stderr(&r));
    assert_eq!(
        leftovers(&ctx, &[&input, &q, &wrong]),
        Vec::<PathBuf>::new()
    );

    // Input and output the same file.
    let r = ctx.run(&["quantize", inp, inp, "--type", "Q8_0"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("same"), "{}", stderr(&r));
}
