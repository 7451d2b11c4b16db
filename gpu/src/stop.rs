//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be one.

#[derive(Debug, Default)]
pub struct StopMatcher {
    /// The stop strings, with their index in the request's list (empty ones dropped).
    stops: Vec<(usize, String)>,
    pending: String,
}

/// What to emit after a push.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutput {
    pub emit: String,
    /// A stop string was found; generation ends and nothing after it is emitted.
    pub stopped: bool,
    /// Which one (its index in the request's list), when `stopped`.
    pub matched: Option<usize>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        let stops = stops.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (i, s.clone())).collect();
        Self { stops, pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stops.is_empty() {
            return StopOutput { emit: text.to_string(), stopped: false, matched: None };
        }
        self.pending.push_str(text);
        // The earliest match; on a tie, the first in the request's list.
        let found = self.stops.iter().filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, *i))).min();
        if let Some((at, index)) = found {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutput { emit, stopped: true, matched: Some(index) };
        }
        let hold = self.held_suffix_len();
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutput { emit, stopped: false, matched: None }
    }

    /// Text held back at the end of generation (it was not a stop string after all).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        (1..=p.len())
            .rev()
            .filter(|&n| p.is_char_boundary(p.len() - n))
            .find(|&n| {
                let suffix = &p[p.len() - n..];
                self.stops.iter().any(|(_, s)| s.len() > n && s.starts_with(suffix))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_found() {
        assert_eq!(run(&["END"], &["hello E", "N", "D world"]), ("hello ".to_string(), true));
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["END"], &["hello EN", "X"]), ("hello ENX".to_string(), false));
        assert_eq!(run(&["END"], &["tail E"]), ("tail E".to_string(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".to_string(), true));
        // It says which, by its index in the request's list (empty ones count).
        let mut m = StopMatcher::new(&["".to_string(), "world".to_string(), "lo".to_string()]);
        assert_eq!(m.push("hello world").matched, Some(2));
    }

    #[test]
    fn held_text_is_not_emitted_early() {
        let mut m = StopMatcher::new(&["\n\n".to_string()]);
        assert_eq!(m.push("a\n"), StopOutput { emit: "a".into(), stopped: false, matched: None });
        assert_eq!(m.push("b"), StopOutput { emit: "\nb".into(), stopped: false, matched: None });
        assert_eq!(m.push("é\n"), StopOutput { emit: "é".into(), stopped: false, matched: None });
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
    }
}
