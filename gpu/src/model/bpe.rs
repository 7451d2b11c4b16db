//! Byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and Qwen2 use), built from GGUF
//! metadata: vocabulary, merges, token types, and the pre-tokenizer llama.cpp names.

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::ModelError;
use super::gguf::{GgufFile, GgufValue};
use crate::tokenizer::Tokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Texts of tokens that end a turn, besides the declared end-of-sequence token.
const END_OF_TURN: [&str; 5] = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>"];

/// How a vocabulary spells the bytes of its pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2's printable stand-ins for bytes.
    ByteLevel,
    /// SentencePiece's: `▁` for a space, `<0xXX>` for a byte without a piece.
    Metaspace,
}

pub struct BpeTokenizer {
    inner: tokenizers::Tokenizer,
    /// Bytes each token stands for in generated text; empty for special tokens.
    bytes: Vec<Vec<u8>>,
    eos: Vec<u32>,
    pub bos: Option<u32>,
    /// Prompts start with `bos` (GGUF `add_bos_token`, `tokenizer_config.json`'s `add_bos_token`).
    add_bos: bool,
    tokens: Vec<String>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer").field("vocab", &self.bytes.len()).field("eos", &self.eos).finish()
    }
}

/// GPT-2's reversible map from bytes to printable characters: entry `b` is byte `b`'s character.
pub(crate) fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(u32::from('¡')..=u32::from('¬'));
    printable.extend(u32::from('®')..=u32::from('ÿ'));
    let mut extra = 0;
    (0..=255u32)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("below 0x200, a valid scalar")
        })
        .collect()
}

/// The inverse of `byte_chars`.
fn byte_level_decoder() -> HashMap<char, u8> {
    byte_chars().into_iter().enumerate().map(|(b, c)| (c, b as u8)).collect()
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>, ModelError> {
    match g.get(key)? {
        GgufValue::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ModelError::Metadata(format!("{key}: {v} is not a string")))
            })
            .collect(),
        other => Err(ModelError::Metadata(format!("{key}: {other} is not an array"))),
    }
}

/// Llama 3's split (also GPT-4's): contractions in any case, letters with one leading
/// non-letter, digits in threes, punctuation runs, newlines, and spaces not before a word.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's, with digits one at a time.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Metadata(format!("tokenizer pre-tokenizer \"{pre}\": {e}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        // llama.cpp: digits one by one, then the GPT-2 pattern.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "gpt-2" | "gpt2" | "default" => byte_level.into(),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => split(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT)?,
        other => return Err(ModelError::Unsupported(format!("tokenizer pre-tokenizer \"{other}\""))),
    })
}

impl BpeTokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!("tokenizer model \"{model}\" as byte-level BPE")));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::Metadata(format!("tokenizer.ggml.merges: \"{m}\" is not a pair")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i64> = match g.metadata.get("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(v)) => v.iter().map(|t| t.as_u64().map_or(1, |t| t as i64)).collect(),
            _ => vec![1; tokens.len()],
        };
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Metadata(format!("tokenizer: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        let special: Vec<bool> = (0..tokens.len())
            .map(|i| matches!(types.get(i), Some(&TOKEN_CONTROL) | Some(&TOKEN_USER_DEFINED)))
            .collect();
        let added: Vec<AddedToken> =
            tokens.iter().zip(&special).filter(|(_, s)| **s).map(|(t, _)| AddedToken::from(t.clone(), true)).collect();
        inner.add_special_tokens(added).map_err(|e| ModelError::Metadata(format!("tokenizer special tokens: {e}")))?;
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let eos = g.get_u64("tokenizer.ggml.eos_token_id").ok().map(|e| e as u32);
        let bos = g.get_u64("tokenizer.ggml.bos_token_id").ok().map(|b| b as u32);
        let add_bos = matches!(g.metadata.get("tokenizer.ggml.add_bos_token"), Some(GgufValue::Bool(true)));
        Ok(Self::from_parts(inner, tokens, &special, eos, bos, add_bos, PieceStyle::ByteLevel))
    }

    /// A Hugging Face `tokenizer.json` (byte-level BPE only); `eos_token` and `bos_token` name
    /// those tokens as `tokenizer_config.json` does, and `add_bos` is its `add_bos_token`.
    pub fn from_tokenizer_json(
        path: &std::path::Path,
        eos_token: Option<&str>,
        bos_token: Option<&str>,
        add_bos: bool,
    ) -> Result<Self, ModelError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))?;
        let style = match (&json["model"]["type"], text.contains("\"ByteLevel\""), &json["model"]["byte_fallback"]) {
            (t, true, _) if t == "BPE" => PieceStyle::ByteLevel,
            // SentencePiece converted to BPE (Llama 2, Mistral): `▁` for spaces, byte fallback.
            (t, false, serde_json::Value::Bool(true)) if t == "BPE" => PieceStyle::Metaspace,
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "{}: only byte-level or byte-fallback BPE tokenizers are",
                    path.display()
                )));
            }
        };
        let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text)
            .map_err(|e| ModelError::Metadata(format!("{}: {e}", path.display())))?;
        let vocab = inner.get_vocab(true);
        let mut tokens = vec![String::new(); vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0)];
        for (t, i) in vocab {
            tokens[i as usize] = t;
        }
        let mut special = vec![false; tokens.len()];
        for (id, t) in inner.get_added_tokens_decoder() {
            if t.special && (id as usize) < special.len() {
                special[id as usize] = true;
            }
        }
        let id_of = |t: Option<&str>| t.and_then(|t| inner.token_to_id(t));
        let (eos, bos) = (id_of(eos_token), id_of(bos_token));
        Ok(Self::from_parts(inner, tokens, &special, eos, bos, add_bos, style))
    }

    fn from_parts(
        inner: tokenizers::Tokenizer,
        tokens: Vec<String>,
        special: &[bool],
        eos: Option<u32>,
        bos: Option<u32>,
        add_bos: bool,
        style: PieceStyle,
    ) -> Self {
        let decode = byte_level_decoder();
        let bytes = tokens
            .iter()
            .zip(special)
            .map(|(t, &s)| match style {
                _ if s => Vec::new(),
                PieceStyle::ByteLevel => t.chars().map(|c| decode.get(&c).copied().unwrap_or(b'?')).collect(),
                PieceStyle::Metaspace => match t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                    Some(h) if h.len() == 2 => {
                        u8::from_str_radix(h, 16).map_or_else(|_| t.clone().into_bytes(), |b| vec![b])
                    }
                    _ => t.replace('▁', " ").into_bytes(),
                },
            })
            .collect();
        let mut eos: Vec<u32> = eos.into_iter().collect();
        eos.extend(
            tokens
                .iter()
                .zip(special)
                .enumerate()
                .filter(|(_, (t, s))| **s && END_OF_TURN.contains(&t.as_str()))
                .map(|(i, _)| i as u32),
        );
        eos.sort_unstable();
        eos.dedup();
        Self { inner, bytes, eos, bos, add_bos, tokens }
    }

    /// The underlying tokenizer, as `tokenizer.json` would hold it.
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner.to_string(true).map_err(|e| ModelError::Metadata(format!("tokenizer: {e}")))
    }

    /// The text of a token as the vocabulary spells it (for templates: bos and eos strings).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
}

impl Tokenizer for BpeTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        // Encoding plain text with a loaded vocabulary cannot fail; an empty result is the
        // fallback should the library ever report an error.
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    fn prompt_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    fn token_text(&self, id: u32) -> Option<&str> {
        BpeTokenizer::token_text(self, id)
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The pieces a pre-tokenizer cuts `text` into, as raw text.
    fn splits(pre: &str, text: &str) -> Vec<String> {
        let decode = super::byte_level_decoder();
        let mut s = PreTokenizedString::from(text);
        super::pre_tokenizer(pre).unwrap().pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| String::from_utf8(piece.chars().map(|c| decode[&c]).collect()).unwrap())
            .collect()
    }

    #[test]
    fn llama3_and_qwen2_split_as_their_patterns_do() {
        // Expected: Python's `regex.findall` with the same patterns (an independent engine).
        let text = "I'M here: 12345 apples,  don't\n\n  x!!";
        let llama3 =
            ["I", "'M", " here", ":", " ", "123", "45", " apples", ",", " ", " don", "'t", "\n\n", " ", " x", "!!"];
        assert_eq!(splits("llama-bpe", text), llama3);
        let qwen2 = [
            "I", "'M", " here", ":", " ", "1", "2", "3", "4", "5", " apples", ",", " ", " don", "'t", "\n\n", " ",
            " x", "!!",
        ];
        assert_eq!(splits("qwen2", text), qwen2);
        assert!(super::pre_tokenizer("no-such-pre").is_err());
    }

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let d = super::byte_level_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'Ċ'], b'\n');
        assert_eq!(d[&'a'], b'a');
        let mut bytes: Vec<u8> = d.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
    }
}
