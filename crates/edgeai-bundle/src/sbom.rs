//! CycloneDX 1.5 JSON SBOM of an app's resolved dependency graph, deterministic: components
//! sorted, no host paths, the timestamp from SOURCE_DATE_EPOCH and the serial number derived
//! from the content's hash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cargo_metadata::{DependencyKind, Metadata, Package, PackageId};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The package URL of a crate.
pub fn purl(name: &str, version: &str) -> String {
    format!("pkg:cargo/{name}@{version}")
}

fn component(p: &Package, kind: &str) -> Value {
    let version = p.version.to_string();
    let name = p.name.to_string();
    let purl = purl(&name, &version);
    let mut c = json!({
        "type": kind,
        "bom-ref": purl,
        "name": name,
        "version": version,
        "purl": purl,
    });
    if let Some(license) = p.license.as_deref().filter(|l| !l.trim().is_empty()) {
        // Cargo's `license` is an SPDX expression (possibly with the legacy `/`).
        c["licenses"] = json!([{ "expression": license.replace('/', " OR ") }]);
    }
    c
}

/// The SBOM of `package` and everything it depends on at build or run time (normal and build
/// dependencies, not dev-dependencies), from `cargo metadata`'s resolve graph. Timestamp and
/// serial number follow [`crate::source_date_epoch`] of the workspace root.
pub fn from_cargo_metadata(metadata: &Metadata, package: &PackageId) -> Value {
    let epoch = crate::source_date_epoch(metadata.workspace_root.as_std_path());
    from_cargo_metadata_at(metadata, package, epoch)
}

/// [`from_cargo_metadata`] with an explicit SOURCE_DATE_EPOCH.
pub fn from_cargo_metadata_at(metadata: &Metadata, package: &PackageId, epoch: u64) -> Value {
    let packages: BTreeMap<&PackageId, &Package> =
        metadata.packages.iter().map(|p| (&p.id, p)).collect();
    let nodes: BTreeMap<&PackageId, &cargo_metadata::Node> = metadata
        .resolve
        .as_ref()
        .map(|r| r.nodes.iter().map(|n| (&n.id, n)).collect())
        .unwrap_or_default();

    // Walk the graph from the app; edges that are only dev-dependencies do not ship.
    let mut reached: BTreeSet<&PackageId> = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut queue = VecDeque::from([package]);
    reached.insert(package);
    let ref_of = |id: &PackageId| -> Option<String> {
        packages
            .get(id)
            .map(|p| purl(p.name.as_ref(), &p.version.to_string()))
    };
    while let Some(id) = queue.pop_front() {
        let Some(node) = nodes.get(id) else { continue };
        let from = ref_of(id);
        for dep in &node.deps {
            let ships = dep.dep_kinds.is_empty()
                || dep
                    .dep_kinds
                    .iter()
                    .any(|k| k.kind != DependencyKind::Development);
            if !ships {
                continue;
            }
            if let (Some(f), Some(t)) = (&from, ref_of(&dep.pkg)) {
                edges.entry(f.clone()).or_default().insert(t);
            }
            if reached.insert(&dep.pkg) {
                queue.push_back(&dep.pkg);
            }
        }
    }

    let root = packages.get(package).map(|p| component(p, "application"));
    let mut components: BTreeMap<String, Value> = BTreeMap::new();
    for id in &reached {
        if *id == package {
            continue;
        }
        if let Some(p) = packages.get(id) {
            let c = component(p, "library");
            let key = c["bom-ref"].as_str().unwrap_or_default().to_string();
            components.entry(key).or_insert(c);
        }
    }
    let mut all_refs: BTreeSet<String> = components.keys().cloned().collect();
    if let Some(r) = root.as_ref().and_then(|r| r["bom-ref"].as_str()) {
        all_refs.insert(r.to_string());
    }
    let dependencies: Vec<Value> = all_refs
        .iter()
        .map(|r| {
            let deps: Vec<&String> = edges.get(r).map(|s| s.iter().collect()).unwrap_or_default();
            json!({ "ref": r, "dependsOn": deps })
        })
        .collect();

    let mut metadata_obj = json!({
        "timestamp": "",
        "tools": { "components": [{
            "type": "application",
            "name": "cargo-edgeai",
            "version": env!("CARGO_PKG_VERSION"),
        }]},
    });
    if let Some(root) = root {
        metadata_obj["component"] = root;
    }
    let bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "",
        "version": 1,
        "metadata": metadata_obj,
        "components": components.into_values().collect::<Vec<_>>(),
        "dependencies": dependencies,
    });
    finalize(bom, epoch)
}

/// Set the SBOM's timestamp to `epoch` and its serial number to a UUID derived from the
/// sha256 of the rest of the document, so equal content gives an equal serial number.
pub fn finalize(mut bom: Value, epoch: u64) -> Value {
    if let Some(obj) = bom.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("timestamp".into(), Value::String(rfc3339(epoch)));
        }
        obj.insert("serialNumber".into(), Value::String(String::new()));
    }
    let digest = Sha256::digest(serde_json::to_vec(&bom).unwrap_or_default());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    // RFC 4122 version 5 and variant bits: CycloneDX 1.5's schema requires a version 1-5 UUID.
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::zip::hex(&b);
    let uuid = format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    if let Some(obj) = bom.as_object_mut() {
        obj.insert("serialNumber".into(), Value::String(uuid));
    }
    bom
}

/// `epoch` as an RFC 3339 UTC timestamp (`2024-01-02T03:04:05Z`).
pub fn rfc3339(epoch: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::zip::civil(epoch);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_214_331), "2024-02-29T13:45:31Z");
    }

    #[test]
    fn serial_depends_on_content_only() {
        let a = finalize(json!({"metadata": {}, "components": [1]}), 10);
        let b = finalize(json!({"metadata": {}, "components": [1]}), 10);
        let c = finalize(json!({"metadata": {}, "components": [2]}), 10);
        assert_eq!(a, b);
        assert_ne!(a["serialNumber"], c["serialNumber"]);
        let s = a["serialNumber"].as_str().unwrap();
        assert_eq!(s.len(), "urn:uuid:".len() + 36);
        assert_eq!(&s[23..24], "5");
    }
}
