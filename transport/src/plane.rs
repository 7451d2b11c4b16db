//! `DataPlane`: a node's KV data plane. It listens for QUIC connections (mutual TLS from the
//! cluster CA, CUBIC, 4 MiB socket buffers, several connections per peer, one stream per frame so
//! a bad frame costs only its stream; towards a loopback peer 64 KiB datagrams without GSO) and,
//! on the same port number, for TLS-over-TCP connections (`tcp`), validates every frame and hands
//! it to whoever expects its transfer id. Sending picks the path: in the same process the frame's
//! buffer changes hands; on the same host (a loopback peer) it goes through a shared-memory ring
//! announced over QUIC (the receiver's frames lend their bodies from the ring's slots); otherwise
//! over the network path the configuration names for the peer (`KvNetwork`: TLS over TCP unless
//! told QUIC).
//!
//! Copies of a received body, counted in bytes in `PlaneStats::body_bytes_copied_in` (the
//! kernel's copy out of the socket is not among them): none in-process; none from shared memory
//! while the body is lent from its slot (one when it is copied out); one over QUIC (from quinn's
//! decrypted datagrams into the body's buffer); over TLS only what was read ahead with the
//! frame's header: with AEGIS records at most 4 KiB, with TLS records at most two records of
//! 16 KiB (the rest of the body is read into its own buffer and decrypted there). The engine's
//! import then writes the body into its KV pool: one more, on every path.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, EndpointConfig, TokioRuntime};
use tokio::sync::mpsc;

use crate::aead::{AeadLibrary, CryptoLibrary};
use crate::certs::{CertError, Identity, server_name};
use crate::frame::{self, Frame, encode_head, read_frame};
use crate::records::BulkCipher;
use crate::shm::{ShmReceiver, ShmSender, ring_path};
use crate::tcp::{self, TcpPath};
use runtime::buffers::{Buffer, BufferPool};
pub use vocab::config::KvNetwork;

/// Settings of a data plane.
#[derive(Clone, Debug)]
pub struct PlaneConfig {
    pub cluster: String,
    pub node: String,
    /// Connections per peer (frames are spread over them), on either network path.
    pub connections: usize,
    /// The network path towards peers that shared memory does not reach.
    pub network: KvNetwork,
    /// Per-peer exceptions to `network`, by node name.
    pub network_by_peer: BTreeMap<String, KvNetwork>,
    /// Use shared memory towards peers on this host.
    pub shared_memory: bool,
    pub shm_slots: usize,
    pub shm_slot_size: usize,
    /// UDP socket buffers.
    pub socket_buffer: usize,
    /// The library behind both network paths' encryption.
    pub crypto_library: CryptoLibrary,
    /// The TLS-over-TCP path's records after the handshake (AEGIS-128X2 where the peer offers it).
    pub bulk_cipher: BulkCipher,
}

impl PlaneConfig {
    pub fn new(cluster: &str, node: &str) -> Self {
        Self {
            cluster: cluster.into(),
            node: node.into(),
            connections: 4,
            network: KvNetwork::default(),
            network_by_peer: BTreeMap::new(),
            shared_memory: true,
            shm_slots: 16,
            shm_slot_size: 4 << 20,
            socket_buffer: 4 << 20,
            crypto_library: CryptoLibrary::default(),
            bulk_cipher: BulkCipher::default(),
        }
    }

    /// The network path frames to `node` take.
    pub fn network_for(&self, node: &str) -> KvNetwork {
        self.network_by_peer.get(node).copied().unwrap_or(self.network)
    }
}

/// What `DataPlane::quic_mtu` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicMtu {
    pub smallest: u16,
    pub black_holes: u64,
}

/// A frame's body handed to quinn without a copy (`Bytes::from_owner`).
struct SentBody(Buffer);

impl AsRef<[u8]> for SentBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A peer's data-plane address and node name (its certificate's identity).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub node: String,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] CertError),
    #[error("data plane socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("connecting to {peer}: {detail}")]
    Connect { peer: String, detail: String },
    #[error("sending to {peer}: {detail}")]
    Send { peer: String, detail: String },
}

/// Counters since start (also exported as Prometheus metrics).
#[derive(Debug, Default)]
pub struct PlaneStats {
    pub frames_in: AtomicU64,
    /// Of `frames_in`, those that came through shared memory.
    pub frames_in_shm: AtomicU64,
    /// Of `frames_in`, those that came over TLS on TCP.
    pub frames_in_tls: AtomicU64,
    /// TLS-over-TCP connections accepted, and of those, the ones with AEGIS-128X2 records.
    pub tls_connections_in: AtomicU64,
    pub tls_connections_in_aegis: AtomicU64,
    /// Bytes of received bodies copied between the socket (or ring) and delivery; see the
    /// module. Divided by `bytes_in`: copies of a body.
    pub body_bytes_copied_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rejected: AtomicU64,
    pub unexpected: AtomicU64,
    pub refused_peers: AtomicU64,
}

struct Links {
    conns: Vec<Connection>,
    next: usize,
    /// The shared-memory ring towards this peer, when it accepted one.
    shm: Option<Arc<Mutex<ShmSender>>>,
}

pub struct DataPlane {
    endpoint: Endpoint,
    /// Client settings towards peers on this host.
    loopback_client: quinn::ClientConfig,
    local: SocketAddr,
    config: PlaneConfig,
    pool: BufferPool,
    sinks: Mutex<HashMap<u64, mpsc::UnboundedSender<Frame>>>,
    links: tokio::sync::Mutex<HashMap<PeerAddr, Links>>,
    tcp: TcpPath,
    stats: PlaneStats,
}

/// Frames of one transfer, as they arrive; dropping it stops accepting them.
pub struct Inbox {
    plane: Arc<DataPlane>,
    transfer: u64,
    rx: mpsc::UnboundedReceiver<Frame>,
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.plane.sinks.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.transfer);
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // CUBIC (quinn's default): 0.84-0.93 GB/s in `armature bench transfer` on loopback with these
    // windows and buffers, against 0.68-0.81 with BBR on the same machine and day.
    t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    t.max_concurrent_uni_streams(1024u32.into());
    t.max_concurrent_bidi_streams(16u32.into());
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(15_000))));
    t
}

/// Towards a peer on this host (loopback, MTU 64 KiB): MTU discovery up to the largest UDP
/// payload, and no segmentation offload. Measured with `armature bench transfer` on loopback:
/// about 2 GB/s, against 0.8 with the defaults (1,452-byte datagrams, GSO) and 0.7 with large
/// datagrams and GSO together. Peers elsewhere keep quinn's defaults (not measured here).
///
/// Datagrams the receiver's socket drops when it falls behind can look like a black hole to
/// MTU discovery, which then sends 1,200-byte datagrams (a quarter of the throughput) until it
/// probes again: after a minute by default, after a second here, where the path is known to
/// carry large ones (docs/benchmarks.md, `quic_mtu` in `armature bench transfer`'s report).
fn loopback_transport_config() -> quinn::TransportConfig {
    let mut t = transport_config();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    mtu.black_hole_cooldown(Duration::from_secs(1));
    t.mtu_discovery_config(Some(mtu));
    t.enable_segmentation_offload(false);
    t
}

/// The largest UDP payload quinn handles; peers may send datagrams this large (loopback).
const MAX_UDP_PAYLOAD: u16 = 65_527;

const SHM_OPEN: &[u8; 4] = b"SHM1";

impl DataPlane {
    /// Listen on `addr` (port 0 picks one) with `identity`: QUIC on its UDP port, TLS over TCP on
    /// the TCP port of the same number.
    pub fn bind(addr: SocketAddr, identity: &Identity, config: PlaneConfig) -> Result<Arc<Self>, TransportError> {
        let transport = Arc::new(transport_config());
        let library = AeadLibrary::resolve(config.crypto_library);
        let server_tls = QuicServerConfig::try_from(identity.server_tls(library)?)
            .map_err(|e| CertError::Tls(format!("QUIC server: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls = Arc::new(
            QuicClientConfig::try_from(identity.client_tls(library)?)
                .map_err(|e| CertError::Tls(format!("QUIC client: {e}")))?,
        );
        let mut client = quinn::ClientConfig::new(client_tls.clone());
        client.transport_config(transport);
        let mut loopback_client = quinn::ClientConfig::new(client_tls);
        loopback_client.transport_config(Arc::new(loopback_transport_config()));
        let bind = |source| TransportError::Bind { addr, source };
        let (socket, listener) = bind_both(addr, config.socket_buffer).map_err(bind)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
        let tcp_path = TcpPath::new(identity, library, config.bulk_cipher, config.connections, config.socket_buffer)?;
        let acceptor = tcp_path.acceptor();
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within quinn's bounds");
        let mut endpoint =
            Endpoint::new(endpoint_config, Some(server), socket, Arc::new(TokioRuntime)).map_err(bind)?;
        endpoint.set_default_client_config(client);
        let local = endpoint.local_addr().map_err(bind)?;
        let plane = Arc::new(Self {
            endpoint,
            local,
            config,
            pool: BufferPool::new(64),
            loopback_client,
            sinks: Mutex::default(),
            links: tokio::sync::Mutex::default(),
            tcp: tcp_path,
            stats: PlaneStats::default(),
        });
        tokio::spawn(accept_loop(plane.clone()));
        tokio::spawn(tcp::accept_loop(listener, Arc::downgrade(&plane), acceptor));
        tracing::info!(
            addr = %local,
            crypto = library.label(),
            "KV data plane listening (QUIC and TLS over TCP, mutual TLS)"
        );
        Ok(plane)
    }

    pub fn config(&self) -> &PlaneConfig {
        &self.config
    }

    /// Buffers that received bodies land in.
    pub(crate) fn receive_pool(&self) -> BufferPool {
        self.pool.clone()
    }

    /// A TLS-over-TCP connection accepted, with `cipher`'s records.
    pub(crate) fn connected_tls(&self, cipher: BulkCipher) {
        self.stats.tls_connections_in.fetch_add(1, Ordering::Relaxed);
        if cipher == BulkCipher::Aegis128X2 {
            self.stats.tls_connections_in_aegis.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A peer whose handshake failed (no certificate from the cluster CA, say).
    pub(crate) fn refused(&self, from: &str, why: &str) {
        self.stats.refused_peers.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("armature_transfer_peers_refused_total").increment(1);
        tracing::warn!(%from, "data-plane peer refused: {why}");
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> &PlaneStats {
        &self.stats
    }

    /// Buffers for frame bodies this node sends.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Start accepting the frames of `transfer`.
    pub fn expect(self: &Arc<Self>, transfer: u64) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).insert(transfer, tx);
        Inbox { plane: self.clone(), transfer, rx }
    }

    /// Hand a received frame on; `copied` bytes of its body were copied since the socket or ring.
    pub(crate) fn deliver(&self, frame: Frame, path: &'static str, copied: u64) {
        self.stats.body_bytes_copied_in.fetch_add(copied, Ordering::Relaxed);
        let len = frame.body.len() as u64;
        let sink = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).get(&frame.header.transfer).cloned();
        match sink.map(|s| s.send(frame).is_ok()) {
            Some(true) => {
                self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                match path {
                    "shm" => self.stats.frames_in_shm.fetch_add(1, Ordering::Relaxed),
                    "tls" => self.stats.frames_in_tls.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                self.stats.bytes_in.fetch_add(len, Ordering::Relaxed);
                metrics::counter!("armature_transfer_frames_total", "direction" => "in", "path" => path).increment(1);
                metrics::counter!("armature_transfer_bytes_total", "direction" => "in", "path" => path).increment(len);
            }
            _ => {
                // Nobody waits for it (a cancelled or finished transfer): not an error of the peer.
                self.stats.unexpected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("armature_transfer_frames_unexpected_total").increment(1);
            }
        }
    }

    pub(crate) fn reject(&self, err: &frame::FrameError, from: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("armature_transfer_frames_rejected_total", "reason" => err.reason()).increment(1);
        tracing::warn!(peer = from, "KV frame rejected: {err}");
    }

    /// Send `frame` to `peer`. The frame's buffer is handed over in-process, copied through
    /// shared memory on this host, or streamed over the peer's network path.
    pub async fn send(self: &Arc<Self>, peer: &PeerAddr, frame: Frame) -> Result<(), TransportError> {
        let len = frame.body.len() as u64;
        let path = if peer.addr == self.local {
            self.deliver(frame, "local", 0);
            "local"
        } else {
            self.send_remote(peer, frame).await?
        };
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        metrics::counter!("armature_transfer_frames_total", "direction" => "out", "path" => path).increment(1);
        metrics::counter!("armature_transfer_bytes_total", "direction" => "out", "path" => path).increment(len);
        Ok(())
    }

    async fn send_remote(self: &Arc<Self>, peer: &PeerAddr, frame: Frame) -> Result<&'static str, TransportError> {
        let network = self.config.network_for(&peer.node);
        let head = encode_head(&frame.header, frame.body.len());
        // Shared memory is announced over QUIC; without it, the TLS path needs no QUIC at all.
        let shm_wanted = self.config.shared_memory && peer.addr.ip().is_loopback();
        let (conn, shm) = if shm_wanted || network == KvNetwork::Quic {
            let (conn, shm) = self.link(peer).await?;
            (Some(conn), shm)
        } else {
            (None, None)
        };
        let fail = |detail: String| TransportError::Send { peer: peer.node.clone(), detail };
        if let Some(shm) = shm
            && shm.lock().unwrap_or_else(|p| p.into_inner()).fits(head.len() + frame.body.len())
        {
            // The copy runs here (a frame takes tens of microseconds). Waiting for a free slot
            // yields to the runtime: at first only a turn (the receiver frees a slot every few
            // tens of microseconds, well under the timer's millisecond), then in sleeps.
            let start = std::time::Instant::now();
            let mut tries = 0u32;
            loop {
                let sent = shm.lock().unwrap_or_else(|p| p.into_inner()).try_send(&[&head, &frame.body]);
                if sent.map_err(|e| fail(e.to_string()))? {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(fail("the peer's shared-memory ring stayed full for 10 s".into()));
                }
                tries += 1;
                if tries < 200 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            return Ok("shm");
        }
        let Some(conn) = conn.filter(|_| network == KvNetwork::Quic) else {
            self.tcp.send(peer, &head, &frame.body).await?;
            return Ok("tls");
        };
        let mut stream = conn.open_uni().await.map_err(|e| fail(e.to_string()))?;
        // The body's buffer goes to quinn as is (no copy into its send buffer); it returns to
        // the pool once quinn has sent and dropped it.
        stream.write_all(&head).await.map_err(|e| fail(e.to_string()))?;
        stream.write_chunk(bytes::Bytes::from_owner(SentBody(frame.body))).await.map_err(|e| fail(e.to_string()))?;
        stream.finish().map_err(|e| fail(e.to_string()))?;
        Ok("quic")
    }

    /// MTU discovery on the QUIC connections to `peer`: the smallest datagram size they send now,
    /// and the black holes they detected since they opened (losses taken for a path that stopped
    /// carrying large datagrams, after which a connection sends 1,200-byte datagrams until it
    /// probes again). None before any connection.
    pub async fn quic_mtu(&self, peer: &PeerAddr) -> Option<QuicMtu> {
        let links = self.links.lock().await;
        let paths: Vec<_> = links.get(peer)?.conns.iter().map(|c| c.stats().path).collect();
        Some(QuicMtu {
            smallest: paths.iter().map(|p| p.current_mtu).min()?,
            black_holes: paths.iter().map(|p| p.black_holes_detected).sum(),
        })
    }

    /// A connection to `peer` (round robin over several) and its shared-memory ring if any.
    async fn link(
        self: &Arc<Self>,
        peer: &PeerAddr,
    ) -> Result<(Connection, Option<Arc<Mutex<ShmSender>>>), TransportError> {
        let mut links = self.links.lock().await;
        if let Some(l) = links.get_mut(peer) {
            l.conns.retain(|c| c.close_reason().is_none());
            if l.conns.len() == self.config.connections.max(1) {
                l.next = l.next.wrapping_add(1);
                return Ok((l.conns[l.next % l.conns.len()].clone(), l.shm.clone()));
            }
        }
        let mut conns = match links.remove(peer) {
            Some(l) => {
                tracing::warn!(peer = %peer.node, open = l.conns.len(), "data-plane connections to the peer were lost: reconnecting");
                l.conns
            }
            None => Vec::new(),
        };
        while conns.len() < self.config.connections.max(1) {
            // quinn's connection driver keeps the span current where it starts, for the
            // connection's life: a root span of the link, not the request that opened it (whose
            // span would then never close, nor be exported).
            let link = tracing::info_span!(parent: None, "kv_link", peer = %peer.node);
            let connecting = link.in_scope(|| {
                if peer.addr.ip().is_loopback() {
                    self.endpoint.connect_with(self.loopback_client.clone(), peer.addr, &server_name(&peer.node))
                } else {
                    self.endpoint.connect(peer.addr, &server_name(&peer.node))
                }
            });
            let connecting = connecting.map_err(|e| TransportError::Connect {
                peer: format!("{} ({})", peer.node, peer.addr),
                detail: e.to_string(),
            })?;
            let conn = connecting.await.map_err(|e| TransportError::Connect {
                peer: format!("{} ({})", peer.node, peer.addr),
                detail: e.to_string(),
            })?;
            conns.push(conn);
        }
        let shm = if self.config.shared_memory && peer.addr.ip().is_loopback() {
            self.open_shm(&conns[0], peer).await
        } else {
            None
        };
        links.insert(peer.clone(), Links { conns: conns.clone(), next: 0, shm: shm.clone() });
        Ok((conns[0].clone(), shm))
    }

    /// Create a ring towards `peer` and announce it; None if the peer cannot map it.
    async fn open_shm(&self, conn: &Connection, peer: &PeerAddr) -> Option<Arc<Mutex<ShmSender>>> {
        let path = ring_path(&self.config.cluster, &self.config.node, &peer.node);
        let ring = match ShmSender::create(&path, self.config.shm_slots, self.config.shm_slot_size) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %peer.node, "no shared-memory ring: {e}");
                return None;
            }
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let name = path.to_string_lossy().into_owned().into_bytes();
            let mut msg = SHM_OPEN.to_vec();
            msg.extend_from_slice(&(name.len() as u16).to_le_bytes());
            msg.extend_from_slice(&name);
            send.write_all(&msg).await.ok()?;
            send.finish().ok()?;
            let mut reply = [0u8; 2];
            recv.read_exact(&mut reply).await.ok()?;
            (&reply == b"OK").then_some(())
        };
        match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Some(())) => {
                tracing::info!(peer = %peer.node, path = %path.display(), "KV frames to this peer go through shared memory");
                Some(Arc::new(Mutex::new(ring)))
            }
            _ => None,
        }
    }
}

async fn accept_loop(plane: Arc<DataPlane>) {
    while let Some(incoming) = plane.endpoint.accept().await {
        let plane = plane.clone();
        tokio::spawn(async move {
            let from = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(plane, conn).await,
                Err(e) => plane.refused(&from.to_string(), &e.to_string()),
            }
        });
    }
}

async fn serve_connection(plane: Arc<DataPlane>, conn: Connection) {
    let from = conn.remote_address().to_string();
    let alive = Arc::new(AtomicBool::new(true));
    loop {
        tokio::select! {
            uni = conn.accept_uni() => {
                let Ok(mut stream) = uni else { break };
                let (plane, from) = (plane.clone(), from.clone());
                tokio::spawn(async move {
                    // One frame per stream, then its end: reading the end closes the stream
                    // cleanly, which returns its credit to the sender (a stream dropped before
                    // its end leaks the peer's stream credit until it can open no more).
                    let read = match read_frame(&mut stream, &plane.pool).await {
                        Ok(frame) => match stream.read_chunk(1, true).await {
                            Ok(None) => Ok(frame),
                            Ok(Some(_)) => Err(frame::FrameError::Trailing),
                            Err(e) => Err(frame::FrameError::Truncated(std::io::Error::other(e))),
                        },
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(frame) => {
                            let len = frame.body.len() as u64;
                            plane.deliver(frame, "quic", len)
                        }
                        Err(e) => {
                            plane.reject(&e, &from);
                            let _ = stream.stop(1u32.into());
                        }
                    }
                });
            }
            bi = conn.accept_bi() => {
                let Ok((send, recv)) = bi else { break };
                tokio::spawn(accept_shm(plane.clone(), send, recv, alive.clone(), from.clone()));
            }
        }
    }
    alive.store(false, Ordering::Release);
}

/// A peer announces a shared-memory ring: map it and read frames from it on a thread until the
/// sender closes it or the connection ends.
async fn accept_shm(
    plane: Arc<DataPlane>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    alive: Arc<AtomicBool>,
    from: String,
) {
    let mut head = [0u8; 6];
    if recv.read_exact(&mut head).await.is_err() || &head[..4] != SHM_OPEN {
        let _ = send.write_all(b"NO").await;
        return;
    }
    let mut name = vec![0u8; u16::from_le_bytes([head[4], head[5]]) as usize];
    if recv.read_exact(&mut name).await.is_err() {
        return;
    }
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    // Only rings under our own naming scheme, in the shared-memory directory.
    let ours = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("armature-"))
        && path.parent() == ring_path("x", "y", "z").parent();
    let ring = if ours { ShmReceiver::open(&path).ok() } else { None };
    let Some(mut ring) = ring else {
        let _ = send.write_all(b"NO").await;
        return;
    };
    let _ = send.write_all(b"OK").await;
    let _ = send.finish();
    let spawned = std::thread::Builder::new().name("kv-shm-recv".into()).spawn(move || {
        while alive.load(Ordering::Acquire) && !ring.is_closed() {
            let Some(slot) = ring.take(Duration::from_millis(200)) else { continue };
            // Validated where it lies. While at most half the ring is held by frames in use,
            // the body is lent from its slot (freed when the frame drops); past that it is
            // copied out and the slot freed at once, so slow consumers cannot starve the sender.
            let lend = ring.held() <= ring.slots() / 2;
            let frame = match frame::parse_in_place(slot.bytes()) {
                Ok((header, body)) if lend => {
                    Ok((Frame { header, body: Buffer::lent(Box::new(slot.narrow(body))) }, 0))
                }
                Ok((header, body)) => {
                    let copied = body.len() as u64;
                    Ok((Frame { header, body: plane.pool.copy_of(&slot.bytes()[body]) }, copied))
                }
                Err(e) => Err(e),
            };
            match frame {
                Ok((f, copies)) => plane.deliver(f, "shm", copies),
                Err(e) => plane.reject(&e, &from),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a shared-memory reader: {e}");
    }
}

/// The QUIC socket on `addr` and a TCP listener on the same port number. Where `addr` leaves the
/// port to the system, a port whose TCP side is taken is given back and another one tried.
fn bind_both(addr: SocketAddr, socket_buffer: usize) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut tries = 0;
    loop {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(socket_buffer);
        let _ = socket.set_send_buffer_size(socket_buffer);
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        let udp: std::net::UdpSocket = socket.into();
        let port = udp.local_addr()?.port();
        match tcp::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}
