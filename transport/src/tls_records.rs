//! TLS 1.3 application-data records (RFC 8446 §5.2–5.3) on a connection whose handshake rustls
//! did. rustls hands the traffic keys over with `dangerous_extract_secrets`, the step it offers
//! for kernel TLS; this machine's kernel has no TLS module, so the records are sealed and opened
//! here, in place, with ring's or aws-lc-rs's AEAD, whichever is faster on the CPU (`aead`).
//!
//! Why not rustls's own record layer: rustls 0.23 reads 4 KiB at a time, copies every decrypted
//! record into a buffer of its own and then into the reader's, and allocates a buffer for every
//! record it sends. Over loopback (`armature bench transfer --only tls`) that cost a third of
//! the path's CPU beside the cipher itself; see docs/benchmarks.md for the figures measured
//! beside it. Here a frame's body is read from the socket straight into its buffer and each record
//! opened where it landed, its plaintext shifted down over the record's header as it is
//! decrypted (`open_within`), and hashed while it is in cache: the kernel's copy is the
//! only one. A writer seals records into one reused buffer and writes them in batches.
//!
//! Only application data crosses after the handshake: a record of any other inner type (an
//! alert, a key update, a ticket) fails the connection, which the sender replaces. Keys are never
//! updated: a writer stops before the AEAD's record limit and the connection is replaced.

use std::hash::Hasher as _;
use std::ops::Range;

use runtime::buffers::Buffer;
use rustls::ConnectionTrafficSecrets;
use tokio::io::{AsyncRead, AsyncReadExt};
use twox_hash::XxHash3_64;

use crate::aead::{AeadKey, AeadLibrary, Algorithm, NONCE_LEN, TAG_LEN};
use crate::records::{Pending, Seal};

/// The outer type of every TLS 1.3 record after the handshake, and the inner type of data.
const APPLICATION_DATA: u8 = 23;
const HEADER_LEN: usize = 5;
/// The largest plaintext of one record (RFC 8446 §5.1).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest ciphertext a peer may send (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Records a key seals before the connection must be replaced: well under AES-GCM's limit of
/// 2^24.5 records (RFC 8446 §5.5).
const RECORD_LIMIT: u64 = 1 << 24;
/// Bytes a reader asks the socket for at once outside `read_body`: two records, so that what a
/// read takes beyond a frame's header is little (the body's records are read into the body).
const READ_SIZE: usize = 2 * (HEADER_LEN + MAX_CIPHERTEXT);
/// Plaintext a writer seals at once (`Seal::PIECE`).
const WRITE_BATCH: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("the handshake agreed a cipher this record layer does not know")]
    Cipher,
    #[error("a record that does not open (wrong key, or changed on the way)")]
    Open,
    #[error("a record of outer type {kind}, version {version:#06x}, {len} bytes")]
    Header { kind: u8, version: u16, len: usize },
    #[error("a record of inner type {0} after the handshake (only application data may follow)")]
    NotData(u8),
    #[error("the key sealed its last record; the connection must be replaced")]
    Exhausted,
    #[error("an AEGIS record of {0} bytes (1 to 262,144 are sent)")]
    Length(usize),
    #[error("taking the record keys over from the TLS handshake")]
    Handshake(#[source] rustls::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}

/// One direction's key, IV and record sequence number.
pub(crate) struct RecordKey {
    key: AeadKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    /// `secrets` from rustls, at record number `seq`, sealed and opened by `library`.
    pub(crate) fn new(library: AeadLibrary, seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Algorithm::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Algorithm::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Algorithm::Chacha20Poly1305, key, iv),
            _ => return Err(RecordError::Cipher),
        };
        let key = AeadKey::new(library, alg, key.as_ref()).map_err(|_| RecordError::Cipher)?;
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::Cipher)?;
        Ok(Self { key, iv, seq })
    }

    /// The next record's nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], RecordError> {
        if self.seq >= RECORD_LIMIT {
            return Err(RecordError::Exhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(nonce)
    }
}

/// Bytes a record adds to its plaintext: header, inner type, tag.
const RECORD_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// The length of a buffer `RecordReader::read_body` can fill with `len` bytes: the body's
/// records as `RecordWriter` seals them, and one more record's worth.
pub(crate) fn body_room(len: usize) -> usize {
    len + len.div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD + HEADER_LEN + MAX_CIPHERTEXT
}

/// The header and ciphertext length of the record `bytes` start with, once all of it is there;
/// an error for a header no TLS 1.3 peer sends after the handshake.
fn record_len(bytes: &[u8]) -> Result<Option<([u8; HEADER_LEN], usize)>, RecordError> {
    let Some(&head) = bytes.first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let version = u16::from_be_bytes([head[1], head[2]]);
    if head[0] != APPLICATION_DATA || version != 0x0303 || !(1 + TAG_LEN..=MAX_CIPHERTEXT).contains(&len) {
        return Err(RecordError::Header { kind: head[0], version, len });
    }
    Ok((bytes.len() >= HEADER_LEN + len).then_some((head, len)))
}

/// The content length of an opened record (content, its type, then any zero padding), which
/// must be application data.
fn inner_len(opened: &[u8]) -> Result<usize, RecordError> {
    let Some(last) = opened.iter().rposition(|&b| b != 0) else { return Err(RecordError::NotData(0)) };
    if opened[last] != APPLICATION_DATA {
        return Err(RecordError::NotData(opened[last]));
    }
    Ok(last)
}

fn header(ciphertext_len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (ciphertext_len as u16).to_be_bytes();
    [APPLICATION_DATA, 3, 3, hi, lo]
}

/// Seals plaintext into records and writes them.
pub(crate) struct RecordWriter {
    key: RecordKey,
    /// Sealed records waiting to be written; each record is encrypted from the caller's bytes
    /// straight into it.
    out: Pending,
}

/// Room for what is pending (under `WRITE_BATCH`) and one more sealed batch.
const WRITE_ROOM: usize = 2 * WRITE_BATCH + (2 * WRITE_BATCH / MAX_PLAINTEXT + 2) * RECORD_OVERHEAD;

impl RecordWriter {
    pub(crate) fn new(key: RecordKey) -> Self {
        Self { key, out: Pending::new(WRITE_ROOM) }
    }

    /// Seal and write `parts`, one after another (`records::write_all`).
    #[cfg(test)]
    pub(crate) async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        parts: &[&[u8]],
    ) -> Result<(), RecordError> {
        crate::records::write_all(self, w, parts).await
    }
}

impl Seal for RecordWriter {
    const PIECE: usize = WRITE_BATCH;

    /// Append `data` to the pending output as records of up to 16 KiB.
    fn seal(&mut self, data: &[u8]) -> Result<(), RecordError> {
        for chunk in data.chunks(MAX_PLAINTEXT) {
            let head = header(chunk.len() + 1 + TAG_LEN);
            let record = self.out.next(HEADER_LEN + chunk.len() + 1 + TAG_LEN);
            let (head_out, sealed) = record.split_at_mut(HEADER_LEN);
            head_out.copy_from_slice(&head);
            let nonce = self.key.next_nonce()?;
            self.key.key.seal_into(nonce, head, chunk, &[APPLICATION_DATA], sealed).map_err(|_| RecordError::Open)?;
            self.out.push(HEADER_LEN + chunk.len() + 1 + TAG_LEN);
        }
        Ok(())
    }

    fn pending(&mut self) -> &mut Pending {
        &mut self.out
    }
}

/// Reads records and hands their plaintext out in the sizes the caller asks for.
pub(crate) struct RecordReader {
    key: RecordKey,
    buf: Vec<u8>,
    /// Received bytes not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened plaintext not yet handed out.
    plain: Range<usize>,
}

impl RecordReader {
    /// A reader that asks the socket for up to two records at a time (`READ_SIZE`).
    pub(crate) fn new(key: RecordKey) -> Self {
        Self { key, buf: vec![0; READ_SIZE + HEADER_LEN + MAX_CIPHERTEXT], start: 0, end: 0, plain: 0..0 }
    }

    /// Fill `out` with the next plaintext bytes, feeding each piece to `hash` as it is copied.
    /// `Ok(false)` where the stream ended cleanly before the first byte (between records, with
    /// nothing pending); an end anywhere else is `UnexpectedEof`.
    pub(crate) async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        out: &mut [u8],
        mut hash: Option<&mut XxHash3_64>,
    ) -> Result<bool, RecordError> {
        let mut filled = 0;
        while filled < out.len() {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(out.len() - filled);
                let piece = &mut out[filled..filled + n];
                piece.copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
                if let Some(h) = hash.as_deref_mut() {
                    h.write(piece);
                }
                self.plain.start += n;
                filled += n;
                continue;
            }
            if self.open_next()? {
                continue;
            }
            if !self.fill(r).await? {
                if filled == 0 && self.start == self.end {
                    return Ok(false);
                }
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(true)
    }

    /// Fill `body` (taken at least `body_room(len)` bytes long) with the next `len` plaintext
    /// bytes, hashing them, and cut it to `len`; the bytes of it that were copied (rather than
    /// opened in place). The records are read from the socket into
    /// `body` itself and opened where they landed, each plaintext shifted down to follow the last
    /// as it is decrypted: no copy beside the kernel's, for records read here. Whatever was
    /// already read ahead is copied in first (the tail of the previous read).
    pub(crate) async fn read_body<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        body: &mut Buffer,
        len: usize,
        hash: &mut XxHash3_64,
    ) -> Result<usize, RecordError> {
        assert!(body.len() >= body_room(len), "a body buffer without room for its records");
        let room = body.len();
        // Plaintext already opened, and whole records already read, go the ordinary way.
        let mut out = 0;
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(len - out);
                body[out..out + n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
                hash.write(&body[out..out + n]);
                self.plain.start += n;
                out += n;
            }
            if out == len {
                body.truncate(len);
                return Ok(len);
            }
            if !self.open_next()? {
                break;
            }
        }
        // What is left read ahead is less than a record: it moves into the body, after the
        // plaintext so far, and the rest of the records are read in after it.
        let ahead = self.end - self.start;
        body[out..out + ahead].copy_from_slice(&self.buf[self.start..self.end]);
        (self.start, self.end) = (0, 0);
        let copied = out + ahead.min(len - out);
        let (mut raw_start, mut raw_end) = (out, out + ahead);
        while out < len {
            match self.open_within(&mut body[..], raw_start, raw_end, out)? {
                Some((plain_len, next)) => {
                    let take = plain_len.min(len - out);
                    hash.write(&body[out..out + take]);
                    if take < plain_len {
                        // A record that runs past the body: keep the rest for the next read.
                        self.buf[..plain_len - take].copy_from_slice(&body[out + take..out + plain_len]);
                        self.plain = 0..plain_len - take;
                    }
                    out += take;
                    raw_start = next;
                }
                None => {
                    if room - raw_end < HEADER_LEN + MAX_CIPHERTEXT {
                        body.copy_within(raw_start..raw_end, out);
                        (raw_start, raw_end) = (out, out + raw_end - raw_start);
                    }
                    // As many bytes as the rest of the body's records take, when the peer
                    // seals whole records as `RecordWriter` does; more reads follow otherwise.
                    let left = len - out;
                    let expected = left + left.div_ceil(MAX_PLAINTEXT) * RECORD_OVERHEAD;
                    let want = expected.saturating_sub(raw_end - raw_start).clamp(1, room - raw_end);
                    let n = r.read(&mut body[raw_end..raw_end + want]).await?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    raw_end += n;
                }
            }
        }
        // Bytes read past the body belong to what follows it.
        let past = raw_end - raw_start;
        if self.buf.len() < self.plain.end + past + HEADER_LEN + MAX_CIPHERTEXT {
            self.buf.resize(self.plain.end + past + HEADER_LEN + MAX_CIPHERTEXT, 0);
        }
        self.buf[self.plain.end..self.plain.end + past].copy_from_slice(&body[raw_start..raw_end]);
        (self.start, self.end) = (self.plain.end, self.plain.end + past);
        body.truncate(len);
        Ok(copied)
    }

    /// Open the record at `buf[start..end]` if it is whole, its plaintext moved to `buf[to..]`:
    /// (the plaintext's length, where the next record starts).
    fn open_within(
        &mut self,
        buf: &mut [u8],
        start: usize,
        end: usize,
        to: usize,
    ) -> Result<Option<(usize, usize)>, RecordError> {
        let Some((head, len)) = record_len(&buf[start..end])? else { return Ok(None) };
        let next = start + HEADER_LEN + len;
        let nonce = self.key.next_nonce()?;
        let shift = start + HEADER_LEN - to;
        let opened = self.key.key.open_within(nonce, head, &mut buf[to..next], shift).map_err(|_| RecordError::Open)?;
        let plain_len = inner_len(opened)?;
        Ok(Some((plain_len, next)))
    }

    /// Open the next whole record in the buffer, if there is one.
    fn open_next(&mut self) -> Result<bool, RecordError> {
        let Some((head, len)) = record_len(&self.buf[self.start..self.end])? else { return Ok(false) };
        let body = self.start + HEADER_LEN..self.start + HEADER_LEN + len;
        let nonce = self.key.next_nonce()?;
        let opened =
            self.key.key.open_within(nonce, head, &mut self.buf[body.clone()], 0).map_err(|_| RecordError::Open)?;
        self.plain = body.start..body.start + inner_len(opened)?;
        self.start = body.end;
        Ok(true)
    }

    /// Read more bytes; false at the stream's end.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<bool, RecordError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < HEADER_LEN + MAX_CIPHERTEXT {
            // Move the partial record to the front (at most one record's bytes).
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let until = (self.end + READ_SIZE).min(self.buf.len());
        let n = r.read(&mut self.buf[self.end..until]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey as SecretKey, Iv};

    fn key_of(library: AeadLibrary, seed: u8) -> RecordKey {
        let secrets = ConnectionTrafficSecrets::Aes256Gcm { key: SecretKey::from([seed; 32]), iv: Iv::new([seed; 12]) };
        RecordKey::new(library, 0, secrets).unwrap()
    }

    fn key(seed: u8) -> RecordKey {
        key_of(AeadLibrary::fastest(), seed)
    }

    async fn sealed_by(library: AeadLibrary, parts: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        RecordWriter::new(key_of(library, 1)).write_all(&mut wire, parts).await.unwrap();
        wire
    }

    async fn sealed(parts: &[&[u8]]) -> Vec<u8> {
        sealed_by(AeadLibrary::fastest(), parts).await
    }

    /// Whichever library seals and whichever opens: the peers of a connection measure their own.
    #[tokio::test]
    async fn records_open_to_what_was_sealed_whatever_the_read_sizes_and_libraries() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (sealer, opener) in AeadLibrary::ALL.into_iter().flat_map(|a| AeadLibrary::ALL.map(|b| (a, b))) {
            let wire = sealed_by(sealer, &[b"head", &data]).await;
            // Records of at most 16 KiB of plaintext, each with its header, type byte and tag.
            assert_eq!(wire.len(), 4 + data.len() + (1 + 19) * (HEADER_LEN + 1 + TAG_LEN));
            read_back(RecordReader::new(key_of(opener, 1)), &wire, &data).await;
        }
    }

    async fn read_back(mut reader: RecordReader, wire: &[u8], data: &[u8]) {
        let mut src = wire;
        let mut head = [0u8; 4];
        assert!(reader.read_exact(&mut src, &mut head, None).await.unwrap());
        assert_eq!(&head, b"head");
        let mut got = vec![0u8; data.len()];
        let mut hash = XxHash3_64::new();
        assert!(reader.read_exact(&mut src, &mut got[..1000], Some(&mut hash)).await.unwrap());
        assert!(reader.read_exact(&mut src, &mut got[1000..], Some(&mut hash)).await.unwrap());
        assert_eq!(got, data);
        assert_eq!(hash.finish(), XxHash3_64::oneshot(data), "the hash saw every byte once, in order");
        assert!(!reader.read_exact(&mut src, &mut head, None).await.unwrap(), "a clean end between records");
    }

    /// Frames as the data plane sends them: a small head record, then a body's records.
    #[tokio::test]
    async fn bodies_are_opened_where_they_land_and_only_what_was_read_ahead_is_copied() {
        let bodies: Vec<Vec<u8>> = [1 << 20, 100_000, 64 << 10]
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| ((i * 13 + k) % 251) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        let mut writer = RecordWriter::new(key(1));
        for b in &bodies {
            writer.write_all(&mut wire, &[&(b.len() as u32).to_le_bytes(), b]).await.unwrap();
        }
        // Reads of at most 100,000 bytes, as a socket might give them.
        let mut src = tokio::io::BufReader::with_capacity(100_000, &wire[..]);
        let mut reader = RecordReader::new(key(1));
        let pool = runtime::buffers::BufferPool::new(4);
        for b in &bodies {
            let mut len = [0u8; 4];
            assert!(reader.read_exact(&mut src, &mut len, None).await.unwrap());
            let len = u32::from_le_bytes(len) as usize;
            let mut body = pool.take(body_room(len));
            let mut hash = XxHash3_64::new();
            let copied = reader.read_body(&mut src, &mut body, len, &mut hash).await.unwrap();
            assert_eq!(&body[..], &b[..]);
            assert_eq!(hash.finish(), XxHash3_64::oneshot(b));
            // At most what one read of the header took beyond it: two records.
            assert!(copied <= READ_SIZE, "{copied} of {len} bytes copied");
        }
        assert!(!reader.read_exact(&mut src, &mut [0u8; 1], None).await.unwrap());
    }

    #[tokio::test]
    async fn a_changed_byte_a_wrong_key_or_a_cut_stream_is_refused() {
        let wire = sealed(&[&[5u8; 40_000]]).await;
        let mut out = vec![0u8; 40_000];
        let mut changed = wire.clone();
        changed[HEADER_LEN + 100] ^= 1;
        let err = RecordReader::new(key(1)).read_exact(&mut &changed[..], &mut out, None).await.unwrap_err();
        assert!(matches!(err, RecordError::Open), "{err}");
        let err = RecordReader::new(key(2)).read_exact(&mut &wire[..], &mut out, None).await.unwrap_err();
        assert!(matches!(err, RecordError::Open), "{err}");
        let err = RecordReader::new(key(1)).read_exact(&mut &wire[..wire.len() - 1], &mut out, None).await.unwrap_err();
        assert!(matches!(&err, RecordError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{err}");
        let mut bad_header = wire.clone();
        bad_header[0] = 22;
        let err = RecordReader::new(key(1)).read_exact(&mut &bad_header[..], &mut out, None).await.unwrap_err();
        assert!(matches!(err, RecordError::Header { kind: 22, .. }), "{err}");
        // Records replayed out of order fail: each nonce carries its sequence number.
        let first = HEADER_LEN + MAX_PLAINTEXT + 1 + TAG_LEN;
        let mut swapped = wire[first..2 * first].to_vec();
        swapped.extend_from_slice(&wire[..first]);
        let err = RecordReader::new(key(1)).read_exact(&mut &swapped[..], &mut out[..20_000], None).await.unwrap_err();
        assert!(matches!(err, RecordError::Open), "{err}");
    }

    #[tokio::test]
    async fn a_record_of_another_inner_type_fails_the_connection() {
        // An alert sealed as a TLS 1.3 record: inner type 21.
        let mut k = key(1);
        let mut rec = header(2 + 1 + TAG_LEN).to_vec();
        let head: [u8; HEADER_LEN] = rec[..HEADER_LEN].try_into().unwrap();
        let nonce = k.next_nonce().unwrap();
        rec.resize(HEADER_LEN + 2 + 1 + TAG_LEN, 0);
        k.key.seal_into(nonce, head, &[1, 0], &[21], &mut rec[HEADER_LEN..]).unwrap();
        let err = RecordReader::new(key(1)).read_exact(&mut &rec[..], &mut [0u8; 2], None).await.unwrap_err();
        assert!(matches!(err, RecordError::NotData(21)), "{err}");
    }
}
