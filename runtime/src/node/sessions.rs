//! What the control plane's session events mean. Two nodes that dial each other hold two sessions
//! for a moment, and ractor_cluster closes one: that close is not a failure, and says nothing about
//! cookies. `Sessions` keeps which sessions authenticated, by peer name, and tells a duplicate's
//! close from the last session to a peer going away and from a session refused before it
//! authenticated.

use std::collections::HashMap;

/// Why a session closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Another authenticated session to the same peer remains (the two dialled each other).
    Duplicate,
    /// The last authenticated session to this peer.
    LastToPeer,
    /// It never authenticated, and no session to this peer did: a wrong cookie, or not a node.
    BeforeAuthentication,
}

/// Authenticated sessions by id, with their peer's name.
#[derive(Debug, Default)]
pub struct Sessions<Id> {
    authenticated: HashMap<Id, String>,
}

impl<Id: Eq + std::hash::Hash> Sessions<Id> {
    pub fn authenticated(&mut self, id: Id, peer: String) {
        self.authenticated.insert(id, peer);
    }

    /// The authenticated sessions to `peer`.
    pub fn ids_of(&self, peer: &str) -> Vec<Id>
    where
        Id: Clone,
    {
        self.authenticated.iter().filter(|(_, n)| *n == peer).map(|(id, _)| id.clone()).collect()
    }

    /// Session `id` (to `peer`, when its name is known) closed.
    pub fn closed(&mut self, id: &Id, peer: Option<&str>) -> Closed {
        let name = self.authenticated.remove(id);
        let was_authenticated = name.is_some();
        let Some(name) = name.as_deref().or(peer) else { return Closed::BeforeAuthentication };
        let others = self.authenticated.values().any(|n| n == name);
        match (was_authenticated, others) {
            (_, true) => Closed::Duplicate,
            (true, false) => Closed::LastToPeer,
            (false, false) => Closed::BeforeAuthentication,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_is_told_from_a_lost_peer_and_a_refused_one() {
        let mut s = Sessions::default();
        // n0 and n1 dialled each other: two sessions to n1, and one of them closes.
        s.authenticated(1, "n1".to_string());
        s.authenticated(2, "n1".to_string());
        assert_eq!(s.ids_of("n1").len(), 2);
        assert_eq!(s.closed(&1, Some("n1")), Closed::Duplicate);
        assert_eq!(s.ids_of("n1"), vec![2]);
        // One closing before it authenticated while the other holds is a duplicate too.
        assert_eq!(s.closed(&3, Some("n1")), Closed::Duplicate);
        // The last one is a lost peer.
        assert_eq!(s.closed(&2, Some("n1")), Closed::LastToPeer);
        // Never authenticated, nobody by that name: refused.
        assert_eq!(s.closed(&4, Some("n9")), Closed::BeforeAuthentication);
        assert_eq!(s.closed(&5, None), Closed::BeforeAuthentication);
    }
}
