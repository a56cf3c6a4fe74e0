//! Unit tests on hand-built GGUF byte buffers.

use std::path::Path;

use super::*;
use crate::Error;

/// Hand-written little-endian GGUF writer, independent of [`GgufHeader::encode`].
#[derive(Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn key(&mut self, k: &str, ty: u32) -> &mut Self {
        self.str(k).u32(ty)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pad to `align` and add `data` bytes.
    fn finish(&self, align: usize, data: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().next_multiple_of(align) + data, 0);
        v
    }
}

fn parse(bytes: &[u8]) -> Result<GgufHeader> {
    read_header_from(bytes, bytes.len() as u64, Path::new("t.gguf"))
}

fn err_message(bytes: &[u8]) -> String {
    match parse(bytes) {
        Err(Error::InvalidModel {
            message,
            path,
            help,
        }) => {
            assert_eq!(path, Path::new("t.gguf"));
            assert!(!help.is_empty());
            message
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

/// A header with one value of every type, nested arrays, and two tensors.
fn every_type() -> B {
    let mut b = B::header(3, 2, 17);
    b.key("general.architecture", 8).str("llama");
    b.key("u8", 0).u8(200);
    b.key("i8", 1).u8(0xff);
    b.key("u16", 2).bytes(&0xbeefu16.to_le_bytes());
    b.key("i16", 3).bytes(&(-2i16).to_le_bytes());
    b.key("u32", 4).u32(70_000);
    b.key("i32", 5).bytes(&(-3i32).to_le_bytes());
    b.key("f32", 6).bytes(&1.5f32.to_le_bytes());
    b.key("bool", 7).u8(1);
    b.key("u64", 10).u64(1 << 40);
    b.key("i64", 11).bytes(&(-4i64).to_le_bytes());
    b.key("f64", 12).bytes(&2.25f64.to_le_bytes());
    b.key("strings", 9)
        .u32(8)
        .u64(3)
        .str("a")
        .str("")
        .str("ccc");
    b.key("floats", 9).u32(6).u64(2);
    b.bytes(&0.5f32.to_le_bytes()).bytes(&(-1f32).to_le_bytes());
    // [[1u8, 2u8], ["x"], []i32]
    b.key("nested", 9).u32(9).u64(3);
    b.u32(0).u64(2).u8(1).u8(2);
    b.u32(8).u64(1).str("x");
    b.u32(5).u64(0);
    b.key("llama.attention.head_count_kv", 9)
        .u32(4)
        .u64(3)
        .u32(2)
        .u32(8)
        .u32(4);
    b.key("general.alignment", 4).u32(64);
    b.tensor("token_embd.weight", &[64, 10], 8, 0); // Q8_0: 10 rows * 2 blocks * 34 = 680
    b.tensor("norm", &[64], 0, 704); // F32, 256 bytes at 704 (aligned to 64)
    b
}

#[test]
fn reads_every_value_type() {
    let bytes = every_type().finish(64, 704 + 256);
    let h = parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(h.data_offset + 960, bytes.len() as u64);
    let keys: Vec<&str> = h.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys[..3],
        ["general.architecture", "u8", "i8"],
        "file order"
    );
    assert_eq!(h.get("u8"), Some(&GgufValue::U8(200)));
    assert_eq!(h.get("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(h.get("u16"), Some(&GgufValue::U16(0xbeef)));
    assert_eq!(h.get("i16"), Some(&GgufValue::I16(-2)));
    assert_eq!(h.get("u32"), Some(&GgufValue::U32(70_000)));
    assert_eq!(h.get("i32"), Some(&GgufValue::I32(-3)));
    assert_eq!(h.get("f32"), Some(&GgufValue::F32(1.5)));
    assert_eq!(h.get("bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(h.get("u64"), Some(&GgufValue::U64(1 << 40)));
    assert_eq!(h.get("i64"), Some(&GgufValue::I64(-4)));
    assert_eq!(h.get("f64"), Some(&GgufValue::F64(2.25)));
    assert_eq!(h.get("i64").and_then(GgufValue::as_u64), None);
    assert_eq!(
        h.get("strings"),
        Some(&GgufValue::Array(GgufArray::String(vec![
            "a".into(),
            "".into(),
            "ccc".into()
        ])))
    );
    assert_eq!(
        h.get("floats"),
        Some(&GgufValue::Array(GgufArray::F32(vec![0.5, -1.0])))
    );
    assert_eq!(
        h.get("nested"),
        Some(&GgufValue::Array(GgufArray::Array(vec![
            GgufArray::U8(vec![1, 2]),
            GgufArray::String(vec!["x".into()]),
            GgufArray::I32(vec![]),
        ])))
    );
    assert_eq!(h.tensors.len(), 2);
    let t = &h.tensors[0];
    assert_eq!(t.ggml_type, GgmlType::Q8_0);
    assert_eq!(t.shape(), vec![10, 64]);
    assert_eq!(t.size_bytes(), 680);
    assert_eq!(h.tensors[1].offset, 704);
    assert_eq!(
        h.data_range(&h.tensors[1]),
        h.data_offset + 704..h.data_offset + 960
    );
    assert_eq!(h.data_range(&h.tensors[1]).end, bytes.len() as u64);
}

#[test]
fn encode_round_trips() {
    let bytes = every_type().finish(64, 960);
    let h = parse(&bytes).unwrap();
    let mut again = h.encode();
    assert_eq!(again.len() as u64, h.data_offset);
    assert_eq!(again[..], bytes[..again.len()]);
    again.resize(bytes.len(), 0);
    assert_eq!(parse(&again).unwrap(), h);
}

#[test]
fn facts_from_header() {
    let bytes = every_type().finish(64, 960);
    let h = parse(&bytes).unwrap();
    let f = model_facts(&h, Path::new("t.gguf"));
    assert_eq!(f.architecture, "llama");
    assert_eq!(f.kv_heads, Some(8), "per-layer array: the maximum");
    assert!(f.tied_embeddings);
    assert_eq!(f.parameters, 640 + 64);
    assert_eq!(f.dtype, "Q8_0");
    assert_eq!(f.tensors[1].dtype, "F32");
    assert_eq!(class_of_architecture("bert"), ModelClass::Encoder);
    assert_eq!(class_of_architecture("jina-bert-v2"), ModelClass::Encoder);
    assert_eq!(class_of_architecture("t5encoder"), ModelClass::Encoder);
    assert_eq!(class_of_architecture("clip"), ModelClass::Other);
    assert_eq!(class_of_architecture("qwen2"), ModelClass::DecoderLlm);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = every_type().finish(64, 960);
    for cut in 0..full.len() {
        let msg = err_message(&full[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("corrupt") || msg.contains("not a GGUF"),
            "cut {cut}: {msg}"
        );
    }
}

#[test]
fn a_short_reader_is_an_error_not_a_panic() {
    // The reader yields fewer bytes than the declared file length.
    let full = every_type().finish(64, 960);
    for cut in [0, 3, 30, 200, 400] {
        let r = read_header_from(&full[..cut], full.len() as u64, Path::new("t.gguf"));
        assert!(matches!(r, Err(Error::InvalidModel { .. })), "cut {cut}");
    }
}

#[test]
fn huge_declared_lengths_are_rejected_before_allocating() {
    let pad = [0u8; 64];
    // String length.
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).bytes(&pad);
    assert!(err_message(&b.0).contains("at byte 24"));
    // Array counts of every element type.
    for ty in 0..=12u32 {
        let mut b = B::header(3, 0, 1);
        b.key("a", 9).u32(ty).u64(u64::MAX / 2).bytes(&pad);
        let msg = err_message(&b.0);
        assert!(
            msg.contains("truncated or corrupt GGUF header"),
            "{ty}: {msg}"
        );
    }
    // Tensor and KV counts.
    let mut b = B::header(3, u64::MAX, 0);
    b.bytes(&pad);
    assert!(err_message(&b.0).contains("tensor count"));
    let mut b = B::header(3, 0, u64::MAX);
    b.bytes(&pad);
    assert!(err_message(&b.0).contains("metadata count"));
}

#[test]
fn corrupt_tensor_infos_are_rejected() {
    let cases: Vec<(B, &str)> = vec![
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
                b
            },
            "5 dimensions",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[1 << 40, 1 << 40], 0, 0);
                b
            },
            "impossible dimension",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[u64::MAX], 0, 0);
                b
            },
            "impossible dimension",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[32], 99, 0);
                b
            },
            "unknown ggml type 99",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[32], 31, 0);
                b
            },
            "Q4_0_4_4",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[33], 2, 0);
                b
            },
            "not a multiple of the Q4_0 block size 32",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[8], 0, 3);
                b
            },
            "not a multiple of the alignment",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[1 << 20], 0, 0);
                b
            },
            "truncated GGUF file: tensor `t`",
        ),
        (
            {
                let mut b = B::header(3, 1, 0);
                b.tensor("t", &[8], 0, u64::MAX - 31);
                b
            },
            "truncated GGUF file",
        ),
        (
            {
                let mut b = B::header(3, 2, 0);
                b.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32);
                b
            },
            "duplicate tensor name",
        ),
        (
            {
                let mut b = B::header(3, 0, 2);
                b.key("k", 4).u32(1).key("k", 4).u32(2);
                b
            },
            "duplicate metadata key",
        ),
        (
            {
                let mut b = B::header(3, 0, 1);
                b.key("general.alignment", 4).u32(48);
                b
            },
            "not a power of two",
        ),
        (
            {
                let mut b = B::header(3, 0, 1);
                b.key("general.alignment", 4).u32(0);
                b
            },
            "not a power of two",
        ),
        (
            {
                let mut b = B::header(3, 0, 1);
                b.key("k", 13).u32(0);
                b
            },
            "unknown value type 13",
        ),
        (
            {
                let mut b = B::header(3, 0, 1);
                b.key("k", 9).u32(77).u64(0);
                b
            },
            "unknown value type 77",
        ),
    ];
    for (b, want) in cases {
        let msg = err_message(&b.finish(32, 64));
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
}

#[test]
fn deep_array_nesting_is_bounded() {
    let mut b = B::header(3, 0, 1);
    b.key("deep", 9);
    for _ in 0..100 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    let msg = err_message(&b.finish(32, 0));
    assert!(msg.contains("nests arrays"), "{msg}");
}

#[test]
fn versions_and_magic() {
    let mut v1 = B::header(1, 0, 0).0;
    v1.resize(64, 0);
    assert!(err_message(&v1).contains("version 1 is not supported"));
    let mut be = B::header(0x0300_0000, 0, 0).0;
    be.resize(64, 0);
    assert!(err_message(&be).contains("big-endian"));
    let mut v9 = B::header(9, 0, 0).0;
    v9.resize(64, 0);
    assert!(err_message(&v9).contains("unsupported GGUF version 9"));
    let mut v2 = B::header(2, 0, 0).0;
    v2.resize(64, 0);
    assert_eq!(parse(&v2).unwrap().version, 2);
    assert!(err_message(b"tjggxxxxxxxxxxxxxxxxxxxxxxxxx").contains("pre-GGUF"));
    assert!(err_message(b"PK\x03\x04xxxxxxxxxxxxxxxxxxxxxx").contains("not a GGUF file"));
}

#[test]
fn random_mutations_never_panic() {
    let base = every_type().finish(64, 960);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut m = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        let cut = (next() % (m.len() as u64 + 1)) as usize;
        let _ = parse(&m[..cut]);
        let _ = parse(&m);
    }
}
