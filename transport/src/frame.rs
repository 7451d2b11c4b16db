//! The KV frame: a fixed prefix, a versioned rkyv header (model fingerprint, block layout,
//! sequence hashes, lengths, checksum) and the raw bytes of the blocks. Every frame read from a
//! peer (network or shared memory) is validated before use: magic, version, sizes, rkyv's checked
//! access, the layout's arithmetic and an XXH3 checksum over the body.
//!
//! ```text
//! 0       4        6          8            12           16          24
//! | magic | version | reserved | header_len | reserved   | body_len  | header (rkyv) | body |
//! ```

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use runtime::kv::BlockLayout;
use tokio::io::{AsyncRead, AsyncReadExt};
use twox_hash::XxHash3_64;

use runtime::buffers::{Buffer, BufferPool};

pub const MAGIC: [u8; 4] = *b"ARKV";
pub const VERSION: u16 = 1;
pub const PREFIX_LEN: usize = 24;
/// Largest header accepted (a header holds 8 bytes per block hash).
pub const MAX_HEADER: usize = 1 << 20;
/// Largest body accepted.
pub const MAX_BODY: u64 = 1 << 30;

/// The block layout as the frame carries it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireLayout {
    pub layers: u32,
    pub block_size: u32,
    pub kv_width: u32,
    pub dtype_bytes: u32,
}

impl From<BlockLayout> for WireLayout {
    fn from(l: BlockLayout) -> Self {
        Self { layers: l.layers, block_size: l.block_size, kv_width: l.kv_width, dtype_bytes: l.dtype_bytes }
    }
}

impl From<WireLayout> for BlockLayout {
    fn from(l: WireLayout) -> Self {
        Self { layers: l.layers, block_size: l.block_size, kv_width: l.kv_width, dtype_bytes: l.dtype_bytes }
    }
}

/// What a frame says about its body.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FrameHeader {
    pub version: u16,
    /// The transfer this frame belongs to (chosen by the receiver).
    pub transfer: u64,
    /// Fingerprint of the model whose KV this is.
    pub model: u64,
    pub layout: WireLayout,
    /// Index, within the transfer's sequence, of the first block in this frame.
    pub first_block: u32,
    /// Sequence hash of each block in the body, in order.
    pub hashes: Vec<u64>,
    /// The transfer's last frame.
    pub last: bool,
    /// XXH3-64 of the body.
    pub checksum: u64,
}

impl FrameHeader {
    /// A header for `blocks` (one block of `layout` after another), checksummed.
    pub fn for_body(
        transfer: u64,
        model: u64,
        layout: BlockLayout,
        first_block: u32,
        hashes: Vec<u64>,
        last: bool,
        body: &[u8],
    ) -> Self {
        Self {
            version: VERSION,
            transfer,
            model,
            layout: layout.into(),
            first_block,
            hashes,
            last,
            checksum: XxHash3_64::oneshot(body),
        }
    }
}

/// A validated frame: its header and its body in a pooled buffer.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub body: Buffer,
}

impl Frame {
    /// The bytes of block `i` of this frame.
    pub fn block(&self, i: usize) -> &[u8] {
        let n = BlockLayout::from(self.header.layout).block_bytes();
        &self.body[i * n..(i + 1) * n]
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("not a KV frame (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("frame version {0}, this build speaks {VERSION}")]
    Version(u16),
    #[error("header of {0} bytes exceeds {MAX_HEADER}")]
    HeaderSize(usize),
    #[error("body of {0} bytes exceeds {MAX_BODY}")]
    BodySize(u64),
    #[error("header does not validate: {0}")]
    Header(String),
    #[error("body is {body} bytes, but {blocks} blocks of {block_bytes} bytes were announced")]
    Length { body: u64, blocks: usize, block_bytes: usize },
    #[error("checksum mismatch: header says {expected:016x}, body hashes to {actual:016x}")]
    Checksum { expected: u64, actual: u64 },
    #[error("truncated frame: {0}")]
    Truncated(std::io::Error),
    #[error("bytes after the end of the frame")]
    Trailing,
    #[error("TLS record: {0}")]
    Record(#[source] std::io::Error),
}

impl FrameError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Magic(_) => "magic",
            FrameError::Version(_) => "version",
            FrameError::HeaderSize(_) | FrameError::BodySize(_) => "size",
            FrameError::Header(_) => "header",
            FrameError::Length { .. } => "length",
            FrameError::Checksum { .. } => "checksum",
            FrameError::Truncated(_) => "truncated",
            FrameError::Trailing => "trailing",
            FrameError::Record(_) => "record",
        }
    }
}

/// The prefix and header bytes of a frame whose body is `body_len` bytes.
pub fn encode_head(header: &FrameHeader, body_len: usize) -> Vec<u8> {
    let archived = rkyv::to_bytes::<BoxedError>(header).expect("a frame header always serializes");
    let mut out = Vec::with_capacity(PREFIX_LEN + archived.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(archived.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body_len as u64).to_le_bytes());
    out.extend_from_slice(&archived);
    out
}

/// A whole frame in one buffer (for shared memory and tests).
pub fn encode(header: &FrameHeader, body: &[u8]) -> Vec<u8> {
    let mut out = encode_head(header, body.len());
    out.extend_from_slice(body);
    out
}

/// Check the fixed prefix: (header length, body length).
pub(crate) fn parse_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(usize, u64), FrameError> {
    let magic: [u8; 4] = prefix[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let version = u16::from_le_bytes([prefix[4], prefix[5]]);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let header_len = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER || header_len == 0 {
        return Err(FrameError::HeaderSize(header_len));
    }
    let body_len = u64::from_le_bytes(prefix[16..24].try_into().expect("8 bytes"));
    if body_len > MAX_BODY {
        return Err(FrameError::BodySize(body_len));
    }
    Ok((header_len, body_len))
}

/// Validate the archived header and check it against the body length.
pub(crate) fn parse_header(bytes: &AlignedVec, body_len: u64) -> Result<FrameHeader, FrameError> {
    let archived =
        rkyv::access::<ArchivedFrameHeader, BoxedError>(bytes).map_err(|e| FrameError::Header(e.to_string()))?;
    let header: FrameHeader =
        rkyv::deserialize::<FrameHeader, BoxedError>(archived).map_err(|e| FrameError::Header(e.to_string()))?;
    if header.version != VERSION {
        return Err(FrameError::Version(header.version));
    }
    let layout = BlockLayout::from(header.layout);
    let block_bytes = layout.block_bytes();
    let expected = (header.hashes.len() as u64).checked_mul(block_bytes as u64);
    if block_bytes == 0 || expected != Some(body_len) {
        return Err(FrameError::Length { body: body_len, blocks: header.hashes.len(), block_bytes });
    }
    Ok(header)
}

fn check_body(header: &FrameHeader, body: &[u8]) -> Result<(), FrameError> {
    check_checksum(header, XxHash3_64::oneshot(body))
}

/// Compare the body's XXH3-64, computed as it arrived, with the header's.
pub(crate) fn check_checksum(header: &FrameHeader, actual: u64) -> Result<(), FrameError> {
    if actual != header.checksum {
        return Err(FrameError::Checksum { expected: header.checksum, actual });
    }
    Ok(())
}

/// Read and validate one frame from `r`; the body lands in a buffer from `pool`.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, pool: &BufferPool) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    r.read_exact(&mut prefix).await.map_err(FrameError::Truncated)?;
    let (header_len, body_len) = parse_prefix(&prefix)?;
    let mut head = AlignedVec::<16>::with_capacity(header_len);
    head.resize(header_len, 0);
    r.read_exact(&mut head).await.map_err(FrameError::Truncated)?;
    let header = parse_header(&head, body_len)?;
    let mut body = pool.take(body_len as usize);
    r.read_exact(&mut body).await.map_err(FrameError::Truncated)?;
    check_body(&header, &body)?;
    Ok(Frame { header, body })
}

/// Validate one frame held in `bytes` where it lies (a shared-memory slot): its header, and where
/// its body is in `bytes`.
pub fn parse_in_place(bytes: &[u8]) -> Result<(FrameHeader, std::ops::Range<usize>), FrameError> {
    let truncated = || FrameError::Truncated(std::io::ErrorKind::UnexpectedEof.into());
    let prefix: &[u8; PREFIX_LEN] = bytes.get(..PREFIX_LEN).and_then(|p| p.try_into().ok()).ok_or_else(truncated)?;
    let (header_len, body_len) = parse_prefix(prefix)?;
    let head_end = PREFIX_LEN + header_len;
    let end = head_end as u64 + body_len;
    if (bytes.len() as u64) < end {
        return Err(truncated());
    }
    let mut head = AlignedVec::<16>::with_capacity(header_len);
    head.extend_from_slice(&bytes[PREFIX_LEN..head_end]);
    let header = parse_header(&head, body_len)?;
    let body = head_end..end as usize;
    check_body(&header, &bytes[body.clone()])?;
    Ok((header, body))
}

/// Read and validate a frame's prefix and header from a file or other reader, leaving the body
/// unread: (header, bytes the prefix and header took, body length). For indexing stored frames
/// without reading their bodies; the body is checked when it is read (`parse_in_place`).
pub fn read_head<R: std::io::Read>(r: &mut R) -> Result<(FrameHeader, usize, u64), FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    r.read_exact(&mut prefix).map_err(FrameError::Truncated)?;
    let (header_len, body_len) = parse_prefix(&prefix)?;
    let mut head = AlignedVec::<16>::with_capacity(header_len);
    head.resize(header_len, 0);
    r.read_exact(&mut head).map_err(FrameError::Truncated)?;
    let header = parse_header(&head, body_len)?;
    Ok((header, PREFIX_LEN + header_len, body_len))
}

/// Validate one frame held in `bytes`, copying its body into a pooled buffer.
pub fn decode(bytes: &[u8], pool: &BufferPool) -> Result<Frame, FrameError> {
    let (header, range) = parse_in_place(bytes)?;
    Ok(Frame { header, body: pool.copy_of(&bytes[range]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: BlockLayout = BlockLayout { layers: 2, block_size: 4, kv_width: 3, dtype_bytes: 2 };

    fn sample() -> (FrameHeader, Vec<u8>) {
        let body: Vec<u8> = (0..2 * LAYOUT.block_bytes()).map(|i| (i * 7 % 251) as u8).collect();
        (FrameHeader::for_body(9, 0xfeed, LAYOUT, 3, vec![11, 12], true, &body), body)
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream_and_a_slice() {
        let pool = BufferPool::new(4);
        let (header, body) = sample();
        let bytes = encode(&header, &body);
        assert_eq!(LAYOUT.block_bytes(), 96);
        let frame = read_frame(&mut &bytes[..], &pool).await.unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(&frame.body[..], &body[..]);
        assert_eq!(frame.block(1), &body[96..]);
        let again = decode(&bytes, &pool).unwrap();
        assert_eq!(again.header.hashes, [11, 12]);
    }

    #[tokio::test]
    async fn every_corruption_is_refused_with_its_reason() {
        let pool = BufferPool::new(4);
        let (header, body) = sample();
        let good = encode(&header, &body);
        let head_len = good.len() - body.len();
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut b = good.clone();
        b[0] = b'X';
        cases.push((b, "magic"));
        let mut b = good.clone();
        b[4] = 2;
        cases.push((b, "version"));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((b, "size"));
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 1;
        cases.push((b, "checksum"));
        // A header whose bytes are garbage.
        let mut b = good.clone();
        for x in &mut b[PREFIX_LEN..head_len] {
            *x = 0xff;
        }
        cases.push((b, "header"));
        // Announced blocks that do not match the body.
        let short = FrameHeader { hashes: vec![11], ..header.clone() };
        cases.push((encode(&short, &body), "length"));
        // Every truncation.
        for cut in [1, PREFIX_LEN, head_len - 1, head_len + 5, good.len() - 1] {
            cases.push((good[..cut].to_vec(), "truncated"));
        }
        for (bytes, reason) in cases {
            let err = read_frame(&mut &bytes[..], &pool).await.unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
            let err = decode(&bytes, &pool).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
    }
}
