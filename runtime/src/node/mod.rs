//! Node bootstrap on ractor_cluster: the control-plane server, joining seeds (bounded by a
//! timeout), reconnecting to peers that went away, and the node agent that keeps leases.

mod agent;
mod gate;
mod guard;
mod sessions;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage, node::NodeConnectionMode};

use gate::node_name;

pub use agent::{AgentArgs, AgentMsg, ClusterView, NodeAgent};
pub use gate::{ControlTls, DialError, Gate, GateSettings, Refusal};
pub use guard::FRAME_LIMIT_BEFORE_AUTH;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: cannot listen on {addr}: {detail}")]
    Listen { path: String, addr: String, detail: String },
    /// No seed let this node join within the join timeout.
    #[error("{path}: cannot join seed {addr} within {waited:?}: {detail}")]
    Unreachable { path: String, addr: String, waited: Duration, detail: String },
}

/// A seed to join: the config field that named it, its address and, when it is a node of the
/// topology, that node's name.
#[derive(Clone, Debug)]
pub struct Seed {
    pub path: String,
    pub addr: String,
    pub node: Option<String>,
}

/// This process's control plane.
#[derive(Clone)]
pub struct ControlPlane {
    pub server: ActorRef<NodeServerMessage>,
    pub name: String,
    gate: Arc<Gate>,
}

impl ControlPlane {
    /// Start the control plane for node `name`, listening on `listen` (field `path`), admitting
    /// peers as `settings` says.
    pub async fn start(
        name: &str,
        listen: SocketAddr,
        path: &str,
        cookie: String,
        settings: GateSettings,
    ) -> Result<Self, NodeError> {
        let listen_err =
            |detail: String| NodeError::Listen { path: path.to_string(), addr: listen.to_string(), detail };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| listen_err(e.to_string()))?;
        // ractor_cluster always runs a listener of its own: bind it to an ephemeral loopback port
        // and let it complete no handshake, so that every peer comes through the gate. Nodes
        // connect to each other from the topology (no transitive dialling, which would bypass TLS).
        let refuse_all = gate::refuse_every_handshake().map_err(|e| listen_err(e.to_string()))?;
        let server = NodeServer::new(
            0,
            cookie,
            name.to_string(),
            "localhost".into(),
            Some(IncomingEncryptionMode::Tls(refuse_all)),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn(None, server, ()).await.map_err(|e| listen_err(e.to_string()))?;
        let gate = Gate::new(name, listen.ip(), settings);
        gate.set_server(server.clone());
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "armature-gate".into(),
                subscription: Box::new(gate::Events(gate.clone())),
            })
            .map_err(|e| listen_err(e.to_string()))?;
        gate.serve(listener);
        if !gate.is_encrypted() {
            tracing::warn!(
                "the control plane is not encrypted (transport.certs is not set): prompts and tokens cross it in clear"
            );
        }
        Ok(Self { server, name: name.to_string(), gate })
    }

    /// The gate that admits this node's peers.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Names of the peers with an authenticated session.
    pub async fn peers(&self) -> HashSet<String> {
        match ractor::call_t!(self.server, NodeServerMessage::GetSessions, 1_000) {
            Ok(sessions) => {
                sessions.values().filter_map(|s| s.peer_name.as_ref().map(|n| node_name(&n.name))).collect()
            }
            Err(_) => HashSet::new(),
        }
    }

    /// Connect to the seeds until one session authenticates, or fail after `timeout` naming the
    /// first seed. With no seeds there is nothing to join.
    pub async fn join(&self, seeds: &[Seed], timeout: Duration) -> Result<(), NodeError> {
        let Some(first) = seeds.first() else {
            return Ok(());
        };
        let start = Instant::now();
        let mut detail = String::from("no answer");
        // A refusal outranks what later tries see: a peer that refused our cookie may well exit
        // (its own join failed), and "unreachable" would then hide the cause.
        let mut refused = false;
        let auth_failures_before = self.gate.failed_auth.load(Ordering::Relaxed);
        loop {
            for seed in seeds {
                match self.gate.dial(&seed.addr, seed.node.as_deref()).await {
                    Ok(()) => {
                        let settle = Instant::now();
                        while settle.elapsed() < Duration::from_secs(2) {
                            if !self.peers().await.is_empty() {
                                tracing::info!(seed = %seed.addr, waited_ms = start.elapsed().as_millis() as u64, "joined the cluster");
                                return Ok(());
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        refused |= self.gate.failed_auth.load(Ordering::Relaxed) > auth_failures_before;
                        detail = if refused {
                            "the peer closed the session before authentication: it refused our cookie, or its gate refused this node (its log says why)".into()
                        } else {
                            "connected, but no session was established".into()
                        };
                    }
                    Err(e @ DialError::UnnamedSeed) => {
                        return Err(NodeError::Unreachable {
                            path: seed.path.clone(),
                            addr: seed.addr.clone(),
                            waited: Duration::ZERO,
                            detail: e.to_string(),
                        });
                    }
                    Err(e) if !refused => detail = e.to_string(),
                    Err(_) => {}
                }
            }
            if start.elapsed() >= timeout {
                return Err(NodeError::Unreachable {
                    path: first.path.clone(),
                    addr: first.addr.clone(),
                    waited: timeout,
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Keep dialling the nodes of the topology that have no session (a peer that restarted, or
    /// one that was not up when this node started), and the seeds while no peer is connected.
    pub fn spawn_reconnect(&self, seeds: Vec<Seed>, every: Duration) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let peers = cp.peers().await;
                let mut targets: Vec<(String, Option<String>)> = cp
                    .gate
                    .topology()
                    .iter()
                    .filter(|(name, _)| !peers.contains(*name))
                    .map(|(name, addr)| (addr.to_string(), Some(name.clone())))
                    .collect();
                if peers.is_empty() {
                    let known: HashSet<String> = targets.iter().map(|(a, _)| a.clone()).collect();
                    targets.extend(
                        seeds.iter().filter(|s| !known.contains(&s.addr)).map(|s| (s.addr.clone(), s.node.clone())),
                    );
                }
                for (addr, node) in targets {
                    if let Err(e) = cp.gate.dial(&addr, node.as_deref()).await {
                        tracing::debug!(%addr, "reconnect failed: {e}");
                    }
                }
            }
        })
    }
}
