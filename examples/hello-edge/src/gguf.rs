//! A minimal GGUF header reader (versions 2 and 3): magic, version, key-value metadata and tensor
//! infos, read with a buffered reader so the tensor data is never loaded. Every length is checked
//! against the bytes left in the file, so a damaged header is an error, not a huge allocation.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The model facts hello-edge prints.
#[derive(Debug, Default)]
pub struct Facts {
    pub version: u32,
    pub architecture: String,
    pub name: Option<String>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub head_count: Option<u64>,
    pub file_type: Option<u64>,
    pub tensor_count: u64,
    pub parameter_count: u64,
}

impl Facts {
    pub fn render(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        let mut s = String::new();
        s.push_str(&format!("  gguf version:     {}\n", self.version));
        if let Some(name) = &self.name {
            s.push_str(&format!("  name:             {name}\n"));
        }
        s.push_str(&format!("  architecture:     {}\n", self.architecture));
        s.push_str(&format!(
            "  context length:   {}\n",
            opt(self.context_length)
        ));
        s.push_str(&format!(
            "  embedding size:   {}\n",
            opt(self.embedding_length)
        ));
        s.push_str(&format!("  layers:           {}\n", opt(self.block_count)));
        s.push_str(&format!("  attention heads:  {}\n", opt(self.head_count)));
        s.push_str(&format!("  tensors:          {}\n", self.tensor_count));
        s.push_str(&format!("  parameters:       {}\n", self.parameter_count));
        s.push_str(&format!(
            "  file type:        {}\n",
            self.file_type
                .map_or("?".to_string(), |t| format!("{} ({t})", file_type_name(t)))
        ));
        s
    }
}

/// llama.cpp's `enum llama_ftype` names (`general.file_type`).
fn file_type_name(id: u64) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        21 => "Q2_K_S",
        25 => "IQ4_NL",
        32 => "BF16",
        38 => "MXFP4_MOE",
        _ => "other",
    }
}

/// A scalar metadata value (arrays are skipped: hello-edge needs none).
enum Value {
    Uint(u64),
    Int(i64),
    Str(String),
    Other,
}

struct Reader {
    inner: BufReader<File>,
    left: u64,
}

impl Reader {
    fn take(&mut self, n: u64) -> Result<(), String> {
        if n > self.left {
            return Err("truncated header (a length runs past the end of the file)".into());
        }
        self.left -= n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N as u64)?;
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| e.to_string())?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.take(n)?;
        let n = i64::try_from(n).map_err(|_| "length too large".to_string())?;
        self.inner.seek_relative(n).map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        self.take(len)?;
        let mut b = vec![0u8; len as usize];
        self.inner.read_exact(&mut b).map_err(|e| e.to_string())?;
        String::from_utf8(b).map_err(|_| "a string is not UTF-8".to_string())
    }

    /// A value of GGUF type `ty`; scalars are returned, arrays skipped.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::Uint(self.bytes::<1>()?[0] as u64),
            1 => Value::Int(self.bytes::<1>()?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.bytes()?) as u64),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => {
                self.skip(4)?;
                Value::Other
            }
            7 => {
                self.skip(1)?;
                Value::Other
            }
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err("arrays nested too deep".into());
                }
                let item = self.u32()?;
                let count = self.u64()?;
                let fixed = match item {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => {
                        self.skip(count.checked_mul(size).ok_or("array length overflows")?)?
                    }
                    None => {
                        // Each element takes at least one byte: bounds the loop on bad input.
                        if count > self.left {
                            return Err("truncated header (array longer than the file)".into());
                        }
                        for _ in 0..count {
                            self.value(item, depth + 1)?;
                        }
                    }
                }
                Value::Other
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => {
                self.skip(8)?;
                Value::Other
            }
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// Read the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<Facts, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        left: len,
    };
    r.inner
        .seek(SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    if &r.bytes::<4>()? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} (this reader knows 2 and 3)"
        ));
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;

    let mut kvs: Vec<(String, Value)> = Vec::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        kvs.push((key, value));
    }
    let get_str = |k: &str| {
        kvs.iter().find_map(|(key, v)| match v {
            Value::Str(s) if key == k => Some(s.clone()),
            _ => None,
        })
    };
    let get_u64 = |k: &str| {
        kvs.iter().find_map(|(key, v)| match v {
            Value::Uint(n) if key == k => Some(*n),
            Value::Int(n) if key == k => u64::try_from(*n).ok(),
            _ => None,
        })
    };
    let architecture =
        get_str("general.architecture").ok_or("no general.architecture in the metadata")?;
    let arch_key = |k: &str| get_u64(&format!("{architecture}.{k}"));

    let mut parameter_count: u64 = 0;
    for i in 0..tensor_count {
        let _name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(format!("tensor {i} has {n_dims} dimensions (at most 4)"));
        }
        let mut elements: u64 = 1;
        for _ in 0..n_dims {
            elements = elements
                .checked_mul(r.u64()?)
                .ok_or(format!("tensor {i}: element count overflows"))?;
        }
        let _type = r.u32()?;
        let _offset = r.u64()?;
        parameter_count = parameter_count
            .checked_add(elements)
            .ok_or("parameter count overflows")?;
    }
    Ok(Facts {
        version,
        name: get_str("general.name"),
        context_length: arch_key("context_length"),
        embedding_length: arch_key("embedding_length"),
        block_count: arch_key("block_count"),
        head_count: arch_key("attention.head_count"),
        file_type: get_u64("general.file_type"),
        architecture,
        tensor_count,
        parameter_count,
    })
}
