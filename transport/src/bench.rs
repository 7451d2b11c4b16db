//! `armature bench transfer`: KV frames between two data planes on this host, over QUIC, over TLS
//! on TCP and over shared memory, measured in the same run beside a plain TCP socket copy and
//! memcpy. Every frame the planes receive is validated (header, lengths, checksum); the TCP and
//! memcpy baselines move bare bytes. With `sweep`, the network paths are measured again against
//! connections per peer and frame sizes, each point beside its own TCP baseline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use runtime::kv::BlockLayout;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::aead::{AeadLibrary, CryptoLibrary};
use crate::frame::{Frame, FrameHeader};
use crate::plane::{DataPlane, KvNetwork, PeerAddr, PlaneConfig};
use crate::records::BulkCipher;
use crate::{Identity, certs};

/// Frames in flight per sender.
const IN_FLIGHT: usize = 32;
/// Connections per peer that the sweep measures.
pub const SWEEP_CONNECTIONS: [usize; 4] = [1, 2, 4, 8];
/// Frame sizes that the sweep measures.
pub const SWEEP_FRAME_BYTES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];

#[derive(Clone, Debug)]
pub struct TransferBench {
    /// Frames of 1 MiB per repeat (other sizes move as many bytes).
    pub frames: usize,
    pub repeats: usize,
    pub connections: usize,
    pub frame_bytes: usize,
    pub sweep: bool,
    /// Only these paths (`memcpy`, `tcp`, `quic`, `tls`, `shm`); all when empty. For profiling one.
    pub only: Vec<String>,
    /// The AEAD library of both network paths (measured fastest, unless named).
    pub crypto: CryptoLibrary,
    /// The TLS-over-TCP path's records (both planes configured alike).
    pub bulk_cipher: BulkCipher,
}

/// GB/s (10^9 bytes per second), median of the repeats, per path.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    pub frame_bytes: usize,
    pub frames: usize,
    pub connections: usize,
    /// The AEAD library the network paths used (`AeadLibrary::label`).
    pub crypto_library: &'static str,
    /// The TLS-over-TCP path's records (`BulkCipher::label`).
    pub bulk_cipher: &'static str,
    pub memcpy_gb_s: f64,
    pub tcp_gb_s: f64,
    pub quic_gb_s: f64,
    pub tls_gb_s: f64,
    pub shm_gb_s: f64,
    /// Copies of each received body between the socket (or ring) and the receiver's inbox, as
    /// the receiving plane counted them (bytes copied over bytes received), per path.
    pub copies_per_frame: CopiesPerFrame,
    /// Every repeat, for the spread: memcpy, tcp, quic, tls, shm.
    pub runs: Vec<[f64; 5]>,
    /// After each repeat, the smallest datagram the QUIC connections sent (MTU discovery), and
    /// the black holes they had detected in all.
    pub quic_mtu: Vec<(u16, u64)>,
    pub sweep: Vec<SweepPoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopiesPerFrame {
    pub quic: f64,
    pub tls: f64,
    pub shm: f64,
}

/// One point of the sweep: medians of the repeats, GB/s.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub frame_bytes: usize,
    pub connections: usize,
    pub tcp_gb_s: f64,
    pub quic_gb_s: f64,
    pub tls_gb_s: f64,
}

fn gb_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One block of `frame_bytes` (a multiple of 64).
fn layout(frame_bytes: usize) -> BlockLayout {
    BlockLayout { layers: 1, block_size: 16, kv_width: (frame_bytes / 64).max(1) as u32, dtype_bytes: 2 }
}

/// The two planes of one path, and the counters their frames leave.
struct Pair {
    a: Arc<DataPlane>,
    b: Arc<DataPlane>,
}

impl Pair {
    /// Plane b, as a peer of plane a.
    fn to_b(&self) -> PeerAddr {
        PeerAddr { node: "b".into(), addr: self.b.local_addr() }
    }

    fn copies_per_frame(&self) -> f64 {
        let s = self.b.stats();
        s.body_bytes_copied_in.load(Ordering::Relaxed) as f64 / s.bytes_in.load(Ordering::Relaxed).max(1) as f64
    }
}

/// Certificates for nodes a and b, in a directory removed when dropped (with the CA's key, which
/// `certs::init` writes beside the directory).
struct Certs(std::path::PathBuf);

impl Certs {
    fn new() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("armature-bench-certs-{}", std::process::id()));
        Self::remove(&dir);
        let nodes: Vec<(String, Vec<std::net::IpAddr>)> =
            ["a", "b"].iter().map(|s| (s.to_string(), vec![std::net::Ipv4Addr::LOCALHOST.into()])).collect();
        certs::init(&dir, &nodes).map_err(|e| e.to_string())?;
        Ok(Self(dir))
    }

    fn pair(
        &self,
        shared_memory: bool,
        network: KvNetwork,
        connections: usize,
        crypto_library: CryptoLibrary,
        bulk_cipher: BulkCipher,
    ) -> Result<Pair, String> {
        let plane = |node: &str| {
            let id = Identity::load(&self.0, node).map_err(|e| e.to_string())?;
            let cfg = PlaneConfig {
                shared_memory,
                network,
                connections,
                crypto_library,
                bulk_cipher,
                ..PlaneConfig::new("bench", node)
            };
            DataPlane::bind((std::net::Ipv4Addr::LOCALHOST, 0).into(), &id, cfg).map_err(|e| e.to_string())
        };
        Ok(Pair { a: plane("a")?, b: plane("b")? })
    }

    fn remove(dir: &std::path::Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(certs::ca_key_path(dir));
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        Self::remove(&self.0);
    }
}

impl TransferBench {
    pub async fn run(&self) -> Result<TransferReport, String> {
        let certs = Certs::new()?;
        let layout = layout(self.frame_bytes);
        let n = layout.block_bytes();
        let pair = |shm, network| certs.pair(shm, network, self.connections, self.crypto, self.bulk_cipher);
        let (quic, tls, shm) =
            (pair(false, KvNetwork::Quic)?, pair(false, KvNetwork::Tls)?, pair(true, KvNetwork::Quic)?);
        let frames = self.frames_of(n);
        let body = body(n);
        let (mut runs, mut quic_mtu) = (Vec::new(), Vec::new());
        for r in 0..self.repeats.max(1) {
            let m = if self.wants("memcpy") { memcpy(&body, frames) } else { 0.0 };
            let t = if self.wants("tcp") { tcp(&body, frames).await? } else { 0.0 };
            let transfer = 3 * r as u64;
            let q = self.measure("quic", &quic, layout, &body, frames, transfer).await?;
            let l = self.measure("tls", &tls, layout, &body, frames, transfer + 1).await?;
            let sh = self.measure("shm", &shm, layout, &body, frames, transfer + 2).await?;
            tracing::debug!(repeat = r, memcpy = m, tcp = t, quic = q, tls = l, shm = sh, "transfer benchmark repeat");
            runs.push([m, t, q, l, sh]);
            if let Some(mtu) = quic.a.quic_mtu(&quic.to_b()).await {
                quic_mtu.push((mtu.smallest, mtu.black_holes));
            }
        }
        let col = |i: usize| median(runs.iter().map(|r| r[i]).collect());
        let copies_per_frame =
            CopiesPerFrame { quic: quic.copies_per_frame(), tls: tls.copies_per_frame(), shm: shm.copies_per_frame() };
        let mut sweep = Vec::new();
        if self.sweep {
            let points = SWEEP_CONNECTIONS
                .iter()
                .map(|&c| (1 << 20, c))
                .chain(SWEEP_FRAME_BYTES.iter().filter(|&&f| f != 1 << 20).map(|&f| (f, self.connections)));
            for (frame_bytes, connections) in points {
                sweep.push(self.sweep_point(&certs, frame_bytes, connections).await?);
            }
        }
        Ok(TransferReport {
            frame_bytes: n,
            frames,
            connections: self.connections,
            crypto_library: AeadLibrary::resolve(self.crypto).label(),
            bulk_cipher: self.bulk_cipher.label(),
            memcpy_gb_s: col(0),
            tcp_gb_s: col(1),
            quic_gb_s: col(2),
            tls_gb_s: col(3),
            shm_gb_s: col(4),
            copies_per_frame,
            runs,
            quic_mtu,
            sweep,
        })
    }

    /// `planes_run` on `pair`, unless `only` leaves `path` out (0 then).
    async fn measure(
        &self,
        path: &str,
        pair: &Pair,
        layout: BlockLayout,
        body: &[u8],
        frames: usize,
        transfer: u64,
    ) -> Result<f64, String> {
        if !self.wants(path) {
            return Ok(0.0);
        }
        planes_run(pair, layout, body, frames, transfer).await
    }

    fn wants(&self, path: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == path)
    }

    /// Frames of `n` bytes that move as many bytes as `frames` of 1 MiB.
    fn frames_of(&self, n: usize) -> usize {
        (self.frames * (1 << 20)).div_ceil(n).max(1)
    }

    async fn sweep_point(&self, certs: &Certs, frame_bytes: usize, connections: usize) -> Result<SweepPoint, String> {
        let layout = layout(frame_bytes);
        let n = layout.block_bytes();
        let frames = self.frames_of(n);
        let quic = certs.pair(false, KvNetwork::Quic, connections, self.crypto, self.bulk_cipher)?;
        let tls = certs.pair(false, KvNetwork::Tls, connections, self.crypto, self.bulk_cipher)?;
        let body = body(n);
        let mut runs = Vec::new();
        for r in 0..self.repeats.max(1) {
            let t = tcp(&body, frames).await?;
            let q = self.measure("quic", &quic, layout, &body, frames, 2 * r as u64).await?;
            let l = self.measure("tls", &tls, layout, &body, frames, 2 * r as u64 + 1).await?;
            tracing::debug!(frame_bytes, connections, tcp = t, quic = q, tls = l, "transfer sweep repeat");
            runs.push([t, q, l]);
        }
        let col = |i: usize| median(runs.iter().map(|r: &[f64; 3]| r[i]).collect());
        Ok(SweepPoint { frame_bytes: n, connections, tcp_gb_s: col(0), quic_gb_s: col(1), tls_gb_s: col(2) })
    }
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// Copy the frame into `DESTINATIONS` warm buffers in turn: a working set as large as the
/// shared-memory ring's, so neither side of the comparison runs from the CPU cache alone.
fn memcpy(body: &[u8], frames: usize) -> f64 {
    const DESTINATIONS: usize = 64;
    let mut dest: Vec<Vec<u8>> = (0..DESTINATIONS).map(|_| vec![1u8; body.len()]).collect();
    let start = Instant::now();
    for i in 0..frames {
        let d = &mut dest[i % DESTINATIONS];
        d.copy_from_slice(body);
        std::hint::black_box(&d[..]);
    }
    gb_s(body.len() * frames, start.elapsed())
}

/// One TCP connection on loopback; the reader reads into a reused buffer.
async fn tcp(body: &[u8], frames: usize) -> Result<f64, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let len = body.len();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; len];
        for _ in 0..frames {
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(Instant::now())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let start = Instant::now();
    for _ in 0..frames {
        s.write_all(body).await.map_err(|e| e.to_string())?;
    }
    let end = reader.await.map_err(|e| e.to_string())??;
    Ok(gb_s(len * frames, end - start))
}

/// Frames from plane a to plane b, `IN_FLIGHT` at a time, until b has received them all.
async fn planes_run(
    pair: &Pair,
    layout: BlockLayout,
    body: &[u8],
    frames: usize,
    transfer: u64,
) -> Result<f64, String> {
    let (a, b) = (&pair.a, &pair.b);
    let to = pair.to_b();
    let header = FrameHeader::for_body(transfer, 1, layout, 0, vec![7], false, body);
    let mut inbox = b.expect(transfer);
    // Warm the connections (and the ring) outside the timing.
    for _ in 0..a.config().connections.max(1) {
        let warm = Frame { header: header.clone(), body: crate::Buffer::unpooled(body) };
        a.send(&to, warm).await.map_err(|e| e.to_string())?;
        inbox.recv().await.ok_or("no warm-up frame")?;
    }
    tracing::debug!(transfer, "warm-up frames arrived");
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        for _ in 0..frames {
            inbox.recv().await.ok_or("inbox closed")?;
        }
        Ok::<_, String>(Instant::now())
    });
    // Every frame shares one prepared body (as the TCP baseline writes the same bytes): what is
    // timed is the plane's work, from a frame handed to it to a validated frame at the receiver.
    let shared = Arc::new(body.to_vec());
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    for _ in 0..frames {
        let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let frame = Frame { header: header.clone(), body: crate::Buffer::shared(shared.clone()) };
        let (a, to) = (a.clone(), to.clone());
        tokio::spawn(async move {
            if let Err(e) = a.send(&to, frame).await {
                tracing::error!("benchmark frame lost: {e}");
            }
            drop(permit);
        });
    }
    tracing::debug!(transfer, "all frames handed to the plane");
    let end = tokio::time::timeout(Duration::from_secs(120), receiver)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())??;
    Ok(gb_s(body.len() * frames, end - start))
}
