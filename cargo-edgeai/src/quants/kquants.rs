//! The k-quants Q2_K..Q6_K (256-element super-blocks) and the scale-search helpers they share
//! with the imatrix paths of the legacy types: `make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `make_qkx3_quants`, `make_qp_quants` (ggml-quants.c).
//!
//! Block layouts (ggml-common.h, little endian):
//! Q2_K `scales[16] qs[64] d:f16 dmin:f16` (84 B), Q3_K `hmask[32] qs[64] scales[12] d:f16`
//! (110 B), Q4_K `d dmin scales[12] qs[128]` (144 B), Q5_K `d dmin scales[12] qh[32] qs[128]`
//! (176 B), Q6_K `ql[128] qh[64] scales[16]:i8 d:f16` (210 B).
//!
//! All sums are accumulated in the C order, in f32, and products are grouped as C groups
//! `w*x[i]*l` (left to right, int converted to float at each step).

// Index loops mirror ggml's C index arithmetic one to one, which keeps the port reviewable.
#![allow(clippy::needless_range_loop)]

use super::f16::{read_f16, write_f16};
use super::{c_max, nearest_int};

pub(super) const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

#[inline(always)]
fn clamp_i(l: i32, lo: i32, hi: i32) -> i32 {
    // MAX(lo, MIN(hi, l))
    let m = if hi < l { hi } else { l };
    if lo > m {
        lo
    } else {
        m
    }
}

/// Signed absolute max (first one wins): `if (ax > amax) { amax = ax; max = x[i]; }`.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// `make_qx_quants`: symmetric quantization of `x` to `[-nmax, nmax-1]`, stored in `l` offset by
/// `nmax`; returns the scale. `rmse_type` selects the weights when `qw` is `None` (1: x²).
#[inline(always)]
pub(super) fn make_qx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l_out: &mut [i8; N],
    rmse_type: i32,
    qw: Option<&[f32; N]>,
) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for (l, &v) in l_out.iter_mut().zip(x) {
            *l = (nmax + clamp_i(nearest_int(iscale * v), -nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..N {
            let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1) as f32;
            let w = weight(i);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l_out.iter_mut().zip(x) {
                *l = (nmax + clamp_i(nearest_int(iscale * v), -nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse = true` (the only way Q3_K calls it): x²-weighted iterative
/// refinement; `l` is offset by `nmax`.
#[inline(always)]
fn make_q3_quants_rmse<const N: usize>(nmax: i32, x: &[f32; N], l_out: &mut [i8; N]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = x[i] * x[i];
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp_i(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l = (i32::from(*l) + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants`: asymmetric quantization to `[0, nmax]` with a min, searching `nstep + 1`
/// scales. Returns `(scale, the_min)` where `the_min` is the (non-negative) negated offset.
/// The quantizers run it through `make_qkx_quants_lanes`; this scalar form is the reference
/// that the lane version is tested against.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(test), allow(dead_code))]
#[inline(always)]
fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l_out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *l_out = [0; N];
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = clamp_i(l, 0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..N {
            let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..N {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx3_quants`: like [`make_qkx2_quants`] but with x² weights when `weights` is `None`
/// and a `max <= min` test. Returns `(scale, the_min)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: Option<&[f32; N]>,
    l_out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let weight = |i: usize| -> f32 {
        match weights {
            Some(w) => w[i],
            None => x[i] * x[i],
        }
    };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        *l_out = [0; N];
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = clamp_i(l, 0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_mad += weight(i) * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..N {
            let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
            laux[i] = l as u8;
            let w = weight(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for i in 0..N {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                mad += weight(i) * diff;
            }
            if mad < best_mad {
                *l_out = laux;
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants`: quantizes non-negative `x` (sub-block scales or mins) to `[0, nmax]` with
/// importance weights `qw`; returns the scale. `L` is a uint8_t array in C, so values are
/// truncated to 8 bits exactly where C stores them.
#[inline(always)]
fn make_qp_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    l_out: &mut [u8; N],
    qw: &[f32; N],
) -> f32 {
    let mut max = 0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        *l_out = [0; N];
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for (l, &v) in l_out.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..N {
        let diff = x[i] - scale * f32::from(l_out[i]);
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = qw[i];
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of Q4_K / Q5_K.
#[inline(always)]
pub(super) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 8 six-bit scales and mins into the 12-byte Q4_K / Q5_K `scales` field.
#[inline(always)]
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            out[j] = ls;
            out[j + 4] = lm;
        } else {
            out[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            out[j - 4] |= (ls >> 4) << 6;
            out[j] |= (lm >> 4) << 6;
        }
    }
}

/// Sub-blocks of `M` elements of a super-block, as fixed-size arrays.
#[inline(always)]
fn sub<const M: usize>(x: &[f32; QK_K], j: usize) -> &[f32; M] {
    // M divides QK_K and j < QK_K / M at every call site: never fails.
    x[M * j..M * (j + 1)]
        .try_into()
        .expect("sub-block inside the super-block")
}

/// Super-blocks of a row with their output bytes.
fn super_blocks<'a, const B: usize>(
    x: &'a [f32],
    y: &'a mut [u8],
) -> impl Iterator<Item = (&'a [f32; QK_K], &'a mut [u8; B])> {
    x.chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(B))
        .filter_map(|(xb, yb)| Some((xb.try_into().ok()?, yb.try_into().ok()?)))
}

/// Importance weights of super-block `i` of the row.
#[inline(always)]
fn qw_block(qw: &[f32], i: usize) -> &[f32; QK_K] {
    // quantize_rows checked qw.len() == n_per_row, a multiple of QK_K: never fails.
    qw[QK_K * i..QK_K * (i + 1)]
        .try_into()
        .expect("imatrix covers the row")
}

/// Sequential f32 sum of squares.
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Packs 2-bit values: `qs[j/4 + l] = L[j+l] | L[j+l+32]<<2 | L[j+l+64]<<4 | L[j+l+96]<<6`.
#[inline(always)]
fn pack2(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

// ---- Q2_K ---------------------------------------------------------------------------------------

/// Q2_K rows: the body that [`quantize_row_q2_k`] compiles for each target.
#[inline(always)]
fn q2_k_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    for (i, (xb, yb)) in super_blocks::<84>(x, y).enumerate() {
        match qw {
            Some(qw) => q2_k_block_imatrix(xb, qw_block(qw, i), yb),
            None => q2_k_block_ref(xb, yb),
        }
    }
}

/// Requantizes with the stored f16 scales and packs (shared tail of both Q2_K paths).
#[inline(always)]
fn q2_k_finish(xb: &[f32; QK_K], l: &mut [u8; QK_K], yb: &mut [u8; 84]) {
    let dall = read_f16(&yb[80..82]);
    let dmin = read_f16(&yb[82..84]);
    for j in 0..QK_K / 16 {
        let d = dall * f32::from(yb[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(yb[j] >> 4);
        for ii in 0..16 {
            let q = nearest_int((xb[16 * j + ii] + dm) / d);
            l[16 * j + ii] = clamp_i(q, 0, 3) as u8;
        }
    }
    pack2(l, &mut yb[16..80]);
}

#[inline(always)]
fn q2_k_block_ref(xb: &[f32; QK_K], yb: &mut [u8; 84]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let q4scale = 15f32;
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    // make_qkx2_quants(16, 3, x + 16*j, |x|, ..., -0.5f, 0.1f, 15, true) for the 16 sub-blocks.
    let xt = transpose_in::<16, 16>(xb);
    let mut wt = [[0f32; 16]; 16];
    for (wi, xi) in wt.iter_mut().zip(&xt) {
        for k in 0..16 {
            wi[k] = xi[k].abs();
        }
    }
    let mut lt = [[0u8; 16]; 16];
    let (sc, mn) = make_qkx_quants_lanes(3, &xt, &wt, &mut lt, -0.5, 0.1, 15, true, false);
    for j in 0..16 {
        for i in 0..16 {
            l[16 * j + i] = lt[i][j];
        }
    }
    for j in 0..QK_K / 16 {
        let (s, m) = (sc[j], mn[j]);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            yb[j] = nearest_int(iscale * scales[j]) as u8;
        }
        write_f16(&mut yb[80..82], max_scale / q4scale);
    } else {
        yb[..16].fill(0);
        write_f16(&mut yb[80..82], 0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            let q = nearest_int(iscale * mins[j]);
            yb[j] |= (q << 4) as u8;
        }
        write_f16(&mut yb[82..84], max_min / q4scale);
    } else {
        write_f16(&mut yb[82..84], 0.0);
    }
    q2_k_finish(xb, &mut l, yb);
}

#[inline(always)]
fn q2_k_block_imatrix(xb: &[f32; QK_K], qw: &[f32; QK_K], yb: &mut [u8; 84]) {
    let mut l = [0u8; QK_K];
    let mut sw = [0f32; 16];
    // Note: sigma2 is the mean of x² here, without the factor 2 the other k-quants use.
    let sigma2 = sum_sq(xb) / QK_K as f32;
    let xt = transpose_in::<16, 16>(xb);
    let mut wt = [[0f32; 16]; 16];
    for j in 0..QK_K / 16 {
        let xs = sub::<16>(xb, j);
        let mut weight = [0f32; 16];
        for k in 0..16 {
            weight[k] = qw[16 * j + k] * (sigma2 + xs[k] * xs[k]).sqrt();
        }
        for &w in &weight {
            sw[j] += w;
        }
        for i in 0..16 {
            wt[i][j] = weight[i];
        }
    }
    // make_qkx3_quants(16, 3, x + 16*j, weight, ..., -0.9f, 0.05f, 36, false) as lanes.
    let mut lt = [[0u8; 16]; 16];
    let (scales, mins) = make_qkx_quants_lanes(3, &xt, &wt, &mut lt, -0.9, 0.05, 36, false, true);
    for j in 0..16 {
        for i in 0..16 {
            l[16 * j + i] = lt[i][j];
        }
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    write_f16(&mut yb[80..82], dm);
    write_f16(&mut yb[82..84], mm);
    for j in 0..16 {
        yb[j] = ls[j] | (lm[j] << 4);
    }
    q2_k_finish(xb, &mut l, yb);
}

// ---- Q3_K ---------------------------------------------------------------------------------------

/// Q3_K rows: the body that [`quantize_row_q3_k`] compiles for each target.
#[inline(always)]
fn q3_k_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    for (i, (xb, yb)) in super_blocks::<110>(x, y).enumerate() {
        match qw {
            Some(qw) => q3_k_block_imatrix(xb, qw_block(qw, i), yb),
            None => q3_k_block_ref(xb, yb),
        }
    }
}

/// Stores 6-bit scale `l` (0..63) of sub-block `j` into the 12-byte Q3_K `scales` field.
#[inline(always)]
fn q3_put_scale(sc: &mut [u8], j: usize, l: i32) {
    if j < 8 {
        sc[j] = (l & 0xF) as u8;
    } else {
        sc[j - 8] |= ((l & 0xF) << 4) as u8;
    }
    let h = l >> 4;
    sc[j % 4 + 8] |= (h << (2 * (j / 4))) as u8;
}

/// Requantizes with the stored scales, builds hmask and qs (shared tail of both Q3_K paths).
/// Layout offsets: hmask 0..32, qs 32..96, scales 96..108, d 108..110.
#[inline(always)]
fn q3_k_finish(xb: &[f32; QK_K], l: &mut [i8; QK_K], yb: &mut [u8; 110]) {
    let dall = read_f16(&yb[108..110]);
    for j in 0..QK_K / 16 {
        let sc = &yb[96..108];
        let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = (i32::from(lo) | (((i32::from(sc[8 + j % 4]) >> (2 * (j / 4))) & 3) << 4)) - 32;
        // C keeps this in an int8_t; the value is always in -32..31.
        let d = dall * f32::from(s as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = clamp_i(nearest_int(xb[16 * j + ii] / d), -4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    yb[..32].fill(0);
    let mut m = 0usize;
    let mut hm = 1u8;
    let mut lu = [0u8; QK_K];
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            yb[m] |= hm;
            v -= 4;
        }
        lu[j] = v as u8;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack2(&lu, &mut yb[32..96]);
}

#[inline(always)]
fn q3_k_block_ref(xb: &[f32; QK_K], yb: &mut [u8; 110]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut amax = 0f32;
    for j in 0..QK_K / 16 {
        let mut lj = [0i8; 16];
        scales[j] = make_q3_quants_rmse(4, sub::<16>(xb, j), &mut lj);
        l[16 * j..16 * (j + 1)].copy_from_slice(&lj);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    yb[96..108].fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        for j in 0..16 {
            // `int8_t l = nearest_int(...)`: truncated to 8 bits before the clamp.
            let q = i32::from(nearest_int(iscale * scales[j]) as i8);
            let q = clamp_i(q, -32, 31) + 32;
            q3_put_scale(&mut yb[96..108], j, q);
        }
        write_f16(&mut yb[108..110], 1.0 / iscale);
    } else {
        write_f16(&mut yb[108..110], 0.0);
    }
    q3_k_finish(xb, &mut l, yb);
}

#[inline(always)]
fn q3_k_block_imatrix(xb: &[f32; QK_K], qw: &[f32; QK_K], yb: &mut [u8; 110]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut sw = [0f32; 16];
    let sigma2 = 2.0 * sum_sq(xb) / QK_K as f32;
    for j in 0..QK_K / 16 {
        let xs = sub::<16>(xb, j);
        let mut weight = [0f32; 16];
        for k in 0..16 {
            weight[k] = qw[16 * j + k] * (sigma2 + xs[k] * xs[k]).sqrt();
        }
        let mut sumw = 0f32;
        for &w in &weight {
            sumw += w;
        }
        sw[j] = sumw;
        let mut lj = [0i8; 16];
        scales[j] = make_qx_quants(4, xs, &mut lj, 1, Some(&weight));
        l[16 * j..16 * (j + 1)].copy_from_slice(&lj);
    }
    yb[96..108].fill(0);
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
    for (j, &q) in ls.iter().enumerate() {
        q3_put_scale(&mut yb[96..108], j, i32::from(q));
    }
    write_f16(&mut yb[108..110], d_block);
    q3_k_finish(xb, &mut l, yb);
}

// ---- Q4_K / Q5_K --------------------------------------------------------------------------------

/// Scales, mins and initial levels of the 8 sub-blocks, `_ref` flavour (make_qkx2_quants with
/// per-sub-block `av_x + |x|` weights), then the 6-bit scale quantization. Writes d, dmin and
/// the 12 scale bytes at `hdr` (d 0..2, dmin 2..4, scales 4..16).
#[inline(always)]
fn qk_ref_scales(
    xb: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
    hdr: &mut [u8],
) {
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    // make_qkx2_quants(32, nmax, x + 32*j, weights, ...) for the 8 sub-blocks, run as lanes.
    let xt = transpose_in::<32, 8>(xb);
    let mut wt = [[0f32; 8]; 32];
    for j in 0..QK_K / 32 {
        let av_x = (sum_sq(sub::<32>(xb, j)) / 32.0).sqrt();
        for i in 0..32 {
            wt[i][j] = av_x + xt[i][j].abs();
        }
    }
    let mut lt = [[0u8; 8]; 32];
    let (sc, mn) = make_qkx_quants_lanes(nmax, &xt, &wt, &mut lt, rmin, 0.1, nstep, false, false);
    for j in 0..QK_K / 32 {
        for i in 0..32 {
            l[32 * j + i] = lt[i][j];
        }
    }
    for j in 0..QK_K / 32 {
        let (s, m) = (sc[j], mn[j]);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(...)`: truncated to 8 bits, then MIN(63, ls).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    pack_scales_k4(&ls, &lm, &mut hdr[4..16]);
    write_f16(&mut hdr[0..2], max_scale / 63.0);
    write_f16(&mut hdr[2..4], max_min / 63.0);
}

/// The imatrix flavour (`quantize_row_q{4,5}_K_impl`): make_qkx3_quants per sub-block, then
/// make_qp_quants for the 6-bit scales and mins. `qw = None` is the impl's no-imatrix branch.
#[inline(always)]
fn qk_impl_scales(
    xb: &[f32; QK_K],
    qw: Option<&[f32; QK_K]>,
    nmax: i32,
    clamp63: bool,
    l: &mut [u8; QK_K],
    hdr: &mut [u8],
) {
    let sigma2 = 2.0 * sum_sq(xb) / QK_K as f32;
    let av_x = sigma2.sqrt();
    let mut sw = [0f32; 8];
    let xt = transpose_in::<32, 8>(xb);
    let mut wt = [[0f32; 8]; 32];
    for j in 0..QK_K / 32 {
        let xs = sub::<32>(xb, j);
        let mut weights = [0f32; 32];
        match qw {
            Some(qw) => {
                for k in 0..32 {
                    weights[k] = qw[32 * j + k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
            }
            None => {
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
            }
        }
        let mut sumw = 0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        for i in 0..32 {
            wt[i][j] = weights[i];
        }
    }
    // make_qkx3_quants(32, nmax, x + 32*j, weights, ..., -0.9f, 0.05f, 36, false) as lanes.
    let mut lt = [[0u8; 8]; 32];
    let (scales, mins) =
        make_qkx_quants_lanes(nmax, &xt, &wt, &mut lt, -0.9, 0.05, 36, false, true);
    for j in 0..QK_K / 32 {
        for i in 0..32 {
            l[32 * j + i] = lt[i][j];
        }
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp63 {
        // Q5_K's impl clamps again; Q4_K's does not (make_qp_quants already caps at nmax).
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    pack_scales_k4(&ls, &lm, &mut hdr[4..16]);
    write_f16(&mut hdr[0..2], d_block);
    write_f16(&mut hdr[2..4], m_block);
}

/// Final levels of Q4_K / Q5_K from the stored d, dmin and 6-bit scales.
#[inline(always)]
fn qk_requantize(xb: &[f32; QK_K], nmax: i32, l: &mut [u8; QK_K], hdr: &[u8]) {
    let dall = read_f16(&hdr[0..2]);
    let dmin = read_f16(&hdr[2..4]);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &hdr[4..16]);
        let d = dall * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((xb[32 * j + ii] + dm) / d);
            l[32 * j + ii] = clamp_i(q, 0, nmax) as u8;
        }
    }
}

/// Q4_K rows: the body that [`quantize_row_q4_k`] compiles for each target.
#[inline(always)]
fn q4_k_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    for (i, (xb, yb)) in super_blocks::<144>(x, y).enumerate() {
        let mut l = [0u8; QK_K];
        match qw {
            Some(qw) => qk_impl_scales(xb, Some(qw_block(qw, i)), 15, false, &mut l, &mut yb[..16]),
            None => qk_ref_scales(xb, 15, -1.0, 20, &mut l, &mut yb[..16]),
        }
        qk_requantize(xb, 15, &mut l, &yb[..16]);
        let qs = &mut yb[16..144];
        for (n, j) in (0..QK_K).step_by(64).enumerate() {
            for k in 0..32 {
                qs[32 * n + k] = l[j + k] | (l[j + k + 32] << 4);
            }
        }
    }
}

/// Q5_K rows: the body that [`quantize_row_q5_k`] compiles for each target.
#[inline(always)]
fn q5_k_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    for (i, (xb, yb)) in super_blocks::<176>(x, y).enumerate() {
        let mut l = [0u8; QK_K];
        match qw {
            Some(qw) => qk_impl_scales(xb, Some(qw_block(qw, i)), 31, true, &mut l, &mut yb[..16]),
            None => qk_ref_scales(xb, 31, -0.5, 15, &mut l, &mut yb[..16]),
        }
        qk_requantize(xb, 31, &mut l, &yb[..16]);
        let (qh, ql) = yb[16..].split_at_mut(32);
        qh.fill(0);
        let mut m1 = 1u8;
        let mut m2 = 2u8;
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            m1 = m1.wrapping_shl(2);
            m2 = m2.wrapping_shl(2);
        }
    }
}

// ---- Q6_K ---------------------------------------------------------------------------------------

/// Q6_K rows: the body that [`quantize_row_q6_k`] compiles for each target.
/// raw imatrix weights to make_qx_quants).
#[inline(always)]
fn q6_k_rows(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    for (i, (xb, yb)) in super_blocks::<210>(x, y).enumerate() {
        let qwb = qw.map(|q| qw_block(q, i));
        q6_k_block(xb, qwb, yb);
    }
}

/// Layout offsets: ql 0..128, qh 128..192, scales 192..208, d 208..210.
#[inline(always)]
fn q6_k_block(xb: &[f32; QK_K], qw: Option<&[f32; QK_K]>, yb: &mut [u8; 210]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    // make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, qw) for the 16 sub-blocks, run as lanes.
    let xt = transpose_in::<16, 16>(xb);
    let wt = match qw {
        Some(q) => transpose_in::<16, 16>(q),
        None => {
            let mut w = [[0f32; 16]; 16];
            for (wi, xi) in w.iter_mut().zip(&xt) {
                for k in 0..16 {
                    wi[k] = xi[k] * xi[k];
                }
            }
            w
        }
    };
    let mut lt = [[0i8; 16]; 16];
    let sc = make_qx_quants_lanes(32, &xt, &wt, &mut lt);
    for ib in 0..16 {
        for i in 0..16 {
            l[16 * ib + i] = lt[i][ib];
        }
    }
    for ib in 0..QK_K / 16 {
        let scale = sc[ib];
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        yb.fill(0);
        write_f16(&mut yb[208..210], 0.0);
        return;
    }
    let iscale = -128.0f32 / max_scale;
    write_f16(&mut yb[208..210], 1.0 / iscale);
    for ib in 0..16 {
        // MIN(127, nearest_int(...)) stored into int8_t.
        yb[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as u8;
    }
    let dall = read_f16(&yb[208..210]);
    for j in 0..QK_K / 16 {
        let d = dall * f32::from(yb[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = clamp_i(nearest_int(xb[16 * j + ii] / d), -32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = yb.split_at_mut(128);
    let qh = &mut rest[..64];
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            let l0 = l[j + k] as u8;
            let l1 = l[j + k + 32] as u8;
            let l2 = l[j + k + 64] as u8;
            let l3 = l[j + k + 96] as u8;
            ql[64 * c + k] = (l0 & 0xF) | ((l2 & 0xF) << 4);
            ql[64 * c + k + 32] = (l1 & 0xF) | ((l3 & 0xF) << 4);
            qh[32 * c + k] = (l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6);
        }
    }
}

// ---- AVX2 multiversioning (speed) -----------------------------------------------------------------
//
// Each `quantize_row_*` runs the same `#[inline(always)]` Rust body, compiled a second time with
// AVX2 enabled and chosen at run time. Why this is exact: a target feature only changes which
// instructions LLVM selects for the same IR; every f32 operation stays a separately rounded IEEE
// add/mul/div/sqrt in the source order (Rust never contracts a*b+c into an FMA, and FMA is not
// enabled anyway), integer ops are integer ops, and all min/max/abs/rounding steps are written
// as explicit compares, selects and bit operations, never as NaN-sensitive `f32::max` calls.
// `quantize_rows_match_baseline` (tests) checks both versions against each other bit for bit.

macro_rules! avx2_dispatch {
    ($($(#[$doc:meta])* $name:ident => $body:ident, $avx2:ident;)*) => {$(
        $(#[$doc])*
        pub(super) fn $name(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { $avx2(x, qw, y) };
                    return;
                }
            }
            $body(x, qw, y);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
            $body(x, qw, y);
        }
    )*};
}

avx2_dispatch! {
    /// Q2_K (`quantize_row_q2_K_ref`, or `quantize_row_q2_K_impl` with an imatrix).
    quantize_row_q2_k => q2_k_rows, q2_k_rows_avx2;
    /// Q3_K (`quantize_row_q3_K_ref`, or `quantize_row_q3_K_impl` with an imatrix).
    quantize_row_q3_k => q3_k_rows, q3_k_rows_avx2;
    /// Q6_K (`quantize_row_q6_K_ref`, or `quantize_row_q6_K_impl` with an imatrix).
    quantize_row_q6_k => q6_k_rows, q6_k_rows_avx2;
}

// Q4_K and Q5_K stay on the baseline build: their 8-lane search measured ~15% slower with AVX2
// (64 MB of gaussian rows, best of 4, against the C reference in the same run).

/// Q4_K (`quantize_row_q4_K_ref`, or `quantize_row_q4_K_impl` with an imatrix).
pub(super) fn quantize_row_q4_k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q4_k_rows(x, qw, y);
}

/// Q5_K (`quantize_row_q5_K_ref`, or `quantize_row_q5_K_impl` with an imatrix).
pub(super) fn quantize_row_q5_k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    q5_k_rows(x, qw, y);
}

/// The baseline (non-AVX2) row quantizers, for the tests that compare them with the dispatching
/// entry points.
#[cfg(test)]
pub(super) fn baseline_row(ty: crate::gguf::GgmlType) -> Option<super::RowQuantizer> {
    use crate::gguf::GgmlType::*;
    Some(match ty {
        Q2_K => q2_k_rows,
        Q3_K => q3_k_rows,
        Q6_K => q6_k_rows,
        _ => return None,
    })
}

// ---- lane-parallel helpers (speed) --------------------------------------------------------------
//
// The sub-blocks of a super-block are independent problems. The functions below run the exact
// scalar algorithm of ggml on `LN` sub-blocks at once, one sub-block per lane, with the input
// transposed (`x[i][lane]`): every lane performs the same IEEE operations in the same order as
// the scalar C code (sums stay sequential over `i` within a lane), and data-dependent branches
// become per-lane selects. LLVM vectorizes the inner `for k in 0..LN` loops. Results are
// bit-identical to the scalar versions (checked by a unit test and by the golden vectors).

/// Per-lane `nearest_int` then `MAX(lo, MIN(hi, l))`.
#[inline(always)]
fn nearest_clamped(v: f32, lo: i32, hi: i32) -> i32 {
    clamp_i(nearest_int(v), lo, hi)
}

/// [`make_qx_quants`] with `rmse_type = 1` on `LN` lanes; `w[i][lane]` are the weights (x² or
/// the imatrix). Returns the scales; `l_out` gets the levels (offset by nmax).
#[inline(always)]
fn make_qx_quants_lanes<const N: usize, const LN: usize>(
    nmax: i32,
    x: &[[f32; LN]; N],
    w: &[[f32; LN]; N],
    l_out: &mut [[i8; LN]; N],
) -> [f32; LN] {
    let mut amax = [0f32; LN];
    let mut max = [0f32; LN];
    for xi in x {
        for k in 0..LN {
            let ax = xi[k].abs();
            let gt = ax > amax[k];
            amax[k] = if gt { ax } else { amax[k] };
            max[k] = if gt { xi[k] } else { max[k] };
        }
    }
    // C groups `w*x[i]*l` as `(w*x[i])*l`; w*x[i] does not depend on the trial.
    let mut wx = [[0f32; LN]; N];
    for i in 0..N {
        for k in 0..LN {
            wx[i][k] = w[i][k] * x[i][k];
        }
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; LN];
    for k in 0..LN {
        iscale[k] = -nmaxf / max[k];
    }
    let mut sumlx = [0f32; LN];
    let mut suml2 = [0f32; LN];
    for i in 0..N {
        for k in 0..LN {
            let l = nearest_clamped(iscale[k] * x[i][k], -nmax, nmax - 1);
            l_out[i][k] = (l + nmax) as i8;
            let lf = l as f32;
            sumlx[k] += wx[i][k] * lf;
            suml2[k] += w[i][k] * lf * lf;
        }
    }
    let mut scale = [0f32; LN];
    let mut best = [0f32; LN];
    for k in 0..LN {
        scale[k] = if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        best[k] = scale[k] * sumlx[k];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let mut it = [0f32; LN];
        for k in 0..LN {
            it[k] = -(nmaxf + 0.1f32 * is as f32) / max[k];
        }
        let mut slx = [0f32; LN];
        let mut sl2 = [0f32; LN];
        for i in 0..N {
            for k in 0..LN {
                let lf = nearest_clamped(it[k] * x[i][k], -nmax, nmax - 1) as f32;
                slx[k] += wx[i][k] * lf;
                sl2[k] += w[i][k] * lf * lf;
            }
        }
        let mut accept = [false; LN];
        let mut any = false;
        for k in 0..LN {
            accept[k] = sl2[k] > 0.0 && slx[k] * slx[k] > best[k] * sl2[k];
            any |= accept[k];
        }
        if any {
            for i in 0..N {
                for k in 0..LN {
                    let l = (nmax + nearest_clamped(it[k] * x[i][k], -nmax, nmax - 1)) as i8;
                    l_out[i][k] = if accept[k] { l } else { l_out[i][k] };
                }
            }
            for k in 0..LN {
                if accept[k] {
                    scale[k] = slx[k] / sl2[k];
                    best[k] = scale[k] * slx[k];
                }
            }
        }
    }
    for k in 0..LN {
        if amax[k] < GROUP_MAX_EPS {
            scale[k] = 0.0;
            for li in l_out.iter_mut() {
                li[k] = 0;
            }
        }
    }
    scale
}

/// [`make_qkx2_quants`] (`le_test = false`) or [`make_qkx3_quants`] with explicit weights
/// (`le_test = true`, its `max <= min` test) on `LN` lanes. Returns `(scales, the_mins)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx_quants_lanes<const N: usize, const LN: usize>(
    nmax: i32,
    x: &[[f32; LN]; N],
    w: &[[f32; LN]; N],
    l_out: &mut [[u8; LN]; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    le_test: bool,
) -> ([f32; LN], [f32; LN]) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0f32; LN];
    for k in 0..LN {
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 1..N {
        for k in 0..LN {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * v;
        }
    }
    let mut degenerate = [false; LN];
    for k in 0..LN {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        degenerate[k] = if le_test {
            max[k] <= min[k]
        } else {
            max[k] == min[k]
        };
    }
    let min0 = min;
    let nmaxf = nmax as f32;
    let mut scale = [0f32; LN];
    let mut iscale = [0f32; LN];
    for k in 0..LN {
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let mut best_error = [0f32; LN];
    for i in 0..N {
        for k in 0..LN {
            let l = nearest_clamped(iscale[k] * (x[i][k] - min[k]), 0, nmax) as u8;
            l_out[i][k] = l;
            let diff = scale[k] * f32::from(l) + min[k] - x[i][k];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            best_error[k] += w[i][k] * diff;
        }
    }
    let mut laux = [[0u8; LN]; N];
    for is in 0..=nstep {
        // `min` may have changed in an earlier trial: this lane's iscale uses the current one.
        let mut it = [0f32; LN];
        for k in 0..LN {
            it[k] = (rmin + rdelta * is as f32 + nmaxf) / (max[k] - min[k]);
        }
        let mut sum_l = [0f32; LN];
        let mut sum_l2 = [0f32; LN];
        let mut sum_xl = [0f32; LN];
        for i in 0..N {
            for k in 0..LN {
                let l = nearest_clamped(it[k] * (x[i][k] - min[k]), 0, nmax);
                laux[i][k] = l as u8;
                let lf = l as f32;
                let wl = w[i][k] * lf;
                sum_l[k] += wl;
                sum_l2[k] += wl * lf;
                sum_xl[k] += wl * x[i][k];
            }
        }
        let mut this_scale = [0f32; LN];
        let mut this_min = [0f32; LN];
        let mut d = [0f32; LN];
        for k in 0..LN {
            d[k] = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            let ts = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d[k];
            let tm = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d[k];
            let pos = tm > 0.0;
            this_min[k] = if pos { 0.0 } else { tm };
            this_scale[k] = if pos { sum_xl[k] / sum_l2[k] } else { ts };
        }
        let mut cur_error = [0f32; LN];
        for i in 0..N {
            for k in 0..LN {
                let diff = this_scale[k] * f32::from(laux[i][k]) + this_min[k] - x[i][k];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error[k] += w[i][k] * diff;
            }
        }
        let mut accept = [false; LN];
        let mut any = false;
        for k in 0..LN {
            accept[k] = d[k] > 0.0 && cur_error[k] < best_error[k];
            any |= accept[k];
        }
        if any {
            for i in 0..N {
                for k in 0..LN {
                    l_out[i][k] = if accept[k] { laux[i][k] } else { l_out[i][k] };
                }
            }
            for k in 0..LN {
                if accept[k] {
                    best_error[k] = cur_error[k];
                    scale[k] = this_scale[k];
                    min[k] = this_min[k];
                }
            }
        }
    }
    let mut the_min = [0f32; LN];
    for k in 0..LN {
        if degenerate[k] {
            scale[k] = 0.0;
            the_min[k] = -min0[k];
            for li in l_out.iter_mut() {
                li[k] = 0;
            }
        } else {
            the_min[k] = -min[k];
        }
    }
    (scale, the_min)
}

/// Transposes `LN` consecutive sub-blocks of `N` elements into element-major lanes.
#[inline(always)]
fn transpose_in<const N: usize, const LN: usize>(x: &[f32]) -> [[f32; LN]; N] {
    let mut t = [[0f32; LN]; N];
    for k in 0..LN {
        for i in 0..N {
            t[i][k] = x[N * k + i];
        }
    }
    t
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    fn data(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32 / 16_777_216.0) - 0.5;
                // a few blocks constant / all positive / zero, to hit the degenerate branches
                match (i / 32) % 7 {
                    0 => 0.0,
                    1 => 0.25,
                    2 => u.abs() + 0.1,
                    _ => u * (1 + (i / 16) % 5) as f32,
                }
            })
            .collect()
    }

    #[test]
    fn lanes_match_scalar_qx() {
        for seed in 0..20 {
            let x = data(seed, 256);
            let xt = transpose_in::<16, 16>(&x);
            let mut wt = [[0f32; 16]; 16];
            for i in 0..16 {
                for k in 0..16 {
                    wt[i][k] = xt[i][k] * xt[i][k];
                }
            }
            let mut lt = [[0i8; 16]; 16];
            let s = make_qx_quants_lanes(32, &xt, &wt, &mut lt);
            for k in 0..16 {
                let xs = sub::<16>(x.as_slice().try_into().unwrap(), k);
                let mut l = [0i8; 16];
                let sc = make_qx_quants(32, xs, &mut l, 1, None);
                assert_eq!(sc.to_bits(), s[k].to_bits(), "seed {seed} lane {k}");
                for i in 0..16 {
                    assert_eq!(l[i], lt[i][k]);
                }
            }
        }
    }

    #[test]
    fn lanes_match_scalar_qkx() {
        for seed in 0..20 {
            let x = data(seed, 256);
            let xt = transpose_in::<32, 8>(&x);
            let mut wt = [[0f32; 8]; 32];
            for i in 0..32 {
                for k in 0..8 {
                    wt[i][k] = 0.3 + xt[i][k].abs();
                }
            }
            for (use_mad, le) in [(false, false), (true, false), (false, true)] {
                let mut lt = [[0u8; 8]; 32];
                let (s, m) =
                    make_qkx_quants_lanes(15, &xt, &wt, &mut lt, -1.0, 0.1, 20, use_mad, le);
                for k in 0..8 {
                    let xs = sub::<32>(x.as_slice().try_into().unwrap(), k);
                    let mut w = [0f32; 32];
                    for i in 0..32 {
                        w[i] = wt[i][k];
                    }
                    let mut l = [0u8; 32];
                    let (sc, mn) = if le {
                        make_qkx3_quants(15, xs, Some(&w), &mut l, -1.0, 0.1, 20, use_mad)
                    } else {
                        make_qkx2_quants(15, xs, &w, &mut l, -1.0, 0.1, 20, use_mad)
                    };
                    assert_eq!(sc.to_bits(), s[k].to_bits(), "seed {seed} lane {k}");
                    assert_eq!(mn.to_bits(), m[k].to_bits(), "seed {seed} lane {k}");
                    for i in 0..32 {
                        assert_eq!(l[i], lt[i][k]);
                    }
                }
            }
        }
    }
}
