//! Quantizer comparison harness: llama.cpp's `llama-quantize` vs `cargo edgeai quantize`.
//!
//! ```text
//! cargo bench -p cargo-edgeai --bench quantize -- --input F16.gguf --types Q4_K_M,Q6_K,Q8_0,Q4_0 --threads 2
//! ```
//!
//! For each type both tools quantize the same input, `--runs` times each (default 3, interleaved:
//! ref, ours, ref, ours, ...), and the table reports the best wall time of each, MB/s of input
//! (MB = 10^6 bytes), peak RSS (the largest over the runs) and whether the two outputs have the same
//! sha256. Ratios come from the same invocation of this harness.
//!
//! Binaries:
//! * llama-quantize: `--llama-quantize PATH`, else `$LLAMA_CPP_BIN/llama-quantize`, else `PATH`, else
//!   the cache of `scripts/build-llama-cpp.sh`
//!   (`${XDG_CACHE_HOME:-~/.cache}/cargo-edgeai-ci/llama.cpp-*/bin/llama-quantize`).
//! * ours: `--ours PATH`, else `$CARGO_EDGEAI_BIN`, else the `cargo-edgeai` that cargo built for this
//!   bench (target/release/cargo-edgeai). Run as `cargo-edgeai edgeai quantize IN OUT --type T --threads N`.
//!   When that subcommand does not exist (yet), the table says so instead of failing.
//!
//! Peak RSS comes from GNU `/usr/bin/time -f %M` when present, else from polling `VmHWM` in
//! `/proc/<pid>/status` (marked with `~`: it may miss growth in the last milliseconds and sees only
//! the direct child, not processes it spawns).
//!
//! Other options: `--runs N`, `--keep DIR` (keep the outputs there instead of a temp dir),
//! `--allow-requantize` (passed to llama-quantize, for quantized inputs). With no `--input` (e.g. a
//! plain `cargo bench` of the workspace) it prints how to run it and measures nothing.

use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const USAGE: &str = "usage: cargo bench -p cargo-edgeai --bench quantize -- --input F16.gguf \
[--types Q4_K_M,Q6_K,Q8_0,Q4_0] [--threads 2] [--runs 3] [--keep DIR] [--allow-requantize] \
[--llama-quantize PATH] [--ours PATH]";

struct Options {
    input: PathBuf,
    types: Vec<String>,
    threads: usize,
    runs: usize,
    keep: Option<PathBuf>,
    allow_requantize: bool,
    llama_quantize: Option<PathBuf>,
    ours: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut input = env::var_os("EDGEAI_QUANT_BENCH_INPUT").map(PathBuf::from);
    let mut types = "Q4_K_M,Q6_K,Q8_0,Q4_0".to_string();
    let mut threads = 2usize;
    let mut runs = 3usize;
    let mut keep = None;
    let mut allow_requantize = false;
    let mut llama_quantize = None;
    let mut ours = None;
    let mut args = env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| -> Result<OsString, String> {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            // cargo bench / cargo test pass these to harness = false targets
            "--bench" | "--test" | "--nocapture" => {}
            "--input" => input = Some(PathBuf::from(value("--input")?)),
            "--types" => types = value("--types")?.to_string_lossy().into_owned(),
            "--threads" => threads = parse_num("--threads", &value("--threads")?)?,
            "--runs" => runs = parse_num("--runs", &value("--runs")?)?,
            "--keep" => keep = Some(PathBuf::from(value("--keep")?)),
            "--allow-requantize" => allow_requantize = true,
            "--llama-quantize" => llama_quantize = Some(PathBuf::from(value("--llama-quantize")?)),
            "--ours" => ours = Some(PathBuf::from(value("--ours")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let Some(input) = input else {
        eprintln!(
            "quantize bench: no --input given (nor EDGEAI_QUANT_BENCH_INPUT): nothing measured.\n{USAGE}"
        );
        return Ok(None);
    };
    let types: Vec<String> = types
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty() {
        return Err("--types is empty".into());
    }
    if threads == 0 || runs == 0 {
        return Err("--threads and --runs must be at least 1".into());
    }
    Ok(Some(Options {
        input,
        types,
        threads,
        runs,
        keep,
        allow_requantize,
        llama_quantize,
        ours,
    }))
}

fn parse_num(name: &str, v: &OsString) -> Result<usize, String> {
    v.to_string_lossy()
        .parse()
        .map_err(|_| format!("{name}: not a number: {v:?}"))
}

// ---- locating the binaries ------------------------------------------------------------------------

fn find_llama_quantize(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--llama-quantize {}: not a file", p.display()))
        };
    }
    if let Some(dir) = env::var_os("LLAMA_CPP_BIN") {
        let p = Path::new(&dir).join("llama-quantize");
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "LLAMA_CPP_BIN is set but {} does not exist",
                p.display()
            ))
        };
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("llama-quantize");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("cargo-edgeai-ci"));
    if let Some(cache) = cache {
        if let Ok(entries) = fs::read_dir(&cache) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("llama.cpp-"))
                .map(|e| e.path().join("bin/llama-quantize"))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Ok(p);
            }
        }
    }
    Err("llama-quantize not found: set LLAMA_CPP_BIN, put it on PATH, or run scripts/build-llama-cpp.sh".into())
}

fn find_ours(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| env::var_os("CARGO_EDGEAI_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cargo-edgeai")))
}

/// `Err(reason)` when `cargo-edgeai edgeai quantize` cannot run (binary or subcommand missing).
fn check_ours(ours: &Path) -> Result<(), String> {
    if !ours.is_file() {
        return Err(format!("{} does not exist", ours.display()));
    }
    let out = Command::new(ours)
        .args(["edgeai", "quantize", "--help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ours.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        Err(format!(
            "`{} edgeai quantize` is not available: {first}",
            ours.display()
        ))
    }
}

// ---- running and measuring ------------------------------------------------------------------------

struct Measured {
    seconds: f64,
    /// peak resident set in KiB, and whether it is exact (GNU time) or polled
    peak_rss_kib: Option<(u64, bool)>,
}

fn gnu_time() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/time");
    let ok = Command::new(&p)
        .args(["-f", "%M", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(p)
}

fn run_measured(
    program: &Path,
    args: &[OsString],
    time_bin: Option<&Path>,
    scratch: &Path,
) -> Result<Measured, String> {
    let rss_file = scratch.join("peak-rss.txt");
    let _ = fs::remove_file(&rss_file);
    let mut cmd = match time_bin {
        Some(t) => {
            let mut c = Command::new(t);
            c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let describe = || {
        let mut s = program.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", describe()))?;
    // drain the pipes in threads so a chatty tool cannot block on a full pipe
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let mut polled_hwm = 0u64;
    let status = loop {
        if time_bin.is_none() {
            if let Some(h) = read_vm_hwm_kib(child.id()) {
                polled_hwm = polled_hwm.max(h);
            }
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for {}: {e}", describe())),
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    if !status.success() {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        return Err(format!(
            "{} failed ({status})\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            describe(),
            tail(&stdout),
            tail(&stderr)
        ));
    }
    let peak_rss_kib = match time_bin {
        Some(_) => fs::read_to_string(&rss_file)
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
            .map(|k| (k, true)),
        None => (polled_hwm > 0).then_some((polled_hwm, false)),
    };
    Ok(Measured {
        seconds,
        peak_rss_kib,
    })
}

fn read_vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok(hex)
}

/// Offset of the first differing byte (None when identical), comparing the common prefix.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if n == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

// ---- per-type comparison --------------------------------------------------------------------------

struct Side {
    best_s: f64,
    peak_kib: Option<(u64, bool)>,
}

enum Outcome {
    Ok(Side),
    Failed(String),
    Missing(String),
}

struct Row {
    ty: String,
    reference: Outcome,
    ours: Outcome,
    identical: String,
}

fn record(side: &mut Option<Side>, m: Measured) {
    let s = side.get_or_insert(Side {
        best_s: f64::INFINITY,
        peak_kib: None,
    });
    s.best_s = s.best_s.min(m.seconds);
    s.peak_kib = match (s.peak_kib, m.peak_rss_kib) {
        (Some((a, ea)), Some((b, eb))) => Some((a.max(b), ea && eb)),
        (a, b) => a.or(b),
    };
}

fn bench_type(
    opts: &Options,
    ty: &str,
    llama_quantize: &Path,
    ours: &Path,
    ours_ok: &Result<(), String>,
    time_bin: Option<&Path>,
    out_dir: &Path,
) -> Row {
    let ref_out = out_dir.join(format!("ref-{ty}.gguf"));
    let ours_out = out_dir.join(format!("ours-{ty}.gguf"));
    let mut ref_args: Vec<OsString> = Vec::new();
    if opts.allow_requantize {
        ref_args.push("--allow-requantize".into());
    }
    ref_args.extend([
        opts.input.clone().into_os_string(),
        ref_out.clone().into_os_string(),
        ty.into(),
        opts.threads.to_string().into(),
    ]);
    let ours_args: Vec<OsString> = vec![
        "edgeai".into(),
        "quantize".into(),
        opts.input.clone().into_os_string(),
        ours_out.clone().into_os_string(),
        "--type".into(),
        ty.into(),
        "--threads".into(),
        opts.threads.to_string().into(),
    ];

    let (mut ref_side, mut ours_side) = (None, None);
    let (mut ref_err, mut ours_err) = (None, None);
    for run in 0..opts.runs {
        if ref_err.is_none() {
            let _ = fs::remove_file(&ref_out);
            match run_measured(llama_quantize, &ref_args, time_bin, out_dir) {
                Ok(m) => record(&mut ref_side, m),
                Err(e) => ref_err = Some(e),
            }
        }
        if ours_ok.is_ok() && ours_err.is_none() {
            let _ = fs::remove_file(&ours_out);
            match run_measured(ours, &ours_args, time_bin, out_dir) {
                Ok(m) => record(&mut ours_side, m),
                Err(e) => ours_err = Some(e),
            }
        }
        eprintln!("quantize bench: {ty}: run {}/{} done", run + 1, opts.runs);
    }

    let reference = match (ref_err, ref_side) {
        (Some(e), _) => Outcome::Failed(e),
        (None, Some(s)) => Outcome::Ok(s),
        (None, None) => Outcome::Failed("no run".into()),
    };
    let ours_outcome = match (ours_ok, ours_err, ours_side) {
        (Err(why), _, _) => Outcome::Missing(why.clone()),
        (Ok(()), Some(e), _) => Outcome::Failed(e),
        (Ok(()), None, Some(s)) => Outcome::Ok(s),
        (Ok(()), None, None) => Outcome::Failed("no run".into()),
    };
    let identical = match (&reference, &ours_outcome) {
        (Outcome::Ok(_), Outcome::Ok(_)) => compare_outputs(&ref_out, &ours_out),
        _ => "n/a".into(),
    };
    Row {
        ty: ty.to_string(),
        reference,
        ours: ours_outcome,
        identical,
    }
}

fn compare_outputs(a: &Path, b: &Path) -> String {
    match (sha256_file(a), sha256_file(b)) {
        (Ok(ha), Ok(hb)) if ha == hb => format!("yes (sha256 {})", &ha[..16]),
        (Ok(_), Ok(_)) => {
            let sizes = (
                fs::metadata(a).map_or(0, |m| m.len()),
                fs::metadata(b).map_or(0, |m| m.len()),
            );
            match first_difference(a, b) {
                Ok(Some(off)) => format!(
                    "NO (sizes {} / {} bytes, first difference at byte {off})",
                    sizes.0, sizes.1
                ),
                _ => format!("NO (sizes {} / {} bytes)", sizes.0, sizes.1),
            }
        }
        (Err(e), _) | (_, Err(e)) => format!("n/a (cannot read output: {e})"),
    }
}

// ---- report ---------------------------------------------------------------------------------------

fn print_table(rows: &[Row], input_bytes: u64) {
    let mb = input_bytes as f64 / 1e6;
    let secs = |o: &Outcome| match o {
        Outcome::Ok(s) => format!("{:.3}", s.best_s),
        Outcome::Failed(_) => "failed".into(),
        Outcome::Missing(_) => "missing".into(),
    };
    let mbps = |o: &Outcome| match o {
        Outcome::Ok(s) => format!("{:.0}", mb / s.best_s),
        _ => "-".into(),
    };
    let rss = |o: &Outcome| match o {
        Outcome::Ok(Side {
            peak_kib: Some((k, exact)),
            ..
        }) => format!("{}{:.0}", if *exact { "" } else { "~" }, *k as f64 / 1024.0),
        _ => "-".into(),
    };
    println!();
    println!(
        "| type | llama-quantize s | ours s | speed ratio | MB/s ref | MB/s ours | peak RSS ref MB | peak RSS ours MB | identical |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let ratio = match (&r.reference, &r.ours) {
            (Outcome::Ok(a), Outcome::Ok(b)) => format!("{:.2}", a.best_s / b.best_s),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.ty,
            secs(&r.reference),
            secs(&r.ours),
            ratio,
            mbps(&r.reference),
            mbps(&r.ours),
            rss(&r.reference),
            rss(&r.ours),
            r.identical
        );
    }
    println!();
    println!(
        "speed ratio = llama-quantize s / ours s (> 1: ours is faster). Times: best wall time of the runs; \
         MB/s: input MB (10^6 bytes, {mb:.1} MB) per second; peak RSS: largest over the runs (MiB; ~ = polled)."
    );
    for r in rows {
        for (who, o) in [("llama-quantize", &r.reference), ("ours", &r.ours)] {
            match o {
                Outcome::Failed(e) => println!("\n{} {who} failed:\n{e}", r.ty),
                Outcome::Missing(e) => println!("\n{} ours missing: {e}", r.ty),
                Outcome::Ok(_) => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantize bench: {e}");
            return ExitCode::from(2);
        }
    };
    let input_bytes = match fs::metadata(&opts.input) {
        Ok(m) if m.is_file() => m.len(),
        _ => {
            eprintln!(
                "quantize bench: --input {}: not a file",
                opts.input.display()
            );
            return ExitCode::from(2);
        }
    };
    let llama_quantize = match find_llama_quantize(opts.llama_quantize.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("quantize bench: {e}");
            return ExitCode::from(2);
        }
    };
    let ours = find_ours(opts.ours.as_deref());
    let ours_ok = check_ours(&ours);
    if let Err(why) = &ours_ok {
        eprintln!("quantize bench: ours is MISSING, measuring llama-quantize only: {why}");
    }
    let time_bin = gnu_time();
    if time_bin.is_none() {
        eprintln!("quantize bench: /usr/bin/time (GNU) not found: peak RSS is polled from /proc (approximate)");
    }

    let tmp;
    let out_dir: PathBuf = match &opts.keep {
        Some(d) => {
            if let Err(e) = fs::create_dir_all(d) {
                eprintln!("quantize bench: --keep {}: {e}", d.display());
                return ExitCode::from(2);
            }
            d.clone()
        }
        None => {
            tmp = match tempfile::Builder::new()
                .prefix("edgeai-quant-bench-")
                .tempdir()
            {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("quantize bench: cannot create a temp dir: {e}");
                    return ExitCode::from(2);
                }
            };
            tmp.path().to_path_buf()
        }
    };

    eprintln!(
        "quantize bench: input {} ({:.1} MB), threads {}, best of {} runs\n  llama-quantize: {}\n  ours: {}",
        opts.input.display(),
        input_bytes as f64 / 1e6,
        opts.threads,
        opts.runs,
        llama_quantize.display(),
        ours.display()
    );
    let rows: Vec<Row> = opts
        .types
        .iter()
        .map(|ty| {
            bench_type(
                &opts,
                ty,
                &llama_quantize,
                &ours,
                &ours_ok,
                time_bin.as_deref(),
                &out_dir,
            )
        })
        .collect();
    print_table(&rows, input_bytes);
    let failed = rows
        .iter()
        .any(|r| matches!(r.reference, Outcome::Failed(_)) || matches!(r.ours, Outcome::Failed(_)));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
