//! Two data planes on loopback with certificates from one cluster CA: frames cross over QUIC
//! (with 64 KiB datagrams), TLS on TCP, shared memory (bodies lent from the ring while half of it
//! is free) and in-process, each with the copies of its bodies the plane's docs state; corrupt and
//! truncated frames are refused and counted while the connection keeps working; peers without a
//! certificate from the CA are refused on both network paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use runtime::kv::BlockLayout;
use transport::frame::{FrameHeader, encode, encode_head};
use transport::{Buffer, BulkCipher, DataPlane, Frame, Identity, KvNetwork, PeerAddr, PlaneConfig};

const LAYOUT: BlockLayout = BlockLayout { layers: 2, block_size: 16, kv_width: 64, dtype_bytes: 2 };

fn certs(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("armature-plane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let nodes: Vec<(String, Vec<std::net::IpAddr>)> =
        ["a", "b"].iter().map(|n| (n.to_string(), vec!["127.0.0.1".parse().unwrap()])).collect();
    transport::certs::init(&dir, &nodes).unwrap();
    dir
}

fn frame(transfer: u64, first: u32, blocks: usize, seed: u8) -> Frame {
    let body: Vec<u8> = (0..blocks * LAYOUT.block_bytes()).map(|i| (i as u8).wrapping_mul(seed)).collect();
    let hashes = (0..blocks as u64).map(|i| 1000 + u64::from(first) + i).collect();
    let header = FrameHeader::for_body(transfer, 77, LAYOUT, first, hashes, false, &body);
    Frame { header, body: Buffer::unpooled(&body) }
}

/// The path frames take between two planes on this host.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Quic,
    /// TLS on TCP with AEGIS-128X2 records (both ends offer them by default).
    Tls,
    /// TLS on TCP with TLS 1.3's own records.
    TlsRecords,
    Shm,
}

fn plane(dir: &std::path::Path, node: &str, path: Path) -> Arc<DataPlane> {
    let mut config = PlaneConfig::new("test", node);
    config.shared_memory = path == Path::Shm;
    config.network = if matches!(path, Path::Tls | Path::TlsRecords) { KvNetwork::Tls } else { KvNetwork::Quic };
    if path == Path::TlsRecords {
        config.bulk_cipher = BulkCipher::Tls;
    }
    config.connections = 2;
    let id = Identity::load(dir, node).unwrap();
    DataPlane::bind("127.0.0.1:0".parse().unwrap(), &id, config).unwrap()
}

async fn roundtrip(path: Path) {
    let dir = certs(&format!("{path:?}"));
    let (a, b) = (plane(&dir, "a", path), plane(&dir, "b", path));
    let to_b = PeerAddr { node: "b".into(), addr: b.local_addr() };
    let mut inbox = b.expect(5);
    for i in 0..6u32 {
        a.send(&to_b, frame(5, i * 3, 3, i as u8 + 1)).await.unwrap();
    }
    // A frame for a transfer nobody expects is dropped and counted, not delivered.
    a.send(&to_b, frame(6, 0, 1, 9)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap());
    }
    // Streams and connections may overtake each other; the shared-memory ring keeps order.
    got.sort_by_key(|f| f.header.first_block);
    for (i, got) in got.iter().enumerate() {
        let want = frame(5, i as u32 * 3, 3, i as u8 + 1);
        assert_eq!(got.header, want.header);
        assert_eq!(&got.body[..], &want.body[..]);
        assert_eq!(got.block(2), want.block(2));
    }
    let via_shm = b.stats().frames_in_shm.load(Ordering::Relaxed);
    assert_eq!(via_shm, if path == Path::Shm { 6 } else { 0 });
    let via_tls = b.stats().frames_in_tls.load(Ordering::Relaxed);
    assert_eq!(via_tls, if matches!(path, Path::Tls | Path::TlsRecords) { 6 } else { 0 });
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while b.stats().unexpected.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    );
    assert_eq!(b.stats().frames_in.load(Ordering::Relaxed), 6);
    assert_eq!(a.stats().frames_out.load(Ordering::Relaxed), 7);
    // In-process: the frame's buffer changes hands.
    let to_self = PeerAddr { node: "b".into(), addr: b.local_addr() };
    let mut mine = b.expect(8);
    b.send(&to_self, frame(8, 0, 1, 3)).await.unwrap();
    assert_eq!(mine.recv().await.unwrap().header.first_block, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn frames_cross_over_quic() {
    roundtrip(Path::Quic).await;
}

#[tokio::test]
async fn frames_cross_over_tls_on_tcp() {
    roundtrip(Path::Tls).await;
    roundtrip(Path::TlsRecords).await;
}

#[tokio::test]
async fn frames_cross_over_shared_memory() {
    roundtrip(Path::Shm).await;
}

/// Bytes of received bodies copied on their way to the inbox, per byte received.
fn copies(p: &DataPlane) -> f64 {
    let s = p.stats();
    s.body_bytes_copied_in.load(Ordering::Relaxed) as f64 / s.bytes_in.load(Ordering::Relaxed) as f64
}

/// What `plane.rs` states: a QUIC body is copied once out of quinn's datagrams; a TLS body is
/// opened where the kernel put it, but for what was read ahead with its header (4 KiB at most
/// with AEGIS records, two TLS records of 16 KiB at most); a shared-memory body is lent from its slot; in-process the buffer changes hands.
/// The frames delivered are what the engine's import takes (its one copy into the KV pool).
#[tokio::test]
async fn each_path_copies_bodies_as_documented() {
    let dir = certs("copies");
    // 64 blocks of 8 KiB: 512 KiB bodies.
    let blocks = 64;
    let body_bytes = (blocks * LAYOUT.block_bytes()) as f64;
    for path in [Path::Quic, Path::Tls, Path::TlsRecords, Path::Shm] {
        let (a, b) = (plane(&dir, "a", path), plane(&dir, "b", path));
        let to_b = PeerAddr { node: "b".into(), addr: b.local_addr() };
        let mut inbox = b.expect(4);
        for i in 0..4u32 {
            a.send(&to_b, frame(4, i * 64, blocks, 3)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap();
            assert_eq!(&got.body[..], &frame(4, i * 64, blocks, 3).body[..]);
        }
        let c = copies(&b);
        match path {
            Path::Quic => assert_eq!(c, 1.0),
            Path::Tls => assert!(c <= 4096.0 / body_bytes && c > 0.0, "{path:?}: {c}"),
            Path::TlsRecords => assert!(c <= 2.0 * 16_405.0 / body_bytes && c > 4096.0 / body_bytes, "{path:?}: {c}"),
            Path::Shm => assert_eq!(c, 0.0),
        }
    }
    let b = plane(&dir, "b", Path::Tls);
    let mut mine = b.expect(5);
    b.send(&PeerAddr { node: "b".into(), addr: b.local_addr() }, frame(5, 0, blocks, 1)).await.unwrap();
    let f = mine.recv().await.unwrap();
    assert_eq!(f.body.len(), blocks * LAYOUT.block_bytes());
    assert_eq!(b.stats().body_bytes_copied_in.load(Ordering::Relaxed), 0, "in-process: no copy");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn quic_to_a_loopback_peer_finds_large_datagrams() {
    let dir = certs("mtu");
    let (a, b) = (plane(&dir, "a", Path::Quic), plane(&dir, "b", Path::Quic));
    let to_b = PeerAddr { node: "b".into(), addr: b.local_addr() };
    let mut inbox = b.expect(1);
    let mut mtu = 0;
    for i in 0..200u32 {
        a.send(&to_b, frame(1, i, 8, 3)).await.unwrap();
        inbox.recv().await.unwrap();
        mtu = a.quic_mtu(&to_b).await.unwrap().smallest;
        if mtu > 16_000 {
            break;
        }
    }
    // Far beyond Ethernet's 1,452 bytes, on every connection: loopback carries 64 KiB datagrams.
    assert!(mtu > 16_000, "path MTU {mtu}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn shared_memory_lends_bodies_while_half_the_ring_is_free() {
    let dir = certs("lend");
    let (a, b) = (plane(&dir, "a", Path::Shm), plane(&dir, "b", Path::Shm));
    let to_b = PeerAddr { node: "b".into(), addr: b.local_addr() };
    let mut inbox = b.expect(3);
    // 20 frames kept by the consumer (the ring has 16 slots): the first 8 are lent from their
    // slots, the rest copied out so the sender keeps a free half.
    let mut held = Vec::new();
    for i in 0..20u32 {
        a.send(&to_b, frame(3, i, 2, i as u8 + 1)).await.unwrap();
        held.push(tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await.unwrap().unwrap());
    }
    let lent: Vec<bool> = held.iter().map(|f| f.body.is_lent()).collect();
    assert_eq!(lent, [vec![true; 8], vec![false; 12]].concat());
    for (i, f) in held.iter().enumerate() {
        assert_eq!(f.header.first_block, i as u32, "in order");
        assert_eq!(&f.body[..], &frame(3, i as u32, 2, i as u8 + 1).body[..]);
        if f.body.is_lent() {
            assert_eq!(f.body.as_ptr() as usize % 64, 0, "a lent body is aligned");
        }
    }
    // Given back: lent again.
    drop(held);
    a.send(&to_b, frame(3, 20, 1, 7)).await.unwrap();
    let f = inbox.recv().await.unwrap();
    assert!(f.body.is_lent());
    assert_eq!(&f.body[..], &frame(3, 20, 1, 7).body[..]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A raw QUIC client that trusts `ca` and offers `identity`'s certificate (or none); Some if the
/// server accepted it.
async fn raw_client(identity: Option<&Identity>, ca: &std::path::Path, to: SocketAddr) -> Option<quinn::Connection> {
    use rustls::pki_types::pem::PemObject;
    let tls = match identity {
        Some(id) => id.client_tls(transport::AeadLibrary::Ring).unwrap(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![transport::certs::ALPN.to_vec()];
            tls
        }
    };
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap())));
    let conn = ep.connect(to, &transport::certs::server_name("b")).unwrap().await.ok()?;
    // A refused client certificate shows once the server answers.
    let mut s = conn.open_uni().await.ok()?;
    s.write_all(b"x").await.ok()?;
    tokio::time::timeout(Duration::from_secs(2), conn.closed()).await.err().map(|_| conn)
}

#[tokio::test]
async fn corrupt_frames_are_refused_and_the_connection_stays_healthy() {
    let dir = certs("corrupt");
    let b = plane(&dir, "b", Path::Quic);
    let a_id = Identity::load(&dir, "a").unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let tls = QuicClientConfig::try_from(a_id.client_tls(transport::AeadLibrary::AwsLc).unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(tls)));
    let conn = ep.connect(b.local_addr(), &transport::certs::server_name("b")).unwrap().await.unwrap();
    let mut inbox = b.expect(1);
    let good = frame(1, 0, 2, 5);
    let bytes = encode(&good.header, &good.body);
    let mut corrupt = bytes.clone();
    *corrupt.last_mut().unwrap() ^= 0xff;
    let truncated = bytes[..bytes.len() / 2].to_vec();
    let garbage = vec![0x5a; 4096];
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"and more");
    for bad in [corrupt, truncated, garbage, trailing] {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bad).await.unwrap();
        s.finish().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.stats().rejected.load(Ordering::Relaxed), 4);
    // The same connection still delivers a good frame.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&encode_head(&good.header, good.body.len())).await.unwrap();
    s.write_all(&good.body).await.unwrap();
    s.finish().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await.unwrap().unwrap();
    assert_eq!(&got.body[..], &good.body[..]);
    assert!(conn.close_reason().is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn peers_without_a_certificate_from_the_cluster_ca_are_refused() {
    let dir = certs("refuse");
    let b = plane(&dir, "b", Path::Quic);
    let ca = dir.join("ca.pem");
    // A member of another cluster (its own CA) is refused...
    let other = certs("other");
    let stranger = Identity::load(&other, "a").unwrap();
    assert!(raw_client(Some(&stranger), &ca, b.local_addr()).await.is_none());
    // ...and so is a client with no certificate at all.
    assert!(raw_client(None, &ca, b.local_addr()).await.is_none());
    // A member of this cluster gets in.
    let a_id = Identity::load(&dir, "a").unwrap();
    assert!(raw_client(Some(&a_id), &ca, b.local_addr()).await.is_some());
    assert!(b.stats().refused_peers.load(Ordering::Relaxed) >= 2);
    // And a data plane refuses to dial a server outside the CA, on either path.
    for path in [Path::Quic, Path::Tls, Path::TlsRecords] {
        let c = plane(&other, "b", path);
        let a = plane(&dir, "a", path);
        let err = a.send(&PeerAddr { node: "b".into(), addr: c.local_addr() }, frame(1, 0, 1, 1)).await.unwrap_err();
        assert!(err.to_string().contains("connecting to b"), "{path:?}: {err}");
    }
    for d in [dir, other] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
