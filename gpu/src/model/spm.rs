//! SentencePiece BPE tokenizers (Llama 2, Mistral: GGUF `tokenizer.ggml.model = "llama"`), as
//! llama.cpp runs them: spaces become `▁`, a space is put in front of the text and after each
//! special token, adjacent pieces merge highest score first, and characters without a piece fall
//! back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::ModelError;
use super::gguf::{GgufFile, GgufValue};
use crate::tokenizer::Tokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

const SPACE: char = '▁';

/// Control pieces that end a reply besides the file's eos: Llama 2's `</s>`, Gemma's and Phi-3's
/// ends of turn.
const END_OF_TURN: [&str; 3] = ["</s>", "<end_of_turn>", "<|end|>"];

/// A vocabulary entry: its text, score and GGUF type.
#[derive(Clone, Debug)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: i64,
}

pub struct SpmTokenizer {
    pieces: Vec<Piece>,
    /// Normal pieces by text (the ones merges may produce).
    by_text: HashMap<String, u32>,
    /// Control and user-defined pieces, longest first: split out of the text before merging.
    specials: Vec<(String, u32)>,
    byte_tokens: [Option<u32>; 256],
    unknown: Option<u32>,
    bytes: Vec<Vec<u8>>,
    eos: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for SpmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpmTokenizer").field("vocab", &self.pieces.len()).field("eos", &self.eos).finish()
    }
}

/// What to do with the text around pieces.
#[derive(Clone, Copy, Debug)]
pub struct SpmOptions {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, PartialEq)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on a tie, the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run of the text in the merge's linked list: `text[start..start + len]`.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

fn byte_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

impl SpmTokenizer {
    pub fn new(pieces: Vec<Piece>, options: SpmOptions) -> Self {
        let mut by_text = HashMap::new();
        let mut specials = Vec::new();
        let mut byte_tokens = [None; 256];
        let mut unknown = None;
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            match p.kind {
                CONTROL | USER_DEFINED if !p.text.is_empty() => specials.push((p.text.clone(), id)),
                BYTE => {
                    if let Some(b) = byte_value(&p.text) {
                        byte_tokens[b as usize] = Some(id);
                    }
                }
                UNKNOWN => unknown = unknown.or(Some(id)),
                _ => {
                    by_text.entry(p.text.clone()).or_insert(id);
                }
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let bytes = pieces
            .iter()
            .map(|p| match p.kind {
                BYTE => byte_value(&p.text).map_or_else(Vec::new, |b| vec![b]),
                CONTROL | UNKNOWN => Vec::new(),
                _ => p.text.replace(SPACE, " ").into_bytes(),
            })
            .collect();
        let mut eos: Vec<u32> = options.eos.into_iter().collect();
        eos.extend(
            pieces
                .iter()
                .enumerate()
                .filter(|(_, p)| matches!(p.kind, CONTROL | USER_DEFINED) && END_OF_TURN.contains(&p.text.as_str()))
                .map(|(i, _)| i as u32),
        );
        eos.sort_unstable();
        eos.dedup();
        Self {
            pieces,
            by_text,
            specials,
            byte_tokens,
            unknown,
            bytes,
            eos,
            bos: options.bos,
            add_bos: options.add_bos,
            add_space_prefix: options.add_space_prefix,
        }
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let array = |key: &str| match g.get(key) {
            Ok(GgufValue::Array(items)) => Ok(items.as_slice()),
            Ok(other) => Err(ModelError::Metadata(format!("{key}: {other} is not an array"))),
            Err(e) => Err(e.into()),
        };
        let texts = array("tokenizer.ggml.tokens")?;
        let scores = array("tokenizer.ggml.scores").unwrap_or(&[]);
        let types = array("tokenizer.ggml.token_type").unwrap_or(&[]);
        let pieces = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let text = t
                    .as_str()
                    .ok_or_else(|| ModelError::Metadata(format!("tokenizer.ggml.tokens[{i}]: {t} is not a string")))?;
                Ok(Piece {
                    text: text.to_string(),
                    score: scores.get(i).and_then(GgufValue::as_f64).unwrap_or(0.0) as f32,
                    kind: types.get(i).and_then(GgufValue::as_u64).map_or(NORMAL, |t| t as i64),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let flag = |key: &str, default: bool| match g.metadata.get(key) {
            Some(GgufValue::Bool(b)) => *b,
            _ => default,
        };
        let id = |key: &str| g.get_u64(key).ok().map(|v| v as u32).filter(|&v| (v as usize) < pieces.len());
        let options = SpmOptions {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token", true),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
        };
        Ok(Self::new(pieces, options))
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// Merge one run of text (spaces already `▁`) into pieces.
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) })
            .collect();
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (l, r) = (symbols[left?], symbols[right?]);
            let id = *self.by_text.get(&text[l.start..r.start + r.len])?;
            Some(Bigram { left: left?, right: right?, score: self.pieces[id as usize].score, len: l.len + r.len })
        };
        for i in 1..symbols.len() {
            queue.extend(candidate(&symbols, Some(i - 1), Some(i)));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale: one side has merged since.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            queue.extend(candidate(&symbols, l.prev, Some(b.left)));
            queue.extend(candidate(&symbols, Some(b.left), symbols[b.left].next));
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.by_text.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize].or(self.unknown))),
            }
            at = s.next;
        }
    }
}

impl Tokenizer for SpmTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut after_special = true;
        let raw = |chunk: &str, after_special: bool, out: &mut Vec<u32>| {
            if chunk.is_empty() {
                return;
            }
            let mut s = String::with_capacity(chunk.len() + 3);
            if self.add_space_prefix && after_special {
                s.push(SPACE);
            }
            s.extend(chunk.chars().map(|c| if c == ' ' { SPACE } else { c }));
            self.merge(&s, out);
        };
        loop {
            // The earliest special token in the rest (the longest at that position).
            let found = self
                .specials
                .iter()
                .filter_map(|(t, id)| rest.find(t.as_str()).map(|at| (at, t.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let Some((at, len, id)) = found else {
                raw(rest, after_special, &mut out);
                break;
            };
            raw(&rest[..at], after_special, &mut out);
            out.push(id);
            after_special = true;
            rest = &rest[at + len..];
        }
        out
    }

    fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    fn prompt_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    fn token_text(&self, id: u32) -> Option<&str> {
        SpmTokenizer::token_text(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: i64) -> Piece {
        Piece { text: text.into(), score, kind }
    }

    /// A hand-made vocabulary: merges by score, byte fallback, specials.
    fn vocab() -> SpmTokenizer {
        let mut pieces = vec![piece("<unk>", 0.0, UNKNOWN), piece("<s>", 0.0, CONTROL), piece("</s>", 0.0, CONTROL)];
        pieces.extend((0..=255u8).map(|b| piece(&format!("<0x{b:02X}>"), 0.0, BYTE)));
        for (t, s) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("c", -2.0),
            ("ab", -3.0),
            ("bc", -0.5),
            ("▁a", -4.0),
            ("▁abc", -5.0),
        ] {
            pieces.push(piece(t, s, NORMAL));
        }
        SpmTokenizer::new(pieces, SpmOptions { bos: Some(1), eos: Some(2), add_bos: true, add_space_prefix: true })
    }

    #[test]
    fn merges_highest_score_first_and_falls_back_to_bytes() {
        let t = vocab();
        let id = |s: &str| t.by_text[s];
        // "▁ab": "ab" (-3) merges before "▁a" (-4), and "▁ab" is no piece.
        assert_eq!(t.encode("ab"), vec![id("▁"), id("ab")]);
        // "▁abc": "bc" (-0.5) first, then "▁a" (-4; "abc" is no piece), then "▁abc".
        assert_eq!(t.encode("abc"), vec![id("▁abc")]);
        assert_eq!(t.encode("a  a"), vec![id("▁a"), id("▁"), id("▁a")]);
        // "é" has no piece: its two UTF-8 bytes.
        assert_eq!(t.encode("é"), vec![id("▁"), 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&t.encode("a é")), " a é");
        // Specials are split out; the text after one gets the space prefix again.
        assert_eq!(t.encode("<s>a</s>b"), vec![1, id("▁a"), 2, id("▁"), id("b")]);
        assert_eq!(t.prompt_bos(), Some(1));
        assert_eq!(t.encode_prompt("a"), vec![1, id("▁a")]);
        assert_eq!(t.encode_prompt("<s>a"), vec![1, id("▁a")], "no second BOS");
        assert_eq!(t.eos_tokens(), &[2]);
        assert!(t.encode("").is_empty());
    }
}
