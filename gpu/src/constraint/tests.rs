//! Unit tests of `constraint`, on the test tokenizer (bytes, words, ChatML specials).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime::request::{Constraint, Grammar};

use super::*;
use crate::executor::TestTokenizer;

fn grammars() -> Grammars {
    Grammars::new(Arc::new(TestTokenizer::default()))
}

/// Drive a matcher with random logits (seeded) until its grammar is complete or it allows an
/// end-of-sequence token that wins; returns the text.
fn generate(m: &mut Matcher, seed: u64, max: usize) -> String {
    let tok = TestTokenizer::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|_| rng.random::<f32>()).collect();
        m.apply(&mut logits, true).unwrap();
        let token = crate::sampling::argmax(&logits);
        assert!(logits[token as usize].is_finite(), "the mask allowed nothing");
        if tok.eos_tokens().contains(&token) {
            break;
        }
        m.consume(token).unwrap();
        out.push(token);
        if m.is_complete() {
            break;
        }
    }
    tok.decode(&out)
}

#[test]
fn a_regex_holds_whatever_the_logits() {
    let g = grammars();
    for seed in 0..10 {
        let mut m = g.matcher(&Constraint::new(Grammar::Regex("[0-9]{3}-[a-z]{2}".into()))).unwrap();
        let text = generate(&mut m, seed, 50);
        assert!(text.len() == 6 && text[..3].bytes().all(|b| b.is_ascii_digit()) && &text[3..4] == "-", "{text:?}");
        assert!(m.is_complete(), "nothing can follow the last letter");
    }
}

#[test]
fn a_json_schema_gives_an_object_that_matches_it() {
    let g = grammars();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "n": { "type": "integer" },
            "color": { "enum": ["red", "green"] },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 4 }, "maxItems": 2 }
        },
        "required": ["n", "color", "tags"],
        "additionalProperties": false
    });
    for seed in 0..5 {
        let mut m = g.matcher(&Constraint::new(Grammar::JsonSchema(schema.to_string()))).unwrap();
        let text = generate(&mut m, seed, 200);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["n"].is_i64(), "{v}");
        assert!(["red", "green"].contains(&v["color"].as_str().unwrap()), "{v}");
        assert!(v["tags"].as_array().unwrap().len() <= 2, "{v}");
    }
    let mut any = g.matcher(&Constraint::new(Grammar::JsonObject)).unwrap();
    let mut logits = vec![0.0; TestTokenizer::default().vocab_size()];
    any.apply(&mut logits, true).unwrap();
    let allowed: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    assert!(allowed.contains(&usize::from(b'{')) && !allowed.contains(&usize::from(b'x')), "{allowed:?}");
}

#[test]
fn a_choice_is_one_of_its_strings_and_a_resumed_matcher_goes_on_from_its_tokens() {
    let g = grammars();
    let options = vec!["yes".to_string(), "no \"way\"".to_string(), "maybe".to_string()];
    let mut seen = std::collections::HashSet::new();
    for seed in 0..20 {
        let mut m = g.matcher(&Constraint::new(Grammar::Choice(options.clone()))).unwrap();
        let text = generate(&mut m, seed, 20);
        assert!(options.contains(&text), "{text:?}");
        seen.insert(text);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    // Resumed after "ma" (a migrated request's tokens): only "maybe" can follow.
    let tok = TestTokenizer::default();
    let resumed = Constraint { grammar: Grammar::Choice(options.clone()), consumed: tok.encode("ma") };
    let mut m = g.matcher(&resumed).unwrap();
    assert_eq!(generate(&mut m, 1, 20), "ybe");
    // Tokens that leave the grammar are refused.
    let wrong = Constraint { grammar: Grammar::Choice(options), consumed: tok.encode("x") };
    assert!(matches!(g.matcher(&wrong), Err(ConstraintError::Rejected(_))));
}

#[test]
fn what_does_not_compile_is_an_error_that_says_why() {
    let g = grammars();
    for bad in [
        Grammar::JsonSchema("{not json".into()),
        Grammar::JsonSchema(r#"{"type": "no-such-type"}"#.into()),
        Grammar::Regex("(unclosed".into()),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Choice(vec![]),
    ] {
        match g.check(&Constraint::new(bad.clone())) {
            Err(ConstraintError::Compile(why)) => assert!(!why.is_empty(), "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let lark = r#"start: "a" b
b: "b"+"#;
    assert!(g.check(&Constraint::new(Grammar::Lark(lark.into()))).is_ok());
}

#[test]
fn the_end_is_allowed_where_the_grammar_accepts_unless_the_request_ignores_it() {
    let g = grammars();
    let tok = TestTokenizer::default();
    let c = Constraint { grammar: Grammar::Regex("[0-9]+".into()), consumed: tok.encode("4") };
    let allowed = |allow_end: bool| {
        let mut m = g.matcher(&c).unwrap();
        let mut logits = vec![0.0; tok.vocab_size()];
        m.apply(&mut logits, allow_end).unwrap();
        (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect::<Vec<u32>>()
    };
    let with_end = allowed(true);
    assert!(tok.eos_tokens().iter().all(|e| with_end.contains(e)), "every end token: {with_end:?}");
    let without = allowed(false);
    assert!(tok.eos_tokens().iter().all(|e| !without.contains(e)), "{without:?}");
    assert!(without.contains(&u32::from(b'7')) && !without.contains(&u32::from(b'a')));
}

#[test]
fn string_lengths_hold_with_multi_byte_tokens() {
    let g = grammars();
    let tok = TestTokenizer::default();
    let schema = r#"{"type": "object", "properties": {"z": {"type": "string", "maxLength": 10}}, "required": ["z"], "additionalProperties": false}"#;
    for seed in 0..10 {
        let mut m = g.matcher(&Constraint::new(Grammar::JsonSchema(schema.into()))).unwrap();
        // Words (several bytes each) most likely, as the test model makes them.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for _ in 0..100 {
            let mut logits: Vec<f32> = (0..tok.vocab_size())
                .map(|i| if i >= 259 { 10.0 + rng.random::<f32>() } else { rng.random::<f32>() })
                .collect();
            m.apply(&mut logits, false).unwrap();
            let t = crate::sampling::argmax(&logits);
            m.consume(t).unwrap();
            out.push(t);
            if m.is_complete() {
                break;
            }
        }
        let text = tok.decode(&out);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["z"].as_str().unwrap().chars().count() <= 10, "{text:?}");
    }
}
