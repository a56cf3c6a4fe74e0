//! Arbitrary bytes through the safetensors header reader, from memory, with the true length
//! and with a declared length larger than what the reader yields.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    if let Ok(header) = edgeai::safetensors::read_header_from(data, data.len() as u64, path) {
        let data_len = data.len() as u64 - header.data_start();
        for t in &header.tensors {
            assert!(t.data_offsets.0 <= t.data_offsets.1 && t.data_offsets.1 <= data_len);
        }
    }
    let _ = edgeai::safetensors::read_header_from(data, data.len() as u64 + 4096, path);
});
