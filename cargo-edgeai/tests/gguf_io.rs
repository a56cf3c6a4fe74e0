//! GGUF file I/O on the real SmolLM2-135M-Instruct Q4_1 file: validation, byte-exact rewrite,
//! split round trip, inspect, and the CLI's exit code on a damaged copy.

mod common;

use edgeai::gguf::{
    inspect_gguf, split_metadata, split_paths, GgufFile, GgufModel, GgufWriter, TensorSpec,
};

fn specs(f: &GgufFile) -> Vec<TensorSpec> {
    f.tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ggml_type: t.ggml_type,
        })
        .collect()
}

#[test]
fn smollm2_rewrites_byte_for_byte() {
    let src = common::smollm2_gguf();
    let f = GgufFile::open(&src).unwrap();
    let h = f.header();
    assert_eq!(h.version, 3);
    assert_eq!(h.architecture(), Some("llama"));
    assert_eq!(f.tensors().len(), 272);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.gguf");
    let mut w = GgufWriter::create(&out, h.version, &h.metadata, &specs(&f), h.alignment).unwrap();
    for i in 0..f.tensors().len() {
        w.write_tensor(f.tensor_data(i)).unwrap();
    }
    w.finish().unwrap();

    let copy = GgufFile::open(&out).unwrap();
    assert_eq!(copy.as_bytes().len(), f.as_bytes().len());
    assert!(
        copy.as_bytes() == f.as_bytes(),
        "rewrite differs from the original"
    );
}

#[test]
fn smollm2_split_in_three_and_reopened() {
    let src = common::smollm2_gguf();
    let f = GgufFile::open(&src).unwrap();
    let h = f.header();
    let all = specs(&f);
    let dir = tempfile::tempdir().unwrap();
    let paths = split_paths(&dir.path().join("smol.gguf"), 3);
    let per = all.len().div_ceil(3);
    for (s, path) in paths.iter().enumerate() {
        let range = s * per..((s + 1) * per).min(all.len());
        let md = split_metadata(&h.metadata, s as u16, 3, all.len());
        // Later parts carry no general.alignment, so they use the default, as in llama.cpp.
        let align = if s == 0 { h.alignment } else { 32 };
        let mut w = GgufWriter::create(path, 3, &md, &all[range.clone()], align).unwrap();
        for i in range {
            w.write_tensor(f.tensor_data(i)).unwrap();
        }
        w.finish().unwrap();
    }
    let m = GgufModel::open(&paths[0]).unwrap();
    assert_eq!(m.splits().len(), 3);
    assert_eq!(m.tensors().len(), f.tensors().len());
    for (i, &loc) in m.tensors().iter().enumerate() {
        assert_eq!(m.info(loc).name, f.tensors()[i].name);
        assert!(m.data(loc) == f.tensor_data(i), "tensor {i}");
    }

    std::fs::remove_file(&paths[2]).unwrap();
    let err = GgufModel::open(&paths[0]).unwrap_err().to_string();
    assert!(err.contains("smol-00003-of-00003.gguf"), "{err}");
}

#[test]
fn smollm2_inspect() {
    let src = common::smollm2_gguf();
    let r = inspect_gguf(&src).unwrap();
    assert_eq!(r.totals.tensors, 272);
    assert_eq!(r.totals.file_bytes, std::fs::metadata(&src).unwrap().len());
    assert!((134_000_000..135_000_000).contains(&r.totals.parameters));
    let bpw = r.totals.bits_per_weight.unwrap();
    assert!((4.5..6.5).contains(&bpw), "{bpw}");
    assert!(r.types.contains_key("Q4_1"));
    let tokens = r
        .metadata
        .iter()
        .find(|m| m.key == "tokenizer.ggml.tokens")
        .unwrap();
    assert_eq!(tokens.ty, "arr[str]");
    assert!(tokens.truncated);
    assert_eq!(tokens.len, Some(49152));
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.len() < 200_000, "summarised: {} bytes", json.len());
    let text = edgeai::gguf::render_gguf_inspect(&r, false);
    assert!(text.contains("general.architecture"), "{text}");
}

#[test]
fn damaged_copy_is_a_clear_error_with_exit_1() {
    let src = common::smollm2_gguf();
    let bytes = std::fs::read(&src).unwrap();
    let ctx = common::TestContext::new();
    let cut = ctx.write("cut.gguf", &bytes[..bytes.len() / 2]);

    let err = GgufFile::open(&cut).unwrap_err().to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );

    let out = ctx.run(&["inspect", "cut.gguf"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("cut.gguf"));
}
