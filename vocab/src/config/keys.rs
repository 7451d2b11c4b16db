//! The gateway's API keys file (`gateway.api_keys_file`): who may call the API, under which id,
//! with which limits and priority, and who may use the admin routes.
//!
//! ```toml
//! [[keys]]
//! id = "team-a"                 # in logs and metrics; never the key itself
//! sha256 = "9f86d08…"           # the key's SHA-256 in hex (or `key = "sk-…"`, the key itself)
//! requests_per_second = 5.0     # optional
//! tokens_per_second = 2000.0    # optional: prompt and completion tokens
//! priority = 1                  # optional: higher is admitted first by the workers (default 0)
//! admin = false                 # optional: may use /debug/*
//! revoked = false               # optional: refused as if unknown
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, parse_toml};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    /// The key itself.
    #[serde(default)]
    pub key: Option<String>,
    /// The key's SHA-256, hex: the file then holds nothing a client could send.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub revoked: bool,
}

impl ApiKey {
    /// The SHA-256 of the key, from `key` or `sha256`.
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.key, &self.sha256) {
            (Some(key), None) => Some(sha256(key.as_bytes())),
            (None, Some(hex)) => parse_hex32(hex),
            _ => None,
        }
    }
}

/// SHA-256 of `bytes` (keys are compared by digest, in constant time).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl KeysFile {
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: KeysFile = parse_toml(text, origin)?;
        let mut ids = HashSet::new();
        for (i, k) in file.keys.iter().enumerate() {
            let at = |field: &str| format!("keys[{i}].{field}");
            if k.id.trim().is_empty() {
                return Err(ConfigError::new(origin, at("id"), "must not be empty"));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(ConfigError::new(origin, at("id"), format!("\"{}\" is used twice", k.id)));
            }
            match (&k.key, &k.sha256) {
                (Some(_), Some(_)) => return Err(ConfigError::new(origin, at("key"), "give key or sha256, not both")),
                (None, None) => return Err(ConfigError::new(origin, at("key"), "give key or sha256")),
                (Some(key), None) if key.len() < 16 => {
                    return Err(ConfigError::new(origin, at("key"), "is shorter than 16 characters"));
                }
                (None, Some(_)) if k.digest().is_none() => {
                    return Err(ConfigError::new(origin, at("sha256"), "is not 64 hex digits"));
                }
                _ => {}
            }
            for (field, rate) in
                [("requests_per_second", k.requests_per_second), ("tokens_per_second", k.tokens_per_second)]
            {
                if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                    return Err(ConfigError::new(origin, at(field), "must be a number above zero"));
                }
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(&origin, "", format!("cannot read: {e}")))?;
        Self::parse(&text, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_by_key_or_digest_and_bad_entries_name_their_field() {
        let digest = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"; // sha256("password")
        let text = format!(
            "[[keys]]\nid = \"a\"\nkey = \"sk-0123456789abcdef\"\nrequests_per_second = 2.0\npriority = 3\n\n\
             [[keys]]\nid = \"b\"\nsha256 = \"{digest}\"\nadmin = true\n"
        );
        let f = KeysFile::parse(&text, "keys.toml").unwrap();
        assert_eq!(f.keys.len(), 2);
        assert_eq!(f.keys[0].digest(), Some(sha256(b"sk-0123456789abcdef")));
        assert_eq!(f.keys[1].digest(), Some(sha256(b"password")));
        assert!(f.keys[1].admin && !f.keys[0].admin);
        assert_eq!(f.keys[0].priority, 3);

        let bad = |text: &str| KeysFile::parse(text, "keys.toml").unwrap_err().to_string();
        assert!(bad("[[keys]]\nid = \"a\"\n").contains("keys[0].key"), "{}", bad("[[keys]]\nid = \"a\"\n"));
        assert!(bad("[[keys]]\nid = \"a\"\nkey = \"short\"\n").contains("shorter than 16"));
        assert!(bad("[[keys]]\nid = \"a\"\nsha256 = \"abc\"\n").contains("keys[0].sha256"));
        let twice = "[[keys]]\nid = \"a\"\nkey = \"sk-0123456789abcdef\"\n[[keys]]\nid = \"a\"\nkey = \"sk-0123456789abcdeg\"\n";
        assert!(bad(twice).contains("keys[1].id"));
        assert!(
            bad("[[keys]]\nid = \"a\"\nkey = \"sk-0123456789abcdef\"\nrequests_per_second = 0\n")
                .contains("keys[0].requests_per_second")
        );
        assert!(bad("[[keys]]\nid = \"a\"\nkey = \"sk-0123456789abcdef\"\nrole = \"x\"\n").contains("role"));
    }
}
