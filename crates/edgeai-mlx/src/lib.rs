//! MLX quantization (affine, mxfp4) bit-exact with mlx, and MLX model writing.
//!
//! - [`quantize`]: mlx's CPU quantizers reproduced in the same precision and order, so the
//!   packed weights, scales and biases are byte-identical to `mx.quantize` (mlx 0.32.x).
//! - [`recipe`]: which modules mlx-lm quantizes, with which bits (`mixed_*` recipes).
//! - [`safetensors`]: safetensors shards with `{"format": "mlx"}` metadata, sharded as
//!   mlx-lm's `save_model` does, plus `model.safetensors.index.json`.
//! - [`pyjson`]: JSON text as Python's `json.dump(obj, indent=4)` prints it (config.json).
//!
//! Pure Rust, no dependency on the `edgeai` crate: callers hand in tensor bytes.

pub mod float;
pub mod model;
pub mod pyjson;
pub mod quantize;
pub mod recipe;
pub mod safetensors;

pub use quantize::{dequantize, quantize, Quantized};

use std::fmt;
use std::path::PathBuf;

/// Errors of this crate. Each names the tensor, option or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A quantization option that mlx does not support.
    #[error("{message}")]
    Option { message: String },
    /// A tensor whose shape or size cannot be quantized as asked.
    #[error("tensor `{tensor}` {message}")]
    Shape { tensor: String, message: String },
    /// A tensor whose dtype cannot be quantized.
    #[error(
        "tensor `{tensor}` has dtype {dtype}: only F32, F16 and BF16 weights can be quantized"
    )]
    DType { tensor: String, dtype: String },
    /// I/O on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Float dtypes the quantizers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Safetensors name (`F32`, `F16`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// From a safetensors dtype name; `None` for non-float or unsupported dtypes.
    pub fn from_name(name: &str) -> Option<DType> {
        match name {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// From a config.json `torch_dtype` (`float32`, `float16`, `bfloat16`).
    pub fn from_torch(name: &str) -> Option<DType> {
        match name {
            "float32" => Some(DType::F32),
            "float16" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Quantization mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Affine,
    Mxfp4,
}

impl Mode {
    /// The name mlx uses (`affine`, `mxfp4`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Affine => "affine",
            Mode::Mxfp4 => "mxfp4",
        }
    }

    /// Parse `affine` / `mxfp4`.
    pub fn parse(s: &str) -> Result<Mode, Error> {
        match s {
            "affine" => Ok(Mode::Affine),
            "mxfp4" => Ok(Mode::Mxfp4),
            other => Err(Error::Option {
                message: format!("unknown --mode `{other}`: supported modes are affine and mxfp4"),
            }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Affine bit widths mlx supports.
pub const AFFINE_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// Affine group sizes mlx supports.
pub const AFFINE_GROUPS: [usize; 3] = [32, 64, 128];

/// How one tensor is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    pub mode: Mode,
    pub bits: u32,
    pub group_size: usize,
}

impl QuantSpec {
    /// Affine with `bits` and `group_size`.
    pub fn affine(bits: u32, group_size: usize) -> Self {
        QuantSpec {
            mode: Mode::Affine,
            bits,
            group_size,
        }
    }

    /// mxfp4 (4 bits, group 32).
    pub fn mxfp4() -> Self {
        QuantSpec {
            mode: Mode::Mxfp4,
            bits: 4,
            group_size: 32,
        }
    }

    /// Refuse what mlx refuses, naming the option.
    pub fn validate(&self) -> Result<(), Error> {
        match self.mode {
            Mode::Affine => {
                if !AFFINE_BITS.contains(&self.bits) {
                    return Err(Error::Option {
                        message: format!(
                            "--bits {} is not supported by affine quantization: use 2, 3, 4, 5, 6 or 8",
                            self.bits
                        ),
                    });
                }
                if !AFFINE_GROUPS.contains(&self.group_size) {
                    return Err(Error::Option {
                        message: format!(
                            "--group-size {} is not supported by affine quantization: use 32, 64 or 128",
                            self.group_size
                        ),
                    });
                }
            }
            Mode::Mxfp4 => {
                if self.bits != 4 {
                    return Err(Error::Option {
                        message: format!(
                            "--bits {} is not supported by mxfp4: mxfp4 is 4 bits",
                            self.bits
                        ),
                    });
                }
                if self.group_size != 32 {
                    return Err(Error::Option {
                        message: format!(
                            "--group-size {} is not supported by mxfp4: mxfp4 uses groups of 32",
                            self.group_size
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
