//! The quantizers: mlx's CPU `fast::Quantize` (affine) and its mxfp4 path, reproduced
//! operation for operation in the same precision so the output is byte-identical.
//!
//! Affine (per group of `group_size` values, all arithmetic in f32 on the input converted to
//! f32): `scale = max((max - min) / (2^bits - 1), 1e-7)`, negated unless |min| > |max|;
//! `edge` is the end with the larger magnitude; `q0 = rint(edge / scale)`; when `q0 != 0` the
//! scale is recomputed as `edge / q0` and `bias = edge`, else `bias = 0`; every value becomes
//! `clamp(rint((w - bias) / scale), 0, 2^bits - 1)`; scale and bias are stored in the input
//! dtype. The codes of a row form one little-endian bit stream (low bits first), viewed as u32.
//!
//! mxfp4 (groups of 32): `d = amax / 6` rounded to the input dtype; the uint8 scale is
//! `ceil(log2(d)) + 127` (wrapping, as mlx's cast does; 127 when `d` is zero); every value
//! `w / 2^(scale - 127)` becomes the nearest e2m1 code with ties toward zero, sign bit only on
//! non-zero codes.
//!
//! Work is split over threads by whole groups; each group is independent, so the output does
//! not depend on the thread count.

use crate::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::{DType, Error, Mode, QuantSpec};

/// A quantized tensor, ready to be written as `NAME.weight`, `NAME.scales`, `NAME.biases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantized {
    /// Packed codes, little-endian u32 words.
    pub weight: Vec<u8>,
    /// Shape of `weight` in u32 elements: input shape with the last dim `K * bits / 32`.
    pub weight_shape: Vec<usize>,
    /// Scales: input dtype (affine) or u8 (mxfp4).
    pub scales: Vec<u8>,
    /// Shape of `scales` (and `biases`): input shape with the last dim `K / group_size`.
    pub scales_shape: Vec<usize>,
    /// Dtype name of scales/biases as safetensors spells it (`F32`, `F16`, `BF16`, `U8`).
    pub scales_dtype: &'static str,
    /// Biases (affine only), input dtype.
    pub biases: Option<Vec<u8>>,
}

/// Check `spec` against `shape` the way mlx's `quantize` does, naming `what` (a tensor name).
pub fn check(what: &str, shape: &[usize], spec: &QuantSpec) -> Result<(), Error> {
    spec.validate()?;
    if shape.len() < 2 {
        return Err(Error::Shape {
            tensor: what.to_string(),
            message: format!(
                "has shape {shape:?}: mlx quantizes only matrices (at least 2 dimensions)"
            ),
        });
    }
    let k = shape[shape.len() - 1];
    if k == 0 || !k.is_multiple_of(spec.group_size) {
        return Err(Error::Shape {
            tensor: what.to_string(),
            message: format!(
                "has rows of {k} values, which group size {} does not divide",
                spec.group_size
            ),
        });
    }
    Ok(())
}

/// Quantize a tensor given as little-endian bytes of `dtype` with `shape`.
/// `threads` = 0 means all cores.
pub fn quantize(
    what: &str,
    data: &[u8],
    dtype: DType,
    shape: &[usize],
    spec: &QuantSpec,
    threads: usize,
) -> Result<Quantized, Error> {
    check(what, shape, spec)?;
    let n: usize = shape.iter().product();
    if data.len() != n * dtype.size() {
        return Err(Error::Shape {
            tensor: what.to_string(),
            message: format!(
                "holds {} bytes, but shape {shape:?} of {} needs {}",
                data.len(),
                dtype.name(),
                n * dtype.size()
            ),
        });
    }
    let g = spec.group_size;
    let groups = n / g;
    let k = shape[shape.len() - 1];
    let wbytes_per_group = g * spec.bits as usize / 8;
    let (sbytes, bias) = match spec.mode {
        Mode::Affine => (dtype.size(), true),
        Mode::Mxfp4 => (1, false),
    };
    let mut weight = vec![0u8; groups * wbytes_per_group];
    let mut scales = vec![0u8; groups * sbytes];
    let mut biases = if bias {
        vec![0u8; groups * sbytes]
    } else {
        Vec::new()
    };
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    } else {
        threads
    };
    // At least 64 Ki values per task so that small tensors do not pay for threads.
    let per_task = groups.div_ceil(threads).max((1 << 16) / g).max(1);
    let tasks = groups.div_ceil(per_task);
    let run = |first: usize, w: &mut [u8], s: &mut [u8], b: &mut [u8]| {
        let count = w.len() / wbytes_per_group;
        let mut vals = [0f32; 128];
        for i in 0..count {
            let gi = first + i;
            let src = &data[gi * g * dtype.size()..(gi + 1) * g * dtype.size()];
            load(src, dtype, &mut vals[..g]);
            let wout = &mut w[i * wbytes_per_group..(i + 1) * wbytes_per_group];
            match spec.mode {
                Mode::Affine => {
                    let (scale, bias) = affine_group(&vals[..g], spec.bits, wout);
                    store(scale, dtype, &mut s[i * sbytes..(i + 1) * sbytes]);
                    store(bias, dtype, &mut b[i * sbytes..(i + 1) * sbytes]);
                }
                Mode::Mxfp4 => s[i] = mxfp4_group(&vals[..g], dtype, wout),
            }
        }
    };
    if tasks <= 1 {
        run(0, &mut weight, &mut scales, &mut biases);
    } else {
        std::thread::scope(|scope| {
            let mut w_rest: &mut [u8] = &mut weight;
            let mut s_rest: &mut [u8] = &mut scales;
            let mut b_rest: &mut [u8] = &mut biases;
            let mut first = 0;
            while first < groups {
                let cnt = per_task.min(groups - first);
                let (w, wr) = std::mem::take(&mut w_rest).split_at_mut(cnt * wbytes_per_group);
                let (s, sr) = std::mem::take(&mut s_rest).split_at_mut(cnt * sbytes);
                let (b, br) = if bias {
                    std::mem::take(&mut b_rest).split_at_mut(cnt * sbytes)
                } else {
                    (&mut [][..], &mut [][..])
                };
                w_rest = wr;
                s_rest = sr;
                b_rest = br;
                let run = &run;
                let f = first;
                scope.spawn(move || run(f, w, s, b));
                first += cnt;
            }
        });
    }
    let mut weight_shape = shape.to_vec();
    let mut scales_shape = shape.to_vec();
    let last = shape.len() - 1;
    weight_shape[last] = k * spec.bits as usize / 32;
    scales_shape[last] = k / g;
    Ok(Quantized {
        weight,
        weight_shape,
        scales,
        scales_shape,
        scales_dtype: match spec.mode {
            Mode::Affine => dtype.name(),
            Mode::Mxfp4 => "U8",
        },
        biases: bias.then_some(biases),
    })
}

#[inline]
fn load(src: &[u8], dtype: DType, out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
    }
}

#[inline]
fn store(v: f32, dtype: DType, out: &mut [u8]) {
    match dtype {
        DType::F32 => out.copy_from_slice(&v.to_le_bytes()),
        DType::F16 => out.copy_from_slice(&f32_to_f16(v).to_le_bytes()),
        DType::BF16 => out.copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
    }
}

/// Round to the representable value of `dtype` (f32 values pass unchanged).
#[inline]
fn round_to(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => v,
        DType::F16 => f16_to_f32(f32_to_f16(v)),
        DType::BF16 => bf16_to_f32(f32_to_bf16(v)),
    }
}

/// One affine group; returns (scale, bias) in f32 before the cast to the storage dtype.
#[inline]
fn affine_group(w: &[f32], bits: u32, out: &mut [u8]) -> (f32, f32) {
    let n_bins = ((1u32 << bits) - 1) as f32;
    let eps = 1e-7f32;
    let mut w_min = f32::INFINITY;
    let mut w_max = f32::NEG_INFINITY;
    for &x in w {
        // std::max / std::min: keep the current value unless the new one compares greater
        // (less), so NaNs and signed zeros behave as in mlx.
        if w_max < x {
            w_max = x;
        }
        if x < w_min {
            w_min = x;
        }
    }
    let mask = w_min.abs() > w_max.abs();
    let d = (w_max - w_min) / n_bins;
    let mut scale = if d < eps { eps } else { d };
    if !mask {
        scale = -scale;
    }
    let edge = if mask { w_min } else { w_max };
    let q0 = (edge / scale).round_ties_even();
    let mut bias = 0f32;
    if q0 != 0.0 {
        scale = edge / q0;
        bias = edge;
    }
    // Codes first, in a loop the compiler vectorizes (SSE2: sub, div, min/max, add).
    // mlx computes clamp(rint(v), 0, n_bins); clamping first is the same because 0 and n_bins
    // are integers and rint is monotonic. rint of v in [0, 255] is (v + 2^23) - 2^23 in the
    // default round-to-nearest-even mode. NaN stays NaN and becomes code 0.
    const MAGIC: f32 = 8_388_608.0;
    let mut codes = [0u32; 128];
    for (c, &x) in codes.iter_mut().zip(w) {
        let mut v = (x - bias) / scale;
        if v < 0.0 {
            v = 0.0;
        }
        if n_bins < v {
            v = n_bins;
        }
        *c = ((v + MAGIC) - MAGIC) as u32;
    }
    // Pack low bits first into one little-endian stream: 8 codes make `bits` bytes.
    let nb = bits as usize;
    for (chunk, o) in codes[..w.len()]
        .chunks_exact(8)
        .zip(out.chunks_exact_mut(nb))
    {
        let mut word = 0u64;
        for (k, &c) in chunk.iter().enumerate() {
            word |= u64::from(c) << (k * nb);
        }
        o.copy_from_slice(&word.to_le_bytes()[..nb]);
    }
    (scale, bias)
}

/// One mxfp4 group of 32; writes 16 bytes of codes, returns the u8 scale.
#[inline]
fn mxfp4_group(w: &[f32], dtype: DType, out: &mut [u8]) -> u8 {
    let mut amax = 0f32;
    for &x in w {
        let a = x.abs();
        if amax < a {
            amax = a;
        }
    }
    // mlx divides in the input dtype.
    let d = round_to(amax / 6.0, dtype);
    let (sbyte, scale) = if d == 0.0 {
        (127u8, 1.0f32)
    } else {
        let e = ceil_log2(d);
        // Codes use the exponent before the u8 wrap-around of the stored scale.
        ((e + 127) as u8, pow2(e))
    };
    for (i, pair) in w.chunks_exact(2).enumerate() {
        out[i] = fp4_code(pair[0] / scale) | (fp4_code(pair[1] / scale) << 4);
    }
    sbyte
}

/// ceil(log2(x)) for finite x > 0, exact.
#[inline]
fn ceil_log2(x: f32) -> i32 {
    let b = x.to_bits();
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x007f_ffff;
    if exp == 0 {
        // Subnormal: x = man * 2^-149.
        let top = 31 - man.leading_zeros() as i32; // floor(log2(man))
        let pow = man.is_power_of_two();
        top - 149 + i32::from(!pow)
    } else {
        exp - 127 + i32::from(man != 0)
    }
}

#[inline]
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149).max(0))
    }
}

/// e2m1 code of `x` (nearest, ties toward zero; the sign bit only on non-zero codes).
#[inline]
fn fp4_code(x: f32) -> u8 {
    let a = x.abs();
    let m = if a > 5.0 {
        7
    } else if a > 3.5 {
        6
    } else if a > 2.5 {
        5
    } else if a > 1.75 {
        4
    } else if a > 1.25 {
        3
    } else if a > 0.75 {
        2
    } else if a > 0.25 {
        1
    } else {
        0
    };
    if m != 0 && x < 0.0 {
        m | 8
    } else {
        m
    }
}

const FP4_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Dequantize to f32 (as `mx.dequantize` computes it, in f32): for checks and tests.
pub fn dequantize(q: &Quantized, dtype: DType, spec: &QuantSpec) -> Vec<f32> {
    let g = spec.group_size;
    let groups = q.weight.len() * 8 / (g * spec.bits as usize);
    let mut out = Vec::with_capacity(groups * g);
    let get = |bytes: &[u8], i: usize| -> f32 {
        let mut v = [0f32; 1];
        load(
            &bytes[i * dtype.size()..(i + 1) * dtype.size()],
            dtype,
            &mut v,
        );
        v[0]
    };
    let mask = (1u64 << spec.bits) - 1;
    for gi in 0..groups {
        let bytes =
            &q.weight[gi * g * spec.bits as usize / 8..(gi + 1) * g * spec.bits as usize / 8];
        let mut acc = 0u64;
        let mut nacc = 0u32;
        let mut bi = 0;
        for _ in 0..g {
            while nacc < spec.bits {
                acc |= u64::from(bytes[bi]) << nacc;
                bi += 1;
                nacc += 8;
            }
            let code = acc & mask;
            acc >>= spec.bits;
            nacc -= spec.bits;
            match spec.mode {
                Mode::Affine => {
                    let s = get(q.scales.as_slice(), gi);
                    let b = q.biases.as_ref().map_or(0.0, |b| get(b, gi));
                    out.push(s * code as f32 + b);
                }
                Mode::Mxfp4 => {
                    let s = pow2(i32::from(q.scales[gi]) - 127);
                    let v = FP4_VALUES[(code & 7) as usize];
                    out.push(if code & 8 != 0 { -v * s } else { v * s });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_exact() {
        assert_eq!(ceil_log2(1.0), 0);
        assert_eq!(ceil_log2(1.0000001), 1);
        assert_eq!(ceil_log2(0.5), -1);
        assert_eq!(ceil_log2(f32::from_bits(1)), -149);
        assert_eq!(ceil_log2(f32::from_bits(3)), -147);
        assert_eq!(ceil_log2(f32::from_bits(4)), -147);
    }

    #[test]
    fn fp4_ties_toward_zero() {
        assert_eq!(fp4_code(0.25), 0);
        assert_eq!(fp4_code(-0.25), 0);
        assert_eq!(fp4_code(0.75), 1);
        assert_eq!(fp4_code(-0.76), 10);
        assert_eq!(fp4_code(5.0), 6);
        assert_eq!(fp4_code(5.1), 7);
    }
}
