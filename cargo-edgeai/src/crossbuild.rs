//! Building the user's app for a target triple: `cargo build --target TRIPLE` with the right
//! linker, C toolchain and flags, giving a reproducible binary.
//!
//! - The Rust target is added with `rustup target add` when the toolchain lacks it (not with
//!   `--offline`: that needs the network).
//! - Cross targets get their linker and `CC`/`CXX`/`AR` from [`CROSS_GNU`] (triple → GNU prefix and
//!   the Debian package that provides it) or the Android NDK. A missing tool is reported before
//!   Cargo runs ([`Error::MissingTool`], naming the program and the package to install).
//! - Apple and MSVC triples cannot be linked on Linux: [`Error::CannotLinkHere`], which the build
//!   command turns into a bundle without the app binary, with the reason recorded.
//! - Reproducible: the project directory, `CARGO_HOME`, the toolchain's sysroot and the target
//!   directory are remapped (`--remap-path-prefix`) to fixed names, appended to the user's
//!   `CARGO_ENCODED_RUSTFLAGS`/`RUSTFLAGS` (or to their `target.<triple>.rustflags` config when
//!   neither is set), and release binaries are stripped, so the same sources built from two
//!   directories give the same bytes.
//!
//! The binary's path comes from Cargo's JSON messages (`compiler-artifact` with `executable`),
//! never from guessing the target directory layout.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cargo_metadata::{Message, Metadata, Package};

use crate::{Error, Result};

/// What to build.
#[derive(Debug, Clone)]
pub struct AppBuild {
    /// The app's Cargo.toml (a package, or a workspace with `package` set).
    pub manifest_path: PathBuf,
    /// The package to build when the manifest is a workspace with several.
    pub package: Option<String>,
    /// The Rust target triple (a target manifest's `triple`).
    pub triple: String,
    /// `--release`.
    pub release: bool,
    /// Cargo's `--target-dir`.
    pub target_dir: PathBuf,
    /// `--offline`: no network (Cargo offline, no `rustup target add`).
    pub offline: bool,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltApp {
    /// The executable Cargo produced.
    pub binary: PathBuf,
    pub package_name: String,
    pub package_version: String,
    /// `rustc --version` of the toolchain that built it, e.g. `rustc 1.95.0 (59807616e 2026-04-14)`.
    pub rustc_version: String,
    pub triple: String,
}

/// Cross targets linked with a Debian GNU cross toolchain: (triple, GNU prefix, Debian package).
/// The linker is `<prefix>-gcc`, and `CC`/`CXX`/`AR` are `<prefix>-gcc`/`-g++`/`-ar`.
pub const CROSS_GNU: &[(&str, &str, &str)] = &[
    (
        "aarch64-unknown-linux-gnu",
        "aarch64-linux-gnu",
        "gcc-aarch64-linux-gnu",
    ),
    (
        "armv7-unknown-linux-gnueabihf",
        "arm-linux-gnueabihf",
        "gcc-arm-linux-gnueabihf",
    ),
    (
        "x86_64-unknown-linux-gnu",
        "x86_64-linux-gnu",
        "gcc-x86-64-linux-gnu",
    ),
    (
        "i686-unknown-linux-gnu",
        "i686-linux-gnu",
        "gcc-i686-linux-gnu",
    ),
    (
        "riscv64gc-unknown-linux-gnu",
        "riscv64-linux-gnu",
        "gcc-riscv64-linux-gnu",
    ),
    (
        "powerpc64le-unknown-linux-gnu",
        "powerpc64le-linux-gnu",
        "gcc-powerpc64le-linux-gnu",
    ),
    (
        "x86_64-pc-windows-gnu",
        "x86_64-w64-mingw32",
        "gcc-mingw-w64-x86-64",
    ),
    (
        "i686-pc-windows-gnu",
        "i686-w64-mingw32",
        "gcc-mingw-w64-i686",
    ),
];

/// Android API level the NDK's clang targets (Vulkan needs 24).
pub const ANDROID_API: u32 = 24;

/// How binaries for a triple are linked on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPlan {
    /// The host's own toolchain links it (native build, or a target Cargo links by itself).
    Native,
    /// A GNU cross toolchain `<prefix>-gcc` from Debian `package`.
    Gnu {
        prefix: &'static str,
        package: &'static str,
    },
    /// The Android NDK's clang for `clang_triple` at API [`ANDROID_API`].
    AndroidNdk { clang_triple: String },
    /// `cargo zigbuild` (crates.io/PyPI `cargo-zigbuild` with PyPI `ziglang` or a `zig` on PATH):
    /// links Apple binaries on Linux with zig's bundled libSystem stubs (std-only apps; apps that
    /// link Apple frameworks need the macOS SDK via SDKROOT). `zig` is the zig program to use.
    Zig { zig: PathBuf },
}

/// The host triple of the toolchain that `rustc` on PATH (or `$RUSTC`) runs.
pub fn host_triple() -> Result<String> {
    Ok(RustcInfo::probe(None)?.host)
}

/// Whether `triple` can be built here: `Ok` when its linker and C toolchain are installed,
/// [`Error::CannotLinkHere`] for Apple/MSVC on another OS, [`Error::MissingTool`] otherwise.
/// (The Rust target itself is added by [`build_app`] when missing.)
pub fn can_build(triple: &str) -> Result<()> {
    cross_env(triple).map(|_| ())
}

/// The environment a cross build of `triple` needs (linker, `CC_*`, `CXX_*`, `AR_*`), checked
/// against PATH. Empty for native builds.
pub fn cross_env(triple: &str) -> Result<Vec<(String, String)>> {
    let host = host_triple()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    cross_env_for(triple, &host, &path)
}

/// [`cross_env`] for an explicit host triple and PATH (what `cross_env` reads from the machine).
pub fn cross_env_for(triple: &str, host: &str, path: &OsStr) -> Result<Vec<(String, String)>> {
    match link_plan(triple, host, path)? {
        LinkPlan::Native => Ok(Vec::new()),
        // cargo-zigbuild sets the linker and CC itself; it only needs to find zig.
        LinkPlan::Zig { zig } => Ok(if zig.ends_with("python-zig") {
            vec![(
                "CARGO_ZIGBUILD_ZIG_PATH".to_string(),
                zig.display().to_string(),
            )]
        } else {
            Vec::new()
        }),
        LinkPlan::Gnu { prefix, package } => {
            let gcc = format!("{prefix}-gcc");
            if find_program(&gcc, path).is_none() {
                return Err(Error::MissingTool {
                    tool: gcc.clone(),
                    message: format!("the cross linker for `{triple}` is not on PATH"),
                    help: format!(
                        "install it: `sudo apt-get install {package}` (Debian/Ubuntu; add {} for C++ dependencies), or put `{gcc}` on PATH",
                        package.replacen("gcc-", "g++-", 1)
                    ),
                });
            }
            Ok(tool_env(
                triple,
                &gcc,
                &format!("{prefix}-g++"),
                &format!("{prefix}-ar"),
            ))
        }
        LinkPlan::AndroidNdk { clang_triple } => {
            let ndk = ["ANDROID_NDK_HOME", "ANDROID_NDK_ROOT", "ANDROID_NDK"]
                .iter()
                .find_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
                .map(PathBuf::from);
            let Some(ndk) = ndk else {
                return Err(Error::MissingTool {
                    tool: "Android NDK".into(),
                    message: format!("`{triple}` links with the Android NDK's clang, and ANDROID_NDK_HOME is not set"),
                    help: "install the Android NDK (r26 or newer, e.g. `sdkmanager ndk-bundle`) and set ANDROID_NDK_HOME to its directory".into(),
                });
            };
            let bin = ndk.join("toolchains/llvm/prebuilt/linux-x86_64/bin");
            let clang = bin.join(format!("{clang_triple}{ANDROID_API}-clang"));
            if !clang.is_file() {
                return Err(Error::MissingTool {
                    tool: clang.display().to_string(),
                    message: format!("the NDK at {} has no clang for `{triple}`", ndk.display()),
                    help: "point ANDROID_NDK_HOME at a complete Android NDK (r26 or newer) for Linux x86_64".into(),
                });
            }
            let clangxx = bin.join(format!("{clang_triple}{ANDROID_API}-clang++"));
            let ar = bin.join("llvm-ar");
            Ok(tool_env(
                triple,
                &clang.display().to_string(),
                &clangxx.display().to_string(),
                &ar.display().to_string(),
            ))
        }
    }
}

/// How `triple` links on a `host` machine whose PATH is `path`; [`Error::CannotLinkHere`] when it
/// cannot.
pub fn link_plan(triple: &str, host: &str, path: &OsStr) -> Result<LinkPlan> {
    if triple == host {
        return Ok(LinkPlan::Native);
    }
    let host_apple = host.contains("-apple-");
    let host_msvc = host.ends_with("-windows-msvc");
    if triple.contains("-apple-") && !host_apple {
        if triple.ends_with("-apple-darwin") {
            if let Some(zig) = zig_tools(path) {
                return Ok(LinkPlan::Zig { zig });
            }
        }
        return Err(Error::CannotLinkHere {
            triple: triple.into(),
            reason: "Apple binaries link against the macOS SDK (ld64, libSystem), which is not available on this OS".into(),
            help: if triple.ends_with("-apple-darwin") {
                "build the app on a Mac, or install zig and cargo-zigbuild (`pip install ziglang cargo-zigbuild`) to link std-only apps here; without them the bundle ships without the app binary".into()
            } else {
                "build the app on a Mac with Xcode; the bundle ships without the app binary".into()
            },
        });
    }
    if triple.ends_with("-windows-msvc") && !host_msvc {
        return Err(Error::CannotLinkHere {
            triple: triple.into(),
            reason: "MSVC binaries link with Microsoft's link.exe and the Windows SDK, which are not available on this OS".into(),
            help: "build the app on Windows, or target the MinGW triple x86_64-pc-windows-gnu (Debian gcc-mingw-w64-x86-64) instead".into(),
        });
    }
    if host_apple || host_msvc {
        // Cross toolchains on macOS/Windows hosts are the user's setup (Xcode links every Apple
        // triple; MSVC links every MSVC triple); Cargo's defaults and their config apply.
        return Ok(LinkPlan::Native);
    }
    if let Some(&(_, prefix, package)) = CROSS_GNU.iter().find(|(t, _, _)| *t == triple) {
        return Ok(LinkPlan::Gnu { prefix, package });
    }
    if triple.contains("-linux-android") {
        // The NDK's clang names armv7 `armv7a-linux-androideabi`; the others match Rust's triple.
        let clang_triple = triple
            .replacen("armv7-", "armv7a-", 1)
            .replace("thumbv7neon-", "armv7a-");
        return Ok(LinkPlan::AndroidNdk { clang_triple });
    }
    // Targets Cargo links by itself (musl with self-contained objects, wasm with rust-lld, a
    // linker from the user's .cargo/config.toml): nothing to add, Cargo reports what is missing.
    Ok(LinkPlan::Native)
}

/// The zig program when both `cargo-zigbuild` and zig (`zig`, or PyPI ziglang's `python-zig`) are
/// on `path`.
fn zig_tools(path: &OsStr) -> Option<PathBuf> {
    find_program("cargo-zigbuild", path)?;
    find_program("zig", path).or_else(|| find_program("python-zig", path))
}

/// `CARGO_TARGET_<TRIPLE>_LINKER`, `CC_<triple>`, `CXX_<triple>`, `AR_<triple>` (the cc crate's
/// names), leaving out any the user already set.
fn tool_env(triple: &str, cc: &str, cxx: &str, ar: &str) -> Vec<(String, String)> {
    let upper = triple.to_ascii_uppercase().replace(['-', '.'], "_");
    let lower = triple.replace(['-', '.'], "_");
    let vars = [
        (format!("CARGO_TARGET_{upper}_LINKER"), cc),
        (format!("CC_{lower}"), cc),
        (format!("CXX_{lower}"), cxx),
        (format!("AR_{lower}"), ar),
    ];
    vars.into_iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| (k, v.to_string()))
        .collect()
}

/// `name` in the directories of `path` (a PATH value), if it is there.
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Facts about the toolchain `rustc` that builds the app.
#[derive(Debug, Clone)]
struct RustcInfo {
    /// First line of `rustc -vV`.
    version: String,
    host: String,
    sysroot: PathBuf,
}

impl RustcInfo {
    /// Ask rustc, run in `dir` so that the project's rust-toolchain.toml selects it.
    fn probe(dir: Option<&Path>) -> Result<RustcInfo> {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let run = |args: &[&str]| -> Result<String> {
            let mut cmd = Command::new(&rustc);
            cmd.args(args);
            if let Some(dir) = dir {
                cmd.current_dir(dir);
            }
            let out = cmd.output().map_err(|e| Error::MissingTool {
                tool: rustc.to_string_lossy().into_owned(),
                message: format!("cannot run rustc: {e}"),
                help: "install Rust with rustup (https://rustup.rs) so that `rustc` is on PATH"
                    .into(),
            })?;
            if !out.status.success() {
                return Err(Error::AppBuild {
                    message: format!(
                        "`rustc {}` failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    help: "check the project's rust-toolchain.toml and that the toolchain is installed (`rustup show`)".into(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let vv = run(&["-vV"])?;
        let version = vv.lines().next().unwrap_or_default().trim().to_string();
        let host = vv
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .map(|h| h.trim().to_string())
            .ok_or_else(|| Error::Internal(format!("`rustc -vV` printed no host line: {vv}")))?;
        let sysroot = PathBuf::from(run(&["--print", "sysroot"])?.trim());
        Ok(RustcInfo {
            version,
            host,
            sysroot,
        })
    }

    /// Whether the standard library for `triple` is installed in this toolchain.
    fn has_target(&self, triple: &str) -> bool {
        self.sysroot
            .join("lib/rustlib")
            .join(triple)
            .join("lib")
            .is_dir()
    }
}

/// `cargo`: the one running us (`$CARGO`, set when invoked as `cargo edgeai`), else PATH's.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Build the app for `b.triple`; see the module documentation.
pub fn build_app(b: &AppBuild) -> Result<BuiltApp> {
    let manifest = &b.manifest_path;
    if !manifest.is_file() {
        return Err(Error::Usage {
            message: format!("the app manifest {} does not exist", manifest.display()),
            help: "pass the path of the app's Cargo.toml (--manifest-path)".into(),
        });
    }
    let manifest = absolute(manifest)?;
    let manifest_dir = manifest.parent().unwrap_or(Path::new("/")).to_path_buf();

    let metadata = cargo_metadata::MetadataCommand::new()
        .cargo_path(cargo_program())
        .manifest_path(&manifest)
        .current_dir(&manifest_dir)
        .no_deps()
        .other_options(if b.offline {
            vec!["--offline".to_string()]
        } else {
            Vec::new()
        })
        .exec()
        .map_err(|e| Error::InvalidManifest {
            path: manifest.clone(),
            message: format!("cargo metadata failed: {e}"),
            help: "fix the Cargo.toml so that `cargo metadata` accepts it".into(),
        })?;
    let package = select_package(&metadata, &manifest, b.package.as_deref())?;
    let bin = select_bin(package)?;

    let rustc = RustcInfo::probe(Some(&manifest_dir))?;
    // The linker first: no point adding a Rust target whose binaries cannot be linked here.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let zig = matches!(
        link_plan(&b.triple, &rustc.host, &path)?,
        LinkPlan::Zig { .. }
    );
    let env = cross_env_for(&b.triple, &rustc.host, &path)?;
    ensure_target(&rustc, &b.triple, b.offline, &manifest_dir)?;

    let target_dir = absolute(&b.target_dir)?;
    std::fs::create_dir_all(&target_dir).map_err(|e| Error::io(&target_dir, e))?;
    let cargo_home = cargo_home();
    let remaps = remap_flags(&[
        (metadata.workspace_root.as_std_path(), "/edgeai/src"),
        (cargo_home.as_path(), "/edgeai/cargo"),
        (rustc.sysroot.as_path(), "/edgeai/rust"),
        (target_dir.as_path(), "/edgeai/target"),
    ]);

    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(&manifest_dir)
        .arg(if zig { "zigbuild" } else { "build" })
        .arg("--target")
        .arg(&b.triple)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--package")
        .arg(format!("{}@{}", package.name, package.version))
        .arg("--bin")
        .arg(&bin)
        .arg("--message-format=json-render-diagnostics");
    if metadata.workspace_root.join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    if b.release {
        cmd.arg("--release");
        // Symbols and debug info carry paths and are of no use on a device: strip them.
        if std::env::var_os("CARGO_PROFILE_RELEASE_STRIP").is_none() {
            cmd.env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
        }
    }
    if b.offline {
        cmd.arg("--offline");
    }
    // cargo-zigbuild adds its own flags through the environment, which would hide a --config.
    apply_rustflags(&mut cmd, &b.triple, &remaps, zig);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = cmd.spawn().map_err(|e| Error::MissingTool {
        tool: cargo_program().to_string_lossy().into_owned(),
        message: format!("cannot run cargo: {e}"),
        help: "install Rust with rustup (https://rustup.rs) so that `cargo` is on PATH".into(),
    })?;
    // Cargo's rendered diagnostics and progress go to the user's stderr as they come; the last
    // lines are kept for the error message.
    let stderr = child.stderr.take();
    let echo = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let _ = writeln!(std::io::stderr(), "{line}");
                tail.push(line);
                if tail.len() > 30 {
                    tail.remove(0);
                }
            }
        }
        tail
    });
    let mut executables = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for message in Message::parse_stream(BufReader::new(stdout)) {
            let Ok(Message::CompilerArtifact(artifact)) = message else {
                continue;
            };
            if artifact.package_id == package.id && artifact.target.name == bin {
                if let Some(exe) = artifact.executable {
                    executables.push(exe.into_std_path_buf());
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::Internal(format!("waiting for cargo: {e}")))?;
    let tail = echo.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::AppBuild {
            message: format!(
                "cargo build of `{}` for {} failed ({status}):\n{}",
                package.name,
                b.triple,
                tail.join("\n")
            ),
            help: format!(
                "fix the errors above; reproduce with `cargo build --target {} --manifest-path {}`",
                b.triple,
                manifest.display()
            ),
        });
    }
    let binary = executables.pop().ok_or_else(|| {
        Error::Internal(format!(
            "cargo build succeeded but reported no executable for bin `{bin}` of `{}`",
            package.name
        ))
    })?;
    Ok(BuiltApp {
        binary,
        package_name: package.name.to_string(),
        package_version: package.version.to_string(),
        rustc_version: rustc.version,
        triple: b.triple.clone(),
    })
}

/// The package to build: `--package` by name, else the one whose manifest is `manifest`, else the
/// workspace's only member.
fn select_package<'a>(
    metadata: &'a Metadata,
    manifest: &Path,
    name: Option<&str>,
) -> Result<&'a Package> {
    let members = metadata.workspace_packages();
    let names = || {
        members
            .iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = name {
        return members
            .iter()
            .copied()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| Error::Usage {
                message: format!(
                    "package `{name}` is not in the workspace of {}",
                    manifest.display()
                ),
                help: format!("workspace members: {}", names()),
            });
    }
    let canon = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    if let Some(p) = members.iter().copied().find(|p| {
        std::fs::canonicalize(p.manifest_path.as_std_path())
            .ok()
            .as_ref()
            == Some(&canon)
    }) {
        return Ok(p);
    }
    match members.as_slice() {
        [only] => Ok(only),
        _ => Err(Error::Usage {
            message: format!(
                "{} is a workspace with several packages; which one is the app?",
                manifest.display()
            ),
            help: format!("pass the package name (one of: {})", names()),
        }),
    }
}

/// The binary target to build: the only one, else `default-run`, else the one named like the
/// package.
fn select_bin(package: &Package) -> Result<String> {
    let bins: Vec<&str> = package
        .targets
        .iter()
        .filter(|t| t.is_bin())
        .map(|t| t.name.as_str())
        .collect();
    match bins.as_slice() {
        [] => Err(Error::Usage {
            message: format!(
                "package `{}` has no binary target to put in the bundle",
                package.name
            ),
            help: "add src/main.rs (or a [[bin]] section) to the app".into(),
        }),
        [only] => Ok(only.to_string()),
        _ => package
            .default_run
            .clone()
            .filter(|d| bins.contains(&d.as_str()))
            .or_else(|| {
                bins.iter()
                    .find(|b| **b == package.name.as_str())
                    .map(|b| b.to_string())
            })
            .ok_or_else(|| Error::Usage {
                message: format!(
                    "package `{}` has several binaries ({}) and no default-run",
                    package.name,
                    bins.join(", ")
                ),
                help: "set `default-run = \"NAME\"` in [package] to choose the one to bundle"
                    .into(),
            }),
    }
}

/// Add the Rust target to the toolchain when it is missing.
fn ensure_target(rustc: &RustcInfo, triple: &str, offline: bool, dir: &Path) -> Result<()> {
    // A custom target spec (a .json path) has no prebuilt std to add.
    if triple.ends_with(".json") || rustc.has_target(triple) {
        return Ok(());
    }
    let help = format!("run `rustup target add {triple}` (needs the network), then build again");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if offline || find_program("rustup", &path).is_none() {
        return Err(Error::MissingTool {
            tool: format!("Rust target {triple}"),
            message: format!(
                "the toolchain `{}` has no standard library for {triple}{}",
                rustc.version,
                if offline {
                    " (not adding it: --offline)"
                } else {
                    " and rustup is not on PATH"
                }
            ),
            help,
        });
    }
    let out = Command::new("rustup")
        .args(["target", "add", triple])
        .current_dir(dir)
        .output()
        .map_err(|e| Error::MissingTool {
            tool: "rustup".into(),
            message: format!("cannot run rustup: {e}"),
            help: help.clone(),
        })?;
    if !out.status.success() || !rustc.has_target(triple) {
        return Err(Error::MissingTool {
            tool: format!("Rust target {triple}"),
            message: format!(
                "`rustup target add {triple}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            help: "check the triple (`rustup target list`) and the network; tier-3 targets need a nightly toolchain and -Zbuild-std".into(),
        });
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent-cargo-home"))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// `--remap-path-prefix FROM=TO` for each path and its canonical form. rustc applies the last
/// matching mapping, so shorter (enclosing) paths come first and nested ones override them.
pub fn remap_flags(pairs: &[(&Path, &str)]) -> Vec<String> {
    let mut maps: Vec<(PathBuf, &str)> = Vec::new();
    for &(path, to) in pairs {
        maps.push((path.to_path_buf(), to));
        if let Ok(canon) = std::fs::canonicalize(path) {
            if canon != path {
                maps.push((canon, to));
            }
        }
    }
    maps.sort_by_key(|(p, _)| p.components().count());
    maps.into_iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect()
}

/// Pass `flags` to rustc for the target without losing the user's own flags: appended to
/// `CARGO_ENCODED_RUSTFLAGS` or `RUSTFLAGS` when set (they replace config rustflags), else given
/// as `--config target.<triple>.rustflags`, which Cargo joins with the config files' arrays.
fn apply_rustflags(cmd: &mut Command, triple: &str, flags: &[String], env_only: bool) {
    let encoded = std::env::var_os("CARGO_ENCODED_RUSTFLAGS");
    let plain = std::env::var_os("RUSTFLAGS");
    match rustflags_for(
        triple,
        flags,
        env_only,
        encoded.as_deref(),
        plain.as_deref(),
    ) {
        Rustflags::Encoded(value) => {
            cmd.env_remove("RUSTFLAGS")
                .env("CARGO_ENCODED_RUSTFLAGS", value);
        }
        Rustflags::Config(arg) => {
            cmd.arg("--config").arg(arg);
        }
    }
}

/// How extra rustc flags reach Cargo.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rustflags {
    /// The value for `CARGO_ENCODED_RUSTFLAGS` (0x1f-separated), with `RUSTFLAGS` removed.
    Encoded(String),
    /// A `--config` argument setting `target.<triple>.rustflags`.
    Config(String),
}

/// `flags` after the user's `CARGO_ENCODED_RUSTFLAGS` (`encoded`) or `RUSTFLAGS` (`plain`), the
/// first of them that is set winning as in Cargo; with neither, a `--config` (unless `env_only`).
fn rustflags_for(
    triple: &str,
    flags: &[String],
    env_only: bool,
    encoded: Option<&OsStr>,
    plain: Option<&OsStr>,
) -> Rustflags {
    let user: Option<Vec<String>> = match (encoded, plain) {
        (Some(e), _) => Some(
            e.to_string_lossy()
                .split('\x1f')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
        (None, Some(p)) => Some(
            p.to_string_lossy()
                .split_whitespace()
                .map(String::from)
                .collect(),
        ),
        (None, None) if env_only => Some(Vec::new()),
        (None, None) => None,
    };
    match user {
        Some(mut all) => {
            all.extend_from_slice(flags);
            Rustflags::Encoded(all.join("\x1f"))
        }
        None => {
            let array =
                toml::Value::Array(flags.iter().cloned().map(toml::Value::String).collect());
            let key = toml::Value::String(triple.to_string());
            Rustflags::Config(format!("target.{key}.rustflags={array}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remap() -> Vec<String> {
        vec!["--remap-path-prefix=/p=/edgeai/src".to_string()]
    }

    #[test]
    fn user_rustflags_are_kept_and_extended() {
        let t = "aarch64-unknown-linux-gnu";
        assert_eq!(
            rustflags_for(
                t,
                &remap(),
                false,
                None,
                Some(OsStr::new(" -C  target-cpu=cortex-a76 "))
            ),
            Rustflags::Encoded(
                "-C\x1ftarget-cpu=cortex-a76\x1f--remap-path-prefix=/p=/edgeai/src".into()
            )
        );
        // CARGO_ENCODED_RUSTFLAGS wins over RUSTFLAGS, as in Cargo; arguments keep their spaces.
        assert_eq!(
            rustflags_for(
                t,
                &remap(),
                false,
                Some(OsStr::new("--cfg\x1ffeature=\"a b\"")),
                Some(OsStr::new("-Dwarnings"))
            ),
            Rustflags::Encoded(
                "--cfg\x1ffeature=\"a b\"\x1f--remap-path-prefix=/p=/edgeai/src".into()
            )
        );
        assert_eq!(
            rustflags_for(t, &remap(), true, None, None),
            Rustflags::Encoded("--remap-path-prefix=/p=/edgeai/src".into())
        );
    }

    #[test]
    fn without_env_flags_a_config_joins_the_users_config() {
        let Rustflags::Config(arg) = rustflags_for(
            "aarch64-unknown-linux-gnu",
            &["--remap-path-prefix=/a \"q\"=/x".to_string()],
            false,
            None,
            None,
        ) else {
            panic!("expected --config");
        };
        // Valid TOML, with the path's quote escaped.
        let parsed: toml::Table = toml::from_str(&arg).expect("--config is TOML");
        let flags = &parsed["target"]["aarch64-unknown-linux-gnu"]["rustflags"];
        assert_eq!(flags[0].as_str(), Some("--remap-path-prefix=/a \"q\"=/x"));
    }

    #[test]
    fn remaps_put_nested_paths_last() {
        let flags = remap_flags(&[
            (Path::new("/nonexistent-edgeai/project/target"), "/t"),
            (Path::new("/nonexistent-edgeai/project"), "/s"),
        ]);
        assert_eq!(
            flags,
            [
                "--remap-path-prefix=/nonexistent-edgeai/project=/s",
                "--remap-path-prefix=/nonexistent-edgeai/project/target=/t"
            ]
        );
    }

    #[test]
    fn tool_env_uses_cargo_and_cc_names() {
        let env = tool_env(
            "armv7-unknown-linux-gnueabihf",
            "arm-linux-gnueabihf-gcc",
            "arm-linux-gnueabihf-g++",
            "arm-linux-gnueabihf-ar",
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER",
            "CC_armv7_unknown_linux_gnueabihf",
            "CXX_armv7_unknown_linux_gnueabihf",
            "AR_armv7_unknown_linux_gnueabihf",
        ] {
            assert!(
                names.contains(&want) || std::env::var_os(want).is_some(),
                "{want} in {names:?}"
            );
        }
    }
}
