//! Block quantizers and dequantizers of ggml tensor types, bit-exact with ggml's x86-64
//! reference code (`ggml/src/ggml-quants.c` compiled without `-march`, as llama-quantize ships).
//!
//! Every arithmetic step is written in the same order and precision as the C code: f32 where C
//! uses `float`, sums accumulated sequentially, no fused multiply-add (Rust never contracts), and
//! C's integer conversions (`nearest_int`'s magic-number rounding, truncating casts to 8 bits,
//! x86 `cvttss2si` for float -> integer casts) reproduced explicitly. See NOTES.md, "llama.cpp as
//! the reference".
//!
//! Entry points: [`quantize_rows`] (what `ggml_quantize_chunk` does) and [`dequantize_rows`]
//! (the type traits' `to_float`). Both are pure functions of their arguments, so a caller may run
//! them on disjoint row chunks from several threads.

mod dequant;
mod f16;
mod iq4nl;
mod kquants;
mod legacy;
mod mxfp4;

pub use f16::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

use crate::gguf::GgmlType;

/// Why a quantize or dequantize call was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The type has no quantizer in this build.
    #[error("quantizing to {0} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4)")]
    UnsupportedQuantize(GgmlType),
    /// The type has no dequantizer in this build.
    #[error("dequantizing {0} is not supported by this build")]
    UnsupportedDequantize(GgmlType),
    /// The row length is zero or not a whole number of blocks.
    #[error("a row of {n_per_row} elements cannot be stored as {ty}: rows must be a non-zero multiple of {block} elements; pick another type for this tensor")]
    RowLength {
        /// Target type.
        ty: GgmlType,
        /// Elements per row given.
        n_per_row: usize,
        /// Block size of the type.
        block: u64,
    },
    /// The source is not a whole number of rows.
    #[error("source has {len} values, which is not a whole number of rows of {n_per_row}")]
    SourceLength {
        /// Values in the source.
        len: usize,
        /// Elements per row given.
        n_per_row: usize,
    },
    /// The destination buffer has the wrong size.
    #[error("destination buffer for {ty} has {actual} {unit}, expected {expected}")]
    DestinationLength {
        /// Type being written or read.
        ty: GgmlType,
        /// Size needed.
        expected: usize,
        /// Size given.
        actual: usize,
        /// "bytes" or "values".
        unit: &'static str,
    },
    /// The quantized source is not a whole number of blocks.
    #[error("{ty} data of {len} bytes is not a whole number of {type_size}-byte blocks (truncated or wrong type?)")]
    QuantizedLength {
        /// Type being read.
        ty: GgmlType,
        /// Bytes given.
        len: usize,
        /// Bytes per block.
        type_size: u64,
    },
    /// The importance matrix does not have one weight per column.
    #[error("importance matrix has {actual} weights but rows have {expected} elements (imatrix from another model?)")]
    ImatrixLength {
        /// n_per_row.
        expected: usize,
        /// Weights given.
        actual: usize,
    },
    /// ggml refuses this type without an importance matrix.
    #[error("{0} requires an importance matrix (--imatrix)")]
    ImatrixRequired(GgmlType),
}

/// Whether this build can quantize to `ty` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
/// Q2_K..Q6_K, IQ4_NL, MXFP4).
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q8_0
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ4_NL
            | MXFP4
    )
}

/// Whether this build can dequantize `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    dequant::supported(ty)
}

/// Whether ggml requires an importance matrix for `ty` (`ggml_quantize_requires_imatrix`).
pub fn requires_imatrix(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ1_S)
}

/// Quantize `src` (n_rows × n_per_row f32, row-major) into `dst` (exactly `ty.bytes_for(n)`
/// bytes), exactly as `ggml_quantize_chunk(ty, src, dst, 0, n_rows, n_per_row, imatrix)` does.
/// `imatrix` has n_per_row weights; types that ggml quantizes without one (Q8_0, MXFP4, plain
/// floats) ignore it.
///
/// Errors (no panics) on a row length that is not a multiple of the block size, a source that is
/// not whole rows, a wrong `dst` length or a wrong imatrix length.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::UnsupportedQuantize(ty));
    }
    if requires_imatrix(ty) && imatrix.is_none() {
        return Err(QuantError::ImatrixRequired(ty));
    }
    let block = ty.block_size();
    if n_per_row == 0 || !(n_per_row as u64).is_multiple_of(block) {
        return Err(QuantError::RowLength {
            ty,
            n_per_row,
            block,
        });
    }
    if !src.len().is_multiple_of(n_per_row) {
        return Err(QuantError::SourceLength {
            len: src.len(),
            n_per_row,
        });
    }
    let row_size = ty
        .bytes_for(n_per_row as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or(QuantError::RowLength {
            ty,
            n_per_row,
            block,
        })?;
    let n_rows = src.len() / n_per_row;
    let expected = row_size.checked_mul(n_rows).ok_or(QuantError::RowLength {
        ty,
        n_per_row,
        block,
    })?;
    if dst.len() != expected {
        return Err(QuantError::DestinationLength {
            ty,
            expected,
            actual: dst.len(),
            unit: "bytes",
        });
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(QuantError::ImatrixLength {
                expected: n_per_row,
                actual: w.len(),
            });
        }
    }
    if n_rows == 0 {
        return Ok(());
    }

    use GgmlType::*;
    match ty {
        F32 => {
            for (o, x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        F16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16(x).to_le_bytes());
            }
        }
        BF16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
            }
        }
        // Without an imatrix ggml runs the `_ref` quantizer over the whole chunk; its blocks are
        // independent, so row by row gives the same bytes.
        _ => {
            for (x, y) in src
                .chunks_exact(n_per_row)
                .zip(dst.chunks_exact_mut(row_size))
            {
                quantize_row(ty, x, imatrix, y);
            }
        }
    }
    Ok(())
}

/// One row of a block type; lengths were validated by [`quantize_rows`].
fn quantize_row(ty: GgmlType, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    use GgmlType::*;
    match ty {
        Q8_0 => legacy::quantize_row_q8_0(x, y),
        Q4_0 => legacy::quantize_row_q4_0(x, qw, y),
        Q4_1 => legacy::quantize_row_q4_1(x, qw, y),
        Q5_0 => legacy::quantize_row_q5_0(x, qw, y),
        Q5_1 => legacy::quantize_row_q5_1(x, qw, y),
        Q2_K => kquants::quantize_row_q2_k(x, qw, y),
        Q3_K => kquants::quantize_row_q3_k(x, qw, y),
        Q4_K => kquants::quantize_row_q4_k(x, qw, y),
        Q5_K => kquants::quantize_row_q5_k(x, qw, y),
        Q6_K => kquants::quantize_row_q6_k(x, qw, y),
        IQ4_NL => iq4nl::quantize_row_iq4_nl(x, qw, y),
        MXFP4 => mxfp4::quantize_row_mxfp4(x, y),
        // can_quantize() was checked by the caller.
        _ => {}
    }
}

/// Dequantize `src` into `dst` (f32), like the type traits' `to_float`. `src` must be a whole
/// number of blocks and `dst` exactly the number of elements they hold.
pub fn dequantize_rows(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::UnsupportedDequantize(ty));
    }
    let type_size = ty.type_size();
    let ts = type_size as usize;
    if !src.len().is_multiple_of(ts) {
        return Err(QuantError::QuantizedLength {
            ty,
            len: src.len(),
            type_size,
        });
    }
    let expected = (src.len() / ts)
        .checked_mul(ty.block_size() as usize)
        .ok_or(QuantError::QuantizedLength {
            ty,
            len: src.len(),
            type_size,
        })?;
    if dst.len() != expected {
        return Err(QuantError::DestinationLength {
            ty,
            expected,
            actual: dst.len(),
            unit: "values",
        });
    }
    dequant::dequantize(ty, src, dst);
    Ok(())
}

// ---- helpers shared by the quantizers, reproducing C semantics -----------------------------------

/// ggml's `nearest_int`: round to nearest (ties to even) by adding 1.5 * 2^23 and reading the
/// mantissa bits. Defined for |x| <= 4194303; outside that (or NaN) it returns whatever bits the
/// C code would, which is what the output then contains.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// A C float -> int conversion as gcc emits it on x86-64 (`cvttss2si`): truncation toward zero,
/// and 0x80000000 for NaN or out-of-range values (Rust's `as` would saturate instead). Casts to
/// 8-bit types in ggml go through this and keep the low byte. (NaN is outside every range.)
#[inline(always)]
pub(crate) fn cvtt_i32(x: f32) -> i32 {
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// C's `MAX(a, b)` macro on floats: `a > b ? a : b` (returns `b` when either is NaN).
#[inline(always)]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// A row quantizer: `(x, imatrix, y)`.
#[cfg(test)]
type RowQuantizer = fn(&[f32], Option<&[f32]>, &mut [u8]);

/// The portable (baseline x86-64 / non-x86) row quantizer of `ty` where the build also has a
/// SIMD or multiversioned one, for the tests that compare the two.
#[cfg(test)]
fn baseline_row(ty: GgmlType) -> Option<RowQuantizer> {
    match ty {
        GgmlType::Q4_0 => Some(legacy::quantize_row_q4_0_scalar),
        _ => kquants::baseline_row(ty),
    }
}

/// Validation shared by the golden-vector and property tests.
#[cfg(test)]
mod tests;
