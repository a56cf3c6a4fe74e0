//! llama.cpp's tools as subprocesses: `llama-perplexity` for perplexity and KL divergence,
//! `llama-bench` for prompt-processing and decode speed.
//!
//! We parse the statistics the tools print rather than recomputing them, so our figures are
//! llama.cpp's by construction (the acceptance compares against a direct run of the same tool).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use crate::{Error, Result};

/// Where the llama.cpp tools are: `$LLAMA_CPP_BIN`, else the newest
/// `${XDG_CACHE_HOME:-$HOME/.cache}/cargo-edgeai-ci/llama.cpp-*/bin` (scripts/build-llama-cpp.sh).
pub fn find_bin_dir() -> Result<PathBuf> {
    let missing_help = "run scripts/build-llama-cpp.sh (it builds llama-perplexity and llama-bench into ~/.cache/cargo-edgeai-ci/llama.cpp-*/bin), or set LLAMA_CPP_BIN to the directory holding them";
    if let Some(dir) = std::env::var_os("LLAMA_CPP_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("llama-perplexity").is_file() {
            return Ok(dir);
        }
        return Err(Error::Usage {
            message: format!("LLAMA_CPP_BIN={} has no llama-perplexity", dir.display()),
            help: missing_help.into(),
        });
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("cargo-edgeai-ci");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("llama-perplexity").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| Error::Usage {
        message: format!(
            "llama-perplexity not found (LLAMA_CPP_BIN is unset and {}/llama.cpp-*/bin has none)",
            cache.display()
        ),
        help: missing_help.into(),
    })
}

/// The tools' version line (`0.5.0-dev (build 1, commit 0c1e570)`); part of the cache key,
/// because another llama.cpp may compute other logits.
pub fn tool_version(bin_dir: &Path) -> Result<String> {
    let exe = bin_dir.join("llama-perplexity");
    let out = Command::new(&exe)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .find_map(|l| l.trim().strip_prefix("version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into()))
}

/// How to run llama-perplexity.
#[derive(Debug, Clone)]
pub struct PerplexityRun<'a> {
    pub bin_dir: &'a Path,
    pub model: &'a Path,
    pub text: &'a Path,
    pub ctx: u64,
    /// Evaluate only the first N chunks (`--chunks`); `None`: the whole text.
    pub chunks: Option<u32>,
    pub threads: usize,
    /// The reference logits file (`--kl-divergence-base`).
    pub logits: &'a Path,
    /// false: write `logits` from `model` (the reference run); true: read it and compare.
    pub compare: bool,
}

/// What one llama-perplexity run printed, plus its peak memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerplexityStats {
    /// Chunks evaluated.
    pub chunks: u64,
    pub ppl: f64,
    pub ppl_error: f64,
    /// Only in a compare run.
    pub ppl_base: Option<f64>,
    pub kld_mean: Option<f64>,
    pub kld_mean_error: Option<f64>,
    pub kld_median: Option<f64>,
    pub kld_p99: Option<f64>,
    pub kld_max: Option<f64>,
    /// Fraction (0..=1) of tokens whose top token is the reference's ("Same top p").
    pub top1: Option<f64>,
    pub top1_error: Option<f64>,
    /// Peak resident set of the child (bytes), from `/usr/bin/time -f %M`.
    pub peak_rss_bytes: Option<u64>,
}

/// Run llama-perplexity and parse what it prints.
pub fn perplexity(run: &PerplexityRun<'_>) -> Result<PerplexityStats> {
    let exe = run.bin_dir.join("llama-perplexity");
    let mut args: Vec<std::ffi::OsString> = vec![
        "-m".into(),
        run.model.into(),
        "-f".into(),
        run.text.into(),
        "-c".into(),
        run.ctx.to_string().into(),
        "-t".into(),
        run.threads.to_string().into(),
        "--kl-divergence-base".into(),
        run.logits.into(),
    ];
    if let Some(n) = run.chunks {
        args.push("--chunks".into());
        args.push(n.to_string().into());
    }
    if run.compare {
        args.push("--kl-divergence".into());
    }
    // llama.cpp's logger writes from a worker thread that is never joined at exit, so on a
    // loaded machine the last lines (the statistics) are sometimes lost. The run is
    // deterministic: running it again is safe, and a few tries make the loss vanishingly rare.
    const TRIES: u32 = 3;
    let mut attempt = 0;
    let (mut stats, peak) = loop {
        attempt += 1;
        let (output, peak) = run_measured(&exe, &args)?;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(line) = text.lines().find(|l| l.contains("you need at least")) {
            return Err(Error::Usage {
                message: format!(
                    "{}: the evaluation text is shorter than two contexts of {} tokens ({})",
                    run.text.display(),
                    run.ctx,
                    line.split_once("perplexity:")
                        .map_or(line, |(_, r)| r)
                        .trim()
                ),
                help: "pass a longer --text, or a smaller --ctx".into(),
            });
        }
        if !output.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            return Err(Error::InvalidModel {
                path: run.model.to_path_buf(),
                message: format!(
                    "llama-perplexity failed ({}): {}",
                    output.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
                help: "check that the file is a GGUF llama.cpp can load (cargo edgeai inspect FILE) and that the reference logits match it".into(),
            });
        }
        // In a comparison "Same top p" is the last statistic printed: without it the tail of
        // the output was lost.
        let complete =
            |s: &PerplexityStats| !run.compare || (s.kld_mean.is_some() && s.top1.is_some());
        match parse_perplexity_output(&text, run.compare) {
            Some(stats) if complete(&stats) || attempt >= TRIES => break (stats, peak),
            Some(_) => continue,
            None if attempt < TRIES => continue,
            None => {
                return Err(Error::Internal(format!(
                "could not find the statistics in llama-perplexity's output for {} ({TRIES} runs)",
                run.model.display()
            )))
            }
        }
    };
    stats.peak_rss_bytes = peak;
    Ok(stats)
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    // The patterns are literals of this file; a bad one is caught by the unit tests.
    cell.get_or_init(|| Regex::new(pattern).expect("valid regex"))
}

const NUM: &str = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|nan|inf)";

/// Parse llama-perplexity's printed statistics. `compare`: the `--kl-divergence` report.
pub fn parse_perplexity_output(text: &str, compare: bool) -> Option<PerplexityStats> {
    static CHUNKS: OnceLock<Regex> = OnceLock::new();
    static FINAL: OnceLock<Regex> = OnceLock::new();
    static PPL_Q: OnceLock<Regex> = OnceLock::new();
    static PPL_B: OnceLock<Regex> = OnceLock::new();
    static KLD_MEAN: OnceLock<Regex> = OnceLock::new();
    static KLD_MAX: OnceLock<Regex> = OnceLock::new();
    static KLD_P99: OnceLock<Regex> = OnceLock::new();
    static KLD_MED: OnceLock<Regex> = OnceLock::new();
    static TOP1: OnceLock<Regex> = OnceLock::new();
    let cap = |cell: &'static OnceLock<Regex>, pat: String, i: usize| -> Option<f64> {
        re(cell, &pat)
            .captures(text)
            .and_then(|c| c.get(i))
            .and_then(|m| m.as_str().parse().ok())
    };
    let chunks = cap(
        &CHUNKS,
        r"(?:calculating perplexity|computing) over ([0-9]+) chunks".into(),
        1,
    )? as u64;
    if !compare {
        let pat = format!(r"Final estimate: PPL = {NUM} \+/- {NUM}");
        return Some(PerplexityStats {
            chunks,
            ppl: cap(&FINAL, pat.clone(), 1)?,
            ppl_error: cap(&FINAL, pat, 2)?,
            ..PerplexityStats::default()
        });
    }
    let pq = format!(r"Mean PPL\(Q\)\s*:\s*{NUM}\s*±\s*{NUM}");
    let kmean = format!(r"Mean\s+KLD:\s*{NUM}\s*±\s*{NUM}");
    let top = format!(r"Same top p:\s*{NUM}\s*±\s*{NUM}\s*%");
    Some(PerplexityStats {
        chunks,
        ppl: cap(&PPL_Q, pq.clone(), 1)?,
        ppl_error: cap(&PPL_Q, pq, 2)?,
        ppl_base: cap(&PPL_B, format!(r"Mean PPL\(base\)\s*:\s*{NUM}"), 1),
        kld_mean: cap(&KLD_MEAN, kmean.clone(), 1),
        kld_mean_error: cap(&KLD_MEAN, kmean, 2),
        kld_median: cap(&KLD_MED, format!(r"Median\s+KLD:\s*{NUM}"), 1),
        kld_p99: cap(&KLD_P99, format!(r"99\.0%\s+KLD:\s*{NUM}"), 1),
        kld_max: cap(&KLD_MAX, format!(r"Maximum KLD:\s*{NUM}"), 1),
        // llama.cpp prints a percentage; gates and JSON use a fraction.
        top1: cap(&TOP1, top.clone(), 1).map(|p| p / 100.0),
        top1_error: cap(&TOP1, top, 2).map(|p| p / 100.0),
        peak_rss_bytes: None,
    })
}

/// Run `exe args`, under `/usr/bin/time -f %M` when it exists so that the child's peak
/// resident set (getrusage's ru_maxrss, what `time -v` prints) comes back with the output.
fn run_measured(
    exe: &Path,
    args: &[std::ffi::OsString],
) -> Result<(std::process::Output, Option<u64>)> {
    let time = Path::new("/usr/bin/time");
    if !time.is_file() {
        let out = Command::new(exe)
            .args(args)
            .output()
            .map_err(|e| Error::io(exe, e))?;
        return Ok((out, None));
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let rss_file = dir.path().join("maxrss");
    let out = Command::new(time)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(exe)
        .args(args)
        .output()
        .map_err(|e| Error::io(exe, e))?;
    let peak = std::fs::read_to_string(&rss_file).ok().and_then(|s| {
        // `time` may prepend "Command exited with non-zero status N"; the figure is last.
        s.lines()
            .rev()
            .find_map(|l| l.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    Ok((out, peak))
}

/// llama-bench settings.
#[derive(Debug, Clone)]
pub struct BenchRun<'a> {
    pub bin_dir: &'a Path,
    pub model: &'a Path,
    /// Prompt tokens (`-p`).
    pub prompt_tokens: u32,
    /// Generated tokens (`-n`).
    pub gen_tokens: u32,
    /// Repetitions (`-r`).
    pub repetitions: u32,
    pub threads: usize,
}

/// Speeds from llama-bench.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchStats {
    pub prompt_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub prompt_tokens: u32,
    pub gen_tokens: u32,
    pub repetitions: u32,
}

/// Run llama-bench (`-o json`) and read the prompt-processing and decode rates.
pub fn bench(run: &BenchRun<'_>) -> Result<BenchStats> {
    let exe = run.bin_dir.join("llama-bench");
    let out = Command::new(&exe)
        .arg("-m")
        .arg(run.model)
        .args(["-p", &run.prompt_tokens.to_string()])
        .args(["-n", &run.gen_tokens.to_string()])
        .args(["-r", &run.repetitions.to_string()])
        .args(["-t", &run.threads.to_string()])
        .args(["-o", "json"])
        .output()
        .map_err(|e| Error::io(&exe, e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(Error::InvalidModel {
            path: run.model.to_path_buf(),
            message: format!(
                "llama-bench failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ),
            help: "check that llama.cpp can load the file (cargo edgeai inspect FILE)".into(),
        });
    }
    parse_bench_json(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Internal("llama-bench's JSON has no prompt and decode results".into())
    })
}

/// Read llama-bench's `-o json` array: the `n_gen == 0` test is prompt processing, the
/// `n_prompt == 0` one decode.
pub fn parse_bench_json(text: &str) -> Option<BenchStats> {
    let tests: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    let get = |t: &serde_json::Value, k: &str| t.get(k).and_then(serde_json::Value::as_f64);
    let mut pp = None;
    let mut tg = None;
    for t in &tests {
        let (p, n) = (get(t, "n_prompt")?, get(t, "n_gen")?);
        if n == 0.0 && p > 0.0 {
            pp = Some((get(t, "avg_ts")?, p as u32));
        } else if p == 0.0 && n > 0.0 {
            tg = Some((get(t, "avg_ts")?, n as u32));
        }
    }
    let (pp, p) = pp?;
    let (tg, n) = tg?;
    let repetitions = tests
        .first()
        .and_then(|t| t.get("samples_ts"))
        .and_then(serde_json::Value::as_array)
        .map_or(0, |a| a.len() as u32);
    Some(BenchStats {
        prompt_tokens_per_s: pp,
        decode_tokens_per_s: tg,
        prompt_tokens: p,
        gen_tokens: n,
        repetitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KLD_OUT: &str =
        "0.05.206.573 I kl_divergence: computing over 8 chunks, n_ctx=256, batch_size=2048, n_seq=8
====== Perplexity statistics ======
Mean PPL(Q)                   :  23.176026 ±   2.089951
Mean PPL(base)                :  22.142387 ±   1.948755
====== KL divergence statistics ======
Mean    KLD:   0.068763 ±   0.002503
Maximum KLD:   1.038477
99.9%   KLD:   0.679075
99.0%   KLD:   0.411249
Median  KLD:   0.045946
Minimum KLD:   0.000120
Median  Δp: -0.001%
Same top p: 85.728 ± 1.098 %
";

    #[test]
    fn parses_kl_divergence_statistics() {
        let s = parse_perplexity_output(KLD_OUT, true).unwrap();
        assert_eq!(s.chunks, 8);
        assert_eq!(s.ppl, 23.176026);
        assert_eq!(s.ppl_base, Some(22.142387));
        assert_eq!(s.kld_mean, Some(0.068763));
        assert_eq!(s.kld_mean_error, Some(0.002503));
        assert_eq!(s.kld_p99, Some(0.411249));
        assert_eq!(s.kld_median, Some(0.045946));
        assert_eq!(s.kld_max, Some(1.038477));
        assert!((s.top1.unwrap() - 0.85728).abs() < 1e-12);
    }

    #[test]
    fn parses_the_reference_run() {
        let text = "I perplexity: calculating perplexity over 8 chunks, n_ctx=256\n[1]16.7373,\nI Final estimate: PPL = 22.1424 +/- 1.94875\n";
        let s = parse_perplexity_output(text, false).unwrap();
        assert_eq!((s.chunks, s.ppl, s.ppl_error), (8, 22.1424, 1.94875));
        assert!(parse_perplexity_output("garbage", false).is_none());
    }

    #[test]
    fn parses_bench_json() {
        let json = r#"[{"n_prompt":64,"n_gen":0,"avg_ts":52.0,"samples_ts":[52.0]},
                       {"n_prompt":0,"n_gen":16,"avg_ts":20.5,"samples_ts":[20.5]}]"#;
        let b = parse_bench_json(json).unwrap();
        assert_eq!((b.prompt_tokens_per_s, b.decode_tokens_per_s), (52.0, 20.5));
        assert_eq!((b.prompt_tokens, b.gen_tokens, b.repetitions), (64, 16, 1));
    }
}
