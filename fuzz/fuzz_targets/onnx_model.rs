//! Arbitrary bytes through the ONNX protobuf reader over an in-memory `Read + Seek`, with the
//! true length and with a declared length larger than what the reader yields.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.onnx");
    if let Ok(model) = edgeai::onnx::read_model_from(Cursor::new(data), data.len() as u64, path) {
        let _ = edgeai::onnx::model_facts(&model, path);
    }
    let _ = edgeai::onnx::read_model_from(Cursor::new(data), data.len() as u64 + 4096, path);
});
