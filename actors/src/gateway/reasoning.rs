//! Reasoning models (Qwen3, DeepSeek-R1 style): the text of a chat answer inside
//! `<think>...</think>` at its start goes to `reasoning_content`, not to `content`, whole or as
//! it streams. The answer may start inside the block when the chat template opened it.

use super::tools::parse::before_marker;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Not yet known whether the answer starts with a block.
    Before,
    Inside,
    /// The block closed; whitespace before the content is dropped.
    Closed,
    After,
}

/// Splits a growing answer into reasoning and content.
#[derive(Debug)]
pub struct Splitter {
    state: State,
    held: String,
    /// A block was opened (by the answer or the template).
    seen: bool,
}

impl Splitter {
    /// `inside`: the prompt ends with the block already opened.
    pub fn new(inside: bool) -> Self {
        Self { state: if inside { State::Inside } else { State::Before }, held: String::new(), seen: inside }
    }

    /// Add text; returns the reasoning and the content that can go out now.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        loop {
            match self.state {
                State::Before => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Inside;
                        self.seen = true;
                    } else if OPEN.starts_with(t) {
                        return (reasoning, content);
                    } else {
                        self.state = State::After;
                    }
                }
                State::Inside => {
                    if let Some(at) = self.held.find(CLOSE) {
                        reasoning.push_str(&self.held[..at]);
                        self.held = self.held[at + CLOSE.len()..].to_string();
                        self.state = State::Closed;
                    } else {
                        let ready = before_marker(&self.held, CLOSE);
                        reasoning.push_str(&self.held[..ready]);
                        self.held.drain(..ready);
                        return (reasoning, content);
                    }
                }
                State::Closed => {
                    self.held = self.held.trim_start().to_string();
                    if self.held.is_empty() {
                        return (reasoning, content);
                    }
                    self.state = State::After;
                }
                State::After => {
                    content.push_str(&self.held);
                    self.held.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// The answer ended: what was held back (an unclosed block is reasoning).
    pub fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Inside => (held, String::new()),
            State::Closed => (String::new(), String::new()),
            State::Before | State::After => (String::new(), held),
        }
    }
}

/// A whole answer split: its reasoning (None when it has none) and its content.
pub fn split(text: &str, inside: bool) -> (Option<String>, String) {
    let mut s = Splitter::new(inside);
    let (mut r, mut c) = s.push(text);
    let (r2, c2) = s.finish();
    r.push_str(&r2);
    c.push_str(&c2);
    (Some(r.trim().to_string()).filter(|_| s.seen), c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_answers() {
        assert_eq!(split("<think>\nAdd them.\n</think>\n\n4", false), (Some("Add them.".into()), "4".into()));
        assert_eq!(split("Just 4.", false), (None, "Just 4.".into()));
        assert_eq!(split("Add them.</think>4", true), (Some("Add them.".into()), "4".into()), "opened by the template");
        assert_eq!(split("<think>still going", false), (Some("still going".into()), String::new()));
        assert_eq!(split("A <think> later is content", false), (None, "A <think> later is content".into()));
        assert_eq!(split("<th", false), (None, "<th".into()), "a tag that never completes is content");
    }

    #[test]
    fn streamed_in_any_pieces_gives_the_same_split() {
        let text = "  <think>Is 7 prime? Yes.</think>\n7 is prime.";
        for size in 1..text.len() {
            let mut s = Splitter::new(false);
            let (mut r, mut c) = (String::new(), String::new());
            let bytes: Vec<char> = text.chars().collect();
            for piece in bytes.chunks(size) {
                let (a, b) = s.push(&piece.iter().collect::<String>());
                r.push_str(&a);
                c.push_str(&b);
            }
            let (a, b) = s.finish();
            r.push_str(&a);
            c.push_str(&b);
            assert_eq!((r.as_str(), c.as_str()), ("Is 7 prime? Yes.", "7 is prime."), "pieces of {size}");
        }
    }
}
