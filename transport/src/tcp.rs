//! The data plane's bulk path: KV frames over TLS 1.3 on TCP, with mutual authentication against
//! the cluster CA (its own ALPN, `armature-kv-tcp/1`), the same frames and the same validation as
//! over QUIC. The listener shares the QUIC socket's port number (TCP and UDP ports are separate),
//! so a peer's one data address serves both paths. rustls does the handshake; the records after
//! it are sealed and opened by `records`: AEGIS-128X2 records where both ends offer them
//! (`transport.bulk_cipher`), TLS 1.3 records otherwise. Either reads a body's records from the
//! socket into the body's buffer, opens them there and hashes them as it goes.
//!
//! A connection carries frames one way, from the node that opened it; the accepting side sends
//! one record after the handshake (`READY`), so the opener knows its keys are in use on both
//! sides before it sends. Frames follow each other on a connection; a sender holds a connection
//! for a whole frame, and spreads concurrent frames over up to `connections` connections per
//! peer, opened as needed. A frame whose body fails its checksum is refused and the connection
//! goes on (it was read to its end); a frame whose prefix or header does not validate, or a
//! record that does not open, closes the connection, since nothing after it can be trusted, and
//! the sender opens a new one for its next frame.

use std::hash::Hasher as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rkyv::util::AlignedVec;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use twox_hash::XxHash3_64;

use crate::aead::AeadLibrary;
use crate::certs::{CertError, Identity, server_name};
use crate::frame::{self, Frame, FrameError, PREFIX_LEN};
use crate::plane::{DataPlane, PeerAddr, TransportError};
use crate::records::{self, BulkCipher, BulkReader, BulkWriter};
use crate::tls_records::RecordError;
use runtime::buffers::BufferPool;

/// The accepting side's first record: its keys are installed.
const READY: &[u8; 8] = b"ARKV-RDY";

/// Longest a TLS handshake may take on either side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both ends of the TLS-over-TCP path of one node.
pub(crate) struct TcpPath {
    acceptor: TlsAcceptor,
    /// Seals and opens this node's TLS records, whichever library the peer uses.
    library: AeadLibrary,
    connector: TlsConnector,
    /// Connections per peer.
    connections: usize,
    socket_buffer: usize,
    links: std::sync::Mutex<std::collections::HashMap<PeerAddr, Arc<PeerLinks>>>,
}

/// An open connection's sending half.
struct Sender {
    tcp: TcpStream,
    records: BulkWriter,
}

/// The connections to one peer; `None` until a frame needs one (or after one failed).
struct PeerLinks {
    slots: Vec<Mutex<Option<Sender>>>,
    next: AtomicUsize,
}

impl TcpPath {
    pub(crate) fn new(
        identity: &Identity,
        library: AeadLibrary,
        cipher: BulkCipher,
        connections: usize,
        socket_buffer: usize,
    ) -> Result<Self, CertError> {
        let (server, client) = identity.tcp_tls(library, cipher)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            library,
            connector: TlsConnector::from(Arc::new(client)),
            connections: connections.max(1),
            socket_buffer,
            links: Default::default(),
        })
    }

    pub(crate) fn acceptor(&self) -> (TlsAcceptor, AeadLibrary) {
        (self.acceptor.clone(), self.library)
    }

    fn peer(&self, peer: &PeerAddr) -> Arc<PeerLinks> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .entry(peer.clone())
            .or_insert_with(|| {
                Arc::new(PeerLinks {
                    slots: (0..self.connections).map(|_| Mutex::new(None)).collect(),
                    next: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Write one frame (`head`, then `body`) to `peer` on a connection of its own for the time.
    /// A connection that had carried frames before and fails is replaced once: the peer may have
    /// restarted since.
    pub(crate) async fn send(&self, peer: &PeerAddr, head: &[u8], body: &[u8]) -> Result<(), TransportError> {
        let links = self.peer(peer);
        // A free connection if there is one, else wait for the next in turn.
        let start = links.next.fetch_add(1, Ordering::Relaxed);
        let n = links.slots.len();
        let free = (0..n).find_map(|i| links.slots[(start + i) % n].try_lock().ok());
        let mut slot = match free {
            Some(s) => s,
            None => links.slots[start % n].lock().await,
        };
        let reused = slot.is_some();
        match self.write_on(&mut slot, peer, head, body).await {
            Err(e) if reused => {
                tracing::debug!(peer = %peer.node, "a TLS data-plane connection failed ({e}): reconnecting");
                self.write_on(&mut slot, peer, head, body).await
            }
            done => done,
        }
    }

    /// Write the frame on `slot`'s connection, opening one if it has none; a connection that
    /// fails is dropped.
    async fn write_on(
        &self,
        slot: &mut Option<Sender>,
        peer: &PeerAddr,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), TransportError> {
        // A peer that closed the connection (it refused a frame, or is shutting down) has sent
        // its end, which a write would not notice until too late: look before writing.
        if slot.as_ref().is_some_and(
            |s| !matches!(s.tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        ) {
            *slot = None;
        }
        let stream = match slot {
            Some(s) => s,
            None => slot.insert(self.connect(peer).await?),
        };
        let written = stream.records.write_all(&mut stream.tcp, &[head, body]).await;
        written.map_err(|e| {
            *slot = None;
            TransportError::Send { peer: peer.node.clone(), detail: e.to_string() }
        })
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Sender, TransportError> {
        let fail = |detail: String| TransportError::Connect { peer: format!("{} ({})", peer.node, peer.addr), detail };
        let name = ServerName::try_from(server_name(&peer.node)).map_err(|e| fail(e.to_string()))?;
        let tcp = TcpStream::connect(peer.addr).await.map_err(|e| fail(e.to_string()))?;
        tune(&tcp, self.socket_buffer);
        let opened = async {
            let tls = self.connector.connect(name, tcp).await?;
            let (mut tcp, conn) = tls.into_inner();
            let (cipher, records, mut reader) = records::take_over(conn.into(), self.library)?;
            let mut ready = [0u8; READY.len()];
            if !reader.read_exact(&mut tcp, &mut ready).await? || &ready != READY {
                return Err(std::io::Error::other("the peer did not confirm the connection"));
            }
            count_connection("out", cipher);
            Ok::<_, std::io::Error>(Sender { tcp, records })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, opened)
            .await
            .map_err(|_| fail("TLS handshake timed out".into()))?
            .map_err(|e| fail(e.to_string()))
    }
}

fn tune(tcp: &TcpStream, socket_buffer: usize) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(socket_buffer);
    let _ = sock.set_send_buffer_size(socket_buffer);
}

/// A TCP listener on `port` of `ip`, beside the QUIC socket.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accept peers until the plane is dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    plane: Weak<DataPlane>,
    (acceptor, library): (TlsAcceptor, AeadLibrary),
) {
    loop {
        let Ok((tcp, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(p) = plane.upgrade() else { return };
        tune(&tcp, p.config().socket_buffer);
        drop(p);
        let (plane, acceptor) = (plane.clone(), acceptor.clone());
        tokio::spawn(async move {
            let from = from.to_string();
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp, &acceptor, library))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")));
            match accepted {
                Ok((tcp, cipher, reader)) => {
                    if let Some(p) = plane.upgrade() {
                        p.connected_tls(cipher);
                    }
                    count_connection("in", cipher);
                    serve(tcp, reader, plane, from).await
                }
                Err(e) => {
                    if let Some(p) = plane.upgrade() {
                        p.refused(&from, &e.to_string());
                    }
                }
            }
        });
    }
}

/// The handshake, the connection's records taken over from rustls, and `READY` sent.
async fn accept(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    library: AeadLibrary,
) -> std::io::Result<(TcpStream, BulkCipher, BulkReader)> {
    let tls = acceptor.accept(tcp).await?;
    let (mut tcp, conn) = tls.into_inner();
    let (cipher, mut writer, reader) = records::take_over(conn.into(), library)?;
    writer.write_all(&mut tcp, &[READY]).await?;
    Ok((tcp, cipher, reader))
}

/// A TLS-over-TCP connection opened (`direction` out) or accepted (in), by its record layer.
fn count_connection(direction: &'static str, cipher: BulkCipher) {
    metrics::counter!("armature_transfer_connections_total", "path" => "tls", "direction" => direction, "records" => cipher.label())
        .increment(1);
}

/// Read frames from one connection until it ends or a frame cannot be trusted to end where
/// the next begins.
async fn serve(mut tcp: TcpStream, mut reader: BulkReader, plane: Weak<DataPlane>, from: String) {
    let Some(pool) = plane.upgrade().map(|p| p.receive_pool()) else { return };
    loop {
        let read = read_frame(&mut reader, &mut tcp, &pool).await;
        let Some(p) = plane.upgrade() else { return };
        match read {
            Ok(None) => return,
            Ok(Some((frame, copied))) => p.deliver(frame, "tls", copied),
            // Read to its end: the next frame starts right after it.
            Err(e @ FrameError::Checksum { .. }) => p.reject(&e, &from),
            Err(e) => {
                p.reject(&e, &from);
                return;
            }
        }
    }
}

/// The next frame on the connection, validated, and the bytes of its body that were copied (the
/// rest were opened in place, see `BulkReader::read_body`); the body is hashed as it is opened.
/// `None` where the connection ended cleanly between frames.
async fn read_frame(
    reader: &mut BulkReader,
    tcp: &mut TcpStream,
    pool: &BufferPool,
) -> Result<Option<(Frame, u64)>, FrameError> {
    let records = |e: RecordError| match e {
        RecordError::Io(e) => FrameError::Truncated(e),
        other => FrameError::Record(other.into()),
    };
    let mut prefix = [0u8; PREFIX_LEN];
    if !reader.read_exact(tcp, &mut prefix).await.map_err(records)? {
        return Ok(None);
    }
    let (header_len, body_len) = frame::parse_prefix(&prefix)?;
    let mut head = AlignedVec::<16>::with_capacity(header_len);
    head.resize(header_len, 0);
    let whole =
        |more: bool| if more { Ok(()) } else { Err(FrameError::Truncated(std::io::ErrorKind::UnexpectedEof.into())) };
    whole(reader.read_exact(tcp, &mut head).await.map_err(records)?)?;
    let header = frame::parse_header(&head, body_len)?;
    let len = body_len as usize;
    let mut body = pool.take(reader.body_room(len));
    let mut hash = XxHash3_64::new();
    let copied = reader.read_body(tcp, &mut body, len, &mut hash).await.map_err(records)?;
    frame::check_checksum(&header, hash.finish())?;
    Ok(Some((Frame { header, body }, copied as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHeader, encode_head};
    use crate::plane::{KvNetwork, PlaneConfig};
    use runtime::kv::BlockLayout;
    use std::sync::atomic::Ordering;

    const LAYOUT: BlockLayout = BlockLayout { layers: 2, block_size: 16, kv_width: 64, dtype_bytes: 2 };

    fn certs(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("armature-tcp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes: Vec<(String, Vec<std::net::IpAddr>)> =
            ["a", "b"].iter().map(|n| (n.to_string(), vec![std::net::Ipv4Addr::LOCALHOST.into()])).collect();
        crate::certs::init(&dir, &nodes).unwrap();
        dir
    }

    fn frame(blocks: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let body: Vec<u8> = (0..blocks * LAYOUT.block_bytes()).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let header = FrameHeader::for_body(1, 77, LAYOUT, 0, (0..blocks as u64).collect(), false, &body);
        (encode_head(&header, body.len()), body)
    }

    async fn wait_for(what: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !what() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(waited.await.is_ok(), "timed out");
    }

    #[tokio::test]
    async fn corrupt_frames_are_refused_and_a_stream_that_cannot_be_trusted_is_replaced() {
        use BulkCipher::{Aegis128X2, Tls};
        for (sender, receiver) in [(Aegis128X2, Aegis128X2), (Tls, Aegis128X2), (Aegis128X2, Tls)] {
            corrupt_frames_over(sender, receiver).await;
        }
    }

    /// The same, with the sender's and the receiver's `transport.bulk_cipher`: AEGIS records only
    /// where both offer them.
    async fn corrupt_frames_over(cipher: BulkCipher, receiver: BulkCipher) {
        let dir = certs(&format!("corrupt-{}-{}", cipher.label(), receiver.label()));
        let config = PlaneConfig {
            network: KvNetwork::Tls,
            shared_memory: false,
            bulk_cipher: receiver,
            ..PlaneConfig::new("t", "b")
        };
        let b = DataPlane::bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), &Identity::load(&dir, "b").unwrap(), config)
            .unwrap();
        // The sender seals TLS records with ring and the receiver measures its own: either may
        // face either.
        let sender = TcpPath::new(&Identity::load(&dir, "a").unwrap(), AeadLibrary::Ring, cipher, 1, 1 << 20).unwrap();
        let peer = PeerAddr { node: "b".into(), addr: b.local_addr() };
        let mut inbox = b.expect(1);
        let (head, body) = frame(40, 3);
        // A body that fails its checksum: refused, and the connection goes on.
        let mut bad = body.clone();
        *bad.last_mut().unwrap() ^= 1;
        sender.send(&peer, &head, &bad).await.unwrap();
        sender.send(&peer, &head, &body).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await.unwrap().unwrap();
        assert_eq!(&got.body[..], &body[..]);
        assert_eq!(b.stats().rejected.load(Ordering::Relaxed), 1);
        assert_eq!(b.stats().frames_in_tls.load(Ordering::Relaxed), 1);
        // Garbage where a frame should start: refused, and the receiver closes the connection...
        sender.send(&peer, &[0x5a; 64], &[]).await.unwrap();
        wait_for(|| b.stats().rejected.load(Ordering::Relaxed) == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...which the sender notices before its next frame, sent on a new connection.
        sender.send(&peer, &head, &body).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await.unwrap().unwrap();
        assert_eq!(&got.body[..], &body[..]);
        let both = cipher == BulkCipher::Aegis128X2 && receiver == BulkCipher::Aegis128X2;
        assert_eq!(b.stats().tls_connections_in.load(Ordering::Relaxed), 2);
        assert_eq!(b.stats().tls_connections_in_aegis.load(Ordering::Relaxed), if both { 2 } else { 0 });
        // A member of another cluster is refused at the handshake.
        let other = certs(&format!("corrupt-other-{}-{}", cipher.label(), receiver.label()));
        let stranger =
            TcpPath::new(&Identity::load(&other, "a").unwrap(), AeadLibrary::AwsLc, cipher, 1, 1 << 20).unwrap();
        let err = stranger.send(&peer, &head, &body).await.unwrap_err();
        assert!(err.to_string().contains("connecting to b"), "{err}");
        wait_for(|| b.stats().refused_peers.load(Ordering::Relaxed) >= 1).await;
        for d in [dir, other] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
