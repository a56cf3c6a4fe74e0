//! Reports of `validate` and `sweep`: a terminal table, JUnit XML (one testcase per gate) and
//! one self-contained HTML file with hand-written inline SVG plots (no scripts, no fetches, so
//! it opens from a CI artifact store as it is). JSON is `serde_json` of the report structs.

use std::fmt::Write as _;

use super::gates::{fmt_num, GateResult};
use super::sweep::SweepReport;
use super::ValidationReport;

const MIB: f64 = (1u64 << 20) as f64;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The terminal table of one validation.
pub fn render_human(r: &ValidationReport) -> String {
    let q = &r.quality;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "validate {} against {} on {} (-c {}, {} chunks, llama.cpp {})",
        r.candidate.path.display(),
        r.reference.path.display(),
        r.target,
        r.ctx,
        q.chunks,
        r.tool.version
    );
    let _ = writeln!(s, "\nquality (llama-perplexity)");
    let _ = writeln!(
        s,
        "  perplexity        {:.4} ± {:.4}   reference {:.4}   ratio {:.4}",
        q.ppl, q.ppl_error, q.ppl_reference, q.ppl_ratio
    );
    let _ = writeln!(
        s,
        "  KL divergence     mean {:.6} ± {:.6}   median {:.6}   p99 {:.6}   max {:.6}",
        q.kld_mean, q.kld_mean_error, q.kld_median, q.kld_p99, q.kld_max
    );
    let _ = writeln!(
        s,
        "  top-1 agreement   {:.3} % ± {:.3} %",
        q.top1_agreement * 100.0,
        q.top1_agreement_error * 100.0
    );
    let h = &r.host;
    let t = &r.target_side;
    let _ = writeln!(s, "\n{:<28}{:<26}{}", "", "host (measured)", t.label);
    let _ = writeln!(
        s,
        "{:<28}{:<26}-",
        "  prompt tokens/s",
        opt(h.prompt_tokens_per_s, 1)
    );
    let _ = writeln!(
        s,
        "{:<28}{:<26}{}",
        "  decode tokens/s",
        opt(h.decode_tokens_per_s, 1),
        opt(t.decode_tokens_per_s, 1)
    );
    let _ = writeln!(
        s,
        "{:<28}{:<26}-",
        "  time to first token ms",
        opt(h.time_to_first_token_ms, 1)
    );
    let _ = writeln!(
        s,
        "{:<28}{:<26}{} of {} budget (KV cache at {} tokens)",
        "  memory",
        h.peak_rss_bytes.map_or("-".into(), mib),
        mib(t.total_bytes),
        mib(t.budget_bytes),
        t.context_length
    );
    let _ = writeln!(s, "\ngates");
    for g in &r.gates {
        let _ = writeln!(
            s,
            "  {} {}",
            if g.passed { "pass" } else { "FAIL" },
            g.describe()
        );
    }
    let _ = writeln!(
        s,
        "\n{}",
        if r.passed {
            "all gates passed"
        } else {
            "GATES FAILED"
        }
    );
    s
}

/// The terminal table of a sweep: one row per type, and the recommendation.
pub fn render_sweep_human(r: &SweepReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sweep of {} on {} (reference {})",
        r.model.display(),
        r.target,
        r.reference.display()
    );
    let _ = writeln!(
        s,
        "\n{:<10}{:>12}{:>10}{:>10}{:>10}{:>12}{:>12}  gates",
        "type", "size", "PPL", "KLD", "top-1 %", "decode t/s", "target t/s"
    );
    for (ty, e) in r.types.iter().zip(&r.results) {
        let q = &e.quality;
        let _ = writeln!(
            s,
            "{:<10}{:>12}{:>10.4}{:>10.5}{:>10.2}{:>12}{:>12}  {}",
            ty,
            mib(e.candidate.size_bytes),
            q.ppl,
            q.kld_mean,
            q.top1_agreement * 100.0,
            opt(e.host.decode_tokens_per_s, 1),
            opt(e.target_side.decode_tokens_per_s, 1),
            if e.passed { "pass" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        s,
        "\n{}",
        match &r.recommended {
            Some(t) => format!("recommended: {t} ({})", r.reason),
            None => format!("no type passes: {}", r.reason),
        }
    );
    s
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// JUnit XML: one testsuite per validated model, one testcase per gate; a failed gate is a
/// `<failure>` whose message names the gate, the measured value and the threshold.
pub fn render_junit(reports: &[&ValidationReport]) -> String {
    let suites: Vec<JunitSuite<'_>> = reports
        .iter()
        .map(|r| JunitSuite {
            label: &r.candidate.label,
            target: &r.target,
            gates: &r.gates,
        })
        .collect();
    render_junit_suites(&suites)
}

/// One validated model as a JUnit testsuite: every validation path (llama.cpp, MLX, ONNX
/// Runtime) reports its gates through [`render_junit_suites`], so CI systems see one layout.
pub struct JunitSuite<'a> {
    /// The candidate's label (`model-Q4_K_M`), the testcases' class name.
    pub label: &'a str,
    /// The target the gates came from.
    pub target: &'a str,
    pub gates: &'a [GateResult],
}

/// JUnit XML of any validation: one testsuite per model, one testcase per gate.
pub fn render_junit_suites(suites: &[JunitSuite<'_>]) -> String {
    let failed = |gates: &[GateResult]| gates.iter().filter(|g| !g.passed).count();
    let tests: usize = suites.iter().map(|r| r.gates.len()).sum();
    let failures: usize = suites.iter().map(|r| failed(r.gates)).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"cargo-edgeai validate\" tests=\"{tests}\" failures=\"{failures}\">"
    );
    for r in suites {
        let suite = format!("{} on {}", r.label, r.target);
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">",
            xml_escape(&suite),
            r.gates.len(),
            failed(r.gates)
        );
        for g in r.gates {
            let _ = write!(
                s,
                "    <testcase classname=\"edgeai.gates.{}\" name=\"{}\"",
                xml_escape(r.label),
                xml_escape(&g.name)
            );
            if g.passed {
                let _ = writeln!(s, "/>");
            } else {
                let msg = xml_escape(&g.describe());
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{msg}\" type=\"GateFailed\">{msg}; basis: {}</failure>\n    </testcase>",
                    xml_escape(&g.basis)
                );
            }
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    s.push_str("</testsuites>\n");
    s
}

// ---- SVG -------------------------------------------------------------------------------------

const W: f64 = 560.0;
const H: f64 = 320.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 36.0;
const B: f64 = 50.0;

/// Axis range with a margin, never empty.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.1;
    (lo - pad, hi + pad)
}

fn svg_open(s: &mut String, title: &str, xlabel: &str, ylabel: &str) {
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\
<rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>\
<text x=\"{cx}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{t}</text>\
<line x1=\"{L}\" y1=\"{yb}\" x2=\"{xr}\" y2=\"{yb}\" stroke=\"#333\"/>\
<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{yb}\" stroke=\"#333\"/>\
<text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\" font-size=\"12\">{xlabel}</text>\
<text x=\"14\" y=\"{cy}\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 14 {cy})\">{ylabel}</text>",
        t = xml_escape(title),
        cx = (L + W - R) / 2.0,
        cy = (T + H - B) / 2.0,
        yb = H - B,
        xr = W - R,
        xl = H - 12.0,
        xlabel = xml_escape(xlabel),
        ylabel = xml_escape(ylabel),
    );
}

fn ticks(s: &mut String, (x0, x1): (f64, f64), (y0, y1): (f64, f64), x_axis: bool) {
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let yv = y0 + (y1 - y0) * f;
        let y = H - B - f * (H - B - T);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text><line x1=\"{L}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eee\"/>",
            L - 4.0,
            y + 3.0,
            short(yv),
            W - R
        );
        if x_axis {
            let xv = x0 + (x1 - x0) * f;
            let x = L + f * (W - L - R);
            let _ = write!(
                s,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                H - B + 14.0,
                short(xv)
            );
        }
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Scatter of (label, x, y) with the Pareto front (lower x and lower y better) drawn as a line.
pub fn svg_pareto(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    points: &[(String, f64, f64)],
) -> String {
    let mut s = String::new();
    svg_open(&mut s, title, xlabel, ylabel);
    let xr = range(points.iter().map(|p| p.1));
    let yr = range(points.iter().map(|p| p.2));
    ticks(&mut s, xr, yr, true);
    let px = |x: f64| L + (x - xr.0) / (xr.1 - xr.0) * (W - L - R);
    let py = |y: f64| H - B - (y - yr.0) / (yr.1 - yr.0) * (H - B - T);
    // The front: sorted by size, keep each point better than every smaller one.
    let mut sorted: Vec<&(String, f64, f64)> = points.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut front = Vec::new();
    let mut best = f64::INFINITY;
    for p in sorted {
        if p.2 < best {
            best = p.2;
            front.push(p);
        }
    }
    // The front runs from small-and-worse to large-and-better, so draw it largest first.
    front.reverse();
    if front.len() > 1 {
        let pts: Vec<String> = front
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.1), py(p.2)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"pareto\" points=\"{}\" fill=\"none\" stroke=\"#e67e22\" stroke-dasharray=\"4 3\"/>",
            pts.join(" ")
        );
    }
    for (label, x, y) in points {
        let _ = write!(
            s,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#2c7fb8\"><title>{}: {} / {}</title></circle><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            px(*x),
            py(*y),
            xml_escape(label),
            fmt_num(*x),
            fmt_num(*y),
            px(*x) + 7.0,
            py(*y) - 6.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Grouped bars: for each group (label), one bar per series; an optional horizontal line
/// (e.g. the memory budget).
pub fn svg_bars(
    title: &str,
    ylabel: &str,
    series: &[(&str, &str)],
    groups: &[(String, Vec<Option<f64>>)],
    line: Option<(&str, f64)>,
) -> String {
    let mut s = String::new();
    svg_open(&mut s, title, "", ylabel);
    let mut all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.1.iter().flatten().copied())
        .collect();
    all.push(0.0);
    if let Some((_, v)) = line {
        all.push(v);
    }
    let top = all.iter().copied().fold(0.0, f64::max) * 1.1;
    let top = if top > 0.0 { top } else { 1.0 };
    ticks(&mut s, (0.0, 1.0), (0.0, top), false);
    let py = |y: f64| H - B - y / top * (H - B - T);
    let gw = (W - L - R) / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (gi, (label, values)) in groups.iter().enumerate() {
        let gx = L + gi as f64 * gw + gw * 0.1;
        for (si, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let color = series.get(si).map_or("#999", |s| s.1);
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                gx + si as f64 * bw,
                py(*v),
                bw * 0.9,
                (H - B) - py(*v),
                xml_escape(series.get(si).map_or("", |s| s.0)),
                fmt_num(*v)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            gx + gw * 0.4,
            H - B + 14.0,
            xml_escape(label)
        );
    }
    if let Some((label, v)) = line {
        let _ = write!(
            s,
            "<line class=\"limit\" x1=\"{L}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#c0392b\" stroke-width=\"2\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\" fill=\"#c0392b\">{}</text>",
            W - R,
            W - R,
            py(v) - 4.0,
            xml_escape(label),
            y = py(v)
        );
    }
    // Legend.
    for (si, (name, color)) in series.iter().enumerate() {
        let x = L + 10.0 + si as f64 * 150.0;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
            H - 28.0,
            x + 14.0,
            H - 19.0,
            xml_escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// One self-contained HTML page for a set of validations (one for `validate`, one per type for
/// `sweep`): quality against size (Pareto), tokens/s, memory against budget, the gates.
pub fn render_html(title: &str, reports: &[&ValidationReport], summary: &str) -> String {
    let label = |r: &ValidationReport| {
        r.candidate
            .file_type
            .clone()
            .unwrap_or_else(|| r.candidate.label.clone())
    };
    let size = |r: &ValidationReport| r.candidate.size_bytes as f64 / MIB;
    let kld: Vec<(String, f64, f64)> = reports
        .iter()
        .map(|r| (label(r), size(r), r.quality.kld_mean))
        .collect();
    let ppl: Vec<(String, f64, f64)> = reports
        .iter()
        .map(|r| (label(r), size(r), r.quality.ppl))
        .collect();
    let speed: Vec<(String, Vec<Option<f64>>)> = reports
        .iter()
        .map(|r| {
            (
                label(r),
                vec![
                    r.host.prompt_tokens_per_s,
                    r.host.decode_tokens_per_s,
                    r.target_side.decode_tokens_per_s,
                ],
            )
        })
        .collect();
    let memory: Vec<(String, Vec<Option<f64>>)> = reports
        .iter()
        .map(|r| {
            (
                label(r),
                vec![
                    r.host.peak_rss_bytes.map(|b| b as f64 / MIB),
                    Some(r.target_side.total_bytes as f64 / MIB),
                ],
            )
        })
        .collect();
    let budget = reports
        .first()
        .map(|r| r.target_side.budget_bytes as f64 / MIB);
    let target = reports.first().map_or(String::new(), |r| r.target.clone());
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th{{background:#f4f4f4}}.fail{{color:#c0392b;font-weight:bold}}.pass{{color:#27ae60}}.plots svg{{margin:8px;border:1px solid #ddd}}</style></head><body>\
<h1>{t}</h1><p>{summary}</p>",
        t = xml_escape(title),
        summary = xml_escape(summary)
    );
    h.push_str("<div class=\"plots\">");
    h.push_str(&svg_pareto(
        "Mean KL divergence vs size (Pareto front dashed)",
        "file size (MiB)",
        "mean KLD (nats)",
        &kld,
    ));
    h.push_str(&svg_pareto(
        "Perplexity vs size (Pareto front dashed)",
        "file size (MiB)",
        "perplexity",
        &ppl,
    ));
    h.push_str(&svg_bars(
        "Tokens/s",
        "tokens/s",
        &[
            ("host prompt (measured)", "#2c7fb8"),
            ("host decode (measured)", "#7fcdbb"),
            ("target decode (estimated)", "#f39c12"),
        ],
        &speed,
        None,
    ));
    let budget_label = format!("{target} budget");
    h.push_str(&svg_bars(
        "Memory vs budget (MiB)",
        "MiB",
        &[
            ("host peak RSS (measured)", "#2c7fb8"),
            ("target footprint incl. KV cache (estimated)", "#f39c12"),
        ],
        &memory,
        budget.map(|b| (budget_label.as_str(), b)),
    ));
    h.push_str("</div>");
    h.push_str("<h2>Figures</h2><table><tr><th>type</th><th>size MiB</th><th>PPL</th><th>PPL ratio</th><th>KLD mean</th><th>KLD median</th><th>KLD p99</th><th>KLD max</th><th>top-1 %</th><th>host pp t/s</th><th>host decode t/s</th><th>host TTFT ms</th><th>host peak MiB</th><th>target decode t/s (est.)</th><th>target MiB (est.)</th><th>gates</th></tr>");
    for r in reports {
        let q = &r.quality;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.4}</td><td>{:.4}</td><td>{:.6}</td><td>{:.6}</td><td>{:.6}</td><td>{:.6}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td class=\"{}\">{}</td></tr>",
            xml_escape(&label(r)),
            size(r),
            q.ppl,
            q.ppl_ratio,
            q.kld_mean,
            q.kld_median,
            q.kld_p99,
            q.kld_max,
            q.top1_agreement * 100.0,
            opt(r.host.prompt_tokens_per_s, 1),
            opt(r.host.decode_tokens_per_s, 1),
            opt(r.host.time_to_first_token_ms, 1),
            opt(r.host.peak_rss_bytes.map(|b| b as f64 / MIB), 1),
            opt(r.target_side.decode_tokens_per_s, 1),
            r.target_side.total_bytes as f64 / MIB,
            if r.passed { "pass" } else { "fail" },
            if r.passed { "pass" } else { "FAIL" }
        );
    }
    h.push_str("</table><h2>Gates</h2><table><tr><th>type</th><th>gate</th><th>result</th></tr>");
    for r in reports {
        for g in &r.gates {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\" style=\"text-align:left\">{}</td></tr>",
                xml_escape(&label(r)),
                xml_escape(&g.name),
                if g.passed { "pass" } else { "fail" },
                xml_escape(&g.describe())
            );
        }
    }
    h.push_str("</table><p>Host figures are measured on this machine with llama.cpp; target figures are estimates from the target manifest (memory bandwidth and budget), not measurements on the device.</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_plot_has_points_and_front() {
        let pts = vec![
            ("Q4_0".to_string(), 90.0, 0.2),
            ("Q8_0".to_string(), 140.0, 0.01),
            ("Q5".to_string(), 120.0, 0.3),
        ];
        let svg = svg_pareto("t", "x", "y", &pts);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("class=\"pareto\""));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
