//! A BERT WordPiece tokenizer read from a Hugging Face `tokenizer.json` (BertNormalizer,
//! BertPreTokenizer, WordPiece, `[CLS] $A [SEP]`), enough to feed sentence encoders such as
//! all-MiniLM-L6-v2 without the `tokenizers` crate (and its build time). Other tokenizer types
//! are refused with an error rather than tokenized differently from the reference library.
//!
//! Accents are stripped as BertNormalizer does (NFD, then combining marks dropped) when
//! `strip_accents` is true, or unset with `lowercase`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, i64>,
    unk: i64,
    cls: i64,
    sep: i64,
    prefix: String,
    max_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    /// Truncation length including [CLS] and [SEP].
    pub max_length: usize,
}

fn unsupported(path: &Path, what: String) -> Error {
    Error::Usage {
        message: format!("{}: {what}", path.display()),
        help: "ONNX text validation tokenizes BERT WordPiece tokenizers (tokenizer.json with a WordPiece model); for other models pass tokenized inputs with --inputs DIR (.npy/.npz)".into(),
    }
}

impl WordPiece {
    pub fn from_file(path: &Path) -> Result<WordPiece> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| unsupported(path, format!("not JSON: {e}")))?;
        let model = &json["model"];
        if model["type"] != "WordPiece" {
            return Err(unsupported(
                path,
                format!("tokenizer model `{}` is not WordPiece", model["type"]),
            ));
        }
        let vocab: HashMap<String, i64> = model["vocab"]
            .as_object()
            .ok_or_else(|| unsupported(path, "no model.vocab".into()))?
            .iter()
            .filter_map(|(k, v)| v.as_i64().map(|id| (k.clone(), id)))
            .collect();
        let id = |tok: &str| {
            vocab
                .get(tok)
                .copied()
                .ok_or_else(|| unsupported(path, format!("the vocabulary has no {tok}")))
        };
        let unk_token = model["unk_token"].as_str().unwrap_or("[UNK]");
        let norm = &json["normalizer"];
        let lowercase = norm["lowercase"].as_bool().unwrap_or(false);
        // BertNormalizer: strip_accents unset follows lowercase.
        let strip_accents = norm["strip_accents"].as_bool().unwrap_or(lowercase);
        Ok(WordPiece {
            unk: id(unk_token)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            prefix: model["continuing_subword_prefix"]
                .as_str()
                .unwrap_or("##")
                .to_string(),
            max_chars: model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize,
            lowercase,
            strip_accents,
            max_length: json["truncation"]["max_length"].as_u64().unwrap_or(512) as usize,
            vocab,
        })
    }

    /// Token ids of one text: `[CLS] pieces… [SEP]`, truncated to `max_length`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.cls];
        for word in pre_tokenize(&normalize(text, self.lowercase, self.strip_accents)) {
            self.word_pieces(&word, &mut ids);
        }
        ids.truncate(self.max_length.saturating_sub(1).max(1));
        ids.push(self.sep);
        ids
    }

    fn word_pieces(&self, word: &str, out: &mut Vec<i64>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > self.max_chars {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut s: String = chars[start..end].iter().collect();
                if start > 0 {
                    s = format!("{}{s}", self.prefix);
                }
                if let Some(id) = self.vocab.get(&s) {
                    found = Some(*id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    c.is_control()
}

fn is_chinese(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// BertNormalizer: drop control characters, whitespace to spaces, space around CJK
/// characters, optional lower-casing.
fn normalize(text: &str, lowercase: bool, strip_accents: bool) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if c.is_whitespace() {
            out.push(' ');
        } else if is_chinese(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else if lowercase {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    if strip_accents {
        out = out
            .nfd()
            .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
            .collect();
    }
    out
}

fn is_punct(c: char) -> bool {
    let u = c as u32;
    (33..=47).contains(&u)
        || (58..=64).contains(&u)
        || (91..=96).contains(&u)
        || (123..=126).contains(&u)
        || (!c.is_alphanumeric() && !c.is_whitespace() && !c.is_control() && u > 127)
}

/// BertPreTokenizer: split on whitespace, and every punctuation character is its own word.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        } else if is_punct(c) {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            words.push(c.to_string());
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_punctuation_and_lowercases() {
        assert_eq!(
            pre_tokenize(&normalize("Hello, Wörld!", true, true)),
            vec!["hello", ",", "world", "!"]
        );
    }
}
