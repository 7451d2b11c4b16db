//! Request traces: Mooncake JSONL (prefix-chained `hash_ids`, 512 tokens a block), Azure CSV
//! (timestamps and lengths only), and synthetic generators; and prompts synthesised so that their
//! block structure matches the trace's `hash_ids`.

use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRequest {
    pub arrival: Duration,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Prefix-chained block ids (equal ids: the same block of the same prefix); empty when the
    /// trace has no prefix information.
    pub hash_ids: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} line {line}: {message}")]
    Parse { path: String, line: usize, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MooncakeRow {
    timestamp: u64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

fn read(path: &Path) -> Result<String, TraceError> {
    std::fs::read_to_string(path).map_err(|source| TraceError::Io { path: path.display().to_string(), source })
}

/// Mooncake's JSONL: `{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}`.
pub fn read_mooncake(path: &Path) -> Result<Vec<TraceRequest>, TraceError> {
    parse_mooncake(&read(path)?, &path.display().to_string())
}

pub fn parse_mooncake(text: &str, name: &str) -> Result<Vec<TraceRequest>, TraceError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let row: MooncakeRow = serde_json::from_str(l).map_err(|e| TraceError::Parse {
                path: name.into(),
                line: i + 1,
                message: e.to_string(),
            })?;
            Ok(TraceRequest {
                arrival: Duration::from_millis(row.timestamp),
                input_tokens: row.input_length,
                output_tokens: row.output_length,
                hash_ids: row.hash_ids,
            })
        })
        .collect()
}

/// Azure's CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like
/// `2023-11-16 18:15:46.6805900`; arrivals are relative to the first row.
pub fn read_azure(path: &Path) -> Result<Vec<TraceRequest>, TraceError> {
    parse_azure(&read(path)?, &path.display().to_string())
}

pub fn parse_azure(text: &str, name: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let err = |line: usize, message: String| TraceError::Parse { path: name.into(), line, message };
    let mut out = Vec::new();
    let mut start = None;
    for (i, l) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let [ts, ctx, gen_tokens] = f[..] else {
            return Err(err(i + 1, format!("expected 3 fields, got {}", f.len())));
        };
        let secs = seconds_of_day(ts).ok_or_else(|| err(i + 1, format!("bad timestamp {ts:?}")))?;
        let start = *start.get_or_insert(secs);
        let num = |s: &str| s.trim().parse::<u32>().map_err(|e| err(i + 1, format!("{s:?}: {e}")));
        out.push(TraceRequest {
            arrival: Duration::from_secs_f64((secs - start).max(0.0)),
            input_tokens: num(ctx)?,
            output_tokens: num(gen_tokens)?,
            hash_ids: Vec::new(),
        });
    }
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS.fffffff` as seconds since midnight (the trace spans one hour).
fn seconds_of_day(ts: &str) -> Option<f64> {
    let time = ts.trim().split(' ').nth(1)?;
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Synthetic arrivals: Poisson at `rate` per second; `groups` shared prefixes of `prefix_blocks`
/// blocks (0 groups: no sharing), each request adding `own_blocks` blocks of its own; and
/// `turns` requests per session, each turn's prompt extending the previous one.
#[derive(Clone, Copy, Debug)]
pub struct Synthetic {
    pub requests: usize,
    pub rate: f64,
    pub groups: u64,
    pub prefix_blocks: u32,
    pub own_blocks: u32,
    pub turns: u32,
    pub output_tokens: u32,
    pub block_tokens: u32,
}

impl Synthetic {
    pub fn generate(&self, seed: u64) -> Vec<TraceRequest> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut next_id = 1u64 << 40;
        let mut fresh = |n: u32| -> Vec<u64> {
            (0..n)
                .map(|_| {
                    next_id += 1;
                    next_id
                })
                .collect()
        };
        let prefixes: Vec<Vec<u64>> = (0..self.groups).map(|_| fresh(self.prefix_blocks)).collect();
        let mut t = 0.0f64;
        let mut out = Vec::with_capacity(self.requests);
        while out.len() < self.requests {
            let mut ids =
                if prefixes.is_empty() { Vec::new() } else { prefixes[rng.random_range(0..prefixes.len())].clone() };
            for _ in 0..self.turns.max(1) {
                if out.len() == self.requests {
                    break;
                }
                t += -(1.0 - rng.random::<f64>()).ln() / self.rate;
                ids.extend(fresh(self.own_blocks));
                out.push(TraceRequest {
                    arrival: Duration::from_secs_f64(t),
                    input_tokens: ids.len() as u32 * self.block_tokens,
                    output_tokens: self.output_tokens,
                    hash_ids: ids.clone(),
                });
            }
        }
        out
    }
}

/// Prompt tokens for a request: block `j` is a fixed function of `hash_ids[j]` (so equal ids
/// give equal tokens and, through the chained hashes, equal sequence hashes); the last block is cut
/// to `input_tokens`. Requests without `hash_ids` get tokens of their own (no sharing). Tokens
/// are in `first..first + span`.
pub fn synthesize_prompt(req: &TraceRequest, index: usize, block_tokens: usize, first: u32, span: u32) -> Vec<u32> {
    let n = req.input_tokens as usize;
    let mut out = Vec::with_capacity(n);
    let own = [u64::MAX - index as u64];
    let ids: &[u64] = if req.hash_ids.is_empty() { &own } else { &req.hash_ids };
    let mut j = 0;
    while out.len() < n {
        let id = ids.get(j).copied().unwrap_or(ids[ids.len() - 1] ^ ((j as u64) << 48));
        let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        for _ in 0..block_tokens.min(n - out.len()) {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.push(first + ((z ^ (z >> 31)) % u64::from(span)) as u32);
        }
        j += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_and_prompt_synthesis() {
        let m = parse_mooncake(
            "{\"timestamp\": 5, \"input_length\": 1000, \"output_length\": 3, \"hash_ids\": [0, 1]}\n\
             {\"timestamp\": 9, \"input_length\": 600, \"output_length\": 2, \"hash_ids\": [0, 2]}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            m[1],
            TraceRequest {
                arrival: Duration::from_millis(9),
                input_tokens: 600,
                output_tokens: 2,
                hash_ids: vec![0, 2]
            }
        );
        let err = parse_mooncake("{\"timestamp\": 1}\n", "t").unwrap_err().to_string();
        assert!(err.contains("t line 1") && err.contains("input_length"), "{err}");
        let a = parse_azure(
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.5,4808,10\n2023-11-16 18:17:05.25,3180,8\n",
            "a",
        )
        .unwrap();
        assert_eq!(a[1].arrival, Duration::from_millis(1750));
        assert_eq!((a[1].input_tokens, a[1].output_tokens), (3180, 8));
        assert!(parse_azure("h\nx,1\n", "a").unwrap_err().to_string().contains("a line 2"));

        // Equal ids, equal tokens: the first 512 tokens of both prompts agree, the rest do not.
        let (p0, p1) = (synthesize_prompt(&m[0], 0, 512, 32, 90), synthesize_prompt(&m[1], 1, 512, 32, 90));
        assert_eq!((p0.len(), p1.len()), (1000, 600));
        assert_eq!(p0[..512], p1[..512]);
        assert_ne!(p0[512..600], p1[512..600]);
        assert!(p0.iter().all(|&t| (32..122).contains(&t)));
    }

    #[test]
    fn synthetic_sessions_extend_their_prompts() {
        let s = Synthetic {
            requests: 9,
            rate: 10.0,
            groups: 2,
            prefix_blocks: 3,
            own_blocks: 1,
            turns: 3,
            output_tokens: 5,
            block_tokens: 16,
        };
        let r = s.generate(1);
        assert_eq!(r.len(), 9);
        assert!(r.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        // Turn 2 of a session starts with turn 1's blocks.
        assert_eq!(r[1].hash_ids[..4], r[0].hash_ids[..]);
        assert_eq!(r[1].input_tokens, 5 * 16);
        assert_eq!(s.generate(1), r, "seeded");
    }
}
