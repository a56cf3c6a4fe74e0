//! The legacy 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: `quantize_row_*_ref` and,
//! with an importance matrix, `quantize_row_*_impl` from ggml-quants.c.
//!
//! Block layouts (ggml-common.h, little endian):
//! Q4_0 `d:f16 qs[16]`, Q4_1 `d:f16 m:f16 qs[16]`, Q5_0 `d:f16 qh[4] qs[16]`,
//! Q5_1 `d:f16 m:f16 qh[4] qs[16]`, Q8_0 `d:f16 qs[32]:i8`.

// Index loops mirror ggml's C index arithmetic one to one, which keeps the port reviewable.
#![allow(clippy::needless_range_loop)]

use super::f16::write_f16;
use super::kquants::{make_qkx3_quants, make_qx_quants};
use super::{c_max, cvtt_i32, nearest_int};

const QK: usize = 32;

/// Iterates the 32-element blocks of a row together with their output bytes and (if given) their
/// importance weights.
fn blocks<'a, const B: usize>(
    x: &'a [f32],
    y: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32; QK], &'a mut [u8; B])> {
    x.chunks_exact(QK)
        .zip(y.chunks_exact_mut(B))
        .filter_map(|(xb, yb)| {
            // Both conversions always succeed: chunks_exact yields exactly QK / B items.
            Some((xb.try_into().ok()?, yb.try_into().ok()?))
        })
}

/// `sigma2` of the imatrix quantizers: mean of x² over the whole row (float, sequential).
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    // C divides by the int64 n_per_row, converted to float.
    sum_x2 / x.len() as f32
}

/// `weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])` for one block.
#[inline]
fn imatrix_weights(xb: &[f32; QK], qw: &[f32], sigma2: f32) -> [f32; QK] {
    let mut w = [0f32; QK];
    for ((w, &x), &q) in w.iter_mut().zip(xb).zip(qw) {
        *w = q * (sigma2 + x * x).sqrt();
    }
    w
}

/// Absolute max and the signed value that has it (first one wins), as ggml's
/// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop.
#[inline(always)]
fn signed_absmax(xb: &[f32; QK]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in xb {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Max of |v| (0 when all are zero) computed in 8 independent lanes, and whether every value
/// is finite. For finite inputs the maximum does not depend on the evaluation order, so this
/// equals ggml's sequential `if (amax < fabsf(v)) amax = fabsf(v)` loop.
#[inline(always)]
fn absmax_lanes(xb: &[f32; QK]) -> (f32, bool) {
    let mut m = [0f32; 8];
    let mut fin = [true; 8];
    for c in xb.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            m[k] = if a > m[k] { a } else { m[k] };
            // false for inf and NaN
            fin[k] &= a < f32::INFINITY;
        }
    }
    let mut amax = 0f32;
    let mut finite = true;
    for k in 0..8 {
        amax = if m[k] > amax { m[k] } else { amax };
        finite &= fin[k];
    }
    (amax, finite)
}

/// The first value whose magnitude is `amax` (0 when `amax` is 0): the `max` that the
/// sequential strict `amax < fabsf(v)` loop ends with.
#[inline(always)]
fn first_with_abs(xb: &[f32; QK], amax: f32) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// `(int)v` (truncation) for |v| < 2^22, which the fast paths guarantee, without the
/// saturation checks of `as` so that the loops vectorize: round to nearest with
/// [`nearest_int`], then step back toward zero if that went past `v`. Out-of-range inputs give
/// wrong numbers, never undefined behaviour.
#[inline(always)]
fn trunc_small(v: f32) -> i32 {
    let n = nearest_int(v);
    let nf = n as f32;
    if v >= 0.0 {
        n - i32::from(nf > v)
    } else {
        n + i32::from(nf < v)
    }
}

/// Min and max as `if (v < min) min = v; if (v > max) max = v;` from FLT_MAX / -FLT_MAX.
#[inline(always)]
fn min_max(xb: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in xb {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `(int8_t)(v)` then `MIN(15, ...)` stored in a uint8_t.
#[inline(always)]
fn to_i8_min(v: f32, hi: i32) -> u8 {
    let q = i32::from(cvtt_i32(v) as i8);
    (if hi < q { hi } else { q }) as u8
}

/// Q8_0 (ggml ignores the imatrix for this type).
pub(super) fn quantize_row_q8_0(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in blocks::<34>(x, y) {
        let (amax_fast, finite) = absmax_lanes(xb);
        let amax = if finite {
            amax_fast
        } else {
            // MAX(amax, fabsf(v)), not f32::max: a NaN is kept only until the next element,
            // exactly as the C macro does.
            let mut amax = 0f32;
            for &v in xb {
                amax = c_max(amax, v.abs());
            }
            amax
        };
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[..2], d);
        if finite && id.is_finite() {
            // |v * id| <= 127 (+ rounding): roundf is exactly "truncate, then step away from
            // zero when the dropped fraction is >= 0.5" (the fraction is exact), and the int8
            // conversion cannot overflow. Vectorizes, unlike the roundf libcall.
            for (q, &v) in yb[2..].iter_mut().zip(xb) {
                let x0 = v * id;
                let t = trunc_small(x0);
                let frac = x0 - t as f32;
                let r = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
                *q = r as u8;
            }
        } else {
            for (q, &v) in yb[2..].iter_mut().zip(xb) {
                // roundf() then the implicit float -> int8_t conversion.
                *q = cvtt_i32((v * id).round()) as u8;
            }
        }
    }
}

/// Q4_0 (`quantize_row_q4_0_ref`, or `quantize_row_q4_0_impl` with an imatrix).
pub(super) fn quantize_row_q4_0(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    if let Some(qw) = qw {
        let sigma2 = row_sigma2(x);
        for (ib, (xb, yb)) in blocks::<18>(x, y).enumerate() {
            let w = imatrix_weights(xb, &qw[QK * ib..QK * (ib + 1)], sigma2);
            let mut l = [0i8; QK];
            let d = make_qx_quants(8, xb, &mut l, 1, Some(&w));
            write_f16(&mut yb[..2], d);
            for j in 0..16 {
                yb[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    simd::q4_0_row(x, y);
    #[cfg(not(target_arch = "x86_64"))]
    for (xb, yb) in blocks::<18>(x, y) {
        q4_0_block_scalar(xb, yb);
    }
}

/// Q4_0 rows with the portable block code only (the tests compare it with the SSE2 one).
#[cfg(test)]
pub(super) fn quantize_row_q4_0_scalar(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    if qw.is_some() {
        return quantize_row_q4_0(x, qw, y);
    }
    for (xb, yb) in blocks::<18>(x, y) {
        q4_0_block_scalar(xb, yb);
    }
}

/// One `quantize_row_q4_0_ref` block, portable Rust.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
#[inline(always)]
fn q4_0_block_scalar(xb: &[f32; QK], yb: &mut [u8; 18]) {
    let (amax, finite) = absmax_lanes(xb);
    let max = if finite {
        first_with_abs(xb, amax)
    } else {
        signed_absmax(xb)
    };
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(&mut yb[..2], d);
    if finite && id.is_finite() {
        // All x*id are in [-8, 8]: the plain truncating cast equals cvttss2si here.
        let mut q = [0u8; QK];
        for (q, &v) in q.iter_mut().zip(xb) {
            *q = trunc_small(v * id + 8.5).min(15) as u8;
        }
        for j in 0..16 {
            yb[2 + j] = q[j] | (q[j + 16] << 4);
        }
        return;
    }
    for j in 0..16 {
        let x0 = xb[j] * id;
        let x1 = xb[j + 16] * id;
        let xi0 = to_i8_min(x0 + 8.5, 15);
        let xi1 = to_i8_min(x1 + 8.5, 15);
        yb[2 + j] = xi0 | (xi1 << 4);
    }
}

/// SSE2 versions of the legacy block quantizers (SSE2 is part of the x86-64 baseline, so no
/// run-time check is needed).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::super::f16::write_f16;
    use super::QK;
    use std::arch::x86_64::*;

    /// `quantize_row_q4_0_ref` on a row, four blocks per step: the four blocks are independent,
    /// and interleaving them (with one `divps` for their four scales) hides the long latency
    /// chain of a block (max -> d -> 1/d -> levels). Leftover blocks go one at a time.
    #[inline(always)]
    pub(super) fn q4_0_row(x: &[f32], y: &mut [u8]) {
        let mut xs = x.chunks_exact(4 * QK);
        let mut ys = y.chunks_exact_mut(4 * 18);
        for (x4, y4) in (&mut xs).zip(&mut ys) {
            // The blocks are loaded again for the levels (from L1): keeping all 32 vectors in
            // registers would spill.
            let m: [f32; 4] = std::array::from_fn(|b| signed_absmax(&load_block(&x4[QK * b..])));
            // SAFETY: SSE2 is always present on x86-64.
            let id = unsafe {
                let max = _mm_setr_ps(m[0], m[1], m[2], m[3]);
                let d = _mm_div_ps(max, _mm_set1_ps(-8.0));
                let mut ds = [0f32; 4];
                _mm_storeu_ps(ds.as_mut_ptr(), d);
                for (b, &d) in ds.iter().enumerate() {
                    write_f16(&mut y4[18 * b..18 * b + 2], d);
                }
                // `d ? 1.0f/d : 0.0f` (1/d of a zero lane is computed and then masked out).
                let nz = _mm_cmpneq_ps(d, _mm_setzero_ps());
                _mm_and_ps(nz, _mm_div_ps(_mm_set1_ps(1.0), d))
            };
            for (b, yb) in y4.chunks_exact_mut(18).enumerate() {
                // SAFETY: SSE2; the shuffle only broadcasts lane b.
                let idv = unsafe {
                    match b {
                        0 => _mm_shuffle_ps::<0x00>(id, id),
                        1 => _mm_shuffle_ps::<0x55>(id, id),
                        2 => _mm_shuffle_ps::<0xAA>(id, id),
                        _ => _mm_shuffle_ps::<0xFF>(id, id),
                    }
                };
                store_levels(&load_block(&x4[QK * b..]), idv, &mut yb[2..18]);
            }
        }
        for (xb, yb) in xs
            .remainder()
            .chunks_exact(QK)
            .zip(ys.into_remainder().chunks_exact_mut(18))
        {
            let v = load_block(xb);
            let d = signed_absmax(&v) / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            write_f16(&mut yb[..2], d);
            // SAFETY: SSE2 is always present on x86-64.
            store_levels(&v, unsafe { _mm_set1_ps(id) }, &mut yb[2..18]);
        }
    }

    /// The 32 values of a block (`x` has at least 32).
    #[inline(always)]
    fn load_block(x: &[f32]) -> [__m128; 8] {
        assert!(x.len() >= QK);
        // SAFETY: SSE2; the eight unaligned loads read x[0..32], checked just above.
        std::array::from_fn(|c| unsafe { _mm_loadu_ps(x.as_ptr().add(4 * c)) })
    }

    /// `max` of C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop over a block.
    /// Why it is exact:
    /// * amax: `_mm_max_ps(a, acc)` returns `acc` when `a` is NaN, and every accumulator starts
    ///   at +0, so NaNs are skipped exactly like C's `amax < fabsf(v)` test; the maximum of the
    ///   remaining |v| does not depend on the order in which they are compared.
    /// * max: C keeps the FIRST element whose |v| reaches the final amax (later equal ones fail
    ///   the strict `<`). The lowest set bit of the `|v| == amax` mask is that element, and its
    ///   sign bit picks `amax` or `-amax` (it is exactly one of them). With amax = 0 C keeps the
    ///   initial +0 even when -0.0 values are present, hence the `amax > 0` condition.
    #[inline(always)]
    fn signed_absmax(v: &[__m128; 8]) -> f32 {
        // SAFETY: SSE2 is always present on x86-64 (register-only operations).
        unsafe {
            let sign = _mm_set1_ps(-0.0);
            let a: [__m128; 8] = std::array::from_fn(|c| _mm_andnot_ps(sign, v[c]));
            let zero = _mm_setzero_ps();
            let mut m0 = _mm_max_ps(a[0], zero);
            let mut m1 = _mm_max_ps(a[1], zero);
            m0 = _mm_max_ps(a[2], m0);
            m1 = _mm_max_ps(a[3], m1);
            m0 = _mm_max_ps(a[4], m0);
            m1 = _mm_max_ps(a[5], m1);
            m0 = _mm_max_ps(a[6], m0);
            m1 = _mm_max_ps(a[7], m1);
            // No NaN is left in m0, m1: the horizontal max is order independent.
            let m = _mm_max_ps(m0, m1);
            let m = _mm_max_ps(m, _mm_shuffle_ps::<0b01_00_11_10>(m, m));
            let m = _mm_max_ps(m, _mm_shuffle_ps::<0b10_11_00_01>(m, m));
            let amax = _mm_cvtss_f32(m);
            let mut eq = 0u32;
            let mut neg = 0u32;
            for c in 0..8 {
                eq |= (_mm_movemask_ps(_mm_cmpeq_ps(a[c], m)) as u32) << (4 * c);
                neg |= (_mm_movemask_ps(v[c]) as u32) << (4 * c);
            }
            let first = eq & eq.wrapping_neg();
            // Branch-free (the sign is random data: a branch here mispredicts half the time).
            // amax is never negative, so or-ing the sign bit in gives exactly -amax.
            let negate = u32::from(first & neg != 0) & u32::from(amax > 0.0);
            f32::from_bits(amax.to_bits() | (negate << 31))
        }
    }

    /// `qs[j] = MIN(15, (int8_t)(x[j]*id + 8.5f)) | MIN(15, (int8_t)(x[j+16]*id + 8.5f)) << 4`
    /// into `qs[0..16]`, `idv` holding `id` in every lane. Why it is exact:
    /// * `x*id + 8.5f`: the same IEEE single-precision mul then add as C.
    /// * `(int8_t)` of the float: `cvttps2dq` is the packed form of the `cvttss2si` that gcc
    ///   emits (truncation, 0x80000000 for NaN and out-of-range), and the low byte is kept.
    /// * `MIN(15, ...)` on the int8_t: a signed byte compare; then `xi0 | xi1 << 4` truncated to
    ///   uint8_t, as the C stores do.
    #[inline(always)]
    fn store_levels(v: &[__m128; 8], idv: __m128, qs: &mut [u8]) {
        assert!(qs.len() >= 16);
        // SAFETY: SSE2 is always present on x86-64; the store writes qs[0..16], checked above.
        unsafe {
            let half = _mm_set1_ps(8.5);
            let ff = _mm_set1_epi32(0xFF);
            let t: [__m128i; 8] = std::array::from_fn(|c| {
                _mm_and_si128(
                    _mm_cvttps_epi32(_mm_add_ps(_mm_mul_ps(v[c], idv), half)),
                    ff,
                )
            });
            // 0..=255 in every lane: the saturating packs only narrow.
            let lo = _mm_packus_epi16(_mm_packs_epi32(t[0], t[1]), _mm_packs_epi32(t[2], t[3]));
            let hi = _mm_packus_epi16(_mm_packs_epi32(t[4], t[5]), _mm_packs_epi32(t[6], t[7]));
            let f = _mm_set1_epi8(15);
            let min15 = |b: __m128i| {
                let gt = _mm_cmpgt_epi8(b, f);
                _mm_or_si128(_mm_and_si128(gt, f), _mm_andnot_si128(gt, b))
            };
            let lo = min15(lo);
            let hi = min15(hi);
            let hi4 = _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xF0u8 as i8));
            _mm_storeu_si128(qs.as_mut_ptr().cast::<__m128i>(), _mm_or_si128(lo, hi4));
        }
    }
}

/// Q4_1 (`quantize_row_q4_1_ref`, or `quantize_row_q4_1_impl` with an imatrix).
pub(super) fn quantize_row_q4_1(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    if let Some(qw) = qw {
        let sigma2 = row_sigma2(x);
        for (ib, (xb, yb)) in blocks::<20>(x, y).enumerate() {
            let w = imatrix_weights(xb, &qw[QK * ib..QK * (ib + 1)], sigma2);
            let mut l = [0u8; QK];
            let (d, min) = make_qkx3_quants(15, xb, Some(&w), &mut l, -0.9, 0.05, 36, false);
            write_f16(&mut yb[..2], d);
            write_f16(&mut yb[2..4], -min);
            for j in 0..16 {
                yb[4 + j] = l[j] | (l[j + 16] << 4);
            }
        }
        return;
    }
    for (xb, yb) in blocks::<20>(x, y) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[..2], d);
        write_f16(&mut yb[2..4], min);
        for j in 0..16 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + 16] - min) * id;
            let xi0 = to_i8_min(x0 + 0.5, 15);
            let xi1 = to_i8_min(x1 + 0.5, 15);
            yb[4 + j] = xi0 | (xi1 << 4);
        }
    }
}

/// Packs 32 five-bit values into `qs[16]` (low nibbles) and the 32-bit `qh` of fifth bits.
#[inline(always)]
fn pack5(l: impl Fn(usize) -> u8, qh_out: &mut [u8], qs: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let xi0 = l(j);
        let xi1 = l(j + 16);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((u32::from(xi0) & 0x10) >> 4) << j;
        qh |= ((u32::from(xi1) & 0x10) >> 4) << (j + 16);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

/// Q5_0 (`quantize_row_q5_0_ref`, or `quantize_row_q5_0_impl` with an imatrix).
pub(super) fn quantize_row_q5_0(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    if let Some(qw) = qw {
        let sigma2 = row_sigma2(x);
        for (ib, (xb, yb)) in blocks::<22>(x, y).enumerate() {
            let w = imatrix_weights(xb, &qw[QK * ib..QK * (ib + 1)], sigma2);
            let mut l = [0i8; QK];
            let d = make_qx_quants(16, xb, &mut l, 1, Some(&w));
            write_f16(&mut yb[..2], d);
            let (qh, qs) = yb[2..].split_at_mut(4);
            pack5(|j| l[j] as u8, qh, qs);
        }
        return;
    }
    for (xb, yb) in blocks::<22>(x, y) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[..2], d);
        let (qh, qs) = yb[2..].split_at_mut(4);
        pack5(|j| to_i8_min(xb[j] * id + 16.5, 31), qh, qs);
    }
}

/// Q5_1 (`quantize_row_q5_1_ref`, or `quantize_row_q5_1_impl` with an imatrix).
pub(super) fn quantize_row_q5_1(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    if let Some(qw) = qw {
        let sigma2 = row_sigma2(x);
        for (ib, (xb, yb)) in blocks::<24>(x, y).enumerate() {
            let w = imatrix_weights(xb, &qw[QK * ib..QK * (ib + 1)], sigma2);
            let mut l = [0u8; QK];
            let (d, min) = make_qkx3_quants(31, xb, Some(&w), &mut l, -0.9, 0.05, 36, false);
            write_f16(&mut yb[..2], d);
            write_f16(&mut yb[2..4], -min);
            let (qh, qs) = yb[4..].split_at_mut(4);
            pack5(|j| l[j], qh, qs);
        }
        return;
    }
    for (xb, yb) in blocks::<24>(x, y) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut yb[..2], d);
        write_f16(&mut yb[2..4], min);
        let (qh, qs) = yb[4..].split_at_mut(4);
        // No clamp here in ggml: (uint8_t)(x0 + 0.5f).
        pack5(|j| cvtt_i32((xb[j] - min) * id + 0.5) as u8, qh, qs);
    }
}
