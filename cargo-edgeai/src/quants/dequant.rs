//! Dequantizers (`dequantize_row_*` in ggml-quants.c, the type traits' `to_float`), with the same
//! per-element arithmetic as C: e.g. Q6_K computes `(d * sc) * q`, Q4_1 `q * d + m`.

// Index loops mirror ggml's C index arithmetic one to one, which keeps the port reviewable.
#![allow(clippy::needless_range_loop)]

use super::f16::{bf16_to_f32, f16_to_f32, read_f16};
use super::iq4nl::KVALUES_IQ4NL;
use super::kquants::{get_scale_min_k4, QK_K};
use super::mxfp4::{e8m0_to_fp32_half, KVALUES_MXFP4};
use crate::gguf::GgmlType;

/// Whether [`dequantize`] handles `ty`.
pub(super) fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ4_NL
            | IQ4_XS
            | MXFP4
            | TQ1_0
            | TQ2_0
    )
}

/// Dequantizes whole blocks; lengths were validated by `dequantize_rows`.
pub(super) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    use GgmlType::*;
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    let f: fn(&[u8], &mut [f32]) = match ty {
        F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        F16 => |b, y| y[0] = f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        BF16 => |b, y| y[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Q2_K => q2_k,
        Q3_K => q3_k,
        Q4_K => q4_k,
        Q5_K => q5_k,
        Q6_K => q6_k,
        IQ4_NL => iq4_nl,
        IQ4_XS => iq4_xs,
        MXFP4 => mxfp4,
        TQ1_0 => tq1_0,
        TQ2_0 => tq2_0,
        _ => return,
    };
    for (b, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
        f(b, y);
    }
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let m = read_f16(&b[2..]);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit value `j` of a Q5_0/Q5_1 block from its `qh` word and `qs` bytes.
#[inline(always)]
fn q5_vals(qh: u32, qs: &[u8], j: usize) -> (i32, i32) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (
        i32::from((qs[j] & 0x0F) | xh_0),
        i32::from((qs[j] >> 4) | xh_1),
    )
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let (x0, x1) = q5_vals(qh, &b[6..22], j);
        y[j] = (x0 - 16) as f32 * d;
        y[j + 16] = (x1 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let m = read_f16(&b[2..]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let (x0, x1) = q5_vals(qh, &b[8..24], j);
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = read_f16(&b[80..]);
    let min = read_f16(&b[82..]);
    let mut out = 0;
    let mut is = 0;
    for n in 0..QK_K / 128 {
        let q = &b[16 + 32 * n..16 + 32 * (n + 1)];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = min * f32::from(sc >> 4);
                for l in 0..16 {
                    y[out] = dl * f32::from((q[l + 16 * half] >> shift) & 3) - ml;
                    out += 1;
                }
            }
        }
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let sc = &b[96..108];
    let d_all = read_f16(&b[108..]);
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..QK_K / 128 {
        let q = &b[32 + 32 * n..32 + 32 * (n + 1)];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let j = is;
                is += 1;
                let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
                let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
                let s = i32::from(lo | (hi << 4)) - 32;
                let dl = d_all * s as f32;
                for l in 0..16 {
                    let k = l + 16 * half;
                    let v = i32::from((q[k] >> shift) & 3) - if hm[k] & m != 0 { 0 } else { 4 };
                    y[out] = dl * v as f32;
                    out += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let min = read_f16(&b[2..]);
    let scales = &b[4..16];
    for n in 0..QK_K / 64 {
        let q = &b[16 + 32 * n..16 + 32 * (n + 1)];
        let (sc, m) = get_scale_min_k4(2 * n, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = get_scale_min_k4(2 * n + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let yo = &mut y[64 * n..64 * (n + 1)];
        for l in 0..32 {
            yo[l] = d1 * f32::from(q[l] & 0xF) - m1;
            yo[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let min = read_f16(&b[2..]);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for n in 0..QK_K / 64 {
        let ql = &b[48 + 32 * n..48 + 32 * (n + 1)];
        let u1 = 1u8 << (2 * n);
        let u2 = 2u8 << (2 * n);
        let (sc, m) = get_scale_min_k4(2 * n, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = get_scale_min_k4(2 * n + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        let yo = &mut y[64 * n..64 * (n + 1)];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            yo[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
            yo[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = read_f16(&b[208..]);
    for n in 0..QK_K / 128 {
        let ql = &b[64 * n..64 * (n + 1)];
        let qh = &b[128 + 32 * n..128 + 32 * (n + 1)];
        let sc = &b[192 + 8 * n..192 + 8 * (n + 1)];
        let yo = &mut y[128 * n..128 * (n + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| f32::from(sc[k] as i8);
            yo[l] = d * s(is) * q1 as f32;
            yo[l + 32] = d * s(is + 2) * q2 as f32;
            yo[l + 64] = d * s(is + 4) * q3 as f32;
            yo[l + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = read_f16(b);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let scales_l = &b[4..8];
    for ib in 0..QK_K / 32 {
        let ls = i32::from((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF)
            | ((i32::from(scales_h >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * (ib + 1)];
        let yo = &mut y[32 * ib..32 * (ib + 1)];
        for j in 0..16 {
            yo[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]);
            yo[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
        }
    }
}

fn mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_to_fp32_half(b[0]);
    for j in 0..16 {
        let q = b[1 + j];
        y[j] = f32::from(KVALUES_MXFP4[usize::from(q & 0x0F)]) * d;
        y[j + 16] = f32::from(KVALUES_MXFP4[usize::from(q >> 4)]) * d;
    }
}

/// One base-3 digit of a TQ1_0 byte: `((uint16_t)(uint8_t)(q * 3^n) * 3) >> 8`, minus one.
#[inline(always)]
fn trit(q: u8, pow3: u8) -> f32 {
    let q = q.wrapping_mul(pow3);
    let xi = ((u16::from(q) * 3) >> 8) as i16;
    f32::from(xi - 1)
}

fn tq1_0(b: &[u8], y: &mut [f32]) {
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    let qs = &b[0..48];
    let qh = &b[48..52];
    let d = read_f16(&b[52..]);
    let mut out = 0;
    for (chunk, width) in [(&qs[0..32], 32usize), (&qs[32..48], 16)] {
        for &p in &POW3[..5] {
            for &q in &chunk[..width] {
                y[out] = trit(q, p) * d;
                out += 1;
            }
        }
    }
    for &p in &POW3[..4] {
        for &q in qh {
            y[out] = trit(q, p) * d;
            out += 1;
        }
    }
}

fn tq2_0(b: &[u8], y: &mut [f32]) {
    let d = read_f16(&b[64..]);
    let mut out = 0;
    for j in (0..64).step_by(32) {
        for l in 0..4 {
            for m in 0..32 {
                let q = i32::from((b[j + m] >> (2 * l)) & 3);
                y[out] = (q - 1) as f32 * d;
                out += 1;
            }
        }
    }
}
