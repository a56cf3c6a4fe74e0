//! Golden-vector tests against ggml (fixtures/golden, format "EAGV" v1 written by
//! tools/golden/golden.c from the real ggml-base) and property tests of the quantizers.

use super::*;
use std::path::{Path, PathBuf};

/// Every file tools/golden/golden.c writes: each block type with and without an imatrix, plus the
/// F16 / BF16 conversion files.
const GOLDEN_TYPES: &[&str] = &[
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
    "MXFP4",
];

fn golden_dir() -> PathBuf {
    // EDGEAI_GOLDEN_DIR lets a developer point the test at freshly generated vectors.
    match std::env::var_os("EDGEAI_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden"),
    }
}

struct Golden {
    name: String,
    ggml_type: u32,
    n_rows: usize,
    n_per_row: usize,
    imatrix: Option<Vec<f32>>,
    input: Vec<f32>,
    quant: Vec<u8>,
    dequant: Vec<f32>,
}

fn parse_golden(path: &Path) -> Result<Golden, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut off = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = data
            .get(off..off + n)
            .ok_or_else(|| format!("{}: truncated at byte {off}", path.display()))?;
        off += n;
        Ok(s)
    };
    let magic = take(4)?.to_vec();
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let version = u32_at(take(4)?);
    if magic != b"EAGV" || version != 1 {
        return Err(format!("{}: not an EAGV v1 file", path.display()));
    }
    let name_raw = take(16)?;
    let name = String::from_utf8_lossy(name_raw)
        .trim_end_matches('\0')
        .to_string();
    let mut h = [0u32; 8];
    for v in h.iter_mut() {
        *v = u32_at(take(4)?);
    }
    let [ggml_type, n_rows, n_per_row, has_im, _block, _tsize, row_size, _flags] = h;
    let (n_rows, n_per_row, row_size) = (n_rows as usize, n_per_row as usize, row_size as usize);
    let n = n_rows * n_per_row;
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let imatrix = if has_im != 0 {
        Some(f32s(take(4 * n_per_row)?))
    } else {
        None
    };
    let input = f32s(take(4 * n)?);
    let quant = take(n_rows * row_size)?.to_vec();
    let dequant = f32s(take(4 * n)?);
    if off != data.len() {
        return Err(format!("{}: trailing bytes", path.display()));
    }
    Ok(Golden {
        name,
        ggml_type,
        n_rows,
        n_per_row,
        imatrix,
        input,
        quant,
        dequant,
    })
}

/// Checks one golden file; returns a description of every mismatch.
fn check_golden(file: &str, g: &Golden) -> Vec<String> {
    let mut errs = Vec::new();
    let Some(ty) = GgmlType::from_id(g.ggml_type) else {
        return vec![format!("{file}: unknown ggml type id {}", g.ggml_type)];
    };
    if ty.name() != g.name {
        errs.push(format!(
            "{file}: type id {} is {ty}, header says {}",
            g.ggml_type, g.name
        ));
    }
    let row_size = g.quant.len() / g.n_rows.max(1);
    let mut q = vec![0u8; g.quant.len()];
    match quantize_rows(ty, &g.input, g.n_per_row, g.imatrix.as_deref(), &mut q) {
        Err(e) => errs.push(format!("{file}: quantize_rows failed: {e}")),
        Ok(()) if q != g.quant => {
            let bs = ty.type_size() as usize;
            let bad: Vec<String> = q
                .chunks(bs)
                .zip(g.quant.chunks(bs))
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| {
                    let per_row = row_size / bs;
                    format!("row {} block {}", i / per_row.max(1), i % per_row.max(1))
                })
                .collect();
            errs.push(format!(
                "{file}: quantized bytes differ in {} blocks, first: {}",
                bad.len(),
                bad.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(()) => {}
    }
    let mut d = vec![0f32; g.dequant.len()];
    match dequantize_rows(ty, &g.quant, &mut d) {
        Err(e) => errs.push(format!("{file}: dequantize_rows failed: {e}")),
        Ok(()) => {
            let bad = d
                .iter()
                .zip(&g.dequant)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            if let Some(i) = bad {
                errs.push(format!(
                    "{file}: dequantized value {i} is {:#010x}, ggml {:#010x}",
                    d[i].to_bits(),
                    g.dequant[i].to_bits()
                ));
            }
        }
    }
    errs
}

/// Bit-exactness against ggml. Runs every golden file present; fails when the directory exists
/// but is empty or lacks a file for a type ggml's generator covers. Skips (passing) only when the
/// directory does not exist at all.
#[test]
fn golden_vectors_match_ggml() {
    let dir = golden_dir();
    if !dir.is_dir() {
        eprintln!("golden: {} does not exist; skipping", dir.display());
        return;
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("golden dir readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} exists but has no .bin files",
        dir.display()
    );
    let mut expected: Vec<String> = vec!["F16.bin".into(), "BF16.bin".into()];
    for t in GOLDEN_TYPES {
        expected.push(format!("{t}.bin"));
        expected.push(format!("{t}.imatrix.bin"));
    }
    let mut errs: Vec<String> = expected
        .iter()
        .filter(|e| !files.contains(e))
        .map(|e| format!("missing golden file {e}"))
        .collect();
    for f in &files {
        match parse_golden(&dir.join(f)) {
            Ok(g) => errs.extend(check_golden(f, &g)),
            Err(e) => errs.push(e),
        }
    }
    assert!(errs.is_empty(), "golden mismatches:\n{}", errs.join("\n"));
}

// ---- property tests (deterministic pseudo-random inputs, no extra dependencies) ------------------

/// splitmix64, so that failures are reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / 16_777_216.0
    }
    fn gauss(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }
}

/// A row mixing the shapes that stress the scale searches: gaussian with a random per-row
/// magnitude (0.05 .. 100, so that the f16 scales stay normal numbers and the relative bounds
/// below hold), occasional outliers, all-positive blocks and exact zeros.
fn random_row(rng: &mut Rng, n: usize) -> Vec<f32> {
    let sigma = 10f32.powf(rng.uniform() * 3.3 - 1.3);
    let kind = rng.next_u64() % 4;
    (0..n)
        .map(|j| {
            let g = rng.gauss() * sigma;
            match kind {
                0 => g,
                1 => {
                    if rng.next_u64().is_multiple_of(37) {
                        g * 20.0
                    } else {
                        g
                    }
                }
                2 => g.abs() + sigma * 0.1,
                _ => {
                    if (j / 32) % 3 == 0 {
                        0.0
                    } else {
                        g
                    }
                }
            }
        })
        .collect()
}

/// Maximum allowed |x - dequant(quant(x))| for a block, from the block's values: scale-derived
/// for the legacy types, a loose fraction of the (super-)block's max |x| for the others.
/// (Observed worst cases over these inputs, as a fraction of max|x|, without / with imatrix:
/// Q8_0 .004, Q4_0 .124/.137, Q6_K .016/.038, Q4_K .069/.108, Q2_K .33/.47, IQ4_NL .11/.15,
/// MXFP4 .245.)
fn error_bound(ty: GgmlType, xb: &[f32], imatrix: bool) -> f32 {
    // With an importance matrix the scale search minimizes a weighted error and may give up
    // accuracy on low-weight columns: allow three times the plain bound.
    let factor = if imatrix { 3.0 } else { 1.0 };
    factor * plain_error_bound(ty, xb)
}

fn plain_error_bound(ty: GgmlType, xb: &[f32]) -> f32 {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mn = xb.iter().fold(f32::MAX, |m, &v| m.min(v));
    let mx = xb.iter().fold(-f32::MAX, |m, &v| m.max(v));
    // f16 rounding of a stored scale is relative 2^-11 (times the largest level, below); the
    // absolute slack covers scales that land among the f16 subnormals (half ulp 2^-25).
    let tiny = 128.0 * 2f32.powi(-25);
    use GgmlType::*;
    match ty {
        // d = amax/127, rounding to nearest level: d/2, plus 127 * f16 error of d.
        Q8_0 => (amax / 127.0) * (0.5 + 127.0 / 2048.0) + tiny,
        // d = max/-8: the level +8 does not exist, so the far side is off by up to one step.
        Q4_0 => (amax / 8.0) * (1.0 + 8.0 / 2048.0) + tiny,
        Q5_0 => (amax / 16.0) * (1.0 + 16.0 / 2048.0) + tiny,
        Q4_1 => ((mx - mn) / 15.0) * (0.5 + 15.0 / 2048.0) + mn.abs() / 2048.0 + tiny,
        Q5_1 => ((mx - mn) / 31.0) * (0.5 + 31.0 / 2048.0) + mn.abs() / 2048.0 + tiny,
        // K-quants: 1.0 * max|x| / (2^(bits-1) - 1) over the super-block (documented loose bound).
        Q2_K => amax + tiny,
        Q3_K => amax / 3.0 + tiny,
        Q4_K => amax / 7.0 + tiny,
        Q5_K => amax / 15.0 + tiny,
        Q6_K => amax / 31.0 + tiny,
        // Widest IQ4_NL gap is 24 of 127 levels (89 -> 113), plus clipping by the scale search.
        IQ4_NL => amax / 4.0 + tiny,
        // e2m1 levels: the largest is 6 but amax may reach 8 in units of the scale.
        MXFP4 => amax / 4.0 + tiny,
        _ => 0.0,
    }
}

const BLOCK_TYPES: &[GgmlType] = &[
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::MXFP4,
];

fn quantize_vec(ty: GgmlType, x: &[f32], n_per_row: usize, im: Option<&[f32]>) -> Vec<u8> {
    let n = ty.bytes_for(x.len() as u64).expect("whole blocks") as usize;
    let mut q = vec![0u8; n];
    quantize_rows(ty, x, n_per_row, im, &mut q).expect("quantize");
    q
}

#[test]
fn round_trip_error_is_bounded() {
    let n_per_row = 512;
    for &ty in BLOCK_TYPES {
        for seed in 0..40u64 {
            let mut rng = Rng(seed * 7919 + ty.id() as u64);
            let x = random_row(&mut rng, n_per_row);
            let imatrix: Vec<f32> = (0..n_per_row).map(|_| 0.1 + rng.uniform() * 4.0).collect();
            for im in [None, Some(imatrix.as_slice())] {
                let q = quantize_vec(ty, &x, n_per_row, im);
                let mut y = vec![0f32; n_per_row];
                dequantize_rows(ty, &q, &mut y).expect("dequantize");
                let bsz = ty.block_size() as usize;
                for (b, (xb, yb)) in x.chunks(bsz).zip(y.chunks(bsz)).enumerate() {
                    let bound = error_bound(ty, xb, im.is_some());
                    for (j, (&a, &r)) in xb.iter().zip(yb).enumerate() {
                        let err = (a - r).abs();
                        assert!(
                            err <= bound,
                            "{ty} seed {seed} imatrix {} block {b} elem {j}: x={a} got {r} err {err} > bound {bound}",
                            im.is_some()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn quantize_is_deterministic_and_row_chunking_invariant() {
    let n_per_row = 256;
    let n_rows = 4;
    for &ty in BLOCK_TYPES {
        let mut rng = Rng(ty.id() as u64);
        let x: Vec<f32> = (0..n_rows)
            .flat_map(|_| random_row(&mut rng, n_per_row))
            .collect();
        let imatrix: Vec<f32> = (0..n_per_row).map(|_| 0.1 + rng.uniform()).collect();
        for im in [None, Some(imatrix.as_slice())] {
            let whole = quantize_vec(ty, &x, n_per_row, im);
            assert_eq!(whole, quantize_vec(ty, &x, n_per_row, im), "{ty}");
            let by_row: Vec<u8> = x
                .chunks(n_per_row)
                .flat_map(|r| quantize_vec(ty, r, n_per_row, im))
                .collect();
            assert_eq!(whole, by_row, "{ty}: row-by-row differs");
        }
    }
}

#[test]
fn zero_rows_quantize_to_zero() {
    for &ty in BLOCK_TYPES {
        let x = vec![0f32; 256];
        let q = quantize_vec(ty, &x, 256, None);
        let mut y = vec![1f32; 256];
        dequantize_rows(ty, &q, &mut y).expect("dequantize");
        assert!(y.iter().all(|&v| v == 0.0), "{ty}");
    }
}

#[test]
fn float_types_convert() {
    let x = [1.0f32, -2.5, 65504.0, 1e-8, f32::INFINITY];
    let q = quantize_vec(GgmlType::F16, &x, 5, None);
    assert_eq!(&q[..4], &[0x00, 0x3C, 0x00, 0xC1]);
    let mut y = [0f32; 5];
    dequantize_rows(GgmlType::F16, &q, &mut y).expect("dequantize");
    assert_eq!(&y[..3], &x[..3]);
    let q = quantize_vec(GgmlType::BF16, &x, 5, None);
    dequantize_rows(GgmlType::BF16, &q, &mut y).expect("dequantize");
    assert_eq!(&y[..3], &[1.0, -2.5, 65536.0]);
    let q = quantize_vec(GgmlType::F32, &x, 5, None);
    dequantize_rows(GgmlType::F32, &q, &mut y).expect("dequantize");
    assert_eq!(y, x);
}

#[test]
fn bad_arguments_are_errors() {
    let x = vec![0.5f32; 64];
    let mut q = vec![0u8; 36];
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x, 48, None, &mut q),
        Err(QuantError::RowLength { .. })
    ));
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x, 0, None, &mut q),
        Err(QuantError::RowLength { .. })
    ));
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x, 32, None, &mut q),
        Err(QuantError::DestinationLength { .. })
    ));
    assert!(matches!(
        quantize_rows(GgmlType::Q4_K, &x, 64, None, &mut q),
        Err(QuantError::RowLength { .. })
    ));
    let mut q = vec![0u8; 68];
    assert!(quantize_rows(GgmlType::Q8_0, &x, 32, None, &mut q).is_ok());
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x, 32, Some(&[1.0; 3]), &mut q),
        Err(QuantError::ImatrixLength { .. })
    ));
    assert!(matches!(
        quantize_rows(GgmlType::IQ2_XXS, &x, 32, None, &mut q),
        Err(QuantError::UnsupportedQuantize(_))
    ));
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x[..40], 32, None, &mut q),
        Err(QuantError::SourceLength { .. })
    ));
    let mut y = vec![0f32; 64];
    assert!(matches!(
        dequantize_rows(GgmlType::Q8_0, &q[..67], &mut y),
        Err(QuantError::QuantizedLength { .. })
    ));
    assert!(matches!(
        dequantize_rows(GgmlType::Q8_0, &q, &mut y[..63]),
        Err(QuantError::DestinationLength { .. })
    ));
    assert!(requires_imatrix(GgmlType::IQ2_XXS) && !requires_imatrix(GgmlType::Q4_K));
    assert!(can_quantize(GgmlType::Q6_K) && !can_quantize(GgmlType::IQ2_XXS));
    assert!(can_dequantize(GgmlType::IQ4_XS));
}

/// Rows that stress the exact-semantics corners of the SIMD paths: NaN, ±inf, -0.0, signed ties
/// of the absolute maximum, exact grid values (rounding ties), subnormals, huge and tiny scales.
fn special_row(rng: &mut Rng, n: usize) -> Vec<f32> {
    const SPECIALS: [f32; 19] = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        f32::MAX,
        -f32::MAX,
        1e30,
        -1e30,
        65504.0,
        1e-8,
        0.5,
        -0.5,
        1.0,
        -1.0,
    ];
    let mut x = vec![0f32; n];
    for (bi, b) in x.chunks_mut(32).enumerate() {
        let kind = rng.next_u64() % 13;
        let sigma = 10f32.powf(rng.uniform() * 60.0 - 45.0);
        for (j, v) in b.iter_mut().enumerate() {
            let g = rng.gauss();
            let pick = rng.next_u64();
            *v = match kind {
                0 => g * sigma,
                1 if pick.is_multiple_of(16) => SPECIALS[(pick >> 8) as usize % SPECIALS.len()],
                1 => g * sigma,
                // ±m ties for the maximum magnitude, in random order
                2 if pick.is_multiple_of(4) => {
                    let m = ((pick >> 8) % 8) as f32 * 0.25;
                    if (pick >> 16).is_multiple_of(2) {
                        m
                    } else {
                        -m
                    }
                }
                2 => g * 0.1,
                3 => ((pick % 33) as f32 - 16.0) * 0.125,
                4 if (j / 8) % 2 == 0 => 0.0,
                4 => g * sigma,
                5 => g * 1e-39,
                6 if pick.is_multiple_of(2) => -0.0,
                6 => 0.0,
                7 => (g * 4.0).round() * 0.5 + 0.25,
                8 => g * 1e35,
                9 if j == 7 => f32::NAN,
                9 => g,
                10 => g.abs() * sigma + bi as f32,
                11 if j == 31 => -f32::INFINITY,
                11 => g,
                _ => {
                    let m = (pick % 16) as f32;
                    if (pick >> 8).is_multiple_of(2) {
                        m
                    } else {
                        -m
                    }
                }
            };
        }
    }
    x
}

/// The dispatching quantizers (SSE2 intrinsics, AVX2 builds) give the same bytes as the
/// portable baseline bodies, on random and on special rows, with and without an imatrix.
#[test]
fn quantize_rows_match_baseline() {
    let mut rng = Rng(0x5eed);
    let mut checked = 0;
    for &ty in BLOCK_TYPES {
        let Some(base) = baseline_row(ty) else {
            continue;
        };
        checked += 1;
        // 35 blocks for the 32-element types: batches of four blocks plus a remainder.
        let n_per_row = if ty.block_size() == 32 { 1120 } else { 1024 };
        for round in 0..48 {
            let x = if round % 2 == 0 {
                random_row(&mut rng, n_per_row)
            } else {
                special_row(&mut rng, n_per_row)
            };
            let imatrix: Vec<f32> = (0..n_per_row).map(|_| 0.1 + rng.uniform() * 4.0).collect();
            for im in [None, Some(imatrix.as_slice())] {
                let fast = quantize_vec(ty, &x, n_per_row, im);
                let mut slow = vec![0u8; fast.len()];
                base(&x, im, &mut slow);
                assert!(fast == slow, "{ty} round {round} imatrix {}", im.is_some());
            }
        }
    }
    assert!(checked >= 4);
}

/// Single-thread throughput on 64 MB of gaussian f32 (run with
/// `cargo test --release -p cargo-edgeai --lib quants::tests::throughput -- --ignored --nocapture`).
#[test]
#[ignore = "measurement, not a check; run in release"]
fn throughput() {
    let n_per_row = 4096;
    let n = 16 << 20;
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..n).map(|_| rng.gauss() * 0.02).collect();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q5_K,
        GgmlType::Q3_K,
        GgmlType::Q4_1,
    ] {
        // EDGEAI_BENCH_TYPES=Q4_0,Q6_K restricts the run to those types.
        if let Ok(only) = std::env::var("EDGEAI_BENCH_TYPES") {
            if !only.split(',').any(|t| t == ty.name()) {
                continue;
            }
        }
        let mut q = vec![0u8; ty.bytes_for(n as u64).expect("whole blocks") as usize];
        // Warm-up pass (faults in the output pages), then the best of 5 timed passes, which
        // is robust against other load on the machine.
        quantize_rows(ty, &x, n_per_row, None, &mut q).expect("quantize");
        let mut s = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            quantize_rows(ty, &x, n_per_row, None, &mut q).expect("quantize");
            s = s.min(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "{ty:6} {:8.1} MB/s of f32 input ({:.3} s)",
            (n * 4) as f64 / s / 1e6,
            s
        );
    }
}
