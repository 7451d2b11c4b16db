//! The TLS-over-TCP path's records when both ends offer them: AEGIS-128X2 (RFC 10032) with keys
//! from the TLS 1.3 handshake's exporter (RFC 8446 §7.5), in place of TLS 1.3's own records.
//!
//! Why: on a CPU with AES instructions, AEGIS-128X2 seals and opens three to four times as fast
//! as AES-128-GCM (ring's, with VAES), and the cipher was most of the bulk path's user time (the
//! figures are in docs/benchmarks.md, with `cargo run --release -p transport --example
//! aead_speed`). The code is libaegis's, through the `aegis` crate; what is ours is the framing.
//!
//! A record is a 4-byte big-endian plaintext length (1 to `MAX_RECORD`), that many bytes of
//! ciphertext, and a 16-byte tag. The length is the associated data; the nonce is the direction's
//! IV with the record's sequence number XORed into its last 8 bytes, so a record dropped,
//! replayed or moved fails to open, as a TLS record does. Each direction has its own key and IV,
//! both exported under `EXPORTER_LABEL`. Records may be 16 times TLS's, so a 1 MiB body is 4
//! records and 4 reads, and ciphertext is the plaintext's length: a body's records are read
//! straight into the body's buffer and opened where they landed, with no shifting. A writer
//! encrypts from the caller's bytes into its own buffer (one pass, no copy first).

use std::hash::Hasher as _;
use std::ops::Range;

use aegis::aegis128x2::Aegis128X2;
use runtime::buffers::Buffer;
use tokio::io::{AsyncRead, AsyncReadExt};
use twox_hash::XxHash3_64;

use crate::records::{Pending, Seal};
use crate::tls_records::RecordError;

/// The exporter label both ends derive the record keys under.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-armature-kv-aegis128x2";
/// Bytes of keying material to export: key and IV for each direction.
pub(crate) const KEYING_MATERIAL: usize = 2 * (KEY_LEN + KEY_LEN);
const KEY_LEN: usize = 16;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 4;
/// The largest plaintext of one record.
pub(crate) const MAX_RECORD: usize = 256 << 10;
/// Records a key seals before the connection must be replaced (far inside AEGIS's limits).
const RECORD_LIMIT: u64 = 1 << 48;
/// Bytes a reader asks the socket for outside `read_body`: enough for a frame's prefix and
/// header in one read, little of the body's first record beyond them.
const READ_AHEAD: usize = 4 << 10;

type Cipher = Aegis128X2<TAG_LEN>;

/// One direction's key, IV and record sequence number.
pub(crate) struct AegisKey {
    key: [u8; KEY_LEN],
    iv: [u8; KEY_LEN],
    seq: u64,
}

impl AegisKey {
    /// The two directions' keys from the exporter's `material`: (the opener's sending key, the
    /// acceptor's sending key).
    pub(crate) fn pair(material: &[u8; KEYING_MATERIAL]) -> (Self, Self) {
        let key = |at: usize| {
            let part = |from: usize| -> [u8; KEY_LEN] {
                let mut out = [0u8; KEY_LEN];
                out.copy_from_slice(&material[from..from + KEY_LEN]);
                out
            };
            Self { key: part(at), iv: part(at + KEY_LEN), seq: 0 }
        };
        (key(0), key(2 * KEY_LEN))
    }

    /// The next record's cipher.
    fn next(&mut self) -> Result<Cipher, RecordError> {
        if self.seq >= RECORD_LIMIT {
            return Err(RecordError::Exhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[KEY_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Cipher::new(&self.key, &nonce))
    }
}

/// The length a record's header gives, once all of it is there.
fn record_len(head: [u8; HEADER_LEN]) -> Result<usize, RecordError> {
    let len = u32::from_be_bytes(head) as usize;
    if !(1..=MAX_RECORD).contains(&len) {
        return Err(RecordError::Length(len));
    }
    Ok(len)
}

/// The length of a buffer `AegisReader::read_body` can fill with `len` bytes: the body, and room
/// for the last record's tag and the next record's header to land behind it.
pub(crate) fn body_room(len: usize) -> usize {
    len + TAG_LEN + HEADER_LEN
}

/// Seals plaintext into records and writes them.
pub(crate) struct AegisWriter {
    key: AegisKey,
    out: Pending,
}

impl AegisWriter {
    pub(crate) fn new(key: AegisKey) -> Self {
        // What is pending (under a batch) and one more record.
        let room = 2 * (HEADER_LEN + MAX_RECORD + TAG_LEN);
        Self { key, out: Pending::new(room) }
    }

    /// Seal and write `parts`, one after another (`records::write_all`).
    #[cfg(test)]
    async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        parts: &[&[u8]],
    ) -> Result<(), RecordError> {
        crate::records::write_all(self, w, parts).await
    }
}

impl Seal for AegisWriter {
    const PIECE: usize = MAX_RECORD;

    /// Append `data` as one record.
    fn seal(&mut self, data: &[u8]) -> Result<(), RecordError> {
        let head = (data.len() as u32).to_be_bytes();
        let record = self.out.next(HEADER_LEN + data.len() + TAG_LEN);
        let (head_out, rest) = record.split_at_mut(HEADER_LEN);
        head_out.copy_from_slice(&head);
        let (sealed, tag) = rest.split_at_mut(data.len());
        let mut encryptor = self.key.next()?.encryptor(&head);
        encryptor.update(data, sealed);
        tag.copy_from_slice(&encryptor.finalize());
        self.out.push(HEADER_LEN + data.len() + TAG_LEN);
        Ok(())
    }

    fn pending(&mut self) -> &mut Pending {
        &mut self.out
    }
}

/// Reads records and hands their plaintext out in the sizes the caller asks for.
pub(crate) struct AegisReader {
    key: AegisKey,
    buf: Vec<u8>,
    /// Received bytes not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened plaintext not yet handed out.
    plain: Range<usize>,
}

impl AegisReader {
    pub(crate) fn new(key: AegisKey) -> Self {
        Self { key, buf: vec![0; HEADER_LEN + MAX_RECORD + TAG_LEN + READ_AHEAD], start: 0, end: 0, plain: 0..0 }
    }

    /// Fill `out` with the next plaintext bytes. `Ok(false)` where the stream ended cleanly before
    /// the first byte (between records, with nothing pending); an end anywhere else is
    /// `UnexpectedEof`.
    pub(crate) async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        out: &mut [u8],
    ) -> Result<bool, RecordError> {
        let mut filled = 0;
        while filled < out.len() {
            if !self.plain.is_empty() {
                filled += self.hand_out(&mut out[filled..], None);
                continue;
            }
            if self.open_next()? {
                continue;
            }
            if !self.fill(r).await? {
                if filled == 0 && self.start == self.end {
                    return Ok(false);
                }
                return Err(eof());
            }
        }
        Ok(true)
    }

    /// Fill `body` (taken `body_room(len)` bytes long) with the next `len` plaintext bytes,
    /// hashing them, and cut it to `len`; the bytes of it that were copied (rather than opened in
    /// place). Records that lie within the body are read from the socket into `body` itself and
    /// opened where they landed; what was read ahead of them is copied in first, and a record that
    /// runs past the body's end is opened in the reader's buffer and copied.
    pub(crate) async fn read_body<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        body: &mut Buffer,
        len: usize,
        hash: &mut XxHash3_64,
    ) -> Result<usize, RecordError> {
        assert!(body.len() >= body_room(len), "a body buffer without room for its records");
        let (mut out, mut copied) = (0, 0);
        while out < len {
            // Plaintext already opened, and whole records already read, go the buffered way.
            if !self.plain.is_empty() {
                let n = self.hand_out(&mut body[out..len], Some(hash));
                (out, copied) = (out + n, copied + n);
                continue;
            }
            if self.open_next()? {
                continue;
            }
            // The next record's header, completed from the socket if need be.
            while self.end - self.start < HEADER_LEN {
                if !self.fill(r).await? {
                    return Err(eof());
                }
            }
            let head = first::<HEADER_LEN>(&self.buf[self.start..self.end])?;
            let record = record_len(head)?;
            if record > len - out {
                // Runs past the body: read it whole into the buffer, open it there and copy.
                if !self.fill(r).await? {
                    return Err(eof());
                }
                continue;
            }
            // The part of the record already read moves into the body; the rest lands there.
            let ahead = self.end - self.start - HEADER_LEN;
            body[out..out + ahead].copy_from_slice(&self.buf[self.start + HEADER_LEN..self.end]);
            copied += ahead.min(record);
            (self.start, self.end) = (0, 0);
            let next_head = read_record_into(r, &mut body[out..], record, ahead).await?;
            let tag = first::<TAG_LEN>(&body[out + record..])?;
            self.key
                .next()?
                .decrypt_in_place(&mut body[out..out + record], &tag, &head)
                .map_err(|_| RecordError::Open)?;
            hash.write(&body[out..out + record]);
            // Bytes of the next record's header that came with the tag wait in the buffer.
            let spill = out + next_head.start..out + next_head.end;
            self.buf[..spill.len()].copy_from_slice(&body[spill.clone()]);
            (self.start, self.end) = (0, spill.len());
            out += record;
        }
        body.truncate(len);
        Ok(copied)
    }

    /// Copy pending plaintext into `out` (as much as fits), hashing it; the bytes copied.
    fn hand_out(&mut self, out: &mut [u8], hash: Option<&mut XxHash3_64>) -> usize {
        let n = self.plain.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
        if let Some(h) = hash {
            h.write(&out[..n]);
        }
        self.plain.start += n;
        n
    }

    /// Open the next whole record in the buffer, if there is one.
    fn open_next(&mut self) -> Result<bool, RecordError> {
        let Some(&head) = self.buf[self.start..self.end].first_chunk::<HEADER_LEN>() else { return Ok(false) };
        let len = record_len(head)?;
        if self.end - self.start < HEADER_LEN + len + TAG_LEN {
            return Ok(false);
        }
        let text = self.start + HEADER_LEN..self.start + HEADER_LEN + len;
        let tag = first::<TAG_LEN>(&self.buf[text.end..])?;
        self.key.next()?.decrypt_in_place(&mut self.buf[text.clone()], &tag, &head).map_err(|_| RecordError::Open)?;
        self.start = text.end + TAG_LEN;
        self.plain = text;
        Ok(true)
    }

    /// Read more bytes into the buffer: up to the rest of the record it holds the start of, or
    /// `READ_AHEAD`, whichever is more. False at the stream's end.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<bool, RecordError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 {
            // Move the partial record to the front (less than a record's bytes).
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let record = match self.buf[..self.end].first_chunk::<HEADER_LEN>() {
            Some(&head) => HEADER_LEN + record_len(head)? + TAG_LEN,
            None => 0,
        };
        let until = (self.end + READ_AHEAD).max(record).min(self.buf.len());
        let n = r.read(&mut self.buf[self.end..until]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

/// Read the rest of a `record`-byte record into `room` (which holds `have` bytes of it), with
/// its tag behind it and at most the next record's header after that; the range of `room`
/// those header bytes took.
async fn read_record_into<R: AsyncRead + Unpin>(
    r: &mut R,
    room: &mut [u8],
    record: usize,
    mut have: usize,
) -> Result<Range<usize>, RecordError> {
    let whole = record + TAG_LEN;
    while have < whole {
        let n = r.read(&mut room[have..whole + HEADER_LEN]).await?;
        if n == 0 {
            return Err(eof());
        }
        have += n;
    }
    Ok(whole..have)
}

/// The first `N` bytes of `bytes`; a record cut short where the caller has checked that they are
/// there is a broken invariant, reported as a record that does not open rather than a panic.
fn first<const N: usize>(bytes: &[u8]) -> Result<[u8; N], RecordError> {
    bytes.first_chunk::<N>().copied().ok_or(RecordError::Open)
}

fn eof() -> RecordError {
    std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> (AegisKey, AegisKey) {
        let material: [u8; KEYING_MATERIAL] = std::array::from_fn(|i| (i as u8).wrapping_mul(seed));
        AegisKey::pair(&material)
    }

    fn key(seed: u8) -> AegisKey {
        keys(seed).0
    }

    async fn sealed(parts: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        AegisWriter::new(key(1)).write_all(&mut wire, parts).await.unwrap();
        wire
    }

    fn data(n: usize, k: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 13 + k) % 251) as u8).collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 10032's AEGIS-128X2 test vector 2, through the incremental encryptor records use.
    #[test]
    fn the_cipher_is_rfc_10032_aegis_128x2() {
        let key: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let nonce: [u8; 16] = hex("101112131415161718191a1b1c1d1e1f").try_into().unwrap();
        let msg = hex(&"04050607".repeat(30));
        let mut ct = vec![0u8; msg.len()];
        let mut encryptor = Cipher::new(&key, &nonce).encryptor(&hex("0102030401020304"));
        encryptor.update(&msg[..7], &mut ct[..7]);
        encryptor.update(&msg[7..], &mut ct[7..]);
        assert_eq!(encryptor.finalize().to_vec(), hex("1aebc200804f405cab637f2adebb6d77"));
        let expected = concat!(
            "5795544301997f93621b278809d6331b3bfa6f18e90db12c4aa35965b5e98c5fc6fb4e54bcb61118",
            "42c20637252eff747cb3a8f85b37de80919a589fe0f24872bc926360696739e05520647e390989e1",
            "eb5fd42f99678a0276a498f8c454761c9d6aacb647ad56be62b29c22cd4b5761b38f43d5a5ee062f",
        );
        assert_eq!(ct, hex(expected));
    }

    #[tokio::test]
    async fn records_open_to_what_was_sealed_whatever_the_read_sizes() {
        let body = data(600_000, 0);
        let wire = sealed(&[b"head", &body]).await;
        // Records of at most 256 KiB, each with its 4-byte length and 16-byte tag.
        assert_eq!(wire.len(), 4 + body.len() + 4 * (HEADER_LEN + TAG_LEN));
        assert_ne!(&wire[HEADER_LEN + 4 + TAG_LEN + HEADER_LEN..][..1000], &body[..1000], "the body is encrypted");
        for read_size in [1, 7, 4096, 100_000, 1 << 20] {
            let mut src = tokio::io::BufReader::with_capacity(read_size, &wire[..]);
            let mut reader = AegisReader::new(key(1));
            let mut head = [0u8; 4];
            assert!(reader.read_exact(&mut src, &mut head).await.unwrap());
            assert_eq!(&head, b"head");
            let mut got = vec![0u8; body.len()];
            assert!(reader.read_exact(&mut src, &mut got[..1000]).await.unwrap());
            assert!(reader.read_exact(&mut src, &mut got[1000..]).await.unwrap());
            assert_eq!(got, body, "read {read_size} bytes at a time");
            assert!(!reader.read_exact(&mut src, &mut head).await.unwrap(), "a clean end between records");
        }
    }

    /// Frames as the data plane sends them: a small length record, then a body's records.
    #[tokio::test]
    async fn bodies_are_opened_where_they_land_and_only_what_was_read_ahead_is_copied() {
        let bodies: Vec<Vec<u8>> =
            [1 << 20, 100_000, 64 << 10, MAX_RECORD + 1].iter().enumerate().map(|(k, &n)| data(n, k)).collect();
        let mut wire = Vec::new();
        let mut writer = AegisWriter::new(key(1));
        for b in &bodies {
            writer.write_all(&mut wire, &[&(b.len() as u32).to_le_bytes(), b]).await.unwrap();
        }
        for read_size in [100_000, 1 << 22] {
            let mut src = tokio::io::BufReader::with_capacity(read_size, &wire[..]);
            for copied in read_frames(&mut src, &bodies).await {
                // At most what the read of the length took beyond it.
                assert!(copied <= READ_AHEAD, "{copied} bytes copied, reading {read_size} at a time");
            }
        }
    }

    /// Read `bodies` back as the data plane does (a 4-byte length, then the body), checking each
    /// and its hash, then a clean end; the bytes of each body that were copied.
    async fn read_frames<R: AsyncRead + Unpin>(src: &mut R, bodies: &[Vec<u8>]) -> Vec<usize> {
        let mut reader = AegisReader::new(key(1));
        let pool = runtime::buffers::BufferPool::new(4);
        let mut copied = Vec::new();
        for b in bodies {
            let mut len = [0u8; 4];
            assert!(reader.read_exact(src, &mut len).await.unwrap());
            let len = u32::from_le_bytes(len) as usize;
            let mut body = pool.take(body_room(len));
            let mut hash = XxHash3_64::new();
            copied.push(reader.read_body(src, &mut body, len, &mut hash).await.unwrap());
            assert_eq!(&body[..], &b[..]);
            assert_eq!(hash.finish(), XxHash3_64::oneshot(b), "the hash saw every byte once, in order");
        }
        assert!(!reader.read_exact(src, &mut [0u8; 1]).await.unwrap(), "a clean end between records");
        copied
    }

    /// A socket that gives bytes in reads of 1 to 70,000 bytes, as chosen by a fixed sequence.
    struct Chunked<'a> {
        wire: &'a [u8],
        state: u64,
    }

    impl AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = ((self.state >> 33) as usize % 70_000 + 1).min(buf.remaining()).min(self.wire.len());
            let (now, rest) = self.wire.split_at(n);
            buf.put_slice(now);
            self.wire = rest;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Frames of many sizes, the socket's reads cut anywhere: every body comes back whole, and
    /// no more than a read-ahead of any is copied.
    #[tokio::test]
    async fn bodies_come_back_whatever_the_socket_cuts() {
        let sizes = [1, 3, 4 << 10, 70_001, MAX_RECORD - 1, MAX_RECORD, MAX_RECORD + 1, 600_000, 17, 1 << 20];
        let bodies: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(k, &n)| data(n, k)).collect();
        let mut wire = Vec::new();
        let mut writer = AegisWriter::new(key(1));
        for b in &bodies {
            writer.write_all(&mut wire, &[&(b.len() as u32).to_le_bytes(), b]).await.unwrap();
        }
        for seed in 0..8 {
            let copied = read_frames(&mut Chunked { wire: &wire, state: seed }, &bodies).await;
            assert!(copied.iter().all(|&c| c <= READ_AHEAD), "seed {seed}: {copied:?}");
        }
    }

    /// A peer that seals frames into records of its own sizes, across body boundaries: the
    /// records that run past a body are opened in the buffer and the rest copied after it.
    #[tokio::test]
    async fn records_that_straddle_bodies_are_opened_and_copied() {
        let bodies = vec![data(300_000, 1), data(5_000, 2), data(70_000, 3)];
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(&(b.len() as u32).to_le_bytes());
            stream.extend_from_slice(b);
        }
        let wire = sealed(&[&stream]).await;
        let copied = read_frames(&mut &wire[..], &bodies).await;
        // The first record holds the first length and most of the first body, the second runs on
        // from it into the next two bodies: each is opened in the buffer, so every byte is copied.
        assert_eq!(copied, bodies.iter().map(Vec::len).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_changed_byte_a_wrong_key_a_bad_length_or_a_cut_stream_is_refused() {
        let wire = sealed(&[&[5u8; 40_000], &[6u8; 10]]).await;
        let mut out = vec![0u8; 40_000];
        let open = |wire: Vec<u8>, key: AegisKey| async move {
            let mut out = vec![0u8; 40_000];
            AegisReader::new(key).read_exact(&mut &wire[..], &mut out).await
        };
        assert!(AegisReader::new(key(1)).read_exact(&mut &wire[..], &mut out).await.unwrap());
        let mut changed = wire.clone();
        changed[HEADER_LEN + 100] ^= 1;
        assert!(matches!(open(changed, key(1)).await, Err(RecordError::Open)));
        assert!(matches!(open(wire.clone(), key(2)).await, Err(RecordError::Open)));
        // The other direction's key of the same handshake does not open it either.
        assert!(matches!(open(wire.clone(), keys(1).1).await, Err(RecordError::Open)));
        let err = open(wire[..40_000].to_vec(), key(1)).await.unwrap_err();
        assert!(matches!(&err, RecordError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{err}");
        // A length changed on the way: too long, zero, or within bounds but not the sealed one.
        for len in [MAX_RECORD as u32 + 1, 0, 39_999] {
            let mut bad = wire.clone();
            bad[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
            let err = open(bad, key(1)).await.unwrap_err();
            match len {
                39_999 => assert!(matches!(err, RecordError::Open), "{err}"),
                _ => assert!(matches!(err, RecordError::Length(l) if l == len as usize), "{err}"),
            }
        }
        // Records replayed out of order fail: each nonce carries its sequence number.
        let first = HEADER_LEN + 40_000 + TAG_LEN;
        let mut swapped = wire[first..].to_vec();
        swapped.extend_from_slice(&wire[..first]);
        let err = AegisReader::new(key(1)).read_exact(&mut &swapped[..], &mut out[..10]).await.unwrap_err();
        assert!(matches!(err, RecordError::Open), "{err}");
    }

    #[tokio::test]
    async fn a_body_read_fails_on_a_changed_record_and_a_cut_stream() {
        let body = data(700_000, 4);
        let wire = sealed(&[&(body.len() as u32).to_le_bytes(), &body]).await;
        let pool = runtime::buffers::BufferPool::new(2);
        let read = |wire: Vec<u8>| {
            let pool = pool.clone();
            async move {
                let mut reader = AegisReader::new(key(1));
                let mut src = &wire[..];
                reader.read_exact(&mut src, &mut [0u8; 4]).await?;
                let mut buf = pool.take(body_room(700_000));
                reader.read_body(&mut src, &mut buf, 700_000, &mut XxHash3_64::new()).await
            }
        };
        assert!(read(wire.clone()).await.is_ok());
        let mut changed = wire.clone();
        changed[wire.len() - TAG_LEN - 5] ^= 0x80;
        assert!(matches!(read(changed).await, Err(RecordError::Open)));
        let err = read(wire[..wire.len() - 1].to_vec()).await.unwrap_err();
        assert!(matches!(&err, RecordError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{err}");
    }
}
