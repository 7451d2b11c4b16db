//! Identifiers that cross actor and node boundaries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One generation request, unique across the cluster (a UUID chosen by the gateway).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn new_random() -> Self {
        let a: u64 = rand::random();
        let b: u64 = rand::random();
        Self(format!("{a:016x}{b:016x}"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One worker: `node/device`, e.g. `n1/cpu` or `n0/cuda:1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId {
    pub node: String,
    pub device: String,
}

impl WorkerId {
    pub fn new(node: &str, device: &str) -> Self {
        Self { node: node.to_string(), device: device.to_string() }
    }

    /// Parse `node/device`.
    pub fn parse(s: &str) -> Option<Self> {
        let (node, device) = s.split_once('/')?;
        (!node.is_empty() && !device.is_empty()).then(|| Self::new(node, device))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_round_trips() {
        let id = WorkerId::new("n1", "cuda:0");
        assert_eq!(id.to_string(), "n1/cuda:0");
        assert_eq!(WorkerId::parse("n1/cuda:0"), Some(id));
        assert_eq!(WorkerId::parse("n1"), None);
        assert_eq!(WorkerId::parse("/cpu"), None);
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(RequestId::new_random(), RequestId::new_random());
        assert_eq!(RequestId::new_random().0.len(), 32);
    }
}
