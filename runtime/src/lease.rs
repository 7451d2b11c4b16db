//! Node leases: a peer that has not been heard from within the timeout is dead. Time is passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A change in a peer's liveness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Up(String),
    Down(String),
}

/// One peer's lease, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerLease {
    pub node: String,
    pub alive: bool,
    /// Since its last heartbeat (or since its session opened, before the first).
    pub heard_ms_ago: u64,
    pub timeout_ms: u64,
}

/// Last-heard times per peer node name.
#[derive(Debug)]
pub struct LeaseTable {
    timeout: Duration,
    last_heard: BTreeMap<String, Duration>,
    dead: BTreeSet<String>,
}

impl LeaseTable {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, last_heard: BTreeMap::new(), dead: BTreeSet::new() }
    }

    /// A heartbeat from `peer` arrived at `now`. Returns `Up` when the peer is new or was dead.
    pub fn heard(&mut self, peer: &str, now: Duration) -> Option<PeerChange> {
        let known = self.last_heard.insert(peer.to_string(), now).is_some();
        let revived = self.dead.remove(peer);
        (!known || revived).then(|| PeerChange::Up(peer.to_string()))
    }

    /// Start a lease for a peer known by other means (a control-plane session) but not heard from
    /// yet, so that it dies if it never speaks. No change is reported.
    pub fn expect(&mut self, peer: &str, now: Duration) {
        self.last_heard.entry(peer.to_string()).or_insert(now);
    }

    /// Mark every peer whose lease ran out by `now` as dead; returns the newly dead ones.
    pub fn expire(&mut self, now: Duration) -> Vec<PeerChange> {
        let mut changes = Vec::new();
        for (peer, &at) in &self.last_heard {
            if now.saturating_sub(at) > self.timeout && self.dead.insert(peer.clone()) {
                changes.push(PeerChange::Down(peer.clone()));
            }
        }
        changes
    }

    pub fn is_dead(&self, peer: &str) -> bool {
        self.dead.contains(peer)
    }

    /// Every peer's lease at `now`, by name.
    pub fn leases(&self, now: Duration) -> Vec<PeerLease> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.last_heard
            .iter()
            .map(|(peer, &at)| PeerLease {
                node: peer.clone(),
                alive: !self.dead.contains(peer),
                heard_ms_ago: ms(now.saturating_sub(at)),
                timeout_ms: ms(self.timeout),
            })
            .collect()
    }

    /// Peers currently alive.
    pub fn alive(&self) -> impl Iterator<Item = &str> {
        self.last_heard.keys().filter(|p| !self.dead.contains(*p)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_peer_dies_and_comes_back() {
        let ms = Duration::from_millis;
        let mut t = LeaseTable::new(ms(1000));
        assert_eq!(t.heard("n1", ms(0)), Some(PeerChange::Up("n1".into())));
        assert_eq!(t.heard("n1", ms(500)), None);
        assert_eq!(t.expire(ms(1400)), vec![]);
        assert_eq!(t.expire(ms(1501)), vec![PeerChange::Down("n1".into())]);
        assert!(t.is_dead("n1"));
        // Already dead: reported once.
        assert_eq!(t.expire(ms(3000)), vec![]);
        let lease = PeerLease { node: "n1".into(), alive: false, heard_ms_ago: 2500, timeout_ms: 1000 };
        assert_eq!(t.leases(ms(3000)), vec![lease]);
        assert_eq!(t.heard("n1", ms(3100)), Some(PeerChange::Up("n1".into())));
        assert_eq!(t.alive().collect::<Vec<_>>(), vec!["n1"]);
    }

    #[test]
    fn expected_peer_that_never_speaks_dies() {
        let ms = Duration::from_millis;
        let mut t = LeaseTable::new(ms(100));
        t.expect("quiet", ms(0));
        t.expect("quiet", ms(90)); // does not renew
        assert_eq!(t.expire(ms(150)), vec![PeerChange::Down("quiet".into())]);
        assert_eq!(t.heard("quiet", ms(200)), Some(PeerChange::Up("quiet".into())));
    }

    #[test]
    fn peers_expire_independently() {
        let ms = Duration::from_millis;
        let mut t = LeaseTable::new(ms(100));
        t.heard("a", ms(0));
        t.heard("b", ms(80));
        assert_eq!(t.expire(ms(150)), vec![PeerChange::Down("a".into())]);
        assert!(!t.is_dead("b"));
    }
}
