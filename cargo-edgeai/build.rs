//! Embeds the repository's `targets/*.toml` (built-in target manifests and the decision matrix)
//! into the binary, so an installed `cargo-edgeai` needs no data files next to it.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let targets_dir = manifest_dir.join("..").join("targets");
    println!("cargo:rerun-if-changed={}", targets_dir.display());
    let mut entries: Vec<PathBuf> = fs::read_dir(&targets_dir)
        .expect("targets/ exists next to cargo-edgeai/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    let mut code = String::from("/// (file name, contents) of every embedded `targets/*.toml`.\npub static EMBEDDED: &[(&str, &str)] = &[\n");
    for path in entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let file = path
            .file_name()
            .expect("file")
            .to_string_lossy()
            .into_owned();
        let abs = fs::canonicalize(&path).expect("canonical path");
        code.push_str(&format!(
            "    ({file:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("embedded_targets.rs");
    fs::write(out, code).expect("write embedded_targets.rs");
}
