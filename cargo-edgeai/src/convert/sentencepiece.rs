//! A minimal, bounded reader of SentencePiece `tokenizer.model` files (a protobuf
//! `ModelProto`): only the vocabulary, `repeated SentencePiece pieces = 1` with
//! `piece = 1` (string), `score = 2` (float) and `type = 3` (enum). Every other field
//! (trainer and normalizer specs, self-test data) is skipped by wire type.
//!
//! Lengths are checked against the remaining input before anything is sliced, so a
//! truncated or hostile file gives an error, never a panic or a huge allocation.

/// SentencePiece's `SentencePiece.Type`.
pub mod piece_type {
    /// An ordinary piece (the protobuf default).
    pub const NORMAL: i32 = 1;
    /// `<unk>`.
    pub const UNKNOWN: i32 = 2;
    /// Control symbols (`<s>`, `</s>`).
    pub const CONTROL: i32 = 3;
    /// User-defined symbols (always kept whole by the encoder).
    pub const USER_DEFINED: i32 = 4;
    /// Unused slots.
    pub const UNUSED: i32 = 5;
    /// Byte-fallback pieces `<0x00>`..`<0xFF>`.
    pub const BYTE: i32 = 6;
}

/// One vocabulary entry of a `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (`▁` marks a space).
    pub piece: String,
    /// Its score (log-probability for unigram models, merge rank for BPE ones).
    pub score: f32,
    /// [`piece_type`] value.
    pub kind: i32,
}

/// A cursor over protobuf bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("truncated varint in tokenizer.model")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes in tokenizer.model".into())
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "field length overflows")?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("field length runs past the end of tokenizer.model")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Skip a field of `wire` type whose tag was already read.
    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.bytes(8).map(|_| ()),
            2 => {
                let n = self.varint()?;
                self.bytes(n).map(|_| ())
            }
            5 => self.bytes(4).map(|_| ()),
            w => Err(format!(
                "unsupported protobuf wire type {w} in tokenizer.model"
            )),
        }
    }
}

fn parse_piece(buf: &[u8]) -> Result<Piece, String> {
    let mut c = Cursor { buf, pos: 0 };
    // Protobuf defaults: empty piece, score 0, type NORMAL.
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: piece_type::NORMAL,
    };
    while !c.done() {
        let tag = c.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let n = c.varint()?;
                let b = c.bytes(n)?;
                p.piece = String::from_utf8(b.to_vec())
                    .map_err(|_| "a piece of tokenizer.model is not UTF-8".to_string())?;
            }
            (2, 5) => {
                let b = c.bytes(4)?;
                p.score = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            (3, 0) => {
                // Enums are int32 on the wire (sign-extended to 64 bits when negative).
                p.kind = c.varint()? as i64 as i32;
            }
            (_, wire) => c.skip(wire)?,
        }
    }
    Ok(p)
}

/// The pieces of a `tokenizer.model`, in id order. `Err` says what is wrong.
pub fn parse_model(buf: &[u8]) -> Result<Vec<Piece>, String> {
    let mut c = Cursor { buf, pos: 0 };
    let mut pieces = Vec::new();
    while !c.done() {
        let tag = c.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let n = c.varint()?;
                pieces.push(parse_piece(c.bytes(n)?)?);
            }
            (_, wire) => c.skip(wire)?,
        }
    }
    if pieces.is_empty() {
        return Err("tokenizer.model has no vocabulary pieces".into());
    }
    Ok(pieces)
}

/// Serialize pieces as a `ModelProto` (vocabulary only). Used by tests to build models.
pub fn encode_model(pieces: &[Piece]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for p in pieces {
        let mut m = Vec::new();
        m.push(0x0a);
        varint(&mut m, p.piece.len() as u64);
        m.extend_from_slice(p.piece.as_bytes());
        m.push(0x15);
        m.extend_from_slice(&p.score.to_le_bytes());
        if p.kind != piece_type::NORMAL {
            m.push(0x18);
            varint(&mut m, p.kind as i64 as u64);
        }
        out.push(0x0a);
        varint(&mut out, m.len() as u64);
        out.extend(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let pieces = vec![
            Piece {
                piece: "<unk>".into(),
                score: 0.0,
                kind: piece_type::UNKNOWN,
            },
            Piece {
                piece: "\u{2581}the".into(),
                score: -3.5,
                kind: piece_type::NORMAL,
            },
            Piece {
                piece: "<0x0A>".into(),
                score: 0.0,
                kind: piece_type::BYTE,
            },
        ];
        let mut buf = encode_model(&pieces);
        // A trainer_spec-like field (2, length-delimited) and a varint field are skipped.
        buf.extend_from_slice(&[0x12, 0x02, 0x08, 0x01, 0x28, 0x05]);
        assert_eq!(parse_model(&buf).unwrap(), pieces);
        for cut in 1..buf.len() - 6 {
            // Any truncation inside the pieces is an error or a shorter vocabulary, never a panic.
            let _ = parse_model(&buf[..cut]);
        }
        assert!(parse_model(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(parse_model(&[0x0b]).is_err());
        assert!(parse_model(&[]).is_err());
    }
}
