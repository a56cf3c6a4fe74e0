//! MXFP4: 32 e2m1 values with one e8m0 exponent per block (`quantize_row_mxfp4_ref`; ggml ignores
//! the imatrix for this type). Layout: `e:u8 qs[16]` (17 bytes).

// Index loops mirror ggml's C index arithmetic one to one, which keeps the port reviewable.
#![allow(clippy::needless_range_loop)]

use super::cvtt_i32;

/// e2m1 values, doubled so that they are integers (`kvalues_mxfp4` in ggml-common.h).
pub(super) const KVALUES_MXFP4: [i8; 16] =
    [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `ggml_e8m0_to_fp32_half`: 2^(e-128), i.e. half the e8m0 scale (the values above are doubled).
#[inline]
pub(super) fn e8m0_to_fp32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Index of the closest doubled e2m1 value to `x` at scale `e` (first one on ties).
#[inline(always)]
fn best_index_mxfp4(x: f32, e: f32) -> u8 {
    let mut best_index = 0u8;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * e - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(k) * e - x).abs();
        if err < best_err {
            best_index = i as u8;
            best_err = err;
        }
    }
    best_index
}

/// Quantizes one row (a whole number of 32-element blocks) to MXFP4.
pub(super) fn quantize_row_mxfp4(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut(17)) {
        let mut amax = 0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        // `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`: a float -> uint8_t conversion (cvttss2si
        // then the low byte), so tiny amax values wrap around exactly as in C.
        let e = if amax > 0.0 {
            cvtt_i32(amax.log2().floor() - 2.0 + 127.0) as u8
        } else {
            0
        };
        let d = e8m0_to_fp32_half(e);
        yb[0] = e;
        for j in 0..16 {
            let x0 = best_index_mxfp4(xb[j], d);
            let x1 = best_index_mxfp4(xb[j + 16], d);
            yb[1 + j] = x0 | (x1 << 4);
        }
    }
}
