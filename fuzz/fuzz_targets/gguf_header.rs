//! Arbitrary bytes through the GGUF header reader, from memory, with the true length and with a
//! declared length larger than what the reader yields (a file that shrinks while being read),
//! then through the full file validation (`GgufFile`), tensor data access, re-encoding and
//! `inspect`.
#![no_main]

use std::path::Path;

use edgeai::gguf::{inspect_model, render_gguf_inspect, GgufFile, GgufModel};
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

    let Ok(file) = GgufFile::from_bytes(data.to_vec(), path) else {
        return;
    };
    let header = file.header();
    for (i, t) in header.tensors.iter().enumerate() {
        assert_eq!(file.tensor_data(i).len() as u64, t.size_bytes());
    }
    // Re-encoding the header in front of the same data section gives a file that validates
    // to the same tensors with the same bytes (the encoding may differ from the input only
    // where the reader normalises: padding bytes, bool bytes, non-UTF-8 keys and names).
    let mut again = header.encode();
    let data_offset = usize::try_from(header.data_offset).unwrap_or(usize::MAX);
    again.extend_from_slice(data.get(data_offset..).unwrap_or(&[]));
    let copy = GgufFile::from_bytes(again, path).expect("a re-encoded valid file must validate");
    assert_eq!(copy.tensors(), file.tensors());
    for i in 0..file.tensors().len() {
        assert_eq!(copy.tensor_data(i), file.tensor_data(i));
    }
    let report = inspect_model(&GgufModel::single(file));
    let _ = render_gguf_inspect(&report, true);
});
