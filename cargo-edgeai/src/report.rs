//! Human renderings of what commands report. JSON renderings are the types' `Serialize`
//! implementations; both are snapshot-tested.

use std::fmt::Write as _;

use serde::Serialize;

use crate::facts::ModelFacts;
use crate::manifest::{Target, TargetSet};
use crate::plan::{human_bytes, human_count, Plan};

/// Output format of a reporting command (`--format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Pretty JSON with a trailing newline.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `cargo edgeai targets` as a table.
pub fn render_targets(targets: &TargetSet) -> String {
    let mut out = format!(
        "{:<26} {:<28} {:<44} {:>17} {:>9} {:>7}\n",
        "TARGET", "TRIPLE", "ACCELERATORS", "BUDGET/TOTAL MiB", "GB/s", "CONTEXT"
    );
    for t in targets.iter() {
        let _ = writeln!(
            out,
            "{:<26} {:<28} {:<44} {:>17} {:>9} {:>7}",
            t.name,
            t.triple,
            accelerators_summary(t),
            format!("{}/{}", t.memory.budget_mb, t.memory.total_mb),
            t.memory.bandwidth_gbps,
            t.defaults.context_length
        );
    }
    out
}

/// `cuda sm_87, cpu` style summary.
pub fn accelerators_summary(target: &Target) -> String {
    target
        .accelerators
        .iter()
        .map(|a| {
            let detail = if let Some(sm) = a.sm {
                format!(" sm_{sm}")
            } else if let Some(f) = &a.gpu_family {
                format!(" {f}")
            } else if let Some(v) = &a.api_version {
                format!(" {v}")
            } else if let Some(arch) = a.htp_arch {
                format!(" v{arch}")
            } else {
                String::new()
            };
            format!("{}{detail}", a.kind.as_str())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cargo edgeai plan` for people; `explain` adds rejected candidates and the tensor types.
pub fn render_plan(plan: &Plan, explain: bool) -> String {
    let e = &plan.estimate;
    let m = &plan.model;
    let mut out = String::new();
    let _ = writeln!(out, "target        {} ({})", plan.target, plan.triple);
    let _ = writeln!(
        out,
        "model         {} ({} {}, {} parameters, {})",
        m.path,
        m.architecture,
        m.class.as_str(),
        human_count(m.parameters),
        m.dtype
    );
    let _ = writeln!(
        out,
        "plan          {} {} as {}, kernels: {}{}",
        plan.framework,
        plan.quantization,
        plan.format,
        plan.kernel_backend,
        plan.execution_provider
            .as_ref()
            .map(|ep| format!(" ({ep})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "memory        {} = weights {} + KV cache {} ({} tokens) + overhead {}; budget {}: {}",
        human_bytes(e.total_bytes),
        human_bytes(e.weights_bytes),
        human_bytes(e.kv_cache_bytes),
        plan.context_length,
        human_bytes(e.overhead_bytes),
        human_bytes(e.budget_bytes),
        if e.fits { "fits" } else { "does not fit" }
    );
    match e.decode_tokens_per_s {
        Some(tps) => {
            let _ = writeln!(
                out,
                "decode        ~{tps} tokens/s (estimate from memory bandwidth)"
            );
        }
        None => {
            let _ = writeln!(out, "decode        n/a ({})", e.decode_basis);
        }
    }
    out.push_str("why\n");
    for r in &plan.reasons {
        let _ = writeln!(out, "  - {r}");
    }
    out.push_str("steps\n");
    for (i, s) in plan.steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. {:<10} {} — {}", i + 1, s.step, s.tool, s.detail);
    }
    if explain {
        out.push_str("tensor types\n");
        for (ty, count) in &e.tensor_types {
            let _ = writeln!(
                out,
                "  {:<8} {:>5} tensors {:>12}",
                ty,
                count.tensors,
                human_bytes(count.bytes)
            );
        }
        let _ = writeln!(out, "  {} bits per weight overall", e.bits_per_weight);
        if plan.rejected.is_empty() {
            out.push_str("rejected      none: the first candidate fit\n");
        } else {
            out.push_str("rejected\n");
            for r in &plan.rejected {
                let _ = writeln!(
                    out,
                    "  - {} {} ({}): {}",
                    r.framework, r.quantization, r.rule, r.reason
                );
            }
        }
        let _ = writeln!(out, "estimate      {}", e.decode_basis);
    }
    out
}

/// `cargo edgeai inspect` for people.
pub fn render_facts(facts: &ModelFacts, tensors: bool) -> String {
    let mut out = String::new();
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "path          {}", facts.path.display());
    let _ = writeln!(out, "format        {:?}", facts.format);
    let _ = writeln!(
        out,
        "architecture  {} ({})",
        facts.architecture,
        facts.class.as_str()
    );
    let _ = writeln!(
        out,
        "parameters    {} ({})",
        facts.parameters,
        human_count(facts.parameters)
    );
    let _ = writeln!(out, "dtype         {}", facts.dtype);
    let _ = writeln!(
        out,
        "shape         layers {}, hidden {}, heads {}, kv heads {}, head dim {}, vocab {}, max context {}",
        opt(facts.layers),
        opt(facts.hidden_size),
        opt(facts.heads),
        opt(facts.kv_heads),
        opt(facts.head_dim),
        opt(facts.vocab_size),
        opt(facts.max_context)
    );
    let _ = writeln!(
        out,
        "tensors       {} (tied embeddings: {})",
        facts.tensors.len(),
        facts.tied_embeddings
    );
    if tensors {
        for t in &facts.tensors {
            let _ = writeln!(out, "  {:<48} {:<6} {:?}", t.name, t.dtype, t.shape);
        }
    }
    out
}
