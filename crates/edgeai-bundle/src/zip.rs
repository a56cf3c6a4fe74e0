//! The zip format, written and read by hand so that every byte is ours to decide.
//!
//! Writing: entries in the order given (the caller sorts), one fixed DOS timestamp, Unix mode
//! 0644/0755 in the external attributes, the UTF-8 flag, no extra fields except the zip64 one
//! when a size or offset needs it, no data descriptors, no comments, no directory entries.
//! Each entry is deflated at a fixed level and stored instead when deflate does not shrink it,
//! so the result is a pure function of the entries' names, bytes and modes.
//!
//! Reading (for verification): the end of central directory must end the file, entries must
//! not overlap, local headers must agree with the central directory, and names that could
//! escape an extraction directory (`..`, absolute paths, backslashes, drive letters),
//! duplicates (also by ASCII case), directories, symlinks and other special files are refused.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const FLAG_UTF8: u16 = 0x0800;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_DATA_DESCRIPTOR: u16 = 0x0008;
const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATED: u16 = 8;
/// The fixed deflate level: changing it changes every bundle's bytes.
pub const DEFLATE_LEVEL: u32 = 6;
const UNIX_HOST: u16 = 3;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Why an entry name is unsafe, or `None` when it is a plain relative '/'-separated path.
pub fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if name.is_empty() {
        return Some("empty name");
    }
    if name.len() > u16::MAX as usize {
        return Some("name longer than 65535 bytes");
    }
    if name.contains('\\') {
        return Some("backslash in name (Windows path separator)");
    }
    if name.chars().any(|c| c.is_control()) {
        return Some("control character in name");
    }
    if name.starts_with('/') {
        return Some("absolute path");
    }
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Some("drive letter");
    }
    if name.ends_with('/') {
        return Some("directory entry");
    }
    for part in name.split('/') {
        match part {
            "" => return Some("empty path component (`//`)"),
            ".." => return Some("`..` component (path traversal)"),
            "." => return Some("`.` component"),
            _ => {}
        }
    }
    None
}

/// Seconds since the Unix epoch to MS-DOS (time, date), UTC, clamped to the DOS range
/// 1980-01-01 .. 2107-12-31 (DOS time has a 2-second resolution).
pub fn dos_time_date(epoch: u64) -> (u16, u16) {
    const MIN: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: u64 = 4_354_819_198; // 2107-12-31T23:59:58Z
    let t = epoch.clamp(MIN, MAX);
    let (y, m, d, hh, mm, ss) = civil(t);
    let time = ((hh as u16) << 11) | ((mm as u16) << 5) | ((ss / 2) as u16);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | (d as u16);
    (time, date)
}

/// Seconds since the Unix epoch to (year, month, day, hour, minute, second), UTC.
pub fn civil(t: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = t / 86_400;
    let rem = t % 86_400;
    // Howard Hinnant's days-to-civil, for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

struct Central {
    name: String,
    crc: u32,
    csize: u64,
    usize: u64,
    offset: u64,
    method: u16,
    mode: u32,
}

/// What writing one entry produced.
pub struct Written {
    pub sha256: String,
    pub size: u64,
}

/// A deterministic zip writer over a file.
pub struct ZipWriter {
    w: BufWriter<File>,
    path: PathBuf,
    pos: u64,
    time: u16,
    date: u16,
    entries: Vec<Central>,
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ZipWriter {
    /// `file` must be empty and positioned at 0; `path` is only for error messages.
    pub fn new(file: File, path: &Path, source_date_epoch: u64) -> Self {
        let (time, date) = dos_time_date(source_date_epoch);
        ZipWriter {
            w: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            pos: 0,
            time,
            date,
            entries: Vec::new(),
        }
    }

    fn io(&self, e: io::Error) -> crate::Error {
        crate::Error::io(&self.path, e)
    }

    /// Add an entry whose bytes come from `open()` (called once or twice: a second time when
    /// deflate does not shrink the data and the entry is stored instead). `size` is the size
    /// the caller expects; a reader that yields something else is an error (the input changed).
    pub fn add<R: Read>(
        &mut self,
        name: &str,
        size: u64,
        executable: bool,
        try_deflate: bool,
        mut open: impl FnMut() -> Result<R, crate::Error>,
        source: &Path,
    ) -> Result<Written, crate::Error> {
        let offset = self.pos;
        // Sizes never grow (stored is the fallback), so the entry needs zip64 exactly when its
        // uncompressed size does not fit 32 bits; the decision is known before writing.
        let zip64 = size >= u32::MAX as u64;
        let mut method = if try_deflate {
            METHOD_DEFLATED
        } else {
            METHOD_STORED
        };
        let header_len = self.write_local_header(name, method, zip64)?;
        let data_start = offset + header_len;
        let (mut crc, mut csize, mut sha, mut n) =
            self.write_data(open()?, method == METHOD_DEFLATED)?;
        if method == METHOD_DEFLATED && csize >= n {
            // Deflate did not help: rewrite the entry stored.
            self.w.flush().map_err(|e| self.io(e))?;
            self.w
                .get_mut()
                .set_len(offset)
                .map_err(|e| crate::Error::io(&self.path, e))?;
            self.w
                .seek(SeekFrom::Start(offset))
                .map_err(|e| self.io(e))?;
            self.pos = offset;
            method = METHOD_STORED;
            self.write_local_header(name, method, zip64)?;
            (crc, csize, sha, n) = self.write_data(open()?, false)?;
        }
        if n != size {
            return Err(crate::Error::spec(
                format!(
                    "{}: size changed while bundling (expected {size} bytes, read {n})",
                    source.display()
                ),
                "do not modify the bundle's input files while `cargo edgeai` runs; run it again",
            ));
        }
        // Patch crc and sizes into the local header.
        self.w.flush().map_err(|e| self.io(e))?;
        let end = self.pos;
        self.w
            .seek(SeekFrom::Start(offset + 14))
            .map_err(|e| self.io(e))?;
        let mut patch = Vec::with_capacity(12);
        patch.extend_from_slice(&crc.to_le_bytes());
        if zip64 {
            patch.extend_from_slice(&u32::MAX.to_le_bytes());
            patch.extend_from_slice(&u32::MAX.to_le_bytes());
        } else {
            patch.extend_from_slice(&(csize as u32).to_le_bytes());
            patch.extend_from_slice(&(n as u32).to_le_bytes());
        }
        self.w.write_all(&patch).map_err(|e| self.io(e))?;
        if zip64 {
            // Extra field: header id, size, then uncompressed and compressed sizes.
            let extra_data = offset + 30 + name.len() as u64 + 4;
            self.w
                .seek(SeekFrom::Start(extra_data))
                .map_err(|e| self.io(e))?;
            let mut z = Vec::with_capacity(16);
            z.extend_from_slice(&n.to_le_bytes());
            z.extend_from_slice(&csize.to_le_bytes());
            self.w.write_all(&z).map_err(|e| self.io(e))?;
        }
        self.w.seek(SeekFrom::Start(end)).map_err(|e| self.io(e))?;
        debug_assert_eq!(data_start + csize, end);
        let mode = S_IFREG | if executable { 0o755 } else { 0o644 };
        self.entries.push(Central {
            name: name.to_string(),
            crc,
            csize,
            usize: n,
            offset,
            method,
            mode,
        });
        Ok(Written {
            sha256: sha,
            size: n,
        })
    }

    /// Add an in-memory entry.
    pub fn add_bytes(
        &mut self,
        name: &str,
        data: &[u8],
        executable: bool,
    ) -> Result<Written, crate::Error> {
        let path = PathBuf::from(name);
        self.add(
            name,
            data.len() as u64,
            executable,
            true,
            || Ok(data),
            &path,
        )
    }

    fn write_local_header(
        &mut self,
        name: &str,
        method: u16,
        zip64: bool,
    ) -> Result<u64, crate::Error> {
        let mut h = Vec::with_capacity(30 + name.len() + 20);
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&(if zip64 { 45u16 } else { 20u16 }).to_le_bytes());
        h.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        h.extend_from_slice(&method.to_le_bytes());
        h.extend_from_slice(&self.time.to_le_bytes());
        h.extend_from_slice(&self.date.to_le_bytes());
        h.extend_from_slice(&[0u8; 12]); // crc, csize, usize: patched after the data
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(if zip64 { 20u16 } else { 0u16 }).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        if zip64 {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&[0u8; 16]);
        }
        self.w.write_all(&h).map_err(|e| self.io(e))?;
        self.pos += h.len() as u64;
        Ok(h.len() as u64)
    }

    /// Copy `r` into the archive (deflated or stored): (crc, compressed size, sha256, size).
    fn write_data<R: Read>(
        &mut self,
        mut r: R,
        deflate: bool,
    ) -> Result<(u32, u64, String, u64), crate::Error> {
        let mut crc = crc32fast::Hasher::new();
        let mut sha = Sha256::new();
        let mut n = 0u64;
        let path = self.path.clone();
        let ioerr = |e: io::Error| crate::Error::io(&path, e);
        let mut counting = Counting {
            inner: &mut self.w,
            count: 0,
        };
        let mut pump = |w: &mut dyn Write| -> Result<(), crate::Error> {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = match r.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(crate::Error::spec(
                            format!("reading an input of the bundle failed: {e}"),
                            "check that the bundle's input files are readable",
                        ))
                    }
                };
                let chunk = &buf[..k];
                crc.update(chunk);
                sha.update(chunk);
                n += k as u64;
                w.write_all(chunk).map_err(ioerr)?;
            }
        };
        if deflate {
            let mut enc = flate2::write::DeflateEncoder::new(
                &mut counting,
                flate2::Compression::new(DEFLATE_LEVEL),
            );
            pump(&mut enc)?;
            enc.finish().map_err(ioerr)?;
        } else {
            pump(&mut counting)?;
        }
        let csize = counting.count;
        self.pos += csize;
        Ok((crc.finalize(), csize, hex(&sha.finalize()), n))
    }

    /// Write the central directory and end records; returns the file (flushed, not synced).
    pub fn finish(mut self) -> Result<File, crate::Error> {
        let cd_offset = self.pos;
        let mut cd = Vec::new();
        for e in &self.entries {
            let need64_size = e.usize >= u32::MAX as u64 || e.csize >= u32::MAX as u64;
            let need64_off = e.offset >= u32::MAX as u64;
            let mut extra = Vec::new();
            if need64_size {
                extra.extend_from_slice(&e.usize.to_le_bytes());
                extra.extend_from_slice(&e.csize.to_le_bytes());
            }
            if need64_off {
                extra.extend_from_slice(&e.offset.to_le_bytes());
            }
            let version: u16 = if need64_size || need64_off { 45 } else { 20 };
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            cd.extend_from_slice(&((UNIX_HOST << 8) | version).to_le_bytes());
            cd.extend_from_slice(&version.to_le_bytes());
            cd.extend_from_slice(&FLAG_UTF8.to_le_bytes());
            cd.extend_from_slice(&e.method.to_le_bytes());
            cd.extend_from_slice(&self.time.to_le_bytes());
            cd.extend_from_slice(&self.date.to_le_bytes());
            cd.extend_from_slice(&e.crc.to_le_bytes());
            let (cs, us) = if need64_size {
                (u32::MAX, u32::MAX)
            } else {
                (e.csize as u32, e.usize as u32)
            };
            cd.extend_from_slice(&cs.to_le_bytes());
            cd.extend_from_slice(&us.to_le_bytes());
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            let extra_len = if extra.is_empty() { 0 } else { extra.len() + 4 };
            cd.extend_from_slice(&(extra_len as u16).to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes()); // comment
            cd.extend_from_slice(&0u16.to_le_bytes()); // disk
            cd.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            cd.extend_from_slice(&(e.mode << 16).to_le_bytes());
            let off = if need64_off {
                u32::MAX
            } else {
                e.offset as u32
            };
            cd.extend_from_slice(&off.to_le_bytes());
            cd.extend_from_slice(e.name.as_bytes());
            if !extra.is_empty() {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                cd.extend_from_slice(&extra);
            }
        }
        let cd_size = cd.len() as u64;
        let count = self.entries.len() as u64;
        let zip64 = count >= 0xFFFF || cd_offset >= u32::MAX as u64 || cd_size >= u32::MAX as u64;
        if zip64 {
            let z64_offset = cd_offset + cd_size;
            cd.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            cd.extend_from_slice(&44u64.to_le_bytes());
            cd.extend_from_slice(&((UNIX_HOST << 8) | 45).to_le_bytes());
            cd.extend_from_slice(&45u16.to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes());
            cd.extend_from_slice(&count.to_le_bytes());
            cd.extend_from_slice(&count.to_le_bytes());
            cd.extend_from_slice(&cd_size.to_le_bytes());
            cd.extend_from_slice(&cd_offset.to_le_bytes());
            cd.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes());
            cd.extend_from_slice(&z64_offset.to_le_bytes());
            cd.extend_from_slice(&1u32.to_le_bytes());
        }
        let c16 = if zip64 { 0xFFFF } else { count as u16 };
        cd.extend_from_slice(&EOCD_SIG.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes());
        cd.extend_from_slice(&c16.to_le_bytes());
        cd.extend_from_slice(&c16.to_le_bytes());
        let (s32, o32) = if zip64 {
            (u32::MAX, u32::MAX)
        } else {
            (cd_size as u32, cd_offset as u32)
        };
        cd.extend_from_slice(&s32.to_le_bytes());
        cd.extend_from_slice(&o32.to_le_bytes());
        cd.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.w.write_all(&cd).map_err(|e| self.io(e))?;
        self.w.flush().map_err(|e| self.io(e))?;
        let path = self.path.clone();
        self.w
            .into_inner()
            .map_err(|e| crate::Error::io(path, e.into_error()))
    }
}

/// Decides whether deflating an entry is worth its time from evenly spaced samples of its
/// content: quantized weights barely shrink (a few percent) but would cost most of the
/// bundling time, so entries whose samples save less than 10% are stored. Samples are spread
/// over the whole file because a model's first megabytes (GGUF metadata, tokenizer) compress
/// far better than its weights. A pure function of the content, so as reproducible as the bytes.
pub struct DeflateSampler {
    pos: u64,
    ranges: Vec<(u64, u64)>,
    samples: Vec<Vec<u8>>,
}

const SAMPLES: u64 = 32;
const SAMPLE_LEN: u64 = 32 * 1024;

impl DeflateSampler {
    /// For an entry of `size` bytes.
    pub fn new(size: u64) -> Self {
        let ranges: Vec<(u64, u64)> = if size <= SAMPLES * SAMPLE_LEN {
            vec![(0, size)]
        } else {
            (0..SAMPLES)
                .map(|i| {
                    let start = i * (size / SAMPLES);
                    (start, start + SAMPLE_LEN)
                })
                .collect()
        };
        DeflateSampler {
            pos: 0,
            samples: vec![Vec::new(); ranges.len()],
            ranges,
        }
    }

    /// The next bytes of the entry.
    pub fn feed(&mut self, chunk: &[u8]) {
        let end = self.pos + chunk.len() as u64;
        for (k, &(a, b)) in self.ranges.iter().enumerate() {
            let lo = a.max(self.pos);
            let hi = b.min(end);
            if lo < hi {
                self.samples[k]
                    .extend_from_slice(&chunk[(lo - self.pos) as usize..(hi - self.pos) as usize]);
            }
        }
        self.pos = end;
    }

    /// Whether to deflate.
    pub fn worth_deflating(&self) -> bool {
        let mut raw = 0u64;
        let mut packed = 0u64;
        for sample in &self.samples {
            if sample.is_empty() {
                continue;
            }
            let mut enc = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(sample.len()),
                flate2::Compression::new(DEFLATE_LEVEL),
            );
            match enc.write_all(sample).and_then(|()| enc.finish()) {
                Ok(out) => packed += out.len() as u64,
                Err(_) => return true,
            }
            raw += sample.len() as u64;
        }
        raw < 64 || packed * 10 < raw * 9
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One entry of an archive, as its central directory describes it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// Uncompressed size.
    pub size: u64,
    pub compressed_size: u64,
    pub crc32: u32,
    /// 0 stored, 8 deflated.
    pub method: u16,
    /// Unix mode (file type and permissions) when the entry was made on Unix.
    pub unix_mode: Option<u32>,
    header_offset: u64,
    data_offset: u64,
}

impl Entry {
    /// Whether the entry carries an executable bit.
    pub fn is_executable(&self) -> bool {
        self.unix_mode.is_some_and(|m| m & 0o111 != 0)
    }
}

/// A zip archive opened for reading, its structure checked (see the module docs).
pub struct Archive {
    file: File,
    path: PathBuf,
    entries: Vec<Entry>,
}

/// A structural problem, before it is turned into the caller's error type.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// (entry name when there is one, message)
    Bad(Option<String>, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn bad(msg: impl Into<String>) -> ReadError {
    ReadError::Bad(None, msg.into())
}

fn bad_entry(name: &str, msg: impl Into<String>) -> ReadError {
    ReadError::Bad(Some(name.to_string()), msg.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_exact_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(format!(
                "truncated archive: {len} bytes at offset {offset} run past the end"
            ))
        } else {
            ReadError::Io(e)
        }
    })?;
    Ok(buf)
}

impl Archive {
    /// Open `path` and check its structure.
    pub fn open(path: &Path) -> Result<Archive, ReadError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let entries = read_central(&file, len)?;
        Ok(Archive {
            file,
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in central-directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Stream an entry's data through `sink`, checking its size and CRC-32; returns its sha256.
    pub fn stream_entry(
        &self,
        entry: &Entry,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<String, ReadError> {
        let mut f = &self.file;
        f.seek(SeekFrom::Start(entry.data_offset))?;
        let raw = f.take(entry.compressed_size);
        let mut reader: Box<dyn Read + '_> = match entry.method {
            METHOD_STORED => Box::new(raw),
            _ => Box::new(flate2::read::DeflateDecoder::new(raw)),
        };
        let mut crc = crc32fast::Hasher::new();
        let mut sha = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(bad_entry(
                        &entry.name,
                        format!("entry data does not decompress: {e}"),
                    ))
                }
            };
            n += k as u64;
            if n > entry.size {
                return Err(bad_entry(
                    &entry.name,
                    format!("entry data is longer than its declared size {}", entry.size),
                ));
            }
            crc.update(&buf[..k]);
            sha.update(&buf[..k]);
            sink(&buf[..k]);
        }
        if n != entry.size {
            return Err(bad_entry(
                &entry.name,
                format!(
                    "entry data is {n} bytes, its header declares {}",
                    entry.size
                ),
            ));
        }
        let crc = crc.finalize();
        if crc != entry.crc32 {
            return Err(bad_entry(
                &entry.name,
                format!(
                    "CRC-32 mismatch: header {:08x}, data {crc:08x}",
                    entry.crc32
                ),
            ));
        }
        Ok(hex(&sha.finalize()))
    }

    /// Read a whole entry into memory, refusing entries larger than `limit` bytes.
    pub fn read_entry(&self, entry: &Entry, limit: u64) -> Result<Vec<u8>, ReadError> {
        if entry.size > limit {
            return Err(bad_entry(
                &entry.name,
                format!(
                    "entry is {} bytes, more than the {limit} allowed",
                    entry.size
                ),
            ));
        }
        let mut out = Vec::with_capacity(entry.size as usize);
        self.stream_entry(entry, |b| out.extend_from_slice(b))?;
        Ok(out)
    }
}

fn read_central(file: &File, len: u64) -> Result<Vec<Entry>, ReadError> {
    if len < 22 {
        return Err(bad(format!(
            "not a zip archive: {len} bytes, shorter than an end-of-central-directory record"
        )));
    }
    // We never write an archive comment, so the end record must end the file; a record
    // anywhere else would let two readers disagree on where the directory is.
    let eocd_pos = len - 22;
    let eocd = read_exact_at(file, eocd_pos, 22)?;
    if u32_at(&eocd, 0) != EOCD_SIG {
        return Err(bad(
            "no end-of-central-directory record at the end of the file (not a zip, truncated, or trailing data)",
        ));
    }
    if u16_at(&eocd, 20) != 0 {
        return Err(bad("archive comment present"));
    }
    let disk = u16_at(&eocd, 4);
    let cd_disk = u16_at(&eocd, 6);
    let mut count_disk = u16_at(&eocd, 8) as u64;
    let mut count = u16_at(&eocd, 10) as u64;
    let mut cd_size = u32_at(&eocd, 12) as u64;
    let mut cd_offset = u32_at(&eocd, 16) as u64;
    if disk != 0 || cd_disk != 0 {
        return Err(bad("multi-disk archives are not supported"));
    }
    let mut cd_end_limit = eocd_pos;
    if count == 0xFFFF || cd_size == u32::MAX as u64 || cd_offset == u32::MAX as u64 {
        if eocd_pos < 20 + 56 {
            return Err(bad("zip64 end records missing"));
        }
        let loc = read_exact_at(file, eocd_pos - 20, 20)?;
        if u32_at(&loc, 0) != ZIP64_LOCATOR_SIG || u32_at(&loc, 4) != 0 || u32_at(&loc, 16) != 1 {
            return Err(bad(
                "zip64 end-of-central-directory locator missing or invalid",
            ));
        }
        let z_off = u64_at(&loc, 8);
        if z_off.checked_add(56) != Some(eocd_pos - 20) {
            return Err(bad(
                "zip64 end-of-central-directory record is not right before its locator",
            ));
        }
        let z = read_exact_at(file, z_off, 56)?;
        if u32_at(&z, 0) != ZIP64_EOCD_SIG || u64_at(&z, 4) != 44 {
            return Err(bad("zip64 end-of-central-directory record invalid"));
        }
        if u32_at(&z, 16) != 0 || u32_at(&z, 20) != 0 {
            return Err(bad("multi-disk archives are not supported"));
        }
        count_disk = u64_at(&z, 24);
        count = u64_at(&z, 32);
        cd_size = u64_at(&z, 40);
        cd_offset = u64_at(&z, 48);
        cd_end_limit = z_off;
    }
    if count_disk != count {
        return Err(bad("multi-disk archives are not supported"));
    }
    if cd_offset.checked_add(cd_size) != Some(cd_end_limit) {
        return Err(bad(format!(
            "central directory ({cd_size} bytes at offset {cd_offset}) does not end where the end records begin ({cd_end_limit})"
        )));
    }
    if count > cd_size / 46 {
        return Err(bad(format!(
            "central directory of {cd_size} bytes cannot hold {count} entries"
        )));
    }
    let cd = read_exact_at(file, cd_offset, cd_size as usize)?;
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    let mut seen = std::collections::BTreeMap::<String, String>::new();
    for _ in 0..count {
        if at + 46 > cd.len() || u32_at(&cd, at) != CENTRAL_SIG {
            return Err(bad("corrupt central directory entry"));
        }
        let made_by = u16_at(&cd, at + 4);
        let flags = u16_at(&cd, at + 8);
        let method = u16_at(&cd, at + 10);
        let crc32 = u32_at(&cd, at + 16);
        let mut csize = u32_at(&cd, at + 20) as u64;
        let mut usize_ = u32_at(&cd, at + 24) as u64;
        let name_len = u16_at(&cd, at + 28) as usize;
        let extra_len = u16_at(&cd, at + 30) as usize;
        let comment_len = u16_at(&cd, at + 32) as usize;
        let disk_start = u16_at(&cd, at + 34);
        let ext_attr = u32_at(&cd, at + 38);
        let mut offset = u32_at(&cd, at + 42) as u64;
        let var = at + 46;
        let end = var + name_len + extra_len + comment_len;
        if end > cd.len() {
            return Err(bad(
                "corrupt central directory entry (lengths past its end)",
            ));
        }
        let name_bytes = &cd[var..var + name_len];
        let name = match std::str::from_utf8(name_bytes) {
            Ok(s) => s.to_string(),
            Err(_) => {
                return Err(bad(format!(
                    "entry name is not UTF-8: {}",
                    String::from_utf8_lossy(name_bytes)
                )))
            }
        };
        if !name.is_ascii() && flags & FLAG_UTF8 == 0 {
            return Err(bad_entry(
                &name,
                "non-ASCII name without the UTF-8 flag (readers would decode it differently)",
            ));
        }
        if let Some(reason) = unsafe_name_reason(&name) {
            return Err(bad_entry(&name, format!("unsafe entry name: {reason}")));
        }
        if let Some(prev) = seen.insert(name.to_ascii_lowercase(), name.clone()) {
            let msg = if prev == name {
                "duplicate entry name".to_string()
            } else {
                format!("entry name differs only by case from `{prev}`")
            };
            return Err(bad_entry(&name, msg));
        }
        if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 {
            return Err(bad_entry(&name, "encrypted entry"));
        }
        if method != METHOD_STORED && method != METHOD_DEFLATED {
            return Err(bad_entry(
                &name,
                format!("unsupported compression method {method}"),
            ));
        }
        if disk_start != 0 {
            return Err(bad_entry(&name, "entry on another disk"));
        }
        let unix_mode = if made_by >> 8 == UNIX_HOST {
            Some(ext_attr >> 16)
        } else {
            None
        };
        if let Some(mode) = unix_mode {
            match mode & S_IFMT {
                S_IFLNK => return Err(bad_entry(&name, "symbolic link entry")),
                S_IFDIR => return Err(bad_entry(&name, "directory entry")),
                0 | S_IFREG => {}
                other => {
                    return Err(bad_entry(
                        &name,
                        format!("special file entry (mode {other:o})"),
                    ))
                }
            }
        }
        if ext_attr & 0x10 != 0 {
            return Err(bad_entry(&name, "directory entry (DOS attribute)"));
        }
        // zip64 extended information: only the fields whose 32-bit value is saturated, in order.
        let mut extra = &cd[var + name_len..var + name_len + extra_len];
        while extra.len() >= 4 {
            let id = u16_at(extra, 0);
            let sz = u16_at(extra, 2) as usize;
            if 4 + sz > extra.len() {
                return Err(bad_entry(&name, "corrupt extra field"));
            }
            if id == 1 {
                let mut f = &extra[4..4 + sz];
                let mut take = |v: &mut u64| -> Result<(), ReadError> {
                    if *v == u32::MAX as u64 {
                        if f.len() < 8 {
                            return Err(bad_entry(&name, "short zip64 extra field"));
                        }
                        *v = u64_at(f, 0);
                        f = &f[8..];
                    }
                    Ok(())
                };
                take(&mut usize_)?;
                take(&mut csize)?;
                take(&mut offset)?;
            }
            extra = &extra[4 + sz..];
        }
        if method == METHOD_STORED && csize != usize_ {
            return Err(bad_entry(
                &name,
                "stored entry with different compressed and uncompressed sizes",
            ));
        }
        entries.push(Entry {
            name,
            size: usize_,
            compressed_size: csize,
            crc32,
            method,
            unix_mode,
            header_offset: offset,
            data_offset: 0,
        });
        at = end;
    }
    if at != cd.len() {
        return Err(bad("central directory has trailing bytes"));
    }
    // Local headers must agree with the directory, and entries must not overlap: a reader
    // that walks local headers then sees the same files as one that reads the directory.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].header_offset);
    let mut next_free = 0u64;
    for &i in &order {
        let e = &entries[i];
        if e.header_offset < next_free {
            return Err(bad_entry(&e.name, "entry overlaps the previous entry"));
        }
        let h = read_exact_at(file, e.header_offset, 30)?;
        if u32_at(&h, 0) != LOCAL_SIG {
            return Err(bad_entry(
                &e.name,
                "no local header where the directory points",
            ));
        }
        let lflags = u16_at(&h, 6);
        let lmethod = u16_at(&h, 8);
        let lname_len = u16_at(&h, 26) as usize;
        let lextra_len = u16_at(&h, 28) as usize;
        let lname = read_exact_at(file, e.header_offset + 30, lname_len)?;
        if lname != e.name.as_bytes() {
            return Err(bad_entry(
                &e.name,
                format!(
                    "local header names a different file (`{}`)",
                    String::from_utf8_lossy(&lname)
                ),
            ));
        }
        if lmethod != e.method {
            return Err(bad_entry(
                &e.name,
                "local header and directory disagree on the compression method",
            ));
        }
        if lflags & FLAG_DATA_DESCRIPTOR == 0 {
            let lcrc = u32_at(&h, 14);
            let lcs = u32_at(&h, 18) as u64;
            let lus = u32_at(&h, 22) as u64;
            let sizes_ok = (lcs == u32::MAX as u64 || lcs == e.compressed_size)
                && (lus == u32::MAX as u64 || lus == e.size);
            if lcrc != e.crc32 || !sizes_ok {
                return Err(bad_entry(
                    &e.name,
                    "local header and directory disagree on CRC-32 or sizes",
                ));
            }
        }
        let data_offset = e.header_offset + 30 + lname_len as u64 + lextra_len as u64;
        let data_end = data_offset
            .checked_add(e.compressed_size)
            .ok_or_else(|| bad_entry(&e.name, "entry size overflows"))?;
        if data_end > cd_offset {
            return Err(bad_entry(
                &e.name,
                "entry data runs into the central directory",
            ));
        }
        next_free = data_end;
        entries[i].data_offset = data_offset;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_time_of_known_dates() {
        // 1980-01-01 00:00:00 is the DOS epoch: date (0<<9)|(1<<5)|1, time 0.
        assert_eq!(dos_time_date(0), (0, (1 << 5) | 1));
        assert_eq!(dos_time_date(315_532_800), (0, (1 << 5) | 1));
        // 2024-02-29T13:45:31Z
        let (t, d) = dos_time_date(1_709_214_331);
        assert_eq!(d, ((2024 - 1980) << 9) | (2 << 5) | 29);
        assert_eq!(t, (13 << 11) | (45 << 5) | 15);
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn deflate_only_what_shrinks() {
        let mut x = 0x1234_5678_u64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let decide = |data: &[u8], chunk: usize| {
            let mut s = DeflateSampler::new(data.len() as u64);
            for c in data.chunks(chunk) {
                s.feed(c);
            }
            s.worth_deflating()
        };
        let text = b"tokenizer.ggml.tokens hello world ".repeat(100_000);
        assert!(decide(&text, 4096));
        assert!(!decide(&random(3 << 20), 1 << 20));
        // A GGUF-like file: 2 MiB of compressible metadata, then 30 MiB of weights.
        let mut gguf = text[..2 << 20].to_vec();
        gguf.extend(random(30 << 20));
        assert!(!decide(&gguf, 1 << 20));
        assert!(!decide(&gguf, 777));
        assert!(decide(b"", 1));
        assert!(decide(&[0u8; 10], 1));
    }

    #[test]
    fn unsafe_names() {
        for (n, ok) in [
            ("model/a.gguf", true),
            ("a", true),
            ("../x", false),
            ("a/../x", false),
            ("/etc/x", false),
            ("C:/x", false),
            ("c:x", false),
            ("a\\b", false),
            ("a//b", false),
            ("./a", false),
            ("dir/", false),
            ("", false),
            ("a\nb", false),
        ] {
            assert_eq!(unsafe_name_reason(n).is_none(), ok, "{n:?}");
        }
    }
}
