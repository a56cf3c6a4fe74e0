//! `edgeai::crossbuild` with the real tools: examples/hello-edge built for the host and for
//! aarch64 (Debian `gcc-aarch64-linux-gnu`), the aarch64 binary run under `qemu-aarch64`
//! (Debian `qemu-user`) against a bundle directory, byte-identical binaries from two directories,
//! and the errors for missing or impossible linkers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use edgeai::crossbuild::{build_app, cross_env_for, link_plan, AppBuild, BuiltApp, LinkPlan};
use edgeai::Error;
use sha2::{Digest, Sha256};

use common::repo_root;

const AARCH64: &str = "aarch64-unknown-linux-gnu";
const LINUX_HOST: &str = "x86_64-unknown-linux-gnu";
const APPLE: &str = "aarch64-apple-darwin";

fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| edgeai::crossbuild::host_triple().expect("rustc -vV"))
}

/// Scratch space under Cargo's target/tmp (kept out of /tmp so a failed run can be inspected).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("crossbuild")
        .join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clear scratch dir");
    }
    std::fs::create_dir_all(&dir).expect("mkdir scratch dir");
    dir
}

/// Copy examples/hello-edge's sources (Cargo.toml, Cargo.lock, src/) to `dest`.
fn copy_hello_edge(dest: &Path) {
    let src = repo_root().join("examples").join("hello-edge");
    std::fs::create_dir_all(dest.join("src")).expect("mkdir");
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(src.join(f), dest.join(f)).expect("copy hello-edge manifest");
    }
    for entry in std::fs::read_dir(src.join("src")).expect("read hello-edge/src") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dest.join("src").join(entry.file_name()))
            .expect("copy hello-edge source");
    }
}

/// hello-edge copied to its own directory `copy` and built (release, cold) for `triple`.
fn build_copy(triple: &str, copy: &str) -> BuiltApp {
    let root = scratch(&format!("{copy}-{triple}"));
    // Different directory names and depths, so any path left in a binary changes its bytes.
    let project = root.join(copy).join("hello-edge");
    copy_hello_edge(&project);
    let start = std::time::Instant::now();
    let built = build_app(&AppBuild {
        manifest_path: project.join("Cargo.toml"),
        package: None,
        triple: triple.to_string(),
        release: true,
        target_dir: root.join(format!("target-{copy}")),
        offline: false,
    })
    .unwrap_or_else(|e| panic!("build_app({triple}, {copy}): {e:?}"));
    eprintln!(
        "built hello-edge for {triple} ({copy}) in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        built.binary.display()
    );
    built
}

fn host_build() -> &'static BuiltApp {
    static B: OnceLock<BuiltApp> = OnceLock::new();
    B.get_or_init(|| build_copy(host(), "a"))
}

fn aarch64_build() -> &'static BuiltApp {
    static B: OnceLock<BuiltApp> = OnceLock::new();
    B.get_or_init(|| build_copy(AARCH64, "a"))
}

/// The fixture model converted to GGUF (Q8_0) with edgeai::convert.
fn model_gguf() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let out = scratch("model").join("tiny-llama-q8_0.gguf");
        edgeai::convert::do_convert(&edgeai::convert::ConvertOptions {
            input: common::fixture("tiny-llama-f32"),
            output: out.clone(),
            format: "gguf".into(),
            outtype: "q8_0".into(),
            threads: Some(1),
        })
        .expect("convert the fixture model");
        out
    })
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read file");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A bundle directory as the device sees it once unzipped: `bin/hello-edge`, `model/model.gguf`
/// and an edgeai-manifest.json listing both.
fn make_bundle(name: &str, app: &BuiltApp) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    std::fs::create_dir_all(dir.join("model")).expect("mkdir model");
    std::fs::copy(&app.binary, dir.join("bin/hello-edge")).expect("copy app");
    std::fs::copy(model_gguf(), dir.join("model/model.gguf")).expect("copy model");
    let files: Vec<serde_json::Value> = ["bin/hello-edge", "model/model.gguf"]
        .iter()
        .map(|p| {
            let path = dir.join(p);
            serde_json::json!({
                "path": p,
                "sha256": sha256_file(&path),
                "size": std::fs::metadata(&path).expect("stat").len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schema_version": 1,
        "name": "hello-edge",
        "version": app.package_version,
        "target": name,
        "files": files,
    });
    std::fs::write(
        dir.join("edgeai-manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write manifest");
    dir
}

/// `hello-edge` under qemu-aarch64 with the aarch64 glibc from gcc-aarch64-linux-gnu.
fn run_qemu(bundle: &Path, args: &[&str]) -> Output {
    Command::new("qemu-aarch64")
        .arg("-L")
        .arg("/usr/aarch64-linux-gnu")
        .arg(bundle.join("bin/hello-edge"))
        .args(args)
        .output()
        .expect("qemu-aarch64 is missing: apt-get install qemu-user (CI installs it)")
}

/// The facts hello-edge must print, read from the model with the library's GGUF reader.
fn expected_facts() -> Vec<String> {
    let file = edgeai::gguf::GgufFile::open(model_gguf()).expect("open gguf");
    let h = file.header();
    let params: u64 = h.tensors.iter().map(|t| t.n_elements()).sum();
    let u = |k: &str| h.get_u64(k).expect(k).to_string();
    vec![
        "  architecture:     llama".to_string(),
        format!("  context length:   {}", u("llama.context_length")),
        format!("  embedding size:   {}", u("llama.embedding_length")),
        format!("  layers:           {}", u("llama.block_count")),
        format!("  tensors:          {}", h.tensors.len()),
        format!("  parameters:       {params}"),
        "  file type:        Q8_0 (7)".to_string(),
    ]
}

fn assert_facts(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hello-edge failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(2 files verified)"), "{stdout}");
    assert!(stdout.contains("model: model/model.gguf"), "{stdout}");
    for line in expected_facts() {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing `{line}` in:\n{stdout}"
        );
    }
}

fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).expect("read binary");
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn host_build_runs_and_prints_the_model_facts() {
    let app = host_build();
    assert_eq!(app.package_name, "hello-edge");
    assert_eq!(app.package_version, "0.1.0");
    assert_eq!(app.triple, host());
    assert!(
        app.rustc_version.starts_with("rustc 1."),
        "{}",
        app.rustc_version
    );
    assert!(app.binary.is_file(), "{}", app.binary.display());
    let bundle = make_bundle("bundle-host", app);
    // No --bundle: the app finds the manifest above its own bin/ directory.
    let out = Command::new(bundle.join("bin/hello-edge"))
        .output()
        .expect("run hello-edge");
    assert_facts(&out);
}

#[test]
fn aarch64_build_runs_under_qemu() {
    let app = aarch64_build();
    assert_eq!(app.triple, AARCH64);
    assert_eq!(elf_machine(&app.binary), 183, "EM_AARCH64");
    let bundle = make_bundle("bundle-aarch64", app);
    assert_facts(&run_qemu(&bundle, &[]));
    let bundle_arg = bundle.display().to_string();
    assert_facts(&run_qemu(&bundle, &["--bundle", &bundle_arg]));
}

#[test]
fn tampered_bundle_exits_1_naming_the_file() {
    let app = aarch64_build();
    let bundle = make_bundle("bundle-aarch64-tampered", app);
    let model = bundle.join("model/model.gguf");
    let mut bytes = std::fs::read(&model).expect("read model");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&model, &bytes).expect("write model");
    let out = run_qemu(&bundle, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("model/model.gguf") && stderr.contains("sha256"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no facts from a tampered bundle");

    // A truncated file is caught by its size.
    bytes.truncate(at);
    std::fs::write(&model, &bytes).expect("write model");
    let out = run_qemu(&bundle, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("model/model.gguf: size"), "{stderr}");
}

/// Two copies of the project in different directories, built into different target dirs, give
/// byte-identical binaries, and no build path is left inside them.
#[test]
fn binaries_are_reproducible_across_directories() {
    for (a, b) in [
        (host_build(), build_copy(host(), "copy-number-two")),
        (aarch64_build(), build_copy(AARCH64, "copy-number-two")),
    ] {
        assert_ne!(a.binary, b.binary);
        assert_eq!(
            sha256_file(&a.binary),
            sha256_file(&b.binary),
            "{} and {} differ",
            a.binary.display(),
            b.binary.display()
        );
        let bytes = std::fs::read(&b.binary).expect("read binary");
        let scratch_root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crossbuild");
        let mut needles = vec![scratch_root.display().to_string()];
        if let Some(home) = std::env::var_os("HOME") {
            needles.push(PathBuf::from(home).join(".cargo").display().to_string());
        }
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains the host path {needle}",
                b.binary.display()
            );
        }
    }
}

#[test]
fn missing_cross_linker_names_it_and_the_package() {
    let err = cross_env_for(AARCH64, LINUX_HOST, std::ffi::OsStr::new("/nonexistent"))
        .expect_err("no linker on PATH");
    let Error::MissingTool { tool, help, .. } = &err else {
        panic!("expected MissingTool, got {err:?}");
    };
    assert_eq!(tool, "aarch64-linux-gnu-gcc");
    assert!(
        help.contains("apt-get install gcc-aarch64-linux-gnu"),
        "{help}"
    );

    // End to end through build_app: a child test process whose PATH has cargo and rustc only.
    let cargo = PathBuf::from(std::env::var_os("CARGO").expect("cargo test sets CARGO"));
    let toolchain_bin = cargo.parent().expect("cargo's directory");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_build_app_without_cross_linker",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("PATH", toolchain_bin)
        .output()
        .expect("run the child test");
    assert!(
        out.status.success(),
        "child test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run as a child process (PATH without the cross linker) by missing_cross_linker_names_it_and_the_package"]
fn child_build_app_without_cross_linker() {
    let project = scratch("no-linker").join("hello-edge");
    copy_hello_edge(&project);
    let err = build_app(&AppBuild {
        manifest_path: project.join("Cargo.toml"),
        package: None,
        triple: AARCH64.into(),
        release: true,
        target_dir: project.join("target"),
        offline: true,
    })
    .expect_err("aarch64-linux-gnu-gcc is not on PATH");
    let text = format!("{err}");
    let Error::MissingTool { tool, help, .. } = &err else {
        panic!("expected MissingTool, got {err:?}");
    };
    assert_eq!(tool, "aarch64-linux-gnu-gcc", "{text}");
    assert!(help.contains("gcc-aarch64-linux-gnu"), "{help}");
    assert!(
        !project.join("target").join(AARCH64).exists(),
        "nothing is built when the linker is missing"
    );

    // Without zig and cargo-zigbuild, an Apple triple cannot be linked here.
    let err = build_app(&AppBuild {
        manifest_path: project.join("Cargo.toml"),
        package: None,
        triple: APPLE.into(),
        release: true,
        target_dir: project.join("target"),
        offline: true,
    })
    .expect_err("no zig on PATH");
    let Error::CannotLinkHere { triple, help, .. } = &err else {
        panic!("expected CannotLinkHere, got {err:?}");
    };
    assert_eq!(triple, APPLE);
    assert!(help.contains("cargo-zigbuild"), "{help}");
}

/// aarch64-apple-darwin through cargo-zigbuild: a signed arm64 Mach-O with no build paths in it,
/// the same bytes from two directories.
/// Needs `pip install ziglang cargo-zigbuild` on PATH and `rustup target add aarch64-apple-darwin`.
#[test]
fn apple_darwin_links_with_zig() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    assert!(
        matches!(
            link_plan(APPLE, LINUX_HOST, &path),
            Ok(LinkPlan::Zig { .. })
        ),
        "cargo-zigbuild and zig are not on PATH: pip install ziglang cargo-zigbuild (CI installs them)"
    );
    let app = build_copy(APPLE, "a");
    let bytes = std::fs::read(&app.binary).expect("read binary");
    assert_eq!(&bytes[..4], &0xfeed_facf_u32.to_le_bytes(), "64-bit Mach-O");
    assert_eq!(
        &bytes[4..8],
        &0x0100_000c_u32.to_le_bytes(),
        "CPU_TYPE_ARM64"
    );
    // Load commands: arm64 macOS refuses to run a binary without a code signature.
    let ncmds = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let mut off = 32usize;
    let mut signed = false;
    for _ in 0..ncmds {
        let cmd = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
        let size = u32::from_le_bytes([
            bytes[off + 4],
            bytes[off + 5],
            bytes[off + 6],
            bytes[off + 7],
        ]);
        signed |= cmd == 0x1d; // LC_CODE_SIGNATURE
        off += size as usize;
    }
    assert!(signed, "no LC_CODE_SIGNATURE in {}", app.binary.display());
    let other = build_copy(APPLE, "copy-number-two");
    assert_eq!(
        sha256_file(&app.binary),
        sha256_file(&other.binary),
        "{} and {} differ",
        app.binary.display(),
        other.binary.display()
    );
    let home_cargo = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo");
    for needle in [
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("crossbuild"),
        home_cargo,
    ] {
        let needle = needle.display().to_string();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} contains the host path {needle}",
            app.binary.display()
        );
    }
}

#[test]
fn every_target_triple_has_a_link_plan() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("targets")).expect("targets/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read target");
        let table: toml::Table = toml::from_str(&text).expect("target toml");
        let Some(triple) = table
            .values()
            .filter_map(|v| v.as_table())
            .chain(std::iter::once(&table))
            .find_map(|t| t.get("triple").and_then(|t| t.as_str()))
        else {
            continue;
        };
        seen += 1;
        // An empty PATH: no cross tools, no zig.
        let plan = link_plan(triple, LINUX_HOST, std::ffi::OsStr::new(""));
        if triple.contains("-apple-") || triple.ends_with("-msvc") {
            let Err(Error::CannotLinkHere {
                triple: t,
                reason,
                help,
            }) = &plan
            else {
                panic!("{triple}: expected CannotLinkHere, got {plan:?}");
            };
            assert_eq!(t, triple);
            assert!(!reason.is_empty() && !help.is_empty());
        } else if triple.contains("-android") {
            assert!(
                matches!(plan, Ok(LinkPlan::AndroidNdk { ref clang_triple }) if clang_triple == "aarch64-linux-android"),
                "{triple}: {plan:?}"
            );
        } else if triple == LINUX_HOST {
            assert_eq!(plan.expect("host"), LinkPlan::Native);
        } else {
            assert!(
                matches!(plan, Ok(LinkPlan::Gnu { .. })),
                "{triple}: {plan:?}"
            );
        }
    }
    assert!(seen >= 10, "only {seen} target manifests with a triple");

    let env = cross_env_for(
        AARCH64,
        LINUX_HOST,
        &std::env::var_os("PATH").unwrap_or_default(),
    )
    .expect("gcc-aarch64-linux-gnu is installed (CI installs it)");
    assert!(
        env.contains(&(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER".to_string(),
            "aarch64-linux-gnu-gcc".to_string()
        )) || std::env::var_os("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    );
    assert!(
        cross_env_for(LINUX_HOST, LINUX_HOST, std::ffi::OsStr::new(""))
            .expect("native")
            .is_empty()
    );
}

#[test]
fn hello_edge_metadata_names_the_fixture_model_and_known_targets() {
    let manifest = repo_root().join("examples/hello-edge/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read hello-edge Cargo.toml");
    let meta = edgeai::project::parse_edgeai_table(&manifest, &text).expect("edgeai table");
    let model = meta.model.expect("model");
    assert!(
        manifest
            .parent()
            .expect("dir")
            .join(&model)
            .join("config.json")
            .is_file(),
        "{model}"
    );
    assert_eq!(
        meta.targets,
        ["host-x86_64", "raspberry-pi-5-8gb", "apple-m2-16gb"]
    );
    for t in &meta.targets {
        assert!(
            repo_root()
                .join("targets")
                .join(format!("{t}.toml"))
                .is_file(),
            "{t}"
        );
    }
}
