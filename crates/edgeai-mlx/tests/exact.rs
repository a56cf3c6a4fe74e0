//! Byte-identity with mlx's own `mx.quantize` (mlx 0.32.x on CPU, from the managed `mlx`
//! toolchain): f32, f16 and bf16 inputs × affine bits {2,3,4,5,6,8} × groups {32,64,128},
//! and mxfp4, on seeded gaussian rows and edge cases (zeros, constants, extreme magnitudes,
//! mixed signs, single outliers, values on rounding boundaries). Fails when the toolchain is
//! missing: `cargo edgeai toolchain install mlx`.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeai_mlx::float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use edgeai_mlx::{quantize, DType, QuantSpec, AFFINE_BITS, AFFINE_GROUPS};

const K: usize = 256;

fn mlx_python() -> PathBuf {
    match edgeai_toolchain::find("mlx") {
        Ok(t) => t.python(),
        Err(e) => panic!(
            "the mlx toolchain is needed to compare with mlx: {e}\n\
             install it with `cargo edgeai toolchain install mlx`"
        ),
    }
}

/// splitmix64: the same stream on every platform.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Rows of K values for `dtype` (already representable in it).
fn rows(dtype: DType, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed);
    let (big, tiny) = match dtype {
        DType::F16 => (30000.0f32, 1e-7f32),
        _ => (1e30f32, 1e-30f32),
    };
    let mut out: Vec<Vec<f32>> = Vec::new();
    // Gaussian rows at many scales.
    let scales: &[f64] = match dtype {
        DType::F16 => &[1e-4, 1e-2, 0.02, 0.1, 1.0, 3.0, 100.0, 1000.0],
        _ => &[1e-20, 1e-6, 1e-2, 0.02, 0.1, 1.0, 3.0, 1e3, 1e10, 1e20],
    };
    for &s in scales {
        for _ in 0..3 {
            out.push((0..K).map(|_| (r.gauss() * s) as f32).collect());
        }
    }
    // Gaussian with a mean (all one sign in most groups).
    out.push((0..K).map(|_| (r.gauss() * 0.01 + 0.5) as f32).collect());
    out.push((0..K).map(|_| (r.gauss() * 0.01 - 0.5) as f32).collect());
    // Zeros, constants, ±0 mixes.
    out.push(vec![0.0; K]);
    out.push(vec![-0.0; K]);
    out.push(vec![1.0; K]);
    out.push(vec![-2.5; K]);
    out.push(vec![0.1; K]);
    out.push(
        (0..K)
            .map(|i| if i % 2 == 0 { 0.0 } else { -0.0 })
            .collect(),
    );
    // Extreme magnitudes.
    out.push(
        (0..K)
            .map(|i| if i % 2 == 0 { big } else { -big })
            .collect(),
    );
    out.push(
        (0..K)
            .map(|i| if i % 3 == 0 { tiny } else { -tiny })
            .collect(),
    );
    out.push((0..K).map(|_| (r.gauss() as f32) * tiny).collect());
    out.push(
        (0..K)
            .map(|i| if i % 7 == 0 { big } else { tiny })
            .collect(),
    );
    out.push(vec![big; K]);
    out.push(vec![-tiny; K]);
    // Mixed signs, one outlier per row or per group.
    out.push(
        (0..K)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
    );
    let mut row: Vec<f32> = (0..K).map(|_| (r.gauss() * 0.02) as f32).collect();
    row[17] = 40.0;
    out.push(row);
    let mut row: Vec<f32> = (0..K).map(|_| (r.gauss() * 0.02) as f32).collect();
    row[100] = -40.0;
    out.push(row);
    let mut row: Vec<f32> = (0..K).map(|_| (r.gauss() * 0.02) as f32).collect();
    for g in 0..K / 32 {
        row[g * 32 + (g * 5) % 32] = if g % 2 == 0 { 9.0 } else { -9.0 };
    }
    out.push(row);
    // Small integers (rounding ties everywhere), uniform ranges.
    out.push((0..K).map(|i| (i % 17) as f32 - 8.0).collect());
    out.push((0..K).map(|i| (i % 5) as f32 * 0.5).collect());
    out.push((0..K).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect());
    out.push((0..K).map(|_| r.uniform() as f32).collect());
    // mxfp4 boundaries: group maxima at 6·2^k · (1 + a few ulps), values at e2m1 ties.
    let ties = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0];
    for k in [-10i32, -3, 0, 1, 4, 9] {
        let mut row = vec![0f32; K];
        for g in 0..K / 32 {
            let s = 2f32.powi(k);
            for j in 0..32 {
                let t = ties[(j + g) % 8] * s;
                row[g * 32 + j] = if j % 3 == 0 { -t } else { t };
            }
            let m = 6.0 * s;
            row[g * 32 + 31] = f32::from_bits(m.to_bits() + g as u32 * 3);
        }
        out.push(row);
    }
    // Round to the dtype.
    for row in &mut out {
        for v in row.iter_mut() {
            *v = match dtype {
                DType::F32 => *v,
                DType::F16 => f16_to_f32(f32_to_f16(*v)),
                DType::BF16 => bf16_to_f32(f32_to_bf16(*v)),
            };
        }
    }
    out
}

fn to_bytes(vals: &[f32], dtype: DType) -> Vec<u8> {
    let mut b = Vec::with_capacity(vals.len() * dtype.size());
    for &v in vals {
        match dtype {
            DType::F32 => b.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => b.extend_from_slice(&f32_to_f16(v).to_le_bytes()),
            DType::BF16 => b.extend_from_slice(&f32_to_bf16(v).to_le_bytes()),
        }
    }
    b
}

const SCRIPT: &str = r#"
import sys, os, numpy as np
import mlx.core as mx
mx.set_default_device(mx.cpu)
d = sys.argv[1]
K = int(sys.argv[2])
dts = {"F32": (mx.float32, np.float32), "F16": (mx.float16, np.float16), "BF16": (mx.bfloat16, np.uint16)}
def raw(a):
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.array(a).tobytes()
for name, (mdt, ndt) in dts.items():
    buf = np.fromfile(os.path.join(d, f"in_{name}.bin"), dtype=ndt).reshape(-1, K)
    w = mx.array(buf)
    if name == "BF16":
        w = w.view(mx.bfloat16)
    assert w.dtype == mdt
    jobs = [("affine", b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)] + [("mxfp4", 4, 32)]
    for mode, b, g in jobs:
        r = mx.quantize(w, group_size=g, bits=b, mode=mode)
        stem = os.path.join(d, f"out_{name}_{mode}_{b}_{g}")
        open(stem + ".w", "wb").write(raw(r[0]))
        open(stem + ".s", "wb").write(raw(r[1]))
        if mode == "affine":
            open(stem + ".b", "wb").write(raw(r[2]))
print(mx.__version__)
"#;

fn run_mlx(dir: &Path) -> String {
    let script = dir.join("quantize.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let py = mlx_python();
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir)
        .arg(K.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "mlx quantize script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn byte_identical_to_mx_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    let mut inputs = Vec::new();
    for (i, &dt) in dtypes.iter().enumerate() {
        let rs = rows(dt, 0x5eed + i as u64);
        let flat: Vec<f32> = rs.concat();
        let bytes = to_bytes(&flat, dt);
        std::fs::write(dir.path().join(format!("in_{}.bin", dt.name())), &bytes).unwrap();
        inputs.push((dt, rs.len(), flat, bytes));
    }
    let version = run_mlx(dir.path());
    assert!(
        version.starts_with("0.32."),
        "pinned mlx 0.32.x, found {version}"
    );

    let mut specs: Vec<QuantSpec> = Vec::new();
    for b in AFFINE_BITS {
        for g in AFFINE_GROUPS {
            specs.push(QuantSpec::affine(b, g));
        }
    }
    specs.push(QuantSpec::mxfp4());
    let mut failures = Vec::new();
    let mut compared = 0;
    for (dt, nrows, flat, bytes) in &inputs {
        for spec in &specs {
            let stem = dir.path().join(format!(
                "out_{}_{}_{}_{}",
                dt.name(),
                spec.mode.name(),
                spec.bits,
                spec.group_size
            ));
            let q = quantize("test", bytes, *dt, &[*nrows, K], spec, 3).unwrap();
            let mut parts = vec![("w", q.weight.clone()), ("s", q.scales.clone())];
            if let Some(b) = &q.biases {
                parts.push(("b", b.clone()));
            }
            for (ext, ours) in parts {
                let theirs = std::fs::read(stem.with_extension(ext)).unwrap();
                compared += 1;
                if ours != theirs {
                    // Name the first differing group and its inputs.
                    let per_group = ours.len() / (flat.len() / spec.group_size);
                    let at = ours
                        .iter()
                        .zip(&theirs)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    let g = at / per_group.max(1);
                    let vals = &flat[g * spec.group_size..(g + 1) * spec.group_size];
                    failures.push(format!(
                        "{} {:?} {}-bit g{} part {ext}: {} vs {} bytes, first difference at byte {at} (group {g}, row {}), ours {:?} theirs {:?}; inputs {:?}",
                        dt.name(),
                        spec.mode,
                        spec.bits,
                        spec.group_size,
                        ours.len(),
                        theirs.len(),
                        g * spec.group_size / K,
                        &ours[g * per_group..((g + 1) * per_group).min(ours.len())],
                        &theirs[g * per_group..((g + 1) * per_group).min(theirs.len())],
                        vals
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} outputs differ from mlx {version}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{compared} outputs byte-identical to mlx {version}");
}
