//! Arbitrary bytes through the GGUF header reader, from memory, with the true length and with a
//! declared length larger than what the reader yields (a file that shrinks while being read).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    if let Ok(header) = edgeai::gguf::read_header_from(data, data.len() as u64, path) {
        // A header that parsed must encode, and its facts must build, without panicking.
        let _ = header.encode();
        let _ = edgeai::gguf::model_facts(&header, path);
        for t in &header.tensors {
            assert!(header.data_offset + t.offset + t.size_bytes() <= data.len() as u64);
        }
    }
    let _ = edgeai::gguf::read_header_from(data, data.len() as u64 + 4096, path);
});
