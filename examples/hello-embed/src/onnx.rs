//! The few facts of an ONNX model the app prints, read from the protobuf wire format without an
//! ONNX library: producer, default-domain opset, node count, graph input and output names.
//!
//! Every length is checked against the bytes that are there, so a damaged file is an error,
//! never a panic. The weights (initializers) are skipped over, not decoded.

use std::path::Path;

/// What the app prints about a model.
#[derive(Debug, Default)]
pub struct GraphFacts {
    pub producer: String,
    pub producer_version: String,
    pub opset: u64,
    pub nodes: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A protobuf field: its number and its value (varint, or the bytes of a length-delimited one).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("truncated protobuf (varint)")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed protobuf varint".into())
    }

    fn skip(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated protobuf (a field runs past the end of the file)")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field, or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Field::Other
            }
            2 => {
                let n = self.varint()?;
                Field::Bytes(self.skip(n)?)
            }
            5 => {
                self.skip(4)?;
                Field::Other
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ValueInfoProto.name` (field 1).
fn value_info_name(b: &[u8]) -> Result<String, String> {
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(s)) = (n, f) {
            return Ok(string(s));
        }
    }
    Ok(String::new())
}

/// Read the facts of the model at `path`.
pub fn read_graph(path: &Path) -> Result<GraphFacts, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut facts = GraphFacts::default();
    let mut graph = None;
    let mut r = Reader::new(&bytes);
    // ModelProto: 2 producer_name, 3 producer_version, 7 graph, 8 opset_import.
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (2, Field::Bytes(s)) => facts.producer = string(s),
            (3, Field::Bytes(s)) => facts.producer_version = string(s),
            (7, Field::Bytes(s)) => graph = Some(s),
            (8, Field::Bytes(s)) => {
                // OperatorSetIdProto: 1 domain, 2 version; "" is the default (ai.onnx) domain.
                let (mut domain, mut version) = (String::new(), 0);
                let mut o = Reader::new(s);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (1, Field::Bytes(d)) => domain = string(d),
                        (2, Field::Varint(v)) => version = v,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    facts.opset = version;
                }
            }
            _ => {}
        }
    }
    let graph = graph.ok_or("not an ONNX model (no graph)")?;
    // GraphProto: 1 node, 11 input, 12 output (5 initializer is skipped over).
    let mut g = Reader::new(graph);
    while let Some((n, f)) = g.next()? {
        match (n, f) {
            (1, Field::Bytes(_)) => facts.nodes += 1,
            (11, Field::Bytes(s)) => facts.inputs.push(value_info_name(s)?),
            (12, Field::Bytes(s)) => facts.outputs.push(value_info_name(s)?),
            _ => {}
        }
    }
    if facts.outputs.is_empty() {
        return Err("not an ONNX model (the graph has no outputs)".into());
    }
    Ok(facts)
}
