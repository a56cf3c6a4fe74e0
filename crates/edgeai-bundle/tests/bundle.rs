//! Bundles end to end through the library: reproducibility, interoperability with standard
//! zip readers and Debian's `minisign`, tampering (outside and inside the signature),
//! unsafe archives, secret keys, host paths, and snapshots of the generated files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use edgeai_bundle::zip::Archive;
use edgeai_bundle::{
    keygen, sign_bundle, verify_bundle, write_bundle, BundleFile, BundleSpec, Check, Error,
    KeyProtection, MANIFEST_NAME,
};

/// Deterministic pseudo-random bytes (xorshift64*), so the inputs never change.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

const EPOCH: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

/// Input files of a small bundle in `dir`: an incompressible "model", a compressible config,
/// an executable app (a shell script, so the launcher can run it) and a nested file.
fn write_inputs(dir: &Path) -> Vec<BundleFile> {
    let mut rng = Rng(0x5eed);
    let files: Vec<(&str, Vec<u8>, bool)> = vec![
        ("model/model.gguf", rng.bytes(256 * 1024), false),
        (
            "model/config.json",
            br#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2}"#
                .repeat(20),
            false,
        ),
        (
            "bin/app",
            b"#!/bin/sh\necho \"app ran with: $*\"\necho \"bundle dir: ${EDGEAI_BUNDLE_DIR##*/}\"\n"
                .to_vec(),
            true,
        ),
        ("model/tokenizer/vocab.txt", b"<s>\n</s>\nhello\nworld\n".repeat(100), false),
    ];
    files
        .into_iter()
        .map(|(path, bytes, executable)| {
            let source = dir.join("src").join(path.replace('/', "_"));
            std::fs::create_dir_all(source.parent().unwrap()).unwrap();
            std::fs::write(&source, bytes).unwrap();
            BundleFile {
                path: path.to_string(),
                source,
                executable,
            }
        })
        .collect()
}

fn spec_for(files: Vec<BundleFile>) -> BundleSpec {
    BundleSpec {
        name: "hello-edge".into(),
        version: "0.1.0".into(),
        target: "host-x86_64".into(),
        files,
        plan: serde_json::json!({
            "schema": 1,
            "target": "host-x86_64",
            "framework": "llama.cpp",
            "format": "gguf",
            "quantization": "Q4_K_M",
            "context_length": 2048,
            "steps": [{"kind": "quantize", "type": "Q4_K_M"}],
        }),
        toolchains: BTreeMap::from([
            ("cargo-edgeai".to_string(), "0.1.0".to_string()),
            ("rustc".to_string(), "1.95.0".to_string()),
        ]),
        validation: Some(serde_json::json!({"passed": true, "ppl": 19.7, "kld_mean": 0.01})),
        sbom: None,
        source_date_epoch: EPOCH,
        launcher: Some("bin/app".into()),
    }
}

fn build_in(dir: &Path) -> (BundleSpec, PathBuf, edgeai_bundle::BundleSummary) {
    let spec = spec_for(write_inputs(dir));
    let out = dir.join("out").join("hello-edge-0.1.0-host-x86_64.zip");
    let summary = write_bundle(&spec, &out).expect("write_bundle");
    (spec, out, summary)
}

fn unencrypted_key(dir: &Path) -> (PathBuf, PathBuf) {
    let sk = dir.join("edgeai.key");
    let pk = dir.join("edgeai.key.pub");
    keygen(&sk, &pk, KeyProtection::Unencrypted, false).expect("keygen");
    (sk, pk)
}

fn sha256(path: &Path) -> String {
    edgeai_bundle::sha256_file(path).unwrap()
}

/// `path` as bytes for searching.
fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn reproducible_across_directories_and_times() {
    let a = tempfile::tempdir().unwrap();
    let (_, out_a, sum_a) = build_in(a.path());

    std::thread::sleep(Duration::from_millis(1100));
    let b = tempfile::tempdir().unwrap();
    let files = write_inputs(b.path());
    // Different mtimes and permissions of the sources must not matter.
    for (i, f) in files.iter().enumerate() {
        let file = std::fs::File::options()
            .write(true)
            .open(&f.source)
            .unwrap();
        file.set_modified(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + i as u64 * 7777),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = if i % 2 == 0 { 0o600 } else { 0o755 };
        std::fs::set_permissions(&f.source, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let spec_b = spec_for(files);
    let out_b = b
        .path()
        .join("elsewhere")
        .join("deeper")
        .join("hello-edge-0.1.0-host-x86_64.zip");
    let sum_b = write_bundle(&spec_b, &out_b).unwrap();

    assert_ne!(a.path(), b.path());
    assert_eq!(
        sum_a.sha256, sum_b.sha256,
        "same spec, different dirs and times"
    );
    assert_eq!(
        std::fs::read(&out_a).unwrap(),
        std::fs::read(&out_b).unwrap()
    );
    assert_eq!(sha256(&out_a), sum_a.sha256);
    assert_eq!(sum_a.size, std::fs::metadata(&out_a).unwrap().len());
    eprintln!("bundle size {} bytes, sha256 {}", sum_a.size, sum_a.sha256);

    // The comparison can fail: another epoch or one changed byte gives another bundle.
    let mut spec_c = spec_b.clone();
    spec_c.source_date_epoch += 2;
    let sum_c = write_bundle(&spec_c, &b.path().join("c.zip")).unwrap();
    assert_ne!(sum_c.sha256, sum_a.sha256);
    let mut bytes = std::fs::read(&spec_b.files[1].source).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&spec_b.files[1].source, bytes).unwrap();
    let sum_d = write_bundle(&spec_b, &b.path().join("d.zip")).unwrap();
    assert_ne!(sum_d.sha256, sum_a.sha256);

    // Entries sorted, no temp files left behind.
    let mut sorted = sum_a.entries.clone();
    sorted.sort();
    assert_eq!(sum_a.entries, sorted);
    let leftovers: Vec<_> = std::fs::read_dir(out_a.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn standard_zip_readers_agree_and_launcher_runs() {
    let d = tempfile::tempdir().unwrap();
    let (spec, out, summary) = build_in(d.path());
    // Python's zipfile: names, CRCs, modes, timestamps, no extra fields, contents.
    let script = r#"
import sys, zipfile, stat
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
for i in z.infolist():
    mode = i.external_attr >> 16
    print(i.filename, oct(stat.S_IMODE(mode)), stat.S_ISREG(mode), i.date_time, len(i.extra), i.compress_type, i.create_system)
z.extractall(sys.argv[2])
"#;
    let unpacked = d.path().join("unpacked");
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&out)
        .arg(d.path().join("py"))
        .output()
        .expect("python3 is needed (Debian: apt-get install python3)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, summary.entries);
    for line in listing.lines() {
        let exec = line.starts_with("bin/app ") || line.starts_with("run.sh ");
        let mode = if exec { "0o755" } else { "0o644" };
        assert!(
            line.contains(&format!(" {mode} True (2023, 11, 14, 22, 13, 20) 0 ")),
            "{line}"
        );
    }
    // Info-ZIP unzip agrees too, and keeps the modes (Python's extractall does not).
    let o = Command::new("unzip")
        .arg("-q")
        .arg(&out)
        .arg("-d")
        .arg(&unpacked)
        .output()
        .expect("unzip is needed (apt-get install unzip)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in &spec.files {
        assert_eq!(
            std::fs::read(unpacked.join(&f.path)).unwrap(),
            std::fs::read(&f.source).unwrap()
        );
        assert_eq!(
            std::fs::read(d.path().join("py").join(&f.path)).unwrap(),
            std::fs::read(&f.source).unwrap()
        );
    }
    // The launcher runs the app from wherever the bundle is unpacked.
    let o = Command::new("sh")
        .arg(unpacked.join("run.sh"))
        .args(["one", "two"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("app ran with: one two"), "{text}");
    assert!(text.contains("bundle dir: unpacked"), "{text}");
}

#[test]
fn debian_minisign_verifies_our_signature() {
    let d = tempfile::tempdir().unwrap();
    let (_, out, _) = build_in(d.path());
    let run_minisign = |pk: &Path| {
        Command::new("minisign")
            .arg("-Vm")
            .arg(&out)
            .arg("-p")
            .arg(pk)
            .output()
            .expect("Debian's minisign is needed: apt-get install -y minisign")
    };
    // Unencrypted key.
    let (sk, pk) = unencrypted_key(d.path());
    let sig = sign_bundle(&out, &sk, None).unwrap();
    assert_eq!(
        sig,
        d.path()
            .join("out/hello-edge-0.1.0-host-x86_64.zip.minisig")
    );
    let o = run_minisign(&pk);
    assert!(
        o.status.success(),
        "minisign: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Signature and comment signature verified"),
        "{text}"
    );
    assert!(
        text.contains("file:hello-edge-0.1.0-host-x86_64.zip"),
        "{text}"
    );
    assert!(text.contains(&format!("sha256:{}", sha256(&out))), "{text}");
    // Prehashed: minisign's ED algorithm.
    let sig_text = std::fs::read_to_string(&sig).unwrap();
    let raw = sig_text.lines().nth(1).unwrap();
    // base64 of "ED" starts with "RU", of legacy "Ed" with "RW".
    assert!(
        raw.starts_with("RU"),
        "not a prehashed (ED) signature: {raw}"
    );

    // Password-protected key.
    let sk2 = d.path().join("pw.key");
    let pk2 = d.path().join("pw.key.pub");
    keygen(
        &sk2,
        &pk2,
        KeyProtection::Password("correct horse".into()),
        false,
    )
    .unwrap();
    assert!(edgeai_bundle::secret_key_is_encrypted(&sk2).unwrap());
    assert!(!edgeai_bundle::secret_key_is_encrypted(&sk).unwrap());
    let err = sign_bundle(&out, &sk2, Some("wrong")).unwrap_err();
    assert!(err.to_string().contains("cannot decrypt"), "{err}");
    let err = sign_bundle(&out, &sk2, None).unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
    sign_bundle(&out, &sk2, Some("correct horse")).unwrap();
    let o = run_minisign(&pk2);
    assert!(
        o.status.success(),
        "minisign: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    verify_bundle(&out, &pk2).unwrap();
    // And minisign refuses the other key, as we do.
    let o = run_minisign(&pk);
    assert!(!o.status.success());
    let err = verify_bundle(&out, &pk).unwrap_err();
    assert_eq!(err.failed_check(), Some(Check::Signature));

    // A flipped byte: minisign refuses it too.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[100] ^= 0x20;
    std::fs::write(&out, bytes).unwrap();
    assert!(!run_minisign(&pk2).status.success());
}

#[test]
fn every_single_byte_flip_fails_verification() {
    let d = tempfile::tempdir().unwrap();
    let (_, out, summary) = build_in(d.path());
    let (sk, pk) = unencrypted_key(d.path());
    sign_bundle(&out, &sk, None).unwrap();
    let t = Instant::now();
    let report = verify_bundle(&out, &pk).unwrap();
    let clean = t.elapsed();
    assert!(report.passed);
    assert_eq!(report.checks.len(), 5);
    assert_eq!(report.sha256, summary.sha256);

    let original = std::fs::read(&out).unwrap();
    let mut rng = Rng(20_261_128);
    let trials = 1000;
    let t = Instant::now();
    let mut by_check: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..trials {
        // Spread over the whole file: the last 100 trials hit the central directory and end records.
        let pos = if i < trials - 100 {
            (rng.next() % original.len() as u64) as usize
        } else {
            original.len() - 1 - (rng.next() % 2000.min(original.len() as u64)) as usize
        };
        let bit = 1u8 << (rng.next() % 8);
        let mut bytes = original.clone();
        bytes[pos] ^= bit;
        std::fs::write(&out, &bytes).unwrap();
        match verify_bundle(&out, &pk) {
            Ok(_) => panic!("flip of bit {bit:#x} at byte {pos} was not detected"),
            Err(e) => {
                let check = e.failed_check().expect("a verification error");
                assert!(e.to_string().contains("verification failed"), "{e}");
                *by_check.entry(check.to_string()).or_default() += 1;
            }
        }
    }
    let per = t.elapsed() / trials as u32;
    std::fs::write(&out, &original).unwrap();
    verify_bundle(&out, &pk).unwrap();
    eprintln!(
        "{trials} flips over {} bytes all detected ({by_check:?}); verify clean {clean:?}, per tampered trial {per:?}",
        original.len()
    );
    assert_eq!(by_check.values().sum::<usize>(), trials);

    // Flips in the signature file fail too.
    let sig_path = edgeai_bundle::signature_path(&out);
    let sig = std::fs::read(&sig_path).unwrap();
    let second_line = sig.iter().position(|&b| b == b'\n').unwrap() + 1;
    for k in 0..50 {
        let mut s = sig.clone();
        let pos = second_line + (k * 7) % (sig.len() - second_line - 1);
        s[pos] ^= 0x01;
        std::fs::write(&sig_path, &s).unwrap();
        assert!(verify_bundle(&out, &pk).is_err(), "signature byte {pos}");
    }
}

/// A minimal zip writer (stored entries, names and modes as given): the attacker's tool.
fn raw_zip(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data, mode) in entries {
        let crc = crc32fast_like(data);
        let off = out.len() as u32;
        let mut h = Vec::new();
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&0x0800u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        cd.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes());
        cd.extend_from_slice(&h[4..30]);
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&(mode << 16).to_le_bytes());
        cd.extend_from_slice(&off.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&cd);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// CRC-32 (IEEE), bitwise: the attacker's tool should not share code with the verifier.
fn crc32fast_like(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn entries_of(path: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let a = Archive::open(path).unwrap();
    a.entries()
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                a.read_entry(e, 1 << 30).unwrap(),
                e.unix_mode.unwrap(),
            )
        })
        .collect()
}

/// Write `entries` as the bundle, re-sign it with the real key, verify: the error.
fn resign_and_verify(
    out: &Path,
    sk: &Path,
    pk: &Path,
    entries: &[(String, Vec<u8>, u32)],
) -> Error {
    let refs: Vec<(&str, &[u8], u32)> = entries
        .iter()
        .map(|(n, d, m)| (n.as_str(), d.as_slice(), *m))
        .collect();
    std::fs::write(out, raw_zip(&refs)).unwrap();
    sign_bundle(out, sk, None).unwrap();
    verify_bundle(out, pk).expect_err("tampered bundle must not verify")
}

#[test]
fn tampering_inside_a_resigned_bundle_is_caught_by_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let (_, out, _) = build_in(d.path());
    let (sk, pk) = unencrypted_key(d.path());
    let original = entries_of(&out);

    // Our raw writer reproduces a valid bundle: the baseline verifies.
    let err = {
        let refs: Vec<(&str, &[u8], u32)> = original
            .iter()
            .map(|(n, b, m)| (n.as_str(), b.as_slice(), *m))
            .collect();
        std::fs::write(&out, raw_zip(&refs)).unwrap();
        sign_bundle(&out, &sk, None).unwrap();
        verify_bundle(&out, &pk)
    };
    assert!(err.is_ok(), "baseline: {:?}", err.err());

    let expect = |e: Error, check: Check, needles: &[&str]| {
        assert_eq!(e.failed_check(), Some(check), "{e}");
        let msg = e.to_string();
        for n in needles {
            assert!(msg.contains(n), "`{n}` not in: {msg}");
        }
        assert!(!e.help_text().is_empty());
    };

    // Modified bytes of a file.
    let mut t = original.clone();
    let i = t.iter().position(|e| e.0 == "model/model.gguf").unwrap();
    t[i].1[1000] ^= 0xff;
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(
        e,
        Check::Files,
        &["entry `model/model.gguf`", "sha256 expected", "actual"],
    );

    // Same size change of the generated launcher (a likely attack: run something else).
    let mut t = original.clone();
    let i = t.iter().position(|e| e.0 == "run.sh").unwrap();
    t[i].1 = String::from_utf8(t[i].1.clone())
        .unwrap()
        .replace("exec", "eval")
        .into_bytes();
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(e, Check::Files, &["entry `run.sh`"]);

    // An added entry.
    let mut t = original.clone();
    t.push(("bin/backdoor".into(), b"#!/bin/sh\n".to_vec(), 0o100755));
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(e, Check::Entries, &["extra entry `bin/backdoor`"]);

    // A removed entry.
    let t: Vec<_> = original
        .iter()
        .filter(|e| e.0 != "model/config.json")
        .cloned()
        .collect();
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(e, Check::Entries, &["missing entry `model/config.json`"]);

    // A renamed entry.
    let mut t = original.clone();
    let i = t
        .iter()
        .position(|e| e.0 == "model/tokenizer/vocab.txt")
        .unwrap();
    t[i].0 = "model/tokenizer/vocab2.txt".into();
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(
        e,
        Check::Entries,
        &[
            "missing entry `model/tokenizer/vocab.txt`",
            "extra entry `model/tokenizer/vocab2.txt`",
        ],
    );

    // The manifest removed.
    let t: Vec<_> = original
        .iter()
        .filter(|e| e.0 != MANIFEST_NAME)
        .cloned()
        .collect();
    let e = resign_and_verify(&out, &sk, &pk, &t);
    expect(e, Check::Manifest, &[MANIFEST_NAME]);

    // A real zip tool as the attacker: Python's zipfile appends an entry.
    build_in(d.path());
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'a').writestr('model/extra.bin', b'x' * 100)",
        ])
        .arg(&out)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sign_bundle(&out, &sk, None).unwrap();
    let e = verify_bundle(&out, &pk).unwrap_err();
    expect(e, Check::Entries, &["extra entry `model/extra.bin`"]);
}

#[test]
fn unsafe_archives_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, out, _) = build_in(d.path());
    let (sk, pk) = unencrypted_key(d.path());
    let original = entries_of(&out);
    let cases: Vec<(&str, u32, &str)> = vec![
        ("../x", 0o100644, "`..` component"),
        ("model/../../x", 0o100644, "`..` component"),
        ("/etc/x", 0o100644, "absolute path"),
        ("C:/x", 0o100644, "drive letter"),
        ("model\\x", 0o100644, "backslash"),
        ("bin/link", 0o120777, "symbolic link"),
        ("model/dir/", 0o040755, "directory entry"),
        ("model/model.gguf", 0o100644, "duplicate entry name"),
        ("MODEL/model.gguf", 0o100644, "differs only by case"),
    ];
    for (name, mode, reason) in cases {
        let mut t = original.clone();
        t.push((name.to_string(), b"/etc/passwd".to_vec(), mode));
        let e = resign_and_verify(&out, &sk, &pk, &t);
        assert_eq!(e.failed_check(), Some(Check::Archive), "{name}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("entry `{name}`")), "{msg}");
        assert!(msg.contains(reason), "{name}: {msg}");
    }
    // Trailing data after the end record, and a truncated file.
    let good: Vec<(&str, &[u8], u32)> = original
        .iter()
        .map(|(n, b, m)| (n.as_str(), b.as_slice(), *m))
        .collect();
    let mut bytes = raw_zip(&good);
    bytes.extend_from_slice(b"junk");
    std::fs::write(&out, &bytes).unwrap();
    sign_bundle(&out, &sk, None).unwrap();
    assert_eq!(
        verify_bundle(&out, &pk).unwrap_err().failed_check(),
        Some(Check::Archive)
    );
    std::fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
    sign_bundle(&out, &sk, None).unwrap();
    assert_eq!(
        verify_bundle(&out, &pk).unwrap_err().failed_check(),
        Some(Check::Archive)
    );
}

#[test]
fn no_host_paths_or_user_names_inside() {
    let d = tempfile::tempdir().unwrap();
    let (_, out, _) = build_in(d.path());
    let raw = std::fs::read(&out).unwrap();
    let mut needles: Vec<String> = vec![d.path().display().to_string()];
    let tmp = std::env::temp_dir().display().to_string();
    needles.push(tmp.trim_end_matches('/').to_string());
    if let Some(h) = std::env::var_os("HOME") {
        needles.push(h.to_string_lossy().into_owned());
    }
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            needles.push(u);
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        needles.push(cwd.display().to_string());
    }
    needles.retain(|n| n.len() >= 3);
    assert!(!needles.is_empty());
    let mut haystacks = vec![("<raw bundle>".to_string(), raw)];
    for (name, bytes, _) in entries_of(&out) {
        haystacks.push((name, bytes));
    }
    for (name, hay) in &haystacks {
        for n in &needles {
            assert!(!contains(hay, n), "{name} contains the host string {n:?}");
        }
    }

    // And the library refuses metadata that would leak the build directory.
    let mut spec = spec_for(write_inputs(d.path()));
    spec.plan["model"] = serde_json::json!(d.path().join("models/x.gguf").display().to_string());
    let err = write_bundle(&spec, &d.path().join("leak.zip")).unwrap_err();
    assert!(err.to_string().contains("host path"), "{err}");
    assert!(!d.path().join("leak.zip").exists());
}

#[test]
fn secret_keys_never_enter_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = unencrypted_key(d.path());
    let pw_sk = d.path().join("pw.key");
    keygen(
        &pw_sk,
        &d.path().join("pw.key.pub"),
        KeyProtection::Password("pw".into()),
        false,
    )
    .unwrap();
    // Binary form, and a key pasted into the middle of an innocent-looking file.
    let binary = d.path().join("innocent.bin");
    let line = std::fs::read_to_string(&sk)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(line.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    std::fs::write(&binary, &decoded.stdout).unwrap();
    let embedded = d.path().join("notes.txt");
    let mut text = b"some notes\n".repeat(100_000);
    text.extend_from_slice(std::fs::read_to_string(&pw_sk).unwrap().as_bytes());
    text.extend_from_slice(&b"more\n".repeat(1000));
    std::fs::write(&embedded, text).unwrap();

    let out = d.path().join("out.zip");
    std::fs::write(&out, b"previous bundle").unwrap();
    for (key, name) in [
        (&sk, "keys/edgeai.key"),
        (&pw_sk, "config/settings"),
        (&binary, "x.bin"),
        (&embedded, "docs/notes.txt"),
    ] {
        let mut spec = spec_for(write_inputs(d.path()));
        spec.files.push(BundleFile {
            path: name.into(),
            source: key.clone(),
            executable: false,
        });
        let err = write_bundle(&spec, &out).unwrap_err();
        assert!(
            matches!(err, Error::SecretKeyInBundle { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        // The previous bundle is untouched.
        assert_eq!(std::fs::read(&out).unwrap(), b"previous bundle");
    }
    // The public key may be bundled.
    let mut spec = spec_for(write_inputs(d.path()));
    spec.files.push(BundleFile {
        path: "keys/edgeai.pub".into(),
        source: pk.clone(),
        executable: false,
    });
    write_bundle(&spec, &out).unwrap();
}

#[test]
fn keygen_writes_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = unencrypted_key(d.path());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sk), 0o600);
    assert_eq!(mode(&pk), 0o644);
    let before = std::fs::read(&sk).unwrap();
    let err = keygen(&sk, &pk, KeyProtection::Unencrypted, false).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert!(err.help_text().contains("--force"));
    assert_eq!(std::fs::read(&sk).unwrap(), before);
    // Only the public key present: still refused, secret not created.
    let sk2 = d.path().join("other.key");
    let err = keygen(&sk2, &pk, KeyProtection::Unencrypted, false).unwrap_err();
    assert!(err.to_string().contains("edgeai.key.pub"), "{err}");
    assert!(!sk2.exists());
    keygen(&sk, &pk, KeyProtection::Password("x".into()), true).unwrap();
    assert_ne!(std::fs::read(&sk).unwrap(), before);
    assert_eq!(mode(&sk), 0o600);
    // Empty passwords are refused.
    let err = keygen(
        &d.path().join("e.key"),
        &d.path().join("e.pub"),
        KeyProtection::Password(String::new()),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("empty password"));
    // No temp files left over.
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".edgeai")), "{names:?}");
}

type Edit = Box<dyn Fn(&mut BundleSpec)>;

#[test]
fn spec_errors_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let base = spec_for(write_inputs(d.path()));
    let out = d.path().join("x.zip");
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| s.files[0].path = "../model.gguf".into()),
            "unsafe",
        ),
        (
            Box::new(|s| s.files[0].path = "README.md".into()),
            "reserved",
        ),
        (
            Box::new(|s| s.files[1].path = s.files[0].path.to_uppercase()),
            "twice",
        ),
        (
            Box::new(|s| s.launcher = Some("bin/missing".into())),
            "not one of the bundle's files",
        ),
        (
            Box::new(|s| s.launcher = Some("model/config.json".into())),
            "not marked executable",
        ),
        (
            Box::new(|s| s.name = "a\nrm -rf /".into()),
            "control characters",
        ),
    ];
    for (edit, needle) in cases {
        let mut s = base.clone();
        edit(&mut s);
        let err = write_bundle(&s, &out).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn sbom_from_cargo_metadata_of_this_workspace() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let md = cargo_metadata::MetadataCommand::new()
        .manifest_path(&manifest)
        .exec()
        .expect("cargo metadata");
    let pkg = md
        .packages
        .iter()
        .find(|p| p.name.as_str() == "edgeai-bundle")
        .unwrap();
    let bom = edgeai_bundle::sbom::from_cargo_metadata_at(&md, &pkg.id, EPOCH);
    let again = edgeai_bundle::sbom::from_cargo_metadata_at(&md, &pkg.id, EPOCH);
    assert_eq!(bom, again);
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["metadata"]["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(
        bom["metadata"]["component"]["purl"],
        format!("pkg:cargo/edgeai-bundle@{}", pkg.version)
    );
    let comps = bom["components"].as_array().unwrap();
    let names: Vec<&str> = comps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for dep in ["minisign", "tera", "serde_json", "sha2", "flate2"] {
        assert!(names.contains(&dep), "{dep} missing from {names:?}");
    }
    // Dev-dependencies do not ship.
    assert!(!names.contains(&"insta"), "{names:?}");
    let minisign = comps.iter().find(|c| c["name"] == "minisign").unwrap();
    assert_eq!(
        minisign["purl"],
        format!(
            "pkg:cargo/minisign@{}",
            minisign["version"].as_str().unwrap()
        )
    );
    let mut sorted = comps
        .iter()
        .map(|c| c["bom-ref"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let unsorted = sorted.clone();
    sorted.sort();
    assert_eq!(sorted, unsorted);
    let text = serde_json::to_string(&bom).unwrap();
    assert!(
        !text.contains(md.workspace_root.as_str()),
        "host path in SBOM"
    );
    let serial = bom["serialNumber"].as_str().unwrap();
    assert!(serial.starts_with("urn:uuid:"));
    // Another epoch: another timestamp and serial.
    let other = edgeai_bundle::sbom::from_cargo_metadata_at(&md, &pkg.id, EPOCH + 1);
    assert_ne!(other["serialNumber"], bom["serialNumber"]);
    // Dependencies graph entries reference known components.
    let deps = bom["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), comps.len() + 1);

    // In a bundle, the SBOM is written as given, with the bundle's epoch.
    let d = tempfile::tempdir().unwrap();
    let mut spec = spec_for(write_inputs(d.path()));
    spec.sbom = Some(bom.clone());
    spec.source_date_epoch = EPOCH;
    let out = d.path().join("s.zip");
    write_bundle(&spec, &out).unwrap();
    let (_, inside, _) = entries_of(&out)
        .into_iter()
        .find(|e| e.0 == "sbom.cdx.json")
        .unwrap();
    let inside: serde_json::Value = serde_json::from_slice(&inside).unwrap();
    assert_eq!(inside, bom);
}

#[test]
fn snapshots_of_generated_files() {
    let d = tempfile::tempdir().unwrap();
    let spec = spec_for(write_inputs(d.path()));
    let generated = edgeai_bundle::render_generated(&spec).unwrap();
    let text = |n: &str| String::from_utf8(generated[n].clone()).unwrap();
    insta::assert_snapshot!("manifest", text(MANIFEST_NAME));
    insta::assert_snapshot!("readme", text("README.md"));
    insta::assert_snapshot!("launcher", text("run.sh"));
    insta::assert_snapshot!("sbom_without_cargo_metadata", text("sbom.cdx.json"));
    // Without a launcher the script refuses, quoting the name safely.
    let mut s = spec.clone();
    s.launcher = None;
    s.name = "it's".into();
    s.validation = None;
    let g = edgeai_bundle::render_generated(&s).unwrap();
    insta::assert_snapshot!(
        "launcher_none",
        String::from_utf8(g["run.sh"].clone()).unwrap()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(String::from_utf8(g["run.sh"].clone()).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "it's 0.1.0: this bundle has no program to run; see README.md\n"
    );
}

/// Models above 4 GiB need zip64: a sparse 4 GiB + 10 byte file (no disk used) round-trips
/// through our writer, Python's and Info-ZIP's readers, and our verifier.
#[test]
fn zip64_entry_above_4_gib() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.bin");
    let size = (1u64 << 32) + 10;
    std::fs::File::create(&big).unwrap().set_len(size).unwrap();
    let mut spec = spec_for(write_inputs(d.path()));
    spec.files.push(BundleFile {
        path: "model/big.bin".into(),
        source: big,
        executable: false,
    });
    let out = d.path().join("big.zip");
    let t = Instant::now();
    let summary = write_bundle(&spec, &out).unwrap();
    let write_time = t.elapsed();
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); i = z.getinfo('model/big.bin'); print(i.file_size); print(len(z.read('bin/app')))",
        ])
        .arg(&out)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{size}\n78\n"));
    let o = Command::new("unzip")
        .arg("-l")
        .arg(&out)
        .output()
        .expect("unzip");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&size.to_string()));
    let (sk, pk) = unencrypted_key(d.path());
    sign_bundle(&out, &sk, None).unwrap();
    let t = Instant::now();
    verify_bundle(&out, &pk).unwrap();
    eprintln!(
        "zip64: {size}-byte entry -> bundle {} bytes; write {write_time:?}, verify {:?}",
        summary.size,
        t.elapsed()
    );
}

#[test]
fn source_date_epoch_from_env_then_git_then_1980() {
    // One test touches the variable, so no other test races on it.
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("f"), "x").unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo)
            .env("GIT_COMMITTER_DATE", "@1600000000 +0000")
            .env("GIT_AUTHOR_DATE", "@1500000000 +0000")
            .output()
            .expect("git is needed");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "f"]);
    git(&["commit", "-q", "-m", "x"]);
    let saved = std::env::var_os("SOURCE_DATE_EPOCH");
    std::env::set_var("SOURCE_DATE_EPOCH", "1234567890");
    assert_eq!(edgeai_bundle::source_date_epoch(&repo), 1_234_567_890);
    std::env::remove_var("SOURCE_DATE_EPOCH");
    assert_eq!(edgeai_bundle::source_date_epoch(&repo), 1_600_000_000);
    let plain = d.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert_eq!(edgeai_bundle::source_date_epoch(&plain), 315_532_800);
    if let Some(v) = saved {
        std::env::set_var("SOURCE_DATE_EPOCH", v);
    }
}
