//! tokenizer.json / tokenizer.model (+ tokenizer_config.json, added_tokens.json,
//! config.json, chat_template.jinja) to the `tokenizer.ggml.*` metadata the reference
//! converter writes: `get_vocab_base`, `_set_vocab_gpt2`, `BertModel.set_vocab`,
//! `_set_vocab_sentencepiece`, `_set_vocab_llama_hf`, Phi-3's sentencepiece variant and
//! gguf-py's `SpecialVocab`. tokenizer.model is read with [`super::sentencepiece`], so no
//! sentencepiece runtime is needed.
//!
//! The reference detects the pre-tokenizer by hashing the token ids of a probe text through
//! the `transformers` tokenizer. We have no tokenizer runtime, so the pre-tokenizer is
//! recognised from tokenizer.json's structure for the covered families ([`detect_pre`]).

use std::path::Path;

use serde_json::{Map, Value};

use super::arch::Arch;
use super::sentencepiece;
use crate::gguf::{GgufArray, GgufValue};
use crate::{Error, Result};

/// llama.cpp token types (`enum llama_token_type`).
pub mod token_type {
    /// Ordinary token.
    pub const NORMAL: i32 = 1;
    /// The unknown token (`<unk>`).
    pub const UNKNOWN: i32 = 2;
    /// Control token.
    pub const CONTROL: i32 = 3;
    /// User-defined token.
    pub const USER_DEFINED: i32 = 4;
    /// Padding slot.
    pub const UNUSED: i32 = 5;
    /// Byte-fallback token (`<0x0A>`).
    pub const BYTE: i32 = 6;
}

/// The Llama 3 pre-tokenizer regex (`llama-bpe`).
pub const LLAMA3_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// The Qwen2 pre-tokenizer regex (`qwen2`).
pub const QWEN2_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const HELP_TOKENIZER: &str =
    "re-download tokenizer.json (and tokenizer_config.json) from the model's repository";

/// Read a JSON file, with the file named in errors.
pub fn read_json(path: &Path, help: &str) -> Result<Value> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}"), help))
}

fn content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The `tokenizer.ggml.pre` llama.cpp uses for this tokenizer.json's pre-tokenizer, or `None`
/// when the structure is not one of the covered families.
pub fn detect_pre(tok: &Value) -> Option<&'static str> {
    let pre = tok.get("pre_tokenizer")?;
    let items: Vec<&Value> = match pre.get("type").and_then(Value::as_str) {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let ty = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let types: Vec<String> = items.iter().map(|v| ty(v)).collect();
    let byte_level_regex = |v: &Value| v.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    match types
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ByteLevel"] if byte_level_regex(items[0]) => Some("gpt-2"),
        ["Digits", "ByteLevel"]
            if items[0].get("individual_digits").and_then(Value::as_bool) == Some(true)
                && byte_level_regex(items[1]) =>
        {
            Some("smollm")
        }
        ["Split", "ByteLevel"] | ["Split"] => {
            let re = items[0].get("pattern")?.get("Regex")?.as_str()?;
            if re == LLAMA3_REGEX {
                Some("llama-bpe")
            } else if re == QWEN2_REGEX {
                Some("qwen2")
            } else {
                None
            }
        }
        ["BertPreTokenizer"] => Some("bert-bge"),
        _ => None,
    }
}

/// `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Set `k` in `meta`; gguf-py overwrites a repeated key in place (keeping its position).
fn set_kv(meta: &mut Vec<(String, GgufValue)>, k: &str, v: GgufValue) {
    if let Some(slot) = meta.iter_mut().find(|(key, _)| key == k) {
        slot.1 = v;
    } else {
        meta.push((k.to_string(), v));
    }
}

/// Which of the reference converter's vocabulary builders applies to a model directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VocabKind {
    /// `_set_vocab_gpt2` (byte-level BPE) or `BertModel.set_vocab` (WordPiece).
    Gpt2OrBert,
    /// `_set_vocab_sentencepiece` / `_create_vocab_sentencepiece` (tokenizer.model).
    SentencePiece,
    /// `Phi3MiniModel.set_vocab`'s own sentencepiece variant.
    Phi3SentencePiece,
    /// `_set_vocab_llama_hf` (`LlamaHfVocab`): a sentencepiece-style BPE tokenizer.json
    /// (byte_fallback, `Sequence` decoder) without tokenizer.model.
    LlamaHf,
}

/// `LlamaHfVocab`'s pre-check: BPE with byte_fallback and a `Sequence` decoder.
fn is_llama_hf(tok: &Value) -> bool {
    let model = tok.get("model");
    let field = |k: &str| model.and_then(|m| m.get(k));
    field("type").and_then(Value::as_str) == Some("BPE")
        && field("byte_fallback").and_then(Value::as_bool) == Some(true)
        && tok
            .get("decoder")
            .and_then(|d| d.get("type"))
            .and_then(Value::as_str)
            == Some("Sequence")
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<Map<String, Value>>> {
    let tc_path = dir.join("tokenizer_config.json");
    if !tc_path.is_file() {
        return Ok(None);
    }
    match read_json(&tc_path, HELP_TOKENIZER)? {
        Value::Object(o) => Ok(Some(o)),
        _ => Err(Error::model(
            &tc_path,
            "tokenizer_config.json is not a JSON object",
            HELP_TOKENIZER,
        )),
    }
}

/// The tokenizer metadata for `dir`, in the reference converter's order.
///
/// The builder is chosen as the reference's `set_vocab` of each model class does: llama
/// (and Mistral) try tokenizer.model, then a sentencepiece-style tokenizer.json, then GPT-2
/// BPE; Gemma 2/3 use tokenizer.model; Phi-3 uses GPT-2 BPE when tokenizer_config.json says
/// `GPT2Tokenizer`, else its tokenizer.model. Where the reference would fail for lack of
/// tokenizer.model (Gemma 2, Phi-3) but a byte-level BPE tokenizer.json is present, that is
/// converted instead.
pub fn tokenizer_metadata(
    dir: &Path,
    arch: Arch,
    cfg: &Map<String, Value>,
    vocab_size: u64,
) -> Result<Vec<(String, GgufValue)>> {
    let tok_path = dir.join("tokenizer.json");
    let spm_path = dir.join("tokenizer.model");
    let tc = read_tokenizer_config(dir)?;
    let tok = if tok_path.is_file() {
        Some(read_json(&tok_path, HELP_TOKENIZER)?)
    } else {
        None
    };
    let has_spm = spm_path.is_file();
    let kind = match arch {
        Arch::Bert | Arch::Qwen2 | Arch::Qwen3 => VocabKind::Gpt2OrBert,
        Arch::Llama if has_spm => VocabKind::SentencePiece,
        Arch::Llama if tok.as_ref().is_some_and(is_llama_hf) => VocabKind::LlamaHf,
        Arch::Llama => VocabKind::Gpt2OrBert,
        Arch::Gemma2 | Arch::Gemma3 if has_spm => VocabKind::SentencePiece,
        Arch::Gemma2 | Arch::Gemma3 => VocabKind::Gpt2OrBert,
        Arch::Phi3 => {
            let class = tc
                .as_ref()
                .and_then(|t| t.get("tokenizer_class"))
                .and_then(Value::as_str);
            if class != Some("GPT2Tokenizer") && has_spm {
                VocabKind::Phi3SentencePiece
            } else {
                VocabKind::Gpt2OrBert
            }
        }
    };
    let mut meta: Vec<(String, GgufValue)> = Vec::new();
    // LlamaModel.set_vocab writes this before any vocabulary.
    if arch == Arch::Llama {
        if let Some(b) = tc
            .as_ref()
            .and_then(|t| t.get("add_prefix_space"))
            .and_then(Value::as_bool)
        {
            set_kv(
                &mut meta,
                "tokenizer.ggml.add_space_prefix",
                GgufValue::Bool(b),
            );
        }
    }
    match kind {
        VocabKind::Gpt2OrBert => {
            let Some(tok) = &tok else {
                return Err(Error::model(
                    dir,
                    "no tokenizer.json (or, for llama/gemma/phi3, tokenizer.model) in the model directory",
                    "download tokenizer.json (and tokenizer.model if the model has one) from the model's repository next to config.json",
                ));
            };
            gpt2_or_bert_vocab(&mut meta, dir, arch, cfg, vocab_size, tok, &tok_path, tc)?;
        }
        VocabKind::SentencePiece | VocabKind::Phi3SentencePiece | VocabKind::LlamaHf => {
            let v = match kind {
                VocabKind::SentencePiece => {
                    sentencepiece_vocab(dir, &spm_path, vocab_size, tc.as_ref())?
                }
                VocabKind::Phi3SentencePiece => {
                    phi3_vocab(dir, &spm_path, vocab_size, tc.as_ref(), tok.as_ref())?
                }
                _ => {
                    let Some(tok) = &tok else {
                        return Err(Error::Internal(
                            "llama-hf vocabulary without tokenizer.json".into(),
                        ));
                    };
                    llama_hf_vocab(dir, tok, &tok_path, tc.as_ref(), vocab_size)?
                }
            };
            let n = v.tokens.len() as u64;
            set_kv(
                &mut meta,
                "tokenizer.ggml.model",
                GgufValue::String("llama".into()),
            );
            set_kv(
                &mut meta,
                "tokenizer.ggml.pre",
                GgufValue::String("default".into()),
            );
            set_kv(
                &mut meta,
                "tokenizer.ggml.tokens",
                GgufValue::Array(GgufArray::String(v.tokens)),
            );
            set_kv(
                &mut meta,
                "tokenizer.ggml.scores",
                GgufValue::Array(GgufArray::F32(v.scores)),
            );
            set_kv(
                &mut meta,
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(v.types)),
            );
            special_vocab(
                &mut meta,
                dir,
                tok.as_ref(),
                &tok_path,
                tc,
                cfg,
                Some(n),
                false,
            )?;
        }
    }
    // Gemma2Model / Gemma3Model.set_vocab, after the sentencepiece vocabulary.
    if matches!(arch, Arch::Gemma2 | Arch::Gemma3) && kind == VocabKind::SentencePiece {
        set_kv(
            &mut meta,
            "tokenizer.ggml.add_space_prefix",
            GgufValue::Bool(false),
        );
    }
    // LlamaModel.set_vocab: granite-sized vocabularies (49152, SmolLM's) never add BOS.
    if arch == Arch::Llama && vocab_size == 49152 {
        set_kv(
            &mut meta,
            "tokenizer.ggml.add_bos_token",
            GgufValue::Bool(false),
        );
    }
    Ok(meta)
}

/// A `llama` (sentencepiece) vocabulary: tokens, scores and token types, by id.
struct SpmVocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

impl SpmVocab {
    /// `vocab_size` `[PAD{i}]` slots (score -10000, unused), as the reference starts.
    fn padded(n: usize) -> SpmVocab {
        SpmVocab {
            tokens: (0..n).map(|i| format!("[PAD{i}]")).collect(),
            scores: vec![-10000.0; n],
            types: vec![token_type::UNUSED; n],
        }
    }

    fn set(&mut self, id: usize, text: String, score: f32, ty: i32) {
        if let (Some(t), Some(s), Some(k)) = (
            self.tokens.get_mut(id),
            self.scores.get_mut(id),
            self.types.get_mut(id),
        ) {
            *t = text;
            *s = score;
            *k = ty;
        }
    }
}

/// The pieces of `tokenizer.model`.
fn read_pieces(path: &Path) -> Result<Vec<sentencepiece::Piece>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    sentencepiece::parse_model(&bytes).map_err(|m| {
        Error::model(
            path,
            m,
            "re-download tokenizer.model from the model's repository",
        )
    })
}

/// `_create_vocab_sentencepiece`'s mapping of a piece's type to a llama.cpp token type:
/// user-defined pieces count as normal ones there.
fn spm_token_type(kind: i32) -> i32 {
    match kind {
        sentencepiece::piece_type::UNKNOWN => token_type::UNKNOWN,
        sentencepiece::piece_type::CONTROL => token_type::CONTROL,
        sentencepiece::piece_type::UNUSED => token_type::UNUSED,
        sentencepiece::piece_type::BYTE => token_type::BYTE,
        _ => token_type::NORMAL,
    }
}

/// `added_tokens.json` (text → id), in file order.
fn added_tokens_json(dir: &Path) -> Result<Vec<(String, u64)>> {
    let path = dir.join("added_tokens.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let v = read_json(&path, HELP_TOKENIZER)?;
    let Some(o) = v.as_object() else {
        return Err(Error::model(
            &path,
            "added_tokens.json is not a JSON object",
            HELP_TOKENIZER,
        ));
    };
    o.iter()
        .map(|(k, id)| {
            id.as_u64().map(|id| (k.clone(), id)).ok_or_else(|| {
                Error::model(
                    &path,
                    format!("added token `{k}` has no integer id"),
                    HELP_TOKENIZER,
                )
            })
        })
        .collect()
}

/// tokenizer_config.json's `added_tokens_decoder`: (id, content, special), in file order.
fn added_tokens_decoder(
    dir: &Path,
    tc: Option<&Map<String, Value>>,
) -> Result<Vec<(u64, String, bool)>> {
    let path = dir.join("tokenizer_config.json");
    let Some(d) = tc
        .and_then(|t| t.get("added_tokens_decoder"))
        .and_then(Value::as_object)
    else {
        return Ok(Vec::new());
    };
    d.iter()
        .map(|(id, data)| {
            let bad = || {
                Error::model(
                    &path,
                    format!(
                        "added_tokens_decoder entry `{id}` needs an integer key and a `content`"
                    ),
                    HELP_TOKENIZER,
                )
            };
            let id: u64 = id.trim().parse().map_err(|_| bad())?;
            let content = data
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            let special = data
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok((id, content.to_string(), special))
        })
        .collect()
}

/// `_create_vocab_sentencepiece`: tokenizer.model's pieces in a vocabulary of `vocab_size`
/// `[PAD{i}]` slots, then added_tokens.json (user-defined) and tokenizer_config.json's
/// `added_tokens_decoder` (control when special or special-looking, else user-defined with
/// `▁` turned into spaces); ids past `vocab_size` are ignored as the reference does.
fn sentencepiece_vocab(
    dir: &Path,
    spm_path: &Path,
    vocab_size: u64,
    tc: Option<&Map<String, Value>>,
) -> Result<SpmVocab> {
    let pieces = read_pieces(spm_path)?;
    let n = usize::try_from(vocab_size).unwrap_or(usize::MAX);
    let mut v = SpmVocab::padded(n);
    for (id, p) in pieces.into_iter().enumerate().take(n) {
        v.set(id, p.piece, p.score, spm_token_type(p.kind));
    }
    for (text, id) in added_tokens_json(dir)? {
        if let Ok(id) = usize::try_from(id) {
            v.set(id, text, -1000.0, token_type::USER_DEFINED);
        }
    }
    for (id, content, special) in added_tokens_decoder(dir, tc)? {
        let Ok(id) = usize::try_from(id) else {
            continue;
        };
        if special || looks_special(&content) {
            v.set(id, content, -1000.0, token_type::CONTROL);
        } else {
            v.set(
                id,
                content.replace('\u{2581}', " "),
                -1000.0,
                token_type::USER_DEFINED,
            );
        }
    }
    Ok(v)
}

/// `Phi3MiniModel.set_vocab`'s variant: like [`sentencepiece_vocab`], but added tokens keep
/// their text, are control only when flagged special, and tokenizer.json's `added_tokens`
/// are applied last. The reference crashes on ids past `vocab_size`; they are an error here.
fn phi3_vocab(
    dir: &Path,
    spm_path: &Path,
    vocab_size: u64,
    tc: Option<&Map<String, Value>>,
    tok: Option<&Value>,
) -> Result<SpmVocab> {
    let pieces = read_pieces(spm_path)?;
    let n = usize::try_from(vocab_size).unwrap_or(usize::MAX);
    let out_of_range = |what: &str, id: u64| {
        Error::model(
            dir,
            format!("{what} has token id {id}, but config.json says vocab_size is {vocab_size}"),
            "the tokenizer and config.json come from different models; re-download both",
        )
    };
    if pieces.len() > n {
        return Err(out_of_range("tokenizer.model", pieces.len() as u64 - 1));
    }
    let mut v = SpmVocab::padded(n);
    for (id, p) in pieces.into_iter().enumerate() {
        v.set(id, p.piece, p.score, spm_token_type(p.kind));
    }
    for (text, id) in added_tokens_json(dir)? {
        if let Ok(id) = usize::try_from(id) {
            v.set(id, text, -1000.0, token_type::USER_DEFINED);
        }
    }
    let mut later: Vec<(u64, String, bool)> = added_tokens_decoder(dir, tc)?;
    for a in tok
        .and_then(|t| t.get("added_tokens"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(c)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) {
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            later.push((id, c.to_string(), special));
        }
    }
    for (id, content, special) in later {
        if id >= vocab_size {
            return Err(out_of_range("an added token", id));
        }
        let ty = if special {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        v.set(id as usize, content, -1000.0, ty);
    }
    Ok(v)
}

/// A special-token entry of tokenizer_config.json / special_tokens_map.json (a string or
/// an object with `content`).
fn special_text(v: &Value) -> Option<String> {
    content(Some(v))
}

/// `LlamaHfVocab`: tokenizer.json's BPE vocabulary with every score -1000, byte pieces
/// `<0xXX>` typed as bytes and the tokenizer's special tokens as control, then the added
/// tokens past the base vocabulary in id order.
///
/// The special tokens are what `transformers` reports as `all_special_tokens`: the
/// `{bos,eos,unk,sep,pad,cls,mask}_token` and `additional_special_tokens` entries of
/// tokenizer_config.json (else special_tokens_map.json), with LlamaTokenizer's defaults
/// `<s>`, `</s>`, `<unk>` when a Llama tokenizer class leaves them out.
fn llama_hf_vocab(
    dir: &Path,
    tok: &Value,
    tok_path: &Path,
    tc: Option<&Map<String, Value>>,
    vocab_size: u64,
) -> Result<SpmVocab> {
    let vocab = tok
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::model(
                tok_path,
                "tokenizer model has no `vocab` object",
                HELP_TOKENIZER,
            )
        })?;
    let base = vocab.len();
    let mut by_id: Vec<Option<String>> = vec![None; base];
    let mut ids: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (s, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::model(
                tok_path,
                format!("vocab entry `{s}` has no integer id"),
                HELP_TOKENIZER,
            )
        })?;
        if let Some(slot) = usize::try_from(id).ok().and_then(|i| by_id.get_mut(i)) {
            *slot = Some(s.clone());
        }
        ids.insert(s.clone(), id);
    }
    let mut added: Vec<(u64, String)> = Vec::new();
    for a in tok
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(c)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) {
            ids.entry(c.to_string()).or_insert(id);
            if id >= base as u64 {
                added.push((id, c.to_string()));
            } else if let Some(slot @ None) = by_id.get_mut(id as usize) {
                *slot = Some(c.to_string());
            }
        }
    }
    added.sort_by_key(|(id, _)| *id);

    // all_special_tokens.
    let stm_path = dir.join("special_tokens_map.json");
    let stm = if stm_path.is_file() {
        read_json(&stm_path, HELP_TOKENIZER)?.as_object().cloned()
    } else {
        None
    };
    let class = tc
        .and_then(|t| t.get("tokenizer_class"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let llama_class = class.starts_with("Llama") || class.starts_with("CodeLlama");
    let mut specials: Vec<String> = Vec::new();
    for typ in ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] {
        let key = format!("{typ}_token");
        let found = tc
            .and_then(|t| t.get(&key))
            .or_else(|| stm.as_ref().and_then(|m| m.get(&key)))
            .and_then(special_text);
        let default = match typ {
            "bos" if llama_class => Some("<s>".to_string()),
            "eos" if llama_class => Some("</s>".to_string()),
            "unk" if llama_class => Some("<unk>".to_string()),
            _ => None,
        };
        if let Some(t) = found.or(default) {
            specials.push(t);
        }
    }
    let extra = tc
        .and_then(|t| t.get("additional_special_tokens"))
        .or_else(|| {
            stm.as_ref()
                .and_then(|m| m.get("additional_special_tokens"))
        })
        .and_then(Value::as_array);
    specials.extend(extra.into_iter().flatten().filter_map(special_text));
    let special_ids: std::collections::HashSet<u64> = specials
        .iter()
        .filter_map(|s| ids.get(s).copied())
        .collect();

    let is_byte = |t: &str| {
        let b = t.as_bytes();
        b.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && b[3].is_ascii_hexdigit()
            && b[4].is_ascii_hexdigit()
    };
    let mut v = SpmVocab {
        tokens: Vec::with_capacity(base + added.len()),
        scores: Vec::with_capacity(base + added.len()),
        types: Vec::with_capacity(base + added.len()),
    };
    for (id, t) in by_id.into_iter().enumerate() {
        let t = t.ok_or_else(|| {
            Error::model(
                tok_path,
                format!("the vocabulary has no token with id {id}"),
                HELP_TOKENIZER,
            )
        })?;
        let ty = if is_byte(&t) {
            token_type::BYTE
        } else if special_ids.contains(&(id as u64)) {
            token_type::CONTROL
        } else {
            token_type::NORMAL
        };
        v.tokens.push(t);
        v.scores.push(-1000.0);
        v.types.push(ty);
    }
    for (_, t) in added {
        let ty = if specials.contains(&t) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        v.tokens.push(t);
        v.scores.push(-1000.0);
        v.types.push(ty);
    }
    // The reference does not pad this vocabulary; llama.cpp then rejects a model whose
    // embedding has another row count, so say so now.
    if v.tokens.len() as u64 != vocab_size {
        return Err(Error::model(
            tok_path,
            format!(
                "tokenizer.json has {} tokens but config.json says vocab_size is {vocab_size}",
                v.tokens.len()
            ),
            "add the model's tokenizer.model next to tokenizer.json (it pads the vocabulary), or re-download matching files",
        ));
    }
    Ok(v)
}

/// The GPT-2 BPE (`_set_vocab_gpt2`) or BERT WordPiece (`BertModel.set_vocab`) vocabulary.
#[allow(clippy::too_many_arguments)]
fn gpt2_or_bert_vocab(
    meta_out: &mut Vec<(String, GgufValue)>,
    dir: &Path,
    arch: Arch,
    cfg: &Map<String, Value>,
    vocab_size: u64,
    tok: &Value,
    tok_path: &Path,
    tc: Option<Map<String, Value>>,
) -> Result<()> {
    let model = tok
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::model(tok_path, "no `model` object", HELP_TOKENIZER))?;
    let mtype = model.get("type").and_then(Value::as_str).unwrap_or("");
    let is_bert = arch == Arch::Bert;
    match (mtype, is_bert) {
        ("WordPiece", true) => {}
        ("BPE", false) if model.get("byte_fallback").and_then(Value::as_bool) != Some(true) => {}
        _ => {
            return Err(Error::model(
                tok_path,
                format!(
                    "tokenizer model `{mtype}`{} is not supported for {}",
                    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
                        " with byte_fallback (sentencepiece-style)"
                    } else {
                        ""
                    },
                    arch.name()
                ),
                "supported: byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen) for decoders, WordPiece for BERT",
            ))
        }
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::model(
                tok_path,
                "tokenizer model has no `vocab` object",
                HELP_TOKENIZER,
            )
        })?;
    let n = usize::try_from(vocab_size).unwrap_or(usize::MAX);
    let mut by_id: Vec<Option<String>> = vec![None; n];
    let mut put_tok = |id: u64, s: &str| -> Result<()> {
        let slot =
            usize::try_from(id)
                .ok()
                .and_then(|i| by_id.get_mut(i))
                .ok_or_else(|| {
                    Error::model(
                tok_path,
                format!("token `{s}` has id {id}, but config.json says vocab_size is {vocab_size}"),
                "the tokenizer and config.json come from different models; re-download both",
            )
                })?;
        *slot = Some(s.to_string());
        Ok(())
    };
    for (s, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::model(
                tok_path,
                format!("vocab entry `{s}` has no integer id"),
                HELP_TOKENIZER,
            )
        })?;
        put_tok(id, s)?;
    }
    let added: Vec<&Map<String, Value>> = tok
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    for a in &added {
        if let (Some(id), Some(c)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) {
            put_tok(id, c)?;
        }
    }
    let is_added = |s: &str| -> Option<&Map<String, Value>> {
        added
            .iter()
            .copied()
            .find(|a| a.get("content").and_then(Value::as_str) == Some(s))
    };
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    let mut types: Vec<i32> = Vec::with_capacity(n);
    for (i, t) in by_id.iter().enumerate() {
        match t {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(token_type::UNUSED);
            }
            Some(t) => match is_added(t) {
                Some(a) => {
                    let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
                    if special || looks_special(t) {
                        tokens.push(t.clone());
                        types.push(token_type::CONTROL);
                    } else {
                        tokens.push(t.replace('\u{2581}', " "));
                        types.push(token_type::USER_DEFINED);
                    }
                }
                None => {
                    tokens.push(t.clone());
                    types.push(token_type::NORMAL);
                }
            },
        }
    }
    let pre = detect_pre(tok).ok_or_else(|| {
        Error::model(
            tok_path,
            format!(
                "unrecognised pre-tokenizer {}",
                tok.get("pre_tokenizer").map_or_else(|| "null".to_string(), |v| v.to_string().chars().take(200).collect())
            ),
            "supported pre-tokenizers: GPT-2 ByteLevel (gpt-2), Digits+ByteLevel (smollm), the Llama 3 split regex (llama-bpe), the Qwen2 split regex (qwen2), BertPreTokenizer",
        )
    })?;

    let mut meta = std::mem::take(meta_out);
    let set = set_kv;
    if is_bert {
        let ttc = cfg
            .get("type_vocab_size")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        set(
            &mut meta,
            "tokenizer.ggml.token_type_count",
            GgufValue::U32(ttc as u32),
        );
        tokens = tokens
            .into_iter()
            .zip(&types)
            .map(|(t, &ty)| {
                if ty == token_type::CONTROL {
                    t
                } else if let Some(s) = t.strip_prefix("##") {
                    s.to_string()
                } else {
                    format!("\u{2581}{t}")
                }
            })
            .collect();
        set(
            &mut meta,
            "tokenizer.ggml.model",
            GgufValue::String("bert".into()),
        );
    } else {
        set(
            &mut meta,
            "tokenizer.ggml.model",
            GgufValue::String("gpt2".into()),
        );
    }
    set(
        &mut meta,
        "tokenizer.ggml.pre",
        GgufValue::String(pre.into()),
    );
    set(
        &mut meta,
        "tokenizer.ggml.tokens",
        GgufValue::Array(GgufArray::String(tokens)),
    );
    set(
        &mut meta,
        "tokenizer.ggml.token_type",
        GgufValue::Array(GgufArray::I32(types)),
    );

    *meta_out = meta;
    let n_vocab = if is_bert { Some(vocab_size) } else { None };
    special_vocab(
        meta_out,
        dir,
        Some(tok),
        tok_path,
        tc,
        cfg,
        n_vocab,
        !is_bert,
    )
}

/// gguf-py's `SpecialVocab` (merges when `load_merges`, special token ids below `n_vocab`,
/// add_* flags, chat template, normalizer flags), written after the vocabulary.
#[allow(clippy::too_many_arguments)]
fn special_vocab(
    meta_out: &mut Vec<(String, GgufValue)>,
    dir: &Path,
    tok: Option<&Value>,
    tok_path: &Path,
    mut tc: Option<Map<String, Value>>,
    cfg: &Map<String, Value>,
    n_vocab: Option<u64>,
    load_merges: bool,
) -> Result<()> {
    let mut meta = std::mem::take(meta_out);
    let set = set_kv;
    let added: Vec<&Map<String, Value>> = tok
        .and_then(|t| t.get("added_tokens"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    if load_merges {
        let merges = tok
            .and_then(|t| t.get("model"))
            .and_then(|m| m.get("merges"))
            .and_then(Value::as_array);
        let mut out = Vec::new();
        for m in merges.into_iter().flatten() {
            match m {
                Value::String(s) => out.push(s.clone()),
                Value::Array(pair) if pair.len() == 2 => {
                    let enc = |v: &Value| -> String {
                        v.as_str()
                            .unwrap_or("")
                            .chars()
                            .map(|c| if c == ' ' { '\u{120}' } else { c })
                            .collect()
                    };
                    out.push(format!("{} {}", enc(&pair[0]), enc(&pair[1])));
                }
                _ => {
                    return Err(Error::model(
                        tok_path,
                        "unknown tokenizer merges format",
                        HELP_TOKENIZER,
                    ));
                }
            }
        }
        if !out.is_empty() {
            set(
                &mut meta,
                "tokenizer.ggml.merges",
                GgufValue::Array(GgufArray::String(out)),
            );
        }
    }
    let special_types = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let mut ids: Vec<(&str, u64)> = Vec::new();
    let set_id = |ids: &mut Vec<(&'static str, u64)>, typ: &'static str, id: Option<u64>| {
        let Some(id) = id else { return };
        if n_vocab.is_some_and(|n| id >= n) || ids.iter().any(|(t, _)| *t == typ) {
            return;
        }
        ids.push((typ, id));
    };
    let mut add: Vec<(&str, bool)> = Vec::new();
    fn set_add(
        add: &mut Vec<(&'static str, bool)>,
        typ: &'static str,
        v: bool,
        only_default: bool,
    ) {
        if let Some(slot) = add.iter_mut().find(|(t, _)| *t == typ) {
            if !only_default {
                slot.1 = v;
            }
        } else {
            add.push((typ, v));
        }
    }
    let get_tc =
        |tc: &Option<Map<String, Value>>, k: &str| content(tc.as_ref().and_then(|t| t.get(k)));
    let mut special_bos = get_tc(&tc, "bos_token");
    let special_cls = get_tc(&tc, "cls_token");
    let mut special_eos = get_tc(&tc, "eos_token");
    let special_sep = get_tc(&tc, "sep_token");
    if special_bos.is_none() && special_cls.is_some() {
        if let Some(t) = tc.as_mut() {
            t.insert(
                "bos_token".into(),
                Value::String(special_cls.clone().unwrap_or_default()),
            );
            special_bos = special_cls.clone();
        }
    }
    if special_eos.is_none() && special_sep.is_some() {
        if let Some(t) = tc.as_mut() {
            t.insert(
                "eos_token".into(),
                Value::String(special_sep.clone().unwrap_or_default()),
            );
            special_eos = special_sep.clone();
        }
    }
    if let Some(pp) = tok
        .and_then(|t| t.get("post_processor"))
        .filter(|v| !v.is_null())
    {
        let procs: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![pp],
        };
        for p in procs {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, true);
                    set_add(&mut add, "eos", false, true);
                }
                Some("RobertaProcessing") => {
                    set_add(&mut add, "bos", true, false);
                    set_add(&mut add, "eos", true, false);
                    set_add(&mut add, "sep", true, false);
                }
                Some("TemplateProcessing") => {
                    let single = p
                        .get("single")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let sp = |v: &Value| {
                        v.get("SpecialToken")
                            .and_then(|s| s.get("id"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    };
                    if single.len() > 1 {
                        if let Some(first) = sp(&single[0]) {
                            let is = Some(&first) == special_bos.as_ref()
                                || Some(&first) == special_cls.as_ref();
                            if tc.is_none() && special_bos.is_none() {
                                special_bos = Some(first.clone());
                            }
                            set_add(&mut add, "bos", is || tc.is_none(), false);
                        }
                        if let Some(last) = single.last().and_then(sp) {
                            if tc.is_none() {
                                special_eos = Some(last.clone());
                            }
                            set_add(&mut add, "eos", Some(&last) == special_eos.as_ref(), false);
                        }
                        let pair = p
                            .get("pair")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        let has_last = single.last().and_then(sp).is_some();
                        // A [sep] B with the single template ending in a special token: no sep.
                        if pair.len() >= 3 {
                            let mid: Vec<&Value> = pair
                                .iter()
                                .filter(|v| v.get("Sequence").is_none())
                                .collect();
                            let middle_special = mid.len() > 2;
                            set_add(&mut add, "sep", middle_special && !has_last, false);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let chat_template = match tc.as_ref().and_then(|t| t.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
            } else {
                None
            }
        }
    };
    if let Some(t) = &tc {
        for typ in special_types {
            if let Some(b) = t.get(&format!("add_{typ}_token")).and_then(Value::as_bool) {
                if !add.iter().any(|(k, _)| *k == typ) {
                    add.push((typ, b));
                }
            }
            let Some(c) = content(t.get(&format!("{typ}_token"))) else {
                continue;
            };
            let id = added
                .iter()
                .find(|a| a.get("content").and_then(Value::as_str) == Some(c.as_str()))
                .and_then(|a| a.get("id").and_then(Value::as_u64));
            set_id(&mut ids, typ, id);
        }
    }
    for typ in special_types {
        let id = cfg.get(&format!("{typ}_token_id")).and_then(Value::as_u64);
        set_id(&mut ids, typ, id);
    }
    for (typ, id) in &ids {
        let key = match *typ {
            "unk" => "tokenizer.ggml.unknown_token_id".to_string(),
            "sep" => "tokenizer.ggml.seperator_token_id".to_string(),
            "pad" => "tokenizer.ggml.padding_token_id".to_string(),
            t => format!("tokenizer.ggml.{t}_token_id"),
        };
        set(&mut meta, &key, GgufValue::U32(*id as u32));
    }
    for (typ, v) in &add {
        set(
            &mut meta,
            &format!("tokenizer.ggml.add_{typ}_token"),
            GgufValue::Bool(*v),
        );
    }
    if let Some(ct) = chat_template {
        set(&mut meta, "tokenizer.chat_template", GgufValue::String(ct));
    }
    if let Some(norm) = tok
        .and_then(|t| t.get("normalizer"))
        .filter(|v| !v.is_null())
    {
        let (mut lower, mut strip) = (None, None);
        parse_normalizer(norm, &mut lower, &mut strip);
        if let Some(l) = lower {
            set(
                &mut meta,
                "tokenizer.ggml.normalizer.lowercase",
                GgufValue::Bool(l),
            );
        }
        if let Some(s) = strip {
            set(
                &mut meta,
                "tokenizer.ggml.normalizer.strip_accents",
                GgufValue::Bool(s),
            );
        }
    }
    *meta_out = meta;
    Ok(())
}

fn parse_normalizer(n: &Value, lower: &mut Option<bool>, strip: &mut Option<bool>) {
    match n.get("type").and_then(Value::as_str) {
        Some("Lowercase") => *lower = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(v) = n.get("lowercase") {
                *lower = v.as_bool();
            }
            if let Some(v) = n.get("strip_accents") {
                *strip = v.as_bool();
            }
        }
        Some("Sequence") => {
            for x in n
                .get("normalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                parse_normalizer(x, lower, strip);
            }
        }
        _ => {}
    }
}
