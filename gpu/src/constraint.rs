//! Constrained decoding on llguidance: a request's `Constraint` (JSON schema, any JSON object,
//! regex, Lark grammar, choice) compiled against the model's vocabulary into a `Matcher`, whose
//! mask of allowed tokens is applied to each step's logits before sampling.
//!
//! Calling order, per constrained sequence and step: `compute_mask` (on any thread, while the
//! forward pass runs), `apply` to the logits, sample, `consume` the token; `is_complete` then says
//! whether the grammar is finished (the sequence stops).

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher as Guidance, ParserFactory};
use runtime::request::{Constraint, Grammar};

use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The vocabulary could not be turned into llguidance's token trie.
    #[error("constrained decoding is not available for this model: {0}")]
    Vocabulary(String),
    /// The schema, regex or grammar does not compile (or is not valid JSON).
    #[error("{0}")]
    Compile(String),
    /// The matcher refused a token (one the mask did not allow, or an earlier attempt's).
    #[error("the output left its constraint: {0}")]
    Rejected(String),
}

/// The model's vocabulary as llguidance sees it: every token's bytes (a special token's name
/// behind the trie's marker byte) and the tokenizer for strings a grammar spells out.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<dyn Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tokenizer.encode(&String::from_utf8_lossy(s))
    }
}

/// One model's grammar compiler: built on first use (the token trie takes a moment), then
/// shared by every request. The gateway compiles with it to refuse a bad schema before placing
/// the request; the worker compiles again for its own matcher.
pub struct Grammars {
    tokenizer: Arc<dyn Tokenizer>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("ready", &self.factory.get().is_some()).finish()
    }
}

impl Grammars {
    pub fn new(tokenizer: Arc<dyn Tokenizer>) -> Self {
        Self { tokenizer, factory: OnceLock::new() }
    }

    fn factory(&self) -> Result<&ParserFactory, ConstraintError> {
        let built = self.factory.get_or_init(|| {
            let tok = &self.tokenizer;
            let words: Vec<Vec<u8>> = (0..tok.vocab_size() as u32)
                .map(|id| match tok.token_bytes(id) {
                    [] => match tok.token_text(id) {
                        Some(name) if !name.is_empty() => {
                            [&[TokTrie::SPECIAL_TOKEN_MARKER][..], name.as_bytes()].concat()
                        }
                        _ => Vec::new(),
                    },
                    bytes => bytes.to_vec(),
                })
                .collect();
            let eos = tok.eos_tokens().first().copied().ok_or("the model names no end-of-sequence token")?;
            let info = TokRxInfo::new(words.len() as u32, eos);
            let trie = TokTrie::from(&info, &words);
            let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer: tok.clone() });
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            factory.quiet();
            Ok(factory)
        });
        built.as_ref().map_err(|e| ConstraintError::Vocabulary(e.clone()))
    }

    /// Compile `constraint` into a matcher that has consumed the tokens an earlier attempt
    /// generated under it.
    pub fn matcher(&self, constraint: &Constraint) -> Result<Matcher, ConstraintError> {
        let grammar = match &constraint.grammar {
            Grammar::JsonSchema(text) => {
                let schema = serde_json::from_str(text).map_err(|e| ConstraintError::Compile(e.to_string()))?;
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Grammar::Choice(options) => {
                if options.is_empty() {
                    return Err(ConstraintError::Compile("a choice needs at least one string".into()));
                }
                // Lark string literals take JSON's escapes.
                let alternatives: Vec<String> =
                    options.iter().map(|o| serde_json::to_string(o).expect("a string serializes")).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
        };
        let parser = self.factory()?.create_parser(grammar).map_err(|e| ConstraintError::Compile(e.to_string()))?;
        let inner = Guidance::new(Ok(parser));
        if let Some(e) = inner.get_error() {
            return Err(ConstraintError::Compile(e));
        }
        let eos = self.tokenizer.eos_tokens().to_vec();
        let mut m = Matcher { inner, mask: None, eos };
        for &t in &constraint.consumed {
            m.consume(t)?;
        }
        Ok(m)
    }

    /// Whether `constraint` compiles (the gateway's check before placing a request).
    pub fn check(&self, constraint: &Constraint) -> Result<(), ConstraintError> {
        self.matcher(constraint).map(drop)
    }
}

/// JSON as `json.dumps` writes it (`, ` and `: `, no other whitespace), unless the schema sets
/// llguidance's own options (`x-guidance`): free whitespace lets a sampled model wander in
/// newlines and tabs until it runs out of tokens.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object()
        && !obj.contains_key("x-guidance")
    {
        let options = llguidance::JsonCompileOptions {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            ..Default::default()
        };
        options.apply_to(&mut schema);
    }
    schema
}

/// One sequence's place in its grammar, and the mask for its next token once computed.
pub struct Matcher {
    inner: Guidance,
    mask: Option<SimpleVob>,
    /// Every token that ends a sequence: the trie knows one, and allowing it allows them all.
    eos: Vec<u32>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("stopped", &self.inner.is_stopped()).finish()
    }
}

impl Matcher {
    /// Compute the mask of the tokens allowed next (only end-of-sequence once the grammar is
    /// complete).
    pub fn compute_mask(&mut self) -> Result<(), ConstraintError> {
        self.mask = Some(self.fresh_mask()?);
        Ok(())
    }

    fn fresh_mask(&mut self) -> Result<SimpleVob, ConstraintError> {
        self.inner.compute_mask_or_eos().map_err(|e| ConstraintError::Rejected(e.to_string()))
    }

    /// Set every token the mask does not allow to minus infinity (computing the mask first if
    /// `compute_mask` was not called for this step); the end-of-sequence tokens too unless
    /// `allow_end` (a request that ignores them goes on while its grammar does).
    pub fn apply(&mut self, logits: &mut [f32], allow_end: bool) -> Result<(), ConstraintError> {
        let mask = match self.mask.take() {
            Some(m) => m,
            None => self.fresh_mask()?,
        };
        let ending = allow_end && self.eos.first().is_some_and(|&e| mask.is_allowed(e));
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            let end = self.eos.contains(&id);
            if !((mask.is_allowed(id) && !end) || (ending && end)) {
                *l = f32::NEG_INFINITY;
            }
        }
        self.mask = Some(mask);
        Ok(())
    }

    /// The token chosen: the grammar moves past it, and the next step needs a new mask.
    pub fn consume(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.mask = None;
        self.inner.consume_token(token).map_err(|e| ConstraintError::Rejected(e.to_string()))
    }

    /// The grammar is finished: nothing but the end of the sequence may follow.
    pub fn is_complete(&self) -> bool {
        self.inner.is_stopped()
    }
}

#[cfg(test)]
mod tests;
