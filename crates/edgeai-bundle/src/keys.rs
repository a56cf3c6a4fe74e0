//! minisign keys: generation (secret key 0600, written atomically, never silently replaced),
//! recognising a secret key by its content, and signing a bundle (prehashed `ED`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKeyBox, SecretKey, SecretKeyBox};

use crate::Error;

/// How the secret key is stored.
#[derive(Debug, Clone)]
pub enum KeyProtection {
    /// Encrypted with a key derived from this password (scrypt, minisign's parameters).
    Password(String),
    /// Stored in the clear: only when asked for explicitly (`--unencrypted`).
    Unencrypted,
}

/// Environment variable holding the secret key's password (CI).
pub const PASSWORD_ENV: &str = "EDGEAI_KEY_PASSWORD";

/// Size of a minisign secret key in its binary form: sig_alg, kdf_alg, chk_alg, salt,
/// opslimit, memlimit, keynum, secret key, checksum.
const SECRET_KEY_BYTES: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
/// Base64 length of that binary form (with padding).
const SECRET_KEY_B64: usize = SECRET_KEY_BYTES.div_ceil(3) * 4;
/// Base64 of the first 6 bytes of an encrypted ("Ed" "Sc" "B2") and an unencrypted
/// ("Ed" "\0\0" "B2") secret key: a key line always starts on a base64 group boundary.
const B64_PREFIXES: [&[u8]; 2] = [b"RWRTY0Iy", b"RWQAAEIy"];

fn is_secret_key_binary(b: &[u8]) -> bool {
    b.len() == SECRET_KEY_BYTES
        && &b[0..2] == b"Ed"
        && (&b[2..4] == b"Sc" || b[2..4] == [0, 0])
        && &b[4..6] == b"B2"
}

fn decode_b64(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    if s.len() & 3 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Finds minisign secret keys in a byte stream fed in chunks: the base64 text form (a line
/// anywhere in the file) and the raw binary form (a file that is exactly one key).
pub(crate) struct SecretKeyScanner {
    window: Vec<u8>,
    total: u64,
    first: Vec<u8>,
    found: bool,
}

impl SecretKeyScanner {
    pub(crate) fn new() -> Self {
        SecretKeyScanner {
            window: Vec::new(),
            total: 0,
            first: Vec::new(),
            found: false,
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        self.total += chunk.len() as u64;
        if self.first.len() <= SECRET_KEY_BYTES {
            let take = (SECRET_KEY_BYTES + 1 - self.first.len()).min(chunk.len());
            self.first.extend_from_slice(&chunk[..take]);
        }
        // Search the carried tail plus this chunk; matches too close to the end to be checked
        // are found again in the next window (the tail keeps SECRET_KEY_B64 - 1 bytes).
        self.window.extend_from_slice(chunk);
        self.scan(false);
        let keep = SECRET_KEY_B64 - 1;
        if self.window.len() > keep {
            self.window.drain(..self.window.len() - keep);
        }
    }

    fn scan(&mut self, at_end: bool) {
        for prefix in B64_PREFIXES {
            for p in memchr::memmem::find_iter(&self.window, prefix) {
                if p + SECRET_KEY_B64 > self.window.len() {
                    if at_end {
                        continue;
                    }
                    break;
                }
                if let Some(bytes) = decode_b64(&self.window[p..p + SECRET_KEY_B64]) {
                    if is_secret_key_binary(&bytes) {
                        self.found = true;
                        return;
                    }
                }
            }
        }
    }

    /// Whether the stream held a secret key.
    pub(crate) fn finish(mut self) -> bool {
        if !self.found {
            self.scan(true);
        }
        self.found || (self.total == SECRET_KEY_BYTES as u64 && is_secret_key_binary(&self.first))
    }
}

/// Whether `bytes` contain a minisign secret key (text or binary form).
pub fn contains_secret_key(bytes: &[u8]) -> bool {
    let mut s = SecretKeyScanner::new();
    s.feed(bytes);
    s.finish()
}

fn key_error(path: &Path, e: impl std::fmt::Display, help: &str) -> Error {
    Error::key(path, e.to_string(), help)
}

/// Write `bytes` to `dest` atomically with `mode`: a temp file in the same directory,
/// fsynced, then linked into place (no overwrite) or renamed over (with `force`).
fn write_key_file(dest: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Error> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // tempfile creates the file 0600 from the start, so a secret never exists with wider
    // permissions, even for a moment.
    let mut tmp = tempfile::Builder::new()
        .prefix(".edgeai-key-")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(dest, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(bytes).map_err(|e| Error::io(dest, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(dest, e))?;
    let result = if force {
        tmp.persist(dest).map(|_| ())
    } else {
        tmp.persist_noclobber(dest).map(|_| ())
    };
    result.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::key(
                dest,
                "already exists; refusing to overwrite a key",
                "pass --force to replace it (signatures made with the old key will no longer verify with the new public key), or choose another path with -o",
            )
        } else {
            Error::io(dest, e.error)
        }
    })?;
    sync_dir(&dir);
    Ok(())
}

/// fsync a directory so a rename in it survives a crash; best effort (not all filesystems allow it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Generate a key pair: `secret` (mode 0600) and `public` (0644), both in minisign's format.
/// Refuses to replace an existing file unless `force`.
pub fn keygen(
    secret: &Path,
    public: &Path,
    protection: KeyProtection,
    force: bool,
) -> Result<(), Error> {
    if !force {
        for p in [secret, public] {
            if p.exists() {
                return Err(Error::key(
                    p,
                    "already exists; refusing to overwrite a key",
                    "pass --force to replace it (signatures made with the old key will no longer verify with the new public key), or choose another path with -o",
                ));
            }
        }
    }
    if secret == public {
        return Err(Error::key(
            secret,
            "the secret and public key paths are the same file",
            "use different paths (the public key defaults to KEY.pub)",
        ));
    }
    let help = "this is unexpected; check that the system random number generator works";
    let (pair, comment) = match protection {
        KeyProtection::Password(pw) => {
            if pw.is_empty() {
                return Err(Error::key(
                    secret,
                    "empty password",
                    "choose a non-empty password, or pass --unencrypted to store the key unprotected (not recommended)",
                ));
            }
            let pair = KeyPair::generate_encrypted_keypair(Some(pw))
                .map_err(|e| key_error(secret, e, help))?;
            (pair, "minisign encrypted secret key (cargo-edgeai)")
        }
        KeyProtection::Unencrypted => {
            let pair =
                KeyPair::generate_unencrypted_keypair().map_err(|e| key_error(secret, e, help))?;
            (pair, "minisign unencrypted secret key (cargo-edgeai)")
        }
    };
    let sk_box = pair
        .sk
        .to_box(Some(comment))
        .map_err(|e| key_error(secret, e, help))?;
    let pk_box = pair.pk.to_box().map_err(|e| key_error(public, e, help))?;
    write_key_file(secret, &sk_box.to_bytes(), 0o600, force)?;
    write_key_file(public, &pk_box.to_bytes(), 0o644, force)?;
    Ok(())
}

/// Whether the secret key at `path` is password-protected (so the caller knows whether to
/// ask for a password). Errors when the file is not a minisign secret key.
pub fn secret_key_is_encrypted(path: &Path) -> Result<bool, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = secret_key_bytes(path, &text)?;
    Ok(&bytes[2..4] == b"Sc")
}

fn secret_key_bytes(path: &Path, text: &[u8]) -> Result<Vec<u8>, Error> {
    let not_key = || {
        Error::key(
            path,
            "not a minisign secret key",
            "pass the secret key written by `cargo edgeai keygen` (or `minisign -G`), not the .pub file",
        )
    };
    let s = std::str::from_utf8(text).map_err(|_| not_key())?;
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .ok_or_else(not_key)?;
    let bytes = decode_b64(line.as_bytes()).ok_or_else(not_key)?;
    if !is_secret_key_binary(&bytes) {
        return Err(not_key());
    }
    Ok(bytes)
}

/// Load a secret key; `password` is needed exactly when the key is encrypted.
pub fn load_secret_key(path: &Path, password: Option<&str>) -> Result<SecretKey, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = secret_key_bytes(path, &text)?;
    let encrypted = &bytes[2..4] == b"Sc";
    let sk_box = SecretKeyBox::from_string(&String::from_utf8_lossy(&text)).map_err(|e| {
        key_error(
            path,
            e,
            "the key file is damaged; regenerate it with `cargo edgeai keygen`",
        )
    })?;
    if encrypted {
        let Some(pw) = password else {
            return Err(Error::key(
                path,
                "the secret key is encrypted and no password was given",
                "pass --password-file FILE or set EDGEAI_KEY_PASSWORD (or run in a terminal to be asked)",
            ));
        };
        SecretKey::from_box(sk_box, Some(pw.to_string())).map_err(|e| {
            key_error(
                path,
                format!("cannot decrypt the secret key: {e}"),
                "check the password (--password-file or EDGEAI_KEY_PASSWORD)",
            )
        })
    } else {
        SecretKey::from_unencrypted_box(sk_box).map_err(|e| {
            key_error(
                path,
                e,
                "the key file is damaged; regenerate it with `cargo edgeai keygen`",
            )
        })
    }
}

/// Load a public key (minisign's `.pub` box, or the bare base64 line).
pub fn load_public_key(path: &Path) -> Result<minisign::PublicKey, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let help = "pass the public key written by `cargo edgeai keygen` (KEY.pub) or `minisign -G`";
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let result = match lines.as_slice() {
        [one] => minisign::PublicKey::from_base64(one),
        _ => PublicKeyBox::from_string(&text).and_then(|b| b.into_public_key()),
    };
    result.map_err(|e| key_error(path, format!("not a minisign public key: {e}"), help))
}

/// The signature file of a bundle: `BUNDLE.minisig` next to it.
pub fn signature_path(bundle: &Path) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Sign `bundle` (prehashed Ed25519, minisign's `ED`) and write `BUNDLE.minisig` next to it
/// (temp file + rename). The trusted comment names the bundle's file name and sha256.
pub fn sign_bundle(
    bundle: &Path,
    secret_key: &Path,
    password: Option<&str>,
) -> Result<PathBuf, Error> {
    let sk = load_secret_key(secret_key, password)?;
    let file_name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::spec(
                format!("{}: not a file name", bundle.display()),
                "pass the path of the bundle (.zip) to sign",
            )
        })?;
    let sha = crate::sha256_file(bundle)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Tabs separate fields as in minisign's own default comment; the name is only the file
    // name so no host path leaks into the signature.
    let trusted = format!(
        "timestamp:{now}\tfile:{}\tsha256:{sha}\tprehashed",
        file_name.replace(['\t', '\n', '\r'], "_")
    );
    let untrusted = format!(
        "signature of {} by cargo-edgeai",
        file_name.replace(['\n', '\r'], "_")
    );
    let f = std::fs::File::open(bundle).map_err(|e| Error::io(bundle, e))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, f);
    let sig = minisign::sign(None, &sk, reader, Some(&trusted), Some(&untrusted)).map_err(|e| {
        key_error(
            bundle,
            format!("signing failed: {e}"),
            "check that the bundle is readable and the key is a minisign secret key",
        )
    })?;
    // The bundle must not have changed while it was hashed twice (sha for the comment, blake2b
    // for the signature): compare again.
    if crate::sha256_file(bundle)? != sha {
        return Err(Error::spec(
            format!("{}: changed while it was being signed", bundle.display()),
            "do not modify the bundle while signing; run `cargo edgeai sign` again",
        ));
    }
    let out = signature_path(bundle);
    crate::write_atomic(&out, sig.to_string().as_bytes())?;
    Ok(out)
}

/// Read a password from a file: its first line, without the line ending.
pub fn read_password_file(path: &Path) -> Result<String, Error> {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(path, e))?;
    let line = s.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(Error::key(
            path,
            "the password file is empty",
            "write the password on the file's first line",
        ));
    }
    Ok(line)
}

/// Ask for a password on the terminal (twice when `confirm`). Fails without a terminal.
pub fn prompt_password(prompt: &str, confirm: bool) -> Result<String, Error> {
    let tty = Path::new("/dev/tty");
    let no_tty = |e: std::io::Error| {
        Error::key(
            tty,
            format!("cannot ask for a password: {e}"),
            "pass --password-file FILE or set EDGEAI_KEY_PASSWORD (for a key without a password: keygen --unencrypted)",
        )
    };
    let pw = rpassword::prompt_password(prompt).map_err(no_tty)?;
    if confirm {
        let again = rpassword::prompt_password("Password (again): ").map_err(no_tty)?;
        if again != pw {
            return Err(Error::key(
                tty,
                "the passwords do not match",
                "run the command again and type the same password twice",
            ));
        }
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_prefixes_match_key_headers() {
        for (hdr, p) in [
            (&b"EdScB2"[..], B64_PREFIXES[0]),
            (&b"Ed\0\0B2"[..], B64_PREFIXES[1]),
        ] {
            let d = decode_b64(p).unwrap();
            assert_eq!(d, hdr);
        }
        assert_eq!(SECRET_KEY_BYTES, 158);
        assert_eq!(SECRET_KEY_B64, 212);
    }

    #[test]
    fn scanner_finds_key_across_chunk_boundaries() {
        let pair = KeyPair::generate_unencrypted_keypair().unwrap();
        let text = pair.sk.to_box(None).unwrap().to_string();
        let mut data = vec![b'x'; 5000];
        data.extend_from_slice(text.as_bytes());
        data.extend_from_slice(&[b'y'; 3000]);
        for chunk in [1usize, 7, 100, 211, 212, 213, 4096, 1 << 20] {
            let mut s = SecretKeyScanner::new();
            for c in data.chunks(chunk) {
                s.feed(c);
            }
            assert!(s.finish(), "chunk size {chunk}");
        }
        // Key at the very end without a newline.
        let line = text.lines().nth(1).unwrap();
        assert!(contains_secret_key(line.as_bytes()));
        // Binary form.
        assert!(contains_secret_key(&pair.sk.to_bytes()));
        // Public keys are fine.
        assert!(!contains_secret_key(
            pair.pk.to_box().unwrap().to_string().as_bytes()
        ));
    }
}
