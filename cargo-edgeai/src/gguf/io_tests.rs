//! Unit tests of [`GgufFile`], [`GgufModel`], [`GgufWriter`] and [`inspect_model`] on small
//! synthetic files.

use std::path::{Path, PathBuf};

use super::*;
use crate::Error;

/// Metadata with every value type, a non-UTF-8 string and a string array with one non-UTF-8
/// element, and a custom alignment.
fn metadata(alignment: u32) -> Vec<(String, GgufValue)> {
    let kv = |k: &str, v: GgufValue| (k.to_string(), v);
    vec![
        kv("general.architecture", GgufValue::String("llama".into())),
        kv("general.alignment", GgufValue::U32(alignment)),
        kv("u8", GgufValue::U8(7)),
        kv("i8", GgufValue::I8(-7)),
        kv("u16", GgufValue::U16(700)),
        kv("i16", GgufValue::I16(-700)),
        kv("i32", GgufValue::I32(-70_000)),
        kv("f32", GgufValue::F32(f32::from_bits(0x7fc0_1234))), // NaN payload kept
        kv("bool", GgufValue::Bool(true)),
        kv("u64", GgufValue::U64(u64::MAX)),
        kv("i64", GgufValue::I64(i64::MIN)),
        kv("f64", GgufValue::F64(-0.0)),
        kv("raw", GgufValue::RawString(vec![b'a', 0xff, 0xfe])),
        kv(
            "tokens",
            GgufValue::Array(GgufArray::RawString(vec![
                b"ok".to_vec(),
                vec![0xc3],
                Vec::new(),
            ])),
        ),
        kv(
            "scores",
            GgufValue::Array(GgufArray::F32((0..40).map(|i| i as f32).collect())),
        ),
        kv(
            "nested",
            GgufValue::Array(GgufArray::Array(vec![
                GgufArray::U8(vec![1, 2]),
                GgufArray::String(vec!["x".into()]),
            ])),
        ),
        kv("eps", GgufValue::F32(1e-5)),
    ]
}

fn spec(name: &str, ne: &[u64], t: GgmlType) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        ne: ne.to_vec(),
        ggml_type: t,
    }
}

/// Three tensors whose sizes are not multiples of the alignment, so padding is exercised.
fn specs() -> Vec<TensorSpec> {
    vec![
        spec("token_embd.weight", &[64, 3], GgmlType::Q8_0), // 3 * 2 * 34 = 204 bytes
        spec("blk.0.attn_norm.weight", &[5], GgmlType::F32), // 20 bytes
        spec("output.weight", &[32, 2], GgmlType::Q4_1),     // 2 * 20 = 40 bytes
    ]
}

/// Deterministic, distinct bytes for tensor `i`.
fn data_for(i: usize, len: u64) -> Vec<u8> {
    (0..len)
        .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8 * 101 + 1))
        .collect()
}

fn write_file(
    path: &Path,
    version: u32,
    md: &[(String, GgufValue)],
    specs: &[TensorSpec],
    align: u64,
) {
    let mut w = GgufWriter::create(path, version, md, specs, align).unwrap();
    for (i, s) in specs.iter().enumerate() {
        w.write_tensor(&data_for(i, s.byte_size().unwrap()))
            .unwrap();
    }
    w.finish().unwrap();
}

/// Rewrite every metadata pair and tensor of `src` unchanged to `dst`.
fn rewrite(src: &GgufFile, dst: &Path) {
    let h = src.header();
    let specs: Vec<TensorSpec> = h
        .tensors
        .iter()
        .map(|t| spec(&t.name, &t.ne, t.ggml_type))
        .collect();
    let mut w = GgufWriter::create(dst, h.version, &h.metadata, &specs, h.alignment).unwrap();
    for i in 0..specs.len() {
        w.write_tensor(src.tensor_data(i)).unwrap();
    }
    w.finish().unwrap();
}

fn model_err(r: Result<impl std::fmt::Debug>) -> (PathBuf, String) {
    match r {
        Err(Error::InvalidModel {
            path,
            message,
            help,
        }) => {
            assert!(!help.is_empty());
            (path, message)
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

fn bad(bytes: Vec<u8>) -> String {
    let (path, message) = model_err(GgufFile::from_bytes(bytes, Path::new("bad.gguf")));
    assert_eq!(path, Path::new("bad.gguf"));
    message
}

fn internal(r: Result<()>) -> String {
    match r {
        Err(Error::Internal(m)) => m,
        other => panic!("expected Internal, got {other:?}"),
    }
}

/// Names in `dir` other than `keep`.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn writes_reads_and_rewrites_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    let md = metadata(64);
    write_file(&a, 3, &md, &specs(), 64);

    let f = GgufFile::open(&a).unwrap();
    assert_eq!(f.header().version, 3);
    assert_eq!(f.header().alignment, 64);
    // NaN != NaN, so compare the encodings (which also pins the NaN payload).
    let enc = |m: &[(String, GgufValue)]| super::header::encode_header(3, m, &[], 1);
    assert_eq!(
        enc(f.metadata()),
        enc(&md),
        "values, raw strings and order kept"
    );
    assert_eq!(f.metadata().len(), md.len());
    assert_eq!(f.header().get("raw"), md.get(12).map(|(_, v)| v));
    assert_eq!(f.header().get("tokens"), md.get(13).map(|(_, v)| v));
    let offsets: Vec<u64> = f.tensors().iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 256, 320], "running sum of sizes padded to 64");
    for (i, s) in specs().iter().enumerate() {
        assert_eq!(f.tensor_data(i), data_for(i, s.byte_size().unwrap()));
    }
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes.len() as u64, f.header().data_offset + 320 + 64);
    assert_eq!(f.as_bytes(), &bytes[..]);

    rewrite(&f, &b);
    assert_eq!(std::fs::read(&b).unwrap(), bytes);

    let g = GgufFile::from_bytes(bytes.clone(), &a).unwrap();
    assert_eq!(g.header().encode(), f.header().encode());
    assert_eq!(g.tensors(), f.tensors());
    assert_eq!(
        g.tensor_data_by_name("output.weight"),
        Some(f.tensor_data(2))
    );
    assert_eq!(
        leftovers(dir.path(), &["a.gguf", "b.gguf"]),
        Vec::<String>::new()
    );
}

#[test]
fn writer_layout_matches_llama_cpp_by_hand() {
    // One key, two tensors, alignment 32: every byte spelled out as gguf_write_out lays it.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    let md = vec![("k".to_string(), GgufValue::String("v".into()))];
    let specs = vec![
        spec("a", &[3], GgmlType::F32),
        spec("b", &[2, 1], GgmlType::F16),
    ];
    let mut w = GgufWriter::create(&p, 3, &md, &specs, 32).unwrap();
    w.write_tensor(&[1; 12]).unwrap();
    w.write_tensor(&[2; 4]).unwrap();
    w.finish().unwrap();

    let mut e = b"GGUF".to_vec();
    e.extend(3u32.to_le_bytes());
    e.extend(2u64.to_le_bytes()); // tensors
    e.extend(1u64.to_le_bytes()); // kv
    e.extend(1u64.to_le_bytes());
    e.push(b'k');
    e.extend(8u32.to_le_bytes());
    e.extend(1u64.to_le_bytes());
    e.push(b'v');
    e.extend(1u64.to_le_bytes());
    e.push(b'a');
    e.extend(1u32.to_le_bytes());
    e.extend(3u64.to_le_bytes());
    e.extend(0u32.to_le_bytes());
    e.extend(0u64.to_le_bytes());
    e.extend(1u64.to_le_bytes());
    e.push(b'b');
    e.extend(2u32.to_le_bytes());
    e.extend(2u64.to_le_bytes());
    e.extend(1u64.to_le_bytes());
    e.extend(1u32.to_le_bytes());
    e.extend(32u64.to_le_bytes()); // 12 bytes padded to 32
    e.resize(e.len().next_multiple_of(32), 0);
    e.extend([1; 12]);
    e.extend([0; 20]);
    e.extend([2; 4]);
    e.extend([0; 28]); // the last tensor is padded too
    assert_eq!(std::fs::read(&p).unwrap(), e);
}

#[test]
fn version_2_is_readable_and_rewritable() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("v2.gguf");
    write_file(&a, 2, &metadata(32), &specs(), 32);
    let f = GgufFile::open(&a).unwrap();
    assert_eq!(f.header().version, 2);
    let b = dir.path().join("v2b.gguf");
    rewrite(&f, &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn header_only_and_empty_tensor_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("none.gguf");
    write_file(&a, 3, &[], &[], 32);
    let f = GgufFile::open(&a).unwrap();
    assert!(f.tensors().is_empty());
    assert_eq!(
        std::fs::metadata(&a).unwrap().len(),
        32,
        "header padded to 32"
    );

    let b = dir.path().join("zero.gguf");
    let specs = vec![
        spec("z", &[0, 4], GgmlType::F32),
        spec("x", &[8], GgmlType::F32),
    ];
    write_file(&b, 3, &[], &specs, 32);
    let f = GgufFile::open(&b).unwrap();
    assert_eq!(f.tensor_data(0), &[] as &[u8]);
    assert_eq!(f.tensor_data(1).len(), 32);
}

#[test]
fn writer_rejects_misuse_as_internal_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    let md = metadata(64);

    // Wrong length, then too many tensors, then finishing early.
    let mut w = GgufWriter::create(&p, 3, &md, &specs(), 64).unwrap();
    assert!(internal(w.write_tensor(&[0; 3])).contains("needs 204 bytes"));
    let mut w2 = GgufWriter::create(&p, 3, &md, &specs()[..1], 64).unwrap();
    w2.write_tensor(&data_for(0, 204)).unwrap();
    assert!(internal(w2.write_tensor(&[])).contains("declares 1 tensors"));
    w.write_tensor(&data_for(0, 204)).unwrap();
    assert!(internal(w.finish()).contains("after 1 of 3"));
    drop(w2);
    assert!(!p.exists(), "no output without finish()");
    assert_eq!(
        leftovers(dir.path(), &[]),
        Vec::<String>::new(),
        "temp files removed"
    );

    let bad_create = |version, md: &[(String, GgufValue)], specs: &[TensorSpec], align| {
        internal(GgufWriter::create(&p, version, md, specs, align).map(|_| ()))
    };
    assert!(bad_create(1, &md, &specs(), 64).contains("version 1"));
    assert!(bad_create(3, &md, &specs(), 32).contains("differs"));
    assert!(bad_create(3, &[], &specs(), 48).contains("power of two"));
    let dup = vec![
        spec("a", &[1], GgmlType::F32),
        spec("a", &[1], GgmlType::F32),
    ];
    assert!(bad_create(3, &[], &dup, 32).contains("repeated"));
    let long = vec![spec(&"n".repeat(64), &[1], GgmlType::F32)];
    assert!(bad_create(3, &[], &long, 32).contains("longer than 63"));
    let partial_block = vec![spec("q", &[33], GgmlType::Q4_0)];
    assert!(bad_create(3, &[], &partial_block, 32).contains("whole number"));
    let dup_key = vec![
        ("k".to_string(), GgufValue::U8(1)),
        ("k".to_string(), GgufValue::U8(2)),
    ];
    assert!(bad_create(3, &dup_key, &[], 32).contains("repeated"));
    assert_eq!(leftovers(dir.path(), &[]), Vec::<String>::new());
}

#[test]
fn writer_uses_a_hidden_temp_file_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, b"old").unwrap();
    let specs = vec![spec("x", &[4], GgmlType::F32)];
    let mut w = GgufWriter::create(&p, 3, &[], &specs, 32).unwrap();
    let tmp = leftovers(dir.path(), &["m.gguf"]);
    assert_eq!(tmp.len(), 1);
    let prefix = format!(".m.gguf.tmp-{}-", std::process::id());
    assert!(tmp[0].starts_with(&prefix), "{tmp:?}");
    assert!(tmp[0][prefix.len()..].parse::<u64>().is_ok(), "{tmp:?}");
    w.write_tensor(&[9; 16]).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"old", "untouched until finish");
    w.finish().unwrap();
    assert!(GgufFile::open(&p).is_ok());
    assert_eq!(leftovers(dir.path(), &["m.gguf"]), Vec::<String>::new());
}

#[test]
fn writer_reports_a_missing_directory() {
    let p = Path::new("/nonexistent-edgeai-dir/x.gguf");
    match GgufWriter::create(p, 3, &[], &[], 32) {
        Err(Error::Io { path, .. }) => assert!(path.starts_with("/nonexistent-edgeai-dir")),
        other => panic!("expected Io, got {other:?}"),
    }
}

/// A valid file's bytes to corrupt, and its data offset.
fn valid_bytes() -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.gguf");
    write_file(&p, 3, &metadata(32), &specs(), 32);
    let f = GgufFile::open(&p).unwrap();
    (std::fs::read(&p).unwrap(), f.header().data_offset)
}

/// Hand-built file: `tensors` as (name, ne, type id, offset), alignment 32, `data` bytes.
fn handmade(tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend((tensors.len() as u64).to_le_bytes());
    v.extend(0u64.to_le_bytes());
    for (name, ne, ty, off) in tensors {
        v.extend((name.len() as u64).to_le_bytes());
        v.extend(name.as_bytes());
        v.extend((ne.len() as u32).to_le_bytes());
        for d in *ne {
            v.extend(d.to_le_bytes());
        }
        v.extend(ty.to_le_bytes());
        v.extend(off.to_le_bytes());
    }
    v.resize(v.len().next_multiple_of(32) + data, 0);
    v
}

#[test]
fn handmade_baseline_is_valid() {
    let v = handmade(&[("a", &[8], 0, 0), ("b", &[8], 0, 32)], 64);
    let f = GgufFile::from_bytes(v, Path::new("ok.gguf")).unwrap();
    assert_eq!(f.tensors().len(), 2);
}

#[test]
fn rejects_truncated_files_at_every_length() {
    let (bytes, data_offset) = valid_bytes();
    // The last tensor (Q4_1, 40 bytes at data offset 256) ends 24 bytes before the file does;
    // a file missing only that final padding is still complete, as for llama.cpp.
    let complete = data_offset as usize + 256 + 40;
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..len].to_vec(), Path::new("cut.gguf"));
        if len < complete {
            model_err(r);
        } else {
            assert!(r.is_ok(), "{len}");
        }
    }
    let m = bad(bytes[..complete - 1].to_vec());
    assert!(
        m.contains("truncated") && m.contains("output.weight"),
        "{m}"
    );
    assert!(bad(Vec::new()).contains("truncated"));
}

#[test]
fn rejects_wrong_magic() {
    let (mut bytes, _) = valid_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(bad(bytes).contains("not a GGUF file"));
    let m = bad(b"lmggxxxxxxxxxxxxxxxxxxxxxxx".to_vec());
    assert!(m.contains("pre-GGUF"), "{m}");
}

#[test]
fn rejects_absurd_counts_and_lengths() {
    let (bytes, _) = valid_bytes();
    let mut v = bytes.clone();
    v[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    assert!(bad(v).contains("tensor count"));
    let mut v = bytes.clone();
    v[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes()); // metadata count
    assert!(bad(v).contains("metadata count"));
    let mut v = bytes.clone();
    v[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes()); // first key's length
    assert!(bad(v).contains("string of"));
    // An array declaring 2^62 elements.
    let mut v = handmade(&[], 0);
    v[16..24].copy_from_slice(&1u64.to_le_bytes());
    v.truncate(24);
    v.extend(1u64.to_le_bytes());
    v.push(b'k');
    v.extend(9u32.to_le_bytes());
    v.extend(4u32.to_le_bytes());
    v.extend((1u64 << 62).to_le_bytes());
    v.resize(128, 0);
    assert!(bad(v).contains("array of"));
    // A huge alignment on a file without tensors: the padding would run past the file.
    let mut v = handmade(&[], 0);
    v[16..24].copy_from_slice(&1u64.to_le_bytes());
    v.truncate(24);
    v.extend(17u64.to_le_bytes());
    v.extend(b"general.alignment");
    v.extend(4u32.to_le_bytes());
    v.extend((1u32 << 31).to_le_bytes());
    v.resize(64, 0);
    assert!(bad(v).contains("past the end of the file"));
    // A dimension that overflows the element count.
    let v = handmade(&[("a", &[1 << 40, 1 << 40], 0, 0)], 32);
    assert!(bad(v).contains("impossible dimension"));
}

#[test]
fn rejects_misaligned_offsets() {
    let v = handmade(&[("a", &[8], 0, 0), ("b", &[8], 0, 36)], 96);
    assert!(bad(v).contains("not a multiple of the alignment 32"));
}

#[test]
fn rejects_overlapping_tensors() {
    // b starts inside a; listed out of order so the check must sort by offset.
    let v = handmade(&[("b", &[8], 0, 32), ("a", &[16], 0, 0)], 96);
    let m = bad(v);
    assert!(
        m.contains("`b`") && m.contains("overlaps tensor `a`"),
        "{m}"
    );
    let v = handmade(&[("a", &[8], 0, 0), ("b", &[8], 0, 0)], 64);
    assert!(bad(v).contains("overlaps"));
}

#[test]
fn rejects_unknown_tensor_type_naming_the_id() {
    let m = bad(handmade(&[("a", &[8], 99, 0)], 32));
    assert!(
        m.contains("unknown ggml type 99") && m.contains("`a`"),
        "{m}"
    );
    let m = bad(handmade(&[("a", &[8], 31, 0)], 32));
    assert!(m.contains("Q4_0_4_4"), "{m}");
}

#[test]
fn rejects_shape_size_mismatch() {
    // a's shape needs 32 bytes, but b starts 64 bytes after it.
    let m = bad(handmade(&[("a", &[8], 0, 0), ("b", &[8], 0, 64)], 96));
    assert!(m.contains("shape/size mismatch for tensor `a`"), "{m}");
    // A row that is not a whole number of blocks.
    let m = bad(handmade(&[("q", &[33], 2, 0)], 64));
    assert!(m.contains("not a multiple of the Q4_0 block size"), "{m}");
    // Unused bytes before the first tensor.
    let m = bad(handmade(&[("a", &[8], 0, 32)], 64));
    assert!(m.contains("not 0"), "{m}");
}

#[test]
fn split_paths_follow_llama_cpp() {
    let p = split_paths(Path::new("out/model.gguf"), 3);
    assert_eq!(
        p,
        [
            PathBuf::from("out/model-00001-of-00003.gguf"),
            PathBuf::from("out/model-00002-of-00003.gguf"),
            PathBuf::from("out/model-00003-of-00003.gguf"),
        ]
    );
    assert_eq!(
        split_paths(Path::new("m"), 1),
        [PathBuf::from("m-00001-of-00001.gguf")]
    );
}

#[test]
fn split_metadata_matches_keep_split() {
    let md = vec![
        ("a".to_string(), GgufValue::U8(1)),
        ("split.no".to_string(), GgufValue::U16(4)),
        ("b".to_string(), GgufValue::U8(2)),
    ];
    let first = split_metadata(&md, 0, 3, 10);
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", "split.no", "split.count", "split.tensors.count"]
    );
    assert_eq!(first[2].1, GgufValue::U16(0));
    assert_eq!(first[3].1, GgufValue::U16(3));
    assert_eq!(first[4].1, GgufValue::I32(10));
    let second = split_metadata(&md, 1, 3, 10);
    assert_eq!(second.len(), 3);
    assert_eq!(second[0].1, GgufValue::U16(1));
    assert_eq!(
        split_metadata(&md, 0, 1, 10).len(),
        2,
        "unsplit: no split keys"
    );
}

/// Write `specs()` as three splits (one tensor each) under `dir/m-0000N-of-00003.gguf`.
fn write_splits(dir: &Path) -> Vec<PathBuf> {
    let paths = split_paths(&dir.join("m.gguf"), 3);
    let md = metadata(32);
    for (i, p) in paths.iter().enumerate() {
        let split_md = split_metadata(&md, i as u16, 3, 3);
        let s = &specs()[i..=i];
        let mut w = GgufWriter::create(p, 3, &split_md, s, 32).unwrap();
        w.write_tensor(&data_for(i, s[0].byte_size().unwrap()))
            .unwrap();
        w.finish().unwrap();
    }
    paths
}

#[test]
fn opens_split_models_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_splits(dir.path());
    let m = GgufModel::open(&paths[0]).unwrap();
    assert_eq!(m.splits().len(), 3);
    assert_eq!(m.header().architecture(), Some("llama"));
    let names: Vec<&str> = m
        .tensors()
        .iter()
        .map(|&l| m.info(l).name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "blk.0.attn_norm.weight",
            "output.weight"
        ]
    );
    assert_eq!(m.tensors()[2], TensorLoc { split: 2, index: 0 });
    for (i, &loc) in m.tensors().iter().enumerate() {
        assert_eq!(m.data(loc), data_for(i, specs()[i].byte_size().unwrap()));
    }
    assert_eq!(
        m.find("output.weight"),
        Some(TensorLoc { split: 2, index: 0 })
    );

    // Each split rewrites byte for byte.
    for (i, f) in m.splits().iter().enumerate() {
        let out = dir.path().join(format!("copy{i}.gguf"));
        rewrite(f, &out);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&paths[i]).unwrap()
        );
    }

    // An unsplit file is a one-split model.
    let single = dir.path().join("single.gguf");
    write_file(&single, 3, &metadata(32), &specs(), 32);
    let s = GgufModel::open(&single).unwrap();
    assert_eq!(s.splits().len(), 1);
    assert_eq!(s.tensors().len(), 3);

    let r = inspect_model(&m);
    assert_eq!(r.files.len(), 3);
    assert_eq!(r.tensors[2].split, 2);
}

#[test]
fn missing_split_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_splits(dir.path());
    std::fs::remove_file(&paths[1]).unwrap();
    let (path, message) = model_err(GgufModel::open(&paths[0]));
    assert_eq!(path, paths[1]);
    assert!(message.contains("split 2 of 3"), "{message}");
}

#[test]
fn split_models_must_be_opened_from_the_first_and_be_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_splits(dir.path());
    let (_, m) = model_err(GgufModel::open(&paths[1]));
    assert!(m.contains("split 2 of a 3-part"), "{m}");

    // First split renamed: the others cannot be found.
    let renamed = dir.path().join("renamed.gguf");
    std::fs::copy(&paths[0], &renamed).unwrap();
    let (_, m) = model_err(GgufModel::open(&renamed));
    assert!(m.contains("-00001-of-00003.gguf"), "{m}");

    // A part from another export: wrong split.no.
    std::fs::copy(&paths[2], &paths[1]).unwrap();
    let (path, m) = model_err(GgufModel::open(&paths[0]));
    assert_eq!(path, paths[1]);
    assert!(m.contains("part 3 of 3, expected part 2"), "{m}");

    // split.tensors.count disagrees.
    let dir2 = tempfile::tempdir().unwrap();
    let paths = split_paths(&dir2.path().join("n.gguf"), 2);
    for (i, p) in paths.iter().enumerate() {
        let md = split_metadata(&[], i as u16, 2, 5);
        let s = &specs()[i..=i];
        let mut w = GgufWriter::create(p, 3, &md, s, 32).unwrap();
        w.write_tensor(&data_for(i, s[0].byte_size().unwrap()))
            .unwrap();
        w.finish().unwrap();
    }
    let (_, m) = model_err(GgufModel::open(&paths[0]));
    assert!(m.contains("split.tensors.count"), "{m}");
}

#[test]
fn inspect_reports_metadata_tensors_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.gguf");
    write_file(&p, 3, &metadata(32), &specs(), 32);
    let r = inspect_gguf(&p).unwrap();
    assert_eq!(r.totals.tensors, 3);
    assert_eq!(r.totals.parameters, 192 + 5 + 64);
    assert_eq!(r.totals.data_bytes, 204 + 20 + 40);
    assert_eq!(r.totals.file_bytes, std::fs::metadata(&p).unwrap().len());
    let t0 = &r.tensors[0];
    assert_eq!(
        (t0.ty.as_str(), t0.shape.as_slice()),
        ("Q8_0", &[3, 64][..])
    );
    assert_eq!(t0.bits_per_weight, Some(8.5));
    assert_eq!(t0.offset, r.data_offset);
    assert_eq!(r.tensors[2].bits_per_weight, Some(5.0));
    assert_eq!(r.types["F32"].tensors, 1);

    let scores = r.metadata.iter().find(|m| m.key == "scores").unwrap();
    assert_eq!(scores.ty, "arr[f32]");
    assert_eq!(scores.len, Some(40));
    assert!(scores.truncated);
    assert_eq!(scores.value.as_array().unwrap().len(), ARRAY_HEAD);
    assert_eq!(scores.value[1], serde_json::json!(1.0));
    let eps = r.metadata.iter().find(|m| m.key == "eps").unwrap();
    assert_eq!(eps.value, serde_json::json!(1e-5), "shortest f32 decimal");
    let nan = r.metadata.iter().find(|m| m.key == "f32").unwrap();
    assert_eq!(nan.value, serde_json::Value::Null);
    let raw = r.metadata.iter().find(|m| m.key == "raw").unwrap();
    assert_eq!(raw.ty, "str");
    assert_eq!(raw.value, serde_json::json!("a\u{fffd}\u{fffd}"));
    let nested = r.metadata.iter().find(|m| m.key == "nested").unwrap();
    assert_eq!(nested.value, serde_json::json!([[1, 2], ["x"]]));

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["totals"]["tensors"], 3);
    assert_eq!(json["metadata"][0]["type"], "str");

    let text = render_gguf_inspect(&r, true);
    assert!(text.contains("token_embd.weight"), "{text}");
    assert!(text.contains("8.50 bpw"), "{text}");
    assert!(text.contains("arr[f32]×40"), "{text}");
    assert!(render_gguf_inspect(&r, false).contains("--tensors"));
}
