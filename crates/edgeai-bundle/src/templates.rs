//! README and launcher rendered with tera from templates/bundle/, embedded at compile time so
//! an installed binary carries them.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use tera::{Context, Tera};

use crate::{BundleSpec, Error, ManifestFile, LAUNCHER_NAME, MANIFEST_NAME, README_NAME};

const README_TEMPLATE: &str = include_str!("../../../templates/bundle/README.md.tera");
const LAUNCHER_TEMPLATE: &str = include_str!("../../../templates/bundle/run.sh.tera");

/// POSIX single-quoting: the value is one word, nothing in it is expanded.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shell_quote_filter(value: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(Value::String(shell_quote(&s)))
}

fn engine() -> Result<Tera, Error> {
    let mut tera = Tera::default();
    // Markdown and shell, not HTML: escaping would corrupt both.
    tera.autoescape_on(vec![]);
    tera.add_raw_templates(vec![
        (README_NAME, README_TEMPLATE),
        (LAUNCHER_NAME, LAUNCHER_TEMPLATE),
    ])
    .map_err(|e| Error::Template {
        name: "templates/bundle".into(),
        message: format!("{e:?}"),
    })?;
    tera.register_filter("shell_quote", shell_quote_filter);
    Ok(tera)
}

fn render(name: &str, ctx: &Context) -> Result<String, Error> {
    engine()?.render(name, ctx).map_err(|e| {
        // tera's Display hides the cause; the chain says which variable or filter failed.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Template {
            name: name.into(),
            message: msg,
        }
    })
}

#[derive(Serialize)]
struct Item {
    key: String,
    value: String,
}

/// One-line text for a markdown table cell.
fn cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// The top-level scalar fields of a JSON object, as key/value rows.
fn scalars(v: Option<&Value>, skip: &[&str]) -> Vec<Item> {
    let Some(Value::Object(map)) = v else {
        return Vec::new();
    };
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some(Item {
                key: cell(k),
                value: cell(&value),
            })
        })
        .collect()
}

fn base_context(spec: &BundleSpec) -> Context {
    let mut ctx = Context::new();
    ctx.insert("name", &spec.name);
    ctx.insert("version", &spec.version);
    ctx.insert("target", &spec.target);
    ctx.insert("tool_version", env!("CARGO_PKG_VERSION"));
    ctx.insert("manifest_name", MANIFEST_NAME);
    ctx.insert(
        "bundle_file",
        &format!("{}-{}-{}.zip", spec.name, spec.version, spec.target),
    );
    ctx.insert("launcher", &spec.launcher);
    ctx
}

/// run.sh: a POSIX launcher that runs the bundle's program from wherever it is unpacked.
pub fn render_launcher(spec: &BundleSpec) -> Result<String, Error> {
    let mut ctx = base_context(spec);
    ctx.insert(
        "no_program",
        &format!(
            "{} {}: this bundle has no program to run; see README.md",
            spec.name, spec.version
        ),
    );
    render(LAUNCHER_NAME, &ctx)
}

#[derive(Serialize)]
struct FileRow<'a> {
    path: &'a str,
    size: u64,
    sha256: &'a str,
    executable: bool,
}

/// README.md: what the bundle is, how to verify and run it, its files, plan and toolchains.
pub fn render_readme(
    spec: &BundleSpec,
    files: &[ManifestFile],
    executables: &[&str],
) -> Result<String, Error> {
    let mut ctx = base_context(spec);
    let rows: Vec<FileRow<'_>> = files
        .iter()
        .map(|f| FileRow {
            path: &f.path,
            size: f.size,
            sha256: &f.sha256,
            executable: executables.contains(&f.path.as_str()),
        })
        .collect();
    ctx.insert("files", &rows);
    ctx.insert("plan", &scalars(Some(&spec.plan), &["schema"]));
    let toolchains: Vec<HashMap<&str, String>> = spec
        .toolchains
        .iter()
        .map(|(k, v)| HashMap::from([("name", cell(k)), ("version", cell(v))]))
        .collect();
    ctx.insert("toolchains", &toolchains);
    ctx.insert("validated", &spec.validation.is_some());
    ctx.insert("validation", &scalars(spec.validation.as_ref(), &[]));
    ctx.insert("source_date", &crate::sbom::rfc3339(spec.source_date_epoch));
    ctx.insert("source_date_epoch", &spec.source_date_epoch);
    render(README_NAME, &ctx)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("bin/app"), "'bin/app'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
