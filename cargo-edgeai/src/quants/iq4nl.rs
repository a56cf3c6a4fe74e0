//! IQ4_NL: 32 non-linear 4-bit levels with an f16 scale. This is `quantize_iq4_nl` as called by
//! `ggml_quantize_chunk` (scale search with ntry = 7, with or without imatrix), which is NOT
//! `quantize_row_iq4_nl_ref` (ntry = -1). Layout: `d:f16 qs[16]` (18 bytes).

// Index loops mirror ggml's C index arithmetic one to one, which keeps the port reviewable.
#![allow(clippy::needless_range_loop)]

use super::f16::write_f16;

/// The 16 IQ4_NL levels (`kvalues_iq4nl` in ggml-common.h).
pub(super) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const GROUP_MAX_EPS: f32 = 1e-15;
const NTRY: i32 = 7;

/// `best_index_int8` of this ggml version: binary search, then the nearer of the two neighbours
/// (compared as `x - val[mu-1] < val[mu] - x` in float; ties go up).
#[inline(always)]
fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    if x <= f32::from(val[0]) {
        return 0;
    }
    if x >= f32::from(val[15]) {
        return 15;
    }
    let mut ml = 0usize;
    let mut mu = 15usize;
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(val[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// Quantizes one row (whole 32-element blocks); `qw` is the row's importance weights.
pub(super) fn quantize_row_iq4_nl(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let values = &KVALUES_IQ4NL;
    for (ib, (xb, yb)) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)).enumerate() {
        let mut sigma2 = 0f32;
        for &v in xb {
            sigma2 += v * v;
        }
        sigma2 *= 2.0 / 32.0;

        let mut weight = [0f32; 32];
        match qw {
            Some(qw) => {
                let qwb = &qw[32 * ib..32 * (ib + 1)];
                for ((w, &v), &q) in weight.iter_mut().zip(xb).zip(qwb) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }

        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }

        let scale = if amax < GROUP_MAX_EPS {
            0.0
        } else {
            let v0 = f32::from(values[0]);
            let mut d = -max / v0;
            let mut id = 1.0 / d;
            let mut sumqx = 0f32;
            let mut sumq2 = 0f32;
            for (&v, &w) in xb.iter().zip(&weight) {
                let al = id * v;
                let q = f32::from(values[best_index_int8(values, al)]);
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
            let mut best = d * sumqx;
            for itry in -NTRY..=NTRY {
                // (itry + values[0]) is an int sum, converted to float once.
                id = (itry + i32::from(values[0])) as f32 / max;
                let mut sumqx = 0f32;
                let mut sumq2 = 0f32;
                for (&v, &w) in xb.iter().zip(&weight) {
                    let al = id * v;
                    let q = f32::from(values[best_index_int8(values, al)]);
                    sumqx += w * q * v;
                    sumq2 += w * q * q;
                }
                if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
            d
        };

        // One block per "super-block": d is stored directly and the levels recomputed with it.
        write_f16(&mut yb[..2], scale);
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut l = [0u8; 32];
        for (l, &v) in l.iter_mut().zip(xb) {
            *l = best_index_int8(values, id * v) as u8;
        }
        for j in 0..16 {
            yb[2 + j] = l[j] | (l[16 + j] << 4);
        }
    }
}
