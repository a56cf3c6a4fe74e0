//! `cargo edgeai keygen`, `sign` and `verify` through the real binary: exit codes, messages,
//! JSON, key files, Debian's `minisign` on our signatures, and tampered bundles.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{stderr, stdout, TestContext};

/// `cargo edgeai ARGS` in the scratch directory with extra environment.
fn run_env(ctx: &TestContext, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cargo-edgeai"));
    c.arg("edgeai")
        .args(args)
        .current_dir(ctx.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("EDGEAI_KEY_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run cargo-edgeai")
}

/// A small bundle made through the library (the build pipeline's own path).
fn make_bundle(ctx: &TestContext) -> PathBuf {
    let model = ctx.write(
        "in/model.gguf",
        (0..50_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    let app = ctx.write("in/app", "#!/bin/sh\necho hello\n");
    let spec = edgeai_bundle::BundleSpec {
        name: "app".into(),
        version: "0.1.0".into(),
        target: "host-x86_64".into(),
        files: vec![
            edgeai_bundle::BundleFile {
                path: "model/model.gguf".into(),
                source: model,
                executable: false,
            },
            edgeai_bundle::BundleFile {
                path: "bin/app".into(),
                source: app,
                executable: true,
            },
        ],
        plan: serde_json::json!({"framework": "llama.cpp", "quantization": "Q4_K_M"}),
        toolchains: BTreeMap::new(),
        validation: None,
        sbom: None,
        source_date_epoch: 1_700_000_000,
        launcher: Some("bin/app".into()),
    };
    let out = ctx.path("dist/app-0.1.0-host-x86_64.zip");
    edgeai_bundle::write_bundle(&spec, &out).expect("write_bundle");
    out
}

fn keygen_unencrypted(ctx: &TestContext) {
    let o = run_env(ctx, &["keygen", "--unencrypted"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

fn python(args: &[&str]) {
    let o = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 is needed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn keygen_sign_verify_and_debian_minisign() {
    let ctx = TestContext::new();
    let bundle = make_bundle(&ctx);
    ctx.write("pw.txt", "s3cret password\n");
    let o = run_env(
        &ctx,
        &[
            "keygen",
            "-o",
            "keys/release.key",
            "--password-file",
            "pw.txt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("keys/release.key.pub"),
        "{}",
        stdout(&o)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ctx.path("keys/release.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The password from the environment (CI), then from the file.
    let bundle_arg = bundle.to_str().unwrap();
    let o = run_env(
        &ctx,
        &["sign", bundle_arg, "--key", "keys/release.key"],
        &[("EDGEAI_KEY_PASSWORD", "s3cret password")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(".zip.minisig"), "{}", stdout(&o));
    let o = run_env(
        &ctx,
        &[
            "sign",
            bundle_arg,
            "--key",
            "keys/release.key",
            "--password-file",
            "pw.txt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A wrong password is a user error naming the key.
    ctx.write("bad.txt", "nope\n");
    let o = run_env(
        &ctx,
        &[
            "sign",
            bundle_arg,
            "--key",
            "keys/release.key",
            "--password-file",
            "bad.txt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("release.key") && stderr(&o).contains("cannot decrypt"),
        "{}",
        stderr(&o)
    );

    let o = run_env(
        &ctx,
        &["verify", bundle_arg, "--pubkey", "keys/release.key.pub"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for check in ["signature", "archive", "manifest", "files", "entries"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(check) && l.contains(" ok ")),
            "{check}: {text}"
        );
    }
    let o = run_env(
        &ctx,
        &[
            "verify",
            bundle_arg,
            "--pubkey",
            "keys/release.key.pub",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["checks"].as_array().unwrap().len(), 5);
    assert_eq!(v["name"], "app");
    assert_eq!(v["sha256"], edgeai_bundle::sha256_file(&bundle).unwrap());

    // Stock minisign agrees.
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&bundle)
        .arg("-p")
        .arg(ctx.path("keys/release.key.pub"))
        .output()
        .expect("Debian's minisign is needed: apt-get install -y minisign");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn keygen_refuses_to_overwrite_and_needs_a_password_source() {
    let ctx = TestContext::new();
    keygen_unencrypted(&ctx);
    let before = std::fs::read(ctx.path("edgeai.key")).unwrap();
    let o = run_env(&ctx, &["keygen", "--unencrypted"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("edgeai.key: already exists; refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(ctx.path("edgeai.key")).unwrap(), before);
    let o = run_env(&ctx, &["keygen", "--unencrypted", "--force"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(std::fs::read(ctx.path("edgeai.key")).unwrap(), before);
    // --unencrypted and --password-file contradict each other.
    ctx.write("pw", "x\n");
    let o = run_env(
        &ctx,
        &[
            "keygen",
            "-o",
            "k2",
            "--unencrypted",
            "--password-file",
            "pw",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The environment password encrypts the key.
    let o = run_env(
        &ctx,
        &["keygen", "-o", "k3"],
        &[("EDGEAI_KEY_PASSWORD", "pw")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(edgeai_bundle::secret_key_is_encrypted(&ctx.path("k3")).unwrap());
    // Signing with the public key by mistake names the problem.
    let bundle = make_bundle(&ctx);
    let o = run_env(
        &ctx,
        &["sign", bundle.to_str().unwrap(), "--key", "k3.pub"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a minisign secret key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn tampered_bundles_exit_1_naming_the_problem() {
    let ctx = TestContext::new();
    keygen_unencrypted(&ctx);
    let bundle = make_bundle(&ctx);
    let b = bundle.to_str().unwrap();
    let sign = |ctx: &TestContext| {
        let o = run_env(ctx, &["sign", b, "--key", "edgeai.key"], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    };
    let verify = |ctx: &TestContext, format: &str| {
        run_env(
            ctx,
            &[
                "verify",
                b,
                "--pubkey",
                "edgeai.key.pub",
                "--format",
                format,
            ],
            &[],
        )
    };
    sign(&ctx);
    assert_eq!(verify(&ctx, "human").status.code(), Some(0));
    let original = std::fs::read(&bundle).unwrap();

    // Single byte flips at a few places: header, data, central directory, end record.
    for pos in [
        0usize,
        40,
        original.len() / 2,
        original.len() - 60,
        original.len() - 1,
    ] {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x04;
        std::fs::write(&bundle, &bytes).unwrap();
        let o = verify(&ctx, "human");
        assert_eq!(o.status.code(), Some(1), "flip at {pos}");
        assert!(
            stderr(&o).contains("verification failed (signature)"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("help:"), "{}", stderr(&o));
        let o = verify(&ctx, "json");
        assert_eq!(o.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["passed"], false);
        assert_eq!(v["failed_check"], "signature");
    }
    std::fs::write(&bundle, &original).unwrap();

    // Inside, re-signed with the real key: a modified file, with Python's zipfile as the tool.
    python(&[
        "-c",
        "import sys, zipfile\n\
         src = zipfile.ZipFile(sys.argv[1]); items = [(i, src.read(i.filename)) for i in src.infolist()]; src.close()\n\
         with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
         \x20   for i, data in items:\n\
         \x20       if i.filename == 'model/model.gguf': data = data[:10] + b'X' + data[11:]\n\
         \x20       z.writestr(i, data)\n",
        b,
    ]);
    sign(&ctx);
    let o = verify(&ctx, "human");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("verification failed (files)")
            && err.contains("entry `model/model.gguf`: sha256 expected"),
        "{err}"
    );

    // An extra entry, and an entry that escapes the extraction directory.
    for (name, needle) in [
        ("bin/extra", "extra entry `bin/extra`"),
        ("../evil", "entry `../evil`: unsafe entry name"),
    ] {
        std::fs::write(&bundle, &original).unwrap();
        python(&[
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'a').writestr(sys.argv[2], b'x')",
            b,
            name,
        ]);
        sign(&ctx);
        let o = verify(&ctx, "json");
        assert_eq!(o.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }

    // A missing signature file.
    std::fs::write(&bundle, &original).unwrap();
    std::fs::remove_file(edgeai_bundle::signature_path(&bundle)).unwrap();
    let o = verify(&ctx, "human");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read the signature"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn real_model_bundle_is_reproducible_signed_and_verified() {
    use std::time::Instant;
    let model = common::smollm2_gguf();
    let ctx = TestContext::new();
    keygen_unencrypted(&ctx);
    let spec = |dir: &std::path::Path| {
        // A copy per directory, so the two builds share no input path.
        let copy = dir.join("SmolLM2.gguf");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(&model, &copy).unwrap();
        edgeai_bundle::BundleSpec {
            name: "smollm2".into(),
            version: "0.1.0".into(),
            target: "host-x86_64".into(),
            files: vec![edgeai_bundle::BundleFile {
                path: "model/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                source: copy,
                executable: false,
            }],
            plan: serde_json::json!({"framework": "llama.cpp", "quantization": "Q4_1"}),
            toolchains: BTreeMap::new(),
            validation: None,
            sbom: None,
            source_date_epoch: 1_700_000_000,
            launcher: None,
        }
    };
    let a = ctx.path("a/smollm2-0.1.0-host-x86_64.zip");
    let t = Instant::now();
    let sum_a = edgeai_bundle::write_bundle(&spec(&ctx.path("src-a")), &a).unwrap();
    let write_time = t.elapsed();
    let other = TestContext::new();
    let b = other.path("b/smollm2-0.1.0-host-x86_64.zip");
    let sum_b = edgeai_bundle::write_bundle(&spec(&other.path("src-b")), &b).unwrap();
    assert_eq!(sum_a.sha256, sum_b.sha256);

    let t = Instant::now();
    let o = run_env(
        &ctx,
        &["sign", a.to_str().unwrap(), "--key", "edgeai.key"],
        &[],
    );
    let sign_time = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = Instant::now();
    let o = run_env(
        &ctx,
        &["verify", a.to_str().unwrap(), "--pubkey", "edgeai.key.pub"],
        &[],
    );
    let verify_time = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = Instant::now();
    let o = Command::new("minisign")
        .arg("-Vm")
        .arg(&a)
        .arg("-p")
        .arg(ctx.path("edgeai.key.pub"))
        .output()
        .expect("Debian's minisign is needed: apt-get install -y minisign");
    let minisign_time = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!(
        "SmolLM2 Q4_1 ({} bytes) -> bundle {} bytes; write {write_time:?}, sign (CLI) {sign_time:?}, verify (CLI) {verify_time:?}, minisign -V {minisign_time:?}",
        std::fs::metadata(&model).unwrap().len(),
        sum_a.size
    );
}
