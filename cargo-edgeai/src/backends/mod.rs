//! Conversion backends that run outside the native Rust pipeline (managed Python toolchains).

pub mod olive;
pub mod onnx;
