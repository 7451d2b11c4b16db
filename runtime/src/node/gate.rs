//! The control plane's front gate. This node's own listener accepts every control connection
//! (ractor_cluster's listener is bound to loopback and refuses all handshakes), so that before a
//! peer reaches ractor_cluster it has passed, in this order:
//!
//! 1. a free slot among the unauthenticated connections (`cluster.max_handshakes`);
//! 2. mutual TLS against the cluster CA, when `transport.certs` is set (plaintext is refused);
//! 3. the handshake deadline (`cluster.handshake_timeout`), which covers TLS and the cookie;
//! 4. frames of at most [`FRAME_LIMIT_BEFORE_AUTH`] bytes until the cookie check passes;
//! 5. its first frame, the name it claims: a node of the topology, from that node's address,
//!    named by its certificate, and not a name that already holds a live session.
//!
//! Connections this node dials are held to 2–4 (TLS checks that the server is the node dialled),
//! and a session whose authenticated name differs from the one it was admitted under is closed.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServerMessage, NodeSessionMessage,
    node::NodeServerSessionInformation,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::ClusterView;
use super::guard::{Admit, FRAME_LIMIT_BEFORE_AUTH, Guard, GuardStop, GuardedRead};
use super::sessions::{Closed, Sessions};

/// The control plane's TLS settings: the node's certificate, the cluster CA, and how a node name
/// appears in a certificate.
#[derive(Clone)]
pub struct ControlTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// The DNS name a node's certificate carries.
    pub cert_name: fn(&str) -> String,
}

/// What the gate admits.
#[derive(Clone)]
pub struct GateSettings {
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
    /// Mutual TLS; `None` runs the control plane in plaintext (a one-node or test cluster).
    pub tls: Option<ControlTls>,
    /// The other nodes of the topology and their control addresses; empty admits any name.
    pub topology: BTreeMap<String, SocketAddr>,
}

/// Why a connection was not let through (the `reason` label of
/// `armature_control_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    HandshakeSlots,
    Tls,
    Deadline,
    FrameTooLarge,
    NotANode,
    UnknownNode,
    WrongAddress,
    CertificateName,
    NameInUse,
    /// A second connection from a node moments after its first authenticated: two nodes that
    /// dialled each other at once (refused like `NameInUse`, and not worth a warning).
    Duplicate,
    NameChanged,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::HandshakeSlots => "handshake_slots",
            Self::Tls => "tls",
            Self::Deadline => "deadline",
            Self::FrameTooLarge => "frame_too_large",
            Self::NotANode => "not_a_node",
            Self::UnknownNode => "unknown_node",
            Self::WrongAddress => "wrong_address",
            Self::CertificateName => "certificate_name",
            Self::NameInUse => "name_in_use",
            Self::Duplicate => "duplicate",
            Self::NameChanged => "name_changed",
        }
    }
}

/// How long after a session authenticates a second one from the same name counts as the other
/// half of a simultaneous dial rather than a second claimant.
const SETTLE: Duration = Duration::from_secs(2);

/// A live session to a name.
enum Held {
    JustNow,
    Settled,
}

/// Why dialling a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("unreachable ({0})")]
    Connect(#[source] io::Error),
    #[error("TLS handshake failed ({0})")]
    Tls(#[source] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("with transport.certs set, every seed must be a node's control address (its certificate names the node)")]
    UnnamedSeed,
    #[error("the control-plane server is gone")]
    Server,
}

/// A connection waiting for its session to authenticate.
struct Waiting {
    authenticated: Arc<AtomicBool>,
    /// The name it was admitted under (incoming) or dialled as (outgoing).
    expected: Option<String>,
}

/// The gate's shared state (one per node).
pub struct Gate {
    node: String,
    /// This node's control address (outgoing connections leave from its IP when it names one).
    own: IpAddr,
    settings: GateSettings,
    slots: Arc<Semaphore>,
    waiting: Mutex<HashMap<String, Waiting>>,
    sessions: Mutex<Sessions<ractor_cluster::NodeId>>,
    /// Each authenticated session's actor, and when it authenticated.
    session_actors: Mutex<HashMap<ractor_cluster::NodeId, (ActorRef<NodeSessionMessage>, std::time::Instant)>>,
    view: OnceLock<Arc<ClusterView>>,
    next_id: AtomicU64,
    pub(super) failed_auth: AtomicU32,
    server: OnceLock<ActorRef<NodeServerMessage>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// ractor_cluster names a peer `name@host`; the topology knows it as `name`.
pub(super) fn node_name(full: &str) -> String {
    full.split_once('@').map_or(full, |(n, _)| n).to_string()
}

/// A connection's label: its peer address and a number, unique in this process. ractor_cluster
/// reports it as the session's `peer_addr`, which is how session events find the connection.
fn strip_label(label: &str) -> &str {
    label.split_once('#').map_or(label, |(addr, _)| addr)
}

impl Gate {
    pub fn new(node: &str, own: IpAddr, settings: GateSettings) -> Arc<Self> {
        Arc::new(Self {
            node: node.to_string(),
            own,
            slots: Arc::new(Semaphore::new(settings.max_handshakes)),
            settings,
            waiting: Mutex::default(),
            sessions: Mutex::default(),
            session_actors: Mutex::default(),
            view: OnceLock::new(),
            next_id: AtomicU64::new(1),
            failed_auth: AtomicU32::new(0),
            server: OnceLock::new(),
        })
    }

    pub(super) fn set_server(&self, server: ActorRef<NodeServerMessage>) {
        let _ = self.server.set(server);
    }

    /// The liveness view a name's lease is read from: a second claimant of a name is admitted
    /// only once the first one's lease expired.
    pub fn watch_leases(&self, view: Arc<ClusterView>) {
        let _ = self.view.set(view);
    }

    pub fn topology(&self) -> &BTreeMap<String, SocketAddr> {
        &self.settings.topology
    }

    pub fn is_encrypted(&self) -> bool {
        self.settings.tls.is_some()
    }

    fn refused(&self, reason: Refusal, peer: &str, detail: &dyn std::fmt::Display) {
        metrics::counter!("armature_control_refused_total", "reason" => reason.label()).increment(1);
        match reason {
            // A flood of these is itself the attack; the counter says how many.
            Refusal::HandshakeSlots | Refusal::Duplicate => {
                tracing::debug!(%peer, reason = reason.label(), "control connection refused: {detail}")
            }
            _ => tracing::warn!(%peer, reason = reason.label(), "control connection refused: {detail}"),
        }
    }

    fn handshakes_gauge(&self) {
        let held = self.settings.max_handshakes.saturating_sub(self.slots.available_permits());
        metrics::gauge!("armature_control_handshakes").set(held as f64);
    }

    /// Accept control connections on `listener` for as long as the process runs.
    pub(super) fn serve(self: &Arc<Self>, listener: TcpListener) {
        let gate = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, usually: back off instead of spinning.
                        tracing::warn!("control listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = gate.slots.clone().try_acquire_owned() else {
                    gate.refused(Refusal::HandshakeSlots, &peer.to_string(), &"every handshake slot is taken");
                    continue;
                };
                gate.handshakes_gauge();
                let gate = gate.clone();
                tokio::spawn(async move { gate.incoming(tcp, peer, permit).await });
            }
        });
    }

    async fn incoming(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit) {
        let _ = tcp.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + self.settings.handshake_timeout;
        let peer_text = peer.to_string();
        let (read, write, cert): (BoxRead, BoxWrite, Option<CertificateDer<'static>>) = match &self.settings.tls {
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                        let (r, w) = tokio::io::split(stream);
                        (Box::new(r), Box::new(w), cert)
                    }
                    Ok(Err(e)) => return self.refused(Refusal::Tls, &peer_text, &e),
                    Err(_) => {
                        return self.refused(Refusal::Deadline, &peer_text, &"no TLS handshake before the deadline");
                    }
                }
            }
            None => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w), None)
            }
        };
        let label = self.label(&peer_text);
        let admit = IncomingCheck { gate: self.clone(), peer, cert, label: label.clone() };
        self.hand_over(read, write, label, Some(Box::new(admit)), None, deadline, Some(permit));
    }

    /// Give a connection to ractor_cluster under a guard.
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        self: &Arc<Self>,
        read: BoxRead,
        write: BoxWrite,
        label: String,
        admit: Option<Box<dyn Admit>>,
        expected: Option<String>,
        deadline: tokio::time::Instant,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        let Some(server) = self.server.get() else { return false };
        let peer = strip_label(&label).to_string();
        let authenticated = Arc::new(AtomicBool::new(false));
        lock(&self.waiting).insert(label.clone(), Waiting { authenticated: authenticated.clone(), expected });
        let report = {
            let gate = self.clone();
            Box::new(move |stop: GuardStop| match stop {
                GuardStop::Deadline => gate.refused(Refusal::Deadline, &peer, &"no authentication before the deadline"),
                GuardStop::Frame(e) => gate.refused(Refusal::FrameTooLarge, &peer, &e),
            })
        };
        let guard = Guard { limit: FRAME_LIMIT_BEFORE_AUTH, deadline, authenticated, admit, report, permit };
        let is_server = guard.admit.is_some();
        let stream = Gated { read: Box::new(GuardedRead::new(read, guard)), write, label: label.clone() };
        let opened = NodeServerMessage::ConnectionOpenedExternal { stream: Box::new(stream), is_server };
        if server.cast(opened).is_err() {
            lock(&self.waiting).remove(&label);
            return false;
        }
        true
    }

    /// Dial `addr` (the control address of `node`, when it is a node of the topology).
    pub async fn dial(self: &Arc<Self>, addr: &str, node: Option<&str>) -> Result<(), DialError> {
        let wait = self.settings.handshake_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        fn within<T>(
            r: Result<io::Result<T>, tokio::time::error::Elapsed>,
            wait: Duration,
            wrap: fn(io::Error) -> DialError,
        ) -> Result<T, DialError> {
            match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(wrap(e)),
                Err(_) => Err(DialError::Timeout(wait)),
            }
        }
        if self.settings.tls.is_some() && node.is_none() {
            return Err(DialError::UnnamedSeed);
        }
        let tcp = within(tokio::time::timeout_at(deadline, self.connect(addr)).await, wait, DialError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
        let (read, write): (BoxRead, BoxWrite) = match (&self.settings.tls, node) {
            (Some(tls), Some(node)) => {
                let name = ServerName::try_from((tls.cert_name)(node))
                    .map_err(|e| DialError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                let stream = within(
                    tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await,
                    wait,
                    DialError::Tls,
                )?;
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
            _ => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        if self.hand_over(read, write, self.label(&peer), None, node.map(str::to_string), deadline, None) {
            Ok(())
        } else {
            Err(DialError::Server)
        }
    }

    /// Connect from this node's own control address when it names one, so that peers see the
    /// address the topology gives this node.
    async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address")))?;
        // A loopback address cannot be the source towards another host.
        let own = Some(self.own).filter(|ip| {
            !ip.is_unspecified() && ip.is_ipv4() == target.is_ipv4() && ip.is_loopback() == target.ip().is_loopback()
        });
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = own {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(target).await
    }

    /// Whether `name` holds a live session, and whether it authenticated within `SETTLE` (a second
    /// dial then is the other half of two nodes dialling each other). A session whose node's lease
    /// expired is stale: it is closed, and the name is free again.
    fn live_session(&self, name: &str) -> Option<Held> {
        let ids = lock(&self.sessions).ids_of(name);
        if ids.is_empty() {
            return None;
        }
        let actors = lock(&self.session_actors);
        let alive = self.view.get().is_none_or(|v| v.is_alive(name));
        if !alive {
            for id in ids {
                if let Some((actor, _)) = actors.get(&id) {
                    tracing::warn!(peer = %name, "closing the stale session of a node whose lease expired");
                    actor.stop(Some("lease expired; the name has a new claimant".into()));
                }
            }
            return None;
        }
        let newest = ids.iter().filter_map(|id| actors.get(id).map(|(_, since)| since.elapsed())).min();
        Some(if newest.is_some_and(|age| age < SETTLE) { Held::JustNow } else { Held::Settled })
    }

    fn label(&self, peer: &str) -> String {
        format!("{peer}#{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn expected_name(&self, label: &str, name: String) {
        if let Some(w) = lock(&self.waiting).get_mut(label) {
            w.expected = Some(name);
        }
    }
}

/// The checks on an incoming peer's first frame.
struct IncomingCheck {
    gate: Arc<Gate>,
    peer: SocketAddr,
    cert: Option<CertificateDer<'static>>,
    label: String,
}

impl IncomingCheck {
    fn check(&self, claimed: Option<String>) -> Result<String, (Refusal, String)> {
        let gate = &self.gate;
        let name = claimed.ok_or((Refusal::NotANode, "its first frame is not a node's name".to_string()))?;
        if name == gate.node {
            return Err((Refusal::NameInUse, format!("it claims to be this node ({name})")));
        }
        if !gate.settings.topology.is_empty() {
            let Some(addr) = gate.settings.topology.get(&name) else {
                return Err((Refusal::UnknownNode, format!("{name} is not a node of the topology")));
            };
            let (expected, got) = (addr.ip().to_canonical(), self.peer.ip().to_canonical());
            if !expected.is_unspecified() && expected != got {
                return Err((Refusal::WrongAddress, format!("{name} is at {expected} in the topology, not {got}")));
            }
        }
        if let (Some(tls), Some(cert)) = (&gate.settings.tls, &self.cert) {
            let dns = (tls.cert_name)(&name);
            let named = ServerName::try_from(dns.as_str()).ok().is_some_and(|server_name| {
                webpki::EndEntityCert::try_from(cert)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
            });
            if !named {
                return Err((
                    Refusal::CertificateName,
                    format!("it claims to be {name}, but its certificate is not {dns}"),
                ));
            }
        }
        match gate.live_session(&name) {
            Some(Held::JustNow) => {
                return Err((Refusal::Duplicate, format!("{name} authenticated another session a moment ago")));
            }
            Some(Held::Settled) => return Err((Refusal::NameInUse, format!("{name} already has a live session"))),
            None => {}
        }
        Ok(name)
    }
}

impl Admit for IncomingCheck {
    fn admit(&self, claimed: Option<String>) -> Result<(), io::Error> {
        match self.check(claimed) {
            Ok(name) => {
                self.gate.expected_name(&self.label, name);
                Ok(())
            }
            Err((reason, detail)) => {
                self.gate.refused(reason, &self.peer.to_string(), &detail);
                Err(io::Error::new(io::ErrorKind::PermissionDenied, detail))
            }
        }
    }
}

/// A guarded connection as ractor_cluster takes it.
struct Gated {
    read: BoxRead,
    write: BoxWrite,
    label: String,
}

impl ClusterBidiStream for Gated {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (self.read, self.write)
    }
    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// ractor_cluster's session events, for the gate: authentication lifts a connection's guard.
pub(super) struct Events(pub Arc<Gate>);

fn peer(ses: &NodeServerSessionInformation) -> String {
    ses.peer_name.as_ref().map(|n| node_name(&n.name)).unwrap_or_else(|| strip_label(&ses.peer_addr).to_string())
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(peer = %strip_label(&ses.peer_addr), incoming = ses.is_server, "control-plane session opened");
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let gate = &self.0;
        lock(&gate.waiting).remove(&ses.peer_addr);
        lock(&gate.session_actors).remove(&ses.node_id);
        let name = ses.peer_name.as_ref().map(|n| node_name(&n.name));
        let closed = lock(&gate.sessions).closed(&ses.node_id, name.as_deref());
        match closed {
            Closed::Duplicate => {
                tracing::debug!(peer = %peer(&ses), "duplicate control-plane session closed (another remains)");
            }
            Closed::LastToPeer => tracing::warn!(peer = %peer(&ses), "control-plane session to peer closed"),
            Closed::BeforeAuthentication => {
                gate.failed_auth.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %strip_label(&ses.peer_addr), "control-plane session closed before authentication");
                // A node that named itself and still has no session a moment later, when two
                // nodes' dials have settled, was most likely refused for its cookie. (The gate
                // warns itself about the peers it refuses, before they can name themselves.)
                if let Some(name) = name {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if lock(&gate.sessions).ids_of(&name).is_empty() {
                            tracing::warn!(peer = %name, "control-plane session closed before authentication (wrong cookie?)");
                        }
                    });
                }
            }
        }
        gate.handshakes_gauge();
        metrics::counter!("armature_control_sessions_closed_total").increment(1);
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let gate = &self.0;
        let name = peer(&ses);
        if let Some(waiting) = lock(&gate.waiting).remove(&ses.peer_addr) {
            if let Some(expected) = waiting.expected.filter(|e| *e != name) {
                gate.refused(
                    Refusal::NameChanged,
                    strip_label(&ses.peer_addr),
                    &format!("it authenticated as {name}, not as {expected}"),
                );
                ses.actor.stop(Some("authenticated under another name".into()));
                return;
            }
            waiting.authenticated.store(true, Ordering::Release);
        }
        lock(&gate.sessions).authenticated(ses.node_id, name.clone());
        lock(&gate.session_actors).insert(ses.node_id, (ses.actor.clone(), std::time::Instant::now()));
        gate.handshakes_gauge();
        tracing::info!(peer = %name, addr = %strip_label(&ses.peer_addr), "control-plane peer authenticated");
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        tracing::info!(peer = %peer(&ses), "control-plane peer ready");
    }
}

/// A TLS acceptor that completes no handshake, for ractor_cluster's own listener: every control
/// connection comes through the gate.
pub(super) fn refuse_every_handshake() -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    #[derive(Debug)]
    struct NoCertificate;
    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An actor that only stands in for a session's.
    struct Idle;
    impl ractor::Actor for Idle {
        type Msg = NodeSessionMessage;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    fn gate() -> Arc<Gate> {
        let topology = [("n1", "127.0.0.1:7001"), ("n2", "10.0.0.2:7002"), ("n3", "0.0.0.0:7003")]
            .into_iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect();
        let settings =
            GateSettings { handshake_timeout: Duration::from_secs(1), max_handshakes: 4, tls: None, topology };
        Gate::new("n0", "127.0.0.1".parse().unwrap(), settings)
    }

    fn check(gate: &Arc<Gate>, from: &str, claimed: Option<&str>) -> Result<String, Refusal> {
        let peer: SocketAddr = from.parse().unwrap();
        let c = IncomingCheck { gate: gate.clone(), peer, cert: None, label: gate.label(from) };
        c.check(claimed.map(str::to_string)).map_err(|(reason, _)| reason)
    }

    #[test]
    fn a_peer_is_admitted_by_name_address_and_live_session() {
        let g = gate();
        assert_eq!(check(&g, "127.0.0.1:50000", Some("n1")), Ok("n1".to_string()));
        assert_eq!(check(&g, "10.0.0.2:50000", Some("n2")), Ok("n2".to_string()));
        // A node whose topology address names no host may come from anywhere.
        assert_eq!(check(&g, "192.168.1.9:50000", Some("n3")), Ok("n3".to_string()));
        assert_eq!(check(&g, "127.0.0.1:50000", None), Err(Refusal::NotANode));
        assert_eq!(check(&g, "127.0.0.1:50000", Some("n9")), Err(Refusal::UnknownNode));
        assert_eq!(check(&g, "127.0.0.2:50000", Some("n1")), Err(Refusal::WrongAddress));
        assert_eq!(check(&g, "127.0.0.1:50000", Some("n0")), Err(Refusal::NameInUse), "this node's own name");
        // A name with a live session is taken; once its lease expires it is free again.
        lock(&g.sessions).authenticated(ractor_cluster::NodeId::default(), "n1".into());
        assert_eq!(check(&g, "127.0.0.1:50001", Some("n1")), Err(Refusal::NameInUse));
        // Moments after a session authenticated, a second one is the other half of a double dial.
        lock(&g.sessions).authenticated(7, "n2".into());
        let (actor, _) =
            tokio::runtime::Runtime::new().unwrap().block_on(ractor::Actor::spawn(None, Idle, ())).unwrap();
        lock(&g.session_actors).insert(7, (actor, std::time::Instant::now()));
        assert_eq!(check(&g, "10.0.0.2:50001", Some("n2")), Err(Refusal::Duplicate));
        let view = Arc::new(ClusterView::default());
        g.watch_leases(view.clone());
        view.apply(&crate::lease::PeerChange::Down("n1".into()));
        assert_eq!(check(&g, "127.0.0.1:50001", Some("n1")), Ok("n1".to_string()));
        assert_eq!(strip_label(&g.label("127.0.0.1:5")), "127.0.0.1:5");
    }
}
