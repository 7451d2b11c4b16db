//! Node bootstrap on ractor_cluster: the control-plane server, joining seeds (bounded by a
//! timeout), reconnecting to peers that went away, and the node agent that keeps leases.

mod agent;
mod sessions;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use ractor_cluster::{
    NodeEventSubscription, NodeServer, NodeServerMessage, node::NodeConnectionMode, node::NodeServerSessionInformation,
};

pub use agent::{AgentArgs, AgentMsg, ClusterView, NodeAgent};
use sessions::{Closed, Sessions};

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
    failed_auth: Arc<AtomicU32>,
}

struct SessionLog {
    failed_auth: Arc<AtomicU32>,
    sessions: std::sync::Mutex<Sessions<ractor_cluster::NodeId>>,
}

/// ractor_cluster names a peer `name@host`; the topology knows it as `name`.
fn node_name(full: &str) -> String {
    full.split_once('@').map_or(full, |(n, _)| n).to_string()
}

fn peer(ses: &NodeServerSessionInformation) -> String {
    ses.peer_name.as_ref().map(|n| node_name(&n.name)).unwrap_or_else(|| ses.peer_addr.clone())
}

impl NodeEventSubscription for SessionLog {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(peer = %ses.peer_addr, incoming = ses.is_server, "control-plane session opened");
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let name = ses.peer_name.as_ref().map(|n| node_name(&n.name));
        let closed = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).closed(&ses.node_id, name.as_deref());
        match closed {
            Closed::Duplicate => {
                tracing::debug!(peer = %peer(&ses), "duplicate control-plane session closed (another remains)");
            }
            Closed::LastToPeer => tracing::warn!(peer = %peer(&ses), "control-plane session to peer closed"),
            Closed::BeforeAuthentication => {
                self.failed_auth.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %ses.peer_addr, "control-plane session closed before authentication (wrong cookie?)");
            }
        }
        metrics::counter!("armature_control_sessions_closed_total").increment(1);
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).authenticated(ses.node_id, peer(&ses));
        tracing::info!(peer = %peer(&ses), addr = %ses.peer_addr, "control-plane peer authenticated");
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        tracing::info!(peer = %peer(&ses), "control-plane peer ready");
    }
}

impl ControlPlane {
    /// Start the control-plane server for node `name`, listening on `listen` (field `path`).
    pub async fn start(name: &str, listen: SocketAddr, path: &str, cookie: String) -> Result<Self, NodeError> {
        let listen_err =
            |detail: String| NodeError::Listen { path: path.to_string(), addr: listen.to_string(), detail };
        // Bind once ourselves first: ractor_cluster's listener failure is less specific.
        std::net::TcpListener::bind(listen).map_err(|e| listen_err(e.to_string()))?;
        let server = NodeServer::new(
            listen.port(),
            cookie,
            name.to_string(),
            "localhost".into(),
            None,
            Some(NodeConnectionMode::Transitive),
        )
        .with_listen_addr(listen.ip());
        let (server, _) = Actor::spawn(None, server, ()).await.map_err(|e| listen_err(e.to_string()))?;
        let failed_auth = Arc::new(AtomicU32::new(0));
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "armature-session-log".into(),
                subscription: Box::new(SessionLog { failed_auth: failed_auth.clone(), sessions: Default::default() }),
            })
            .map_err(|e| listen_err(e.to_string()))?;
        Ok(Self { server, name: name.to_string(), failed_auth })
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
        let auth_failures_before = self.failed_auth.load(Ordering::Relaxed);
        loop {
            for seed in seeds {
                match ractor_cluster::client_connect(&self.server, seed.addr.as_str()).await {
                    Ok(()) => {
                        let settle = Instant::now();
                        while settle.elapsed() < Duration::from_secs(2) {
                            if !self.peers().await.is_empty() {
                                tracing::info!(seed = %seed.addr, waited_ms = start.elapsed().as_millis() as u64, "joined the cluster");
                                return Ok(());
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        detail = if self.failed_auth.load(Ordering::Relaxed) > auth_failures_before {
                            "the peer refused our cookie (authentication failed)".into()
                        } else {
                            "connected, but no session was established".into()
                        };
                    }
                    Err(e) => detail = connect_error(&e),
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

    /// Keep reconnecting to seeds whose node has no session (a peer that restarted, or one that
    /// was not up when this node started).
    pub fn spawn_reconnect(&self, seeds: Vec<Seed>, every: Duration) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let peers = cp.peers().await;
                for seed in &seeds {
                    let missing = match &seed.node {
                        Some(name) => !peers.contains(name),
                        None => peers.is_empty(),
                    };
                    if !missing {
                        continue;
                    }
                    if let Err(e) = ractor_cluster::client_connect(&cp.server, seed.addr.as_str()).await {
                        tracing::debug!(seed = %seed.addr, "reconnect failed: {e:?}");
                    }
                }
            }
        })
    }
}

fn connect_error(e: &ractor_cluster::ClientConnectErr) -> String {
    match e {
        ractor_cluster::ClientConnectErr::Socket(io) => format!("unreachable ({io})"),
        other => format!("{other:?}"),
    }
}
