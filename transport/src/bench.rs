//! `armature bench transfer`: KV frames of 1 MiB between two data planes on this host, over QUIC
//! and over shared memory, measured in the same run beside a plain TCP socket copy and memcpy.
//! Every frame the planes receive is validated (header, lengths, checksum); the TCP and memcpy
//! baselines move bare bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::kv::BlockLayout;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::frame::{Frame, FrameHeader};
use crate::plane::{DataPlane, PeerAddr, PlaneConfig};
use crate::{Identity, certs};

/// One block of exactly 1 MiB.
const LAYOUT: BlockLayout = BlockLayout { layers: 1, block_size: 16, kv_width: 16384, dtype_bytes: 2 };
/// Frames in flight per sender.
const IN_FLIGHT: usize = 32;

#[derive(Clone, Debug)]
pub struct TransferBench {
    pub frames: usize,
    pub repeats: usize,
    pub connections: usize,
}

/// GB/s (10^9 bytes per second), median of the repeats, per path.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    pub frame_bytes: usize,
    pub frames: usize,
    pub connections: usize,
    pub memcpy_gb_s: f64,
    pub tcp_gb_s: f64,
    pub quic_gb_s: f64,
    pub shm_gb_s: f64,
    /// Every repeat, for the spread.
    pub runs: Vec<[f64; 4]>,
}

fn gb_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl TransferBench {
    pub async fn run(&self) -> Result<TransferReport, String> {
        let n = LAYOUT.block_bytes();
        let dir = std::env::temp_dir().join(format!("armature-bench-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes: Vec<(String, Vec<std::net::IpAddr>)> =
            ["a", "b"].iter().map(|s| (s.to_string(), vec!["127.0.0.1".parse().expect("ip")])).collect();
        certs::init(&dir, &nodes).map_err(|e| e.to_string())?;
        let id = |n| Identity::load(&dir, n).map_err(|e| e.to_string());
        let planes = |shm: bool| -> Result<(Arc<DataPlane>, Arc<DataPlane>), String> {
            let cfg = |node: &str| PlaneConfig {
                shared_memory: shm,
                connections: self.connections,
                ..PlaneConfig::new("bench", node)
            };
            let addr = "127.0.0.1:0".parse().expect("addr");
            Ok((
                DataPlane::bind(addr, &id("a")?, cfg("a")).map_err(|e| e.to_string())?,
                DataPlane::bind(addr, &id("b")?, cfg("b")).map_err(|e| e.to_string())?,
            ))
        };
        let quic = planes(false)?;
        let shm = planes(true)?;
        let body: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
        let mut runs = Vec::new();
        for r in 0..self.repeats.max(1) {
            let m = memcpy(&body, self.frames);
            let t = tcp(&body, self.frames).await?;
            let q = planes_run(&quic, &body, self.frames, 2 * r as u64).await?;
            let sh = planes_run(&shm, &body, self.frames, 2 * r as u64 + 1).await?;
            tracing::debug!(repeat = r, memcpy = m, tcp = t, quic = q, shm = sh, "transfer benchmark repeat");
            let row = [m, t, q, sh];
            runs.push(row);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let col = |i: usize| median(runs.iter().map(|r| r[i]).collect());
        Ok(TransferReport {
            frame_bytes: n,
            frames: self.frames,
            connections: self.connections,
            memcpy_gb_s: col(0),
            tcp_gb_s: col(1),
            quic_gb_s: col(2),
            shm_gb_s: col(3),
            runs,
        })
    }
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
    planes: &(Arc<DataPlane>, Arc<DataPlane>),
    body: &[u8],
    frames: usize,
    transfer: u64,
) -> Result<f64, String> {
    let (a, b) = planes;
    let to = PeerAddr { node: "b".into(), addr: b.local_addr() };
    let header = FrameHeader::for_body(transfer, 1, LAYOUT, 0, vec![7], false, body);
    let mut inbox = b.expect(transfer);
    // Warm the connections (and the ring) outside the timing.
    let warm = Frame { header: header.clone(), body: crate::Buffer::unpooled(body) };
    a.send(&to, warm).await.map_err(|e| e.to_string())?;
    inbox.recv().await.ok_or("no warm-up frame")?;
    tracing::debug!(transfer, "warm-up frame arrived");
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
