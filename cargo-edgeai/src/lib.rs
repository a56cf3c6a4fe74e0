//! cargo-edgeai: plan, convert, quantize, validate and bundle AI models for edge devices.
//!
//! The `cargo-edgeai` binary is a thin layer over this library: each command parses its
//! arguments and calls one `do_*` function here. See ARCHITECTURE.md for the map of modules.

pub mod backends;
pub mod cache;
pub mod convert;
pub mod crossbuild;
pub mod doctor;
pub mod error;
pub mod export;
pub mod facts;
pub mod gguf;
pub mod init;
pub mod llama_quant;
pub mod manifest;
pub mod matrix;
pub mod mlx;
pub mod onnx;
pub mod pipeline;
pub mod plan;
pub mod project;
pub mod quant;
pub mod quants;
pub mod report;
pub mod safetensors;
pub mod validate;

pub use error::{Error, Result};
