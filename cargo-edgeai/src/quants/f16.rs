//! Software f32 <-> f16 and f32 <-> bf16 conversions, bit-identical to ggml's reference ones
//! (`ggml_compute_fp32_to_fp16` / `ggml_compute_fp16_to_fp32` / `ggml_compute_fp32_to_bf16` in
//! ggml-impl.h, from Maratyszcza/FP16). ggml-base is compiled without F16C, so llama-quantize uses
//! exactly these bit tricks; they round to nearest even and turn every NaN into 0x7E00 (f16).

/// f32 -> IEEE binary16 bits, round to nearest even, NaN -> quiet NaN 0x7E00 (with the sign kept).
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    // 2^112 and 2^-110: the two multiplications push the value into a range where the f32 adder
    // below rounds the mantissa to 10 bits (ties to even), and overflow to infinity.
    let scale_to_inf = f32::from_bits(0x7780_0000);
    let scale_to_zero = f32::from_bits(0x0880_0000);
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }

    // Same operand order as C (commutative in IEEE arithmetic anyway).
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    // C returns the uint32 expression converted to uint16_t: keep only the low 16 bits.
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// IEEE binary16 bits -> f32 (exact; NaNs keep their payload, signalling ones become quiet
/// because ggml produces them through a float multiplication).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let w = u32::from(h) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask: u32 = 126 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;

    let denormalized_cutoff: u32 = 1 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

/// f32 -> bfloat16 bits, round to nearest even; NaNs are truncated and forced quiet (bit 6 of
/// the result), subnormals are kept (ggml_compute_fp32_to_bf16).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let i = x.to_bits();
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        return ((i >> 16) | 64) as u16;
    }
    (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16
}

/// bfloat16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Reads the little-endian f16 at `b[0..2]` as f32.
#[inline]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// Writes `x` as a little-endian f16 into `b[0..2]`, returning the stored bits.
#[inline]
pub(crate) fn write_f16(b: &mut [u8], x: f32) -> u16 {
    let h = f32_to_f16(x);
    b[..2].copy_from_slice(&h.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        // 65520 is the tie between 65504 and 65536 (infinity): ties to even -> inf.
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xFC00);
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(f32::from_bits(0xffc0_0001)), 0xFE00);
        // Smallest subnormal 2^-24 and the tie 2^-25 (rounds to even = 0).
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: even is 1.
        assert_eq!(f32_to_f16(f32::from_bits(0x3f80_1000)), 0x3C00);
        assert_eq!(f32_to_f16(f32::from_bits(0x3f80_3000)), 0x3C02);
    }

    #[test]
    fn f16_round_trips_every_finite_half() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert_eq!(f32_to_f16(f) & 0x7fff, 0x7E00, "{h:#06x}");
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3F80); // tie -> even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3F82); // tie -> even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7FC0); // sNaN forced quiet
        assert_eq!(f32_to_bf16(f32::from_bits(0xffff_ffff)), 0xFFFF);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f7f_ffff)), 0x7F80); // rounds to inf
        for h in 0..=u16::MAX {
            let f = bf16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_bf16(f), h);
            }
        }
    }
}
