//! Properties of the quantizers: dequantize(quantize(x)) stays within one quantization step of
//! x (affine) or within the e2m1 grid's spacing (mxfp4), and no input panics.

use edgeai_mlx::float::{f32_to_bf16, f32_to_f16};
use edgeai_mlx::{dequantize, quantize, DType, QuantSpec};
use proptest::prelude::*;

fn bytes(vals: &[f32], dt: DType) -> Vec<u8> {
    vals.iter()
        .flat_map(|&v| match dt {
            DType::F32 => v.to_le_bytes().to_vec(),
            DType::F16 => f32_to_f16(v).to_le_bytes().to_vec(),
            DType::BF16 => f32_to_bf16(v).to_le_bytes().to_vec(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn affine_error_within_one_step(
        vals in prop::collection::vec(-1000f32..1000f32, 128),
        bits in prop::sample::select(vec![2u32, 3, 4, 5, 6, 8]),
        group in prop::sample::select(vec![32usize, 64, 128]),
    ) {
        let spec = QuantSpec::affine(bits, group);
        let q = quantize("p", &bytes(&vals, DType::F32), DType::F32, &[1, 128], &spec, 1).unwrap();
        let back = dequantize(&q, DType::F32, &spec);
        for (gi, chunk) in vals.chunks(group).enumerate() {
            let s = f32::from_le_bytes(q.scales[4 * gi..4 * gi + 4].try_into().unwrap()).abs();
            let max = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, &v) in chunk.iter().enumerate() {
                let d = (back[gi * group + j] - v).abs();
                // Half a step from rounding, up to one more where the recomputed scale
                // (edge / q0) clamps the far end, plus float rounding.
                prop_assert!(d <= 1.5 * s + 1e-5 * max + 1e-6, "{v} -> {} (step {s})", back[gi * group + j]);
            }
        }
    }

    #[test]
    fn mxfp4_error_within_grid(vals in prop::collection::vec(-1e6f32..1e6f32, 64)) {
        let spec = QuantSpec::mxfp4();
        let q = quantize("p", &bytes(&vals, DType::F32), DType::F32, &[2, 32], &spec, 1).unwrap();
        let back = dequantize(&q, DType::F32, &spec);
        for (gi, chunk) in vals.chunks(32).enumerate() {
            let scale = 2f32.powi(i32::from(q.scales[gi]) - 127);
            for (j, &v) in chunk.iter().enumerate() {
                // The e2m1 grid is at most 2 units (4 -> 6) apart: error <= 1 unit · scale.
                let d = (back[gi * 32 + j] - v).abs();
                prop_assert!(d <= scale * 1.0 + 1e-30, "{v} -> {} (scale {scale})", back[gi * 32 + j]);
            }
        }
    }

    #[test]
    fn no_panics_on_any_bits(
        raw in prop::collection::vec(any::<u32>(), 64),
        bits in 0u32..10,
        group in prop::sample::select(vec![16usize, 32, 64, 100, 128]),
        mxfp4 in any::<bool>(),
    ) {
        let vals: Vec<f32> = raw.iter().map(|&b| f32::from_bits(b)).collect();
        let spec = if mxfp4 { QuantSpec { bits, ..QuantSpec::mxfp4() } } else { QuantSpec::affine(bits, group) };
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let _ = quantize("p", &bytes(&vals, dt), dt, &[1, 64], &spec, 2);
            let _ = quantize("p", &bytes(&vals, dt)[1..], dt, &[1, 64], &spec, 2);
            let _ = quantize("p", &bytes(&vals, dt), dt, &[64], &spec, 2);
        }
    }
}

#[test]
fn bad_options_name_the_problem() {
    let data = vec![0u8; 4 * 96];
    let e = quantize(
        "layer.w",
        &data,
        DType::F32,
        &[1, 96],
        &QuantSpec::affine(4, 64),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("layer.w") && e.contains("96") && e.contains("64"),
        "{e}"
    );
    let e = quantize(
        "x",
        &data,
        DType::F32,
        &[1, 96],
        &QuantSpec::affine(7, 32),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--bits 7"), "{e}");
    let spec = QuantSpec {
        bits: 8,
        ..QuantSpec::mxfp4()
    };
    let e = quantize("x", &data, DType::F32, &[1, 96], &spec, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mxfp4"), "{e}");
}
