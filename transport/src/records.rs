//! The TLS-over-TCP path's two record layers behind one interface, chosen by the handshake's
//! ALPN: AEGIS-128X2 records (`aegis_records`) where both ends offered them, TLS 1.3's own records
//! (`tls_records`) otherwise. Either takes the connection over from rustls once the handshake is
//! done; rustls's own record layer is never used on this path.

use runtime::buffers::Buffer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use twox_hash::XxHash3_64;

use crate::aead::AeadLibrary;
use crate::aegis_records::{self, AegisKey, AegisReader, AegisWriter, EXPORTER_LABEL, KEYING_MATERIAL};
use crate::certs::TCP_AEGIS_ALPN;
use crate::tls_records::{self, RecordError, RecordKey, RecordReader, RecordWriter};
pub use vocab::config::BulkCipher;

/// Sealed bytes a writer gathers before it writes.
const WRITE_BATCH: usize = 256 << 10;

/// A record layer's writer: seals plaintext into records it keeps until they are written.
pub(crate) trait Seal {
    /// The most plaintext one `seal` takes.
    const PIECE: usize;
    /// Append `data` (1 to `PIECE` bytes) to the pending output, sealed.
    fn seal(&mut self, data: &[u8]) -> Result<(), RecordError>;
    /// The sealed records not yet written.
    fn pending(&mut self) -> &mut Pending;
}

/// Sealed records waiting to be written, in a buffer allocated (and zeroed) once.
pub(crate) struct Pending {
    buf: Box<[u8]>,
    len: usize,
}

impl Pending {
    pub(crate) fn new(room: usize) -> Self {
        Self { buf: vec![0; room].into_boxed_slice(), len: 0 }
    }

    /// The `n` bytes after what is pending, to seal a record into; `push(n)` then keeps them.
    pub(crate) fn next(&mut self, n: usize) -> &mut [u8] {
        &mut self.buf[self.len..self.len + n]
    }

    pub(crate) fn push(&mut self, n: usize) {
        self.len += n;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Seal `parts`, one after another, and write them in batches of about `WRITE_BATCH` bytes:
/// small parts share a write with what follows them.
pub(crate) async fn write_all<S: Seal, W: AsyncWrite + Unpin>(
    sealer: &mut S,
    w: &mut W,
    parts: &[&[u8]],
) -> Result<(), RecordError> {
    for part in parts {
        for piece in part.chunks(S::PIECE) {
            sealer.seal(piece)?;
            if sealer.pending().len >= WRITE_BATCH {
                flush(sealer.pending(), w).await?;
            }
        }
    }
    flush(sealer.pending(), w).await
}

async fn flush<W: AsyncWrite + Unpin>(pending: &mut Pending, w: &mut W) -> Result<(), RecordError> {
    if pending.len > 0 {
        w.write_all(pending.bytes()).await?;
        pending.len = 0;
    }
    Ok(())
}

/// Seals what one end sends.
pub(crate) enum BulkWriter {
    Tls(RecordWriter),
    Aegis(AegisWriter),
}

/// Opens what one end receives.
pub(crate) enum BulkReader {
    Tls(RecordReader),
    Aegis(AegisReader),
}

/// The record layer of a connection whose handshake `conn` finished, with this end's writer and
/// reader; TLS records are sealed and opened by `library`.
pub(crate) fn take_over(
    conn: rustls::Connection,
    library: AeadLibrary,
) -> Result<(BulkCipher, BulkWriter, BulkReader), RecordError> {
    if conn.alpn_protocol() == Some(TCP_AEGIS_ALPN) {
        let material = conn
            .export_keying_material([0u8; KEYING_MATERIAL], EXPORTER_LABEL, None)
            .map_err(RecordError::Handshake)?;
        let (opener, acceptor) = AegisKey::pair(&material);
        let (tx, rx) = match conn {
            rustls::Connection::Client(_) => (opener, acceptor),
            rustls::Connection::Server(_) => (acceptor, opener),
        };
        return Ok((
            BulkCipher::Aegis128X2,
            BulkWriter::Aegis(AegisWriter::new(tx)),
            BulkReader::Aegis(AegisReader::new(rx)),
        ));
    }
    let secrets = conn.dangerous_extract_secrets().map_err(RecordError::Handshake)?;
    Ok((
        BulkCipher::Tls,
        BulkWriter::Tls(RecordWriter::new(RecordKey::new(library, secrets.tx.0, secrets.tx.1)?)),
        BulkReader::Tls(RecordReader::new(RecordKey::new(library, secrets.rx.0, secrets.rx.1)?)),
    ))
}

impl BulkWriter {
    /// Seal and write `parts`, one after another.
    pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        parts: &[&[u8]],
    ) -> Result<(), RecordError> {
        match self {
            BulkWriter::Tls(t) => write_all(t, w, parts).await,
            BulkWriter::Aegis(a) => write_all(a, w, parts).await,
        }
    }
}

impl BulkReader {
    /// Fill `out` with the next plaintext; `Ok(false)` at a clean end before its first byte.
    pub(crate) async fn read_exact<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        out: &mut [u8],
    ) -> Result<bool, RecordError> {
        match self {
            BulkReader::Tls(t) => t.read_exact(r, out, None).await,
            BulkReader::Aegis(a) => a.read_exact(r, out).await,
        }
    }

    /// The buffer length `read_body` needs for a body of `len` bytes.
    pub(crate) fn body_room(&self, len: usize) -> usize {
        match self {
            BulkReader::Tls(_) => tls_records::body_room(len),
            BulkReader::Aegis(_) => aegis_records::body_room(len),
        }
    }

    /// Fill `body` with the next `len` bytes, hashed; the bytes of it that were copied.
    pub(crate) async fn read_body<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        body: &mut Buffer,
        len: usize,
        hash: &mut XxHash3_64,
    ) -> Result<usize, RecordError> {
        match self {
            BulkReader::Tls(t) => t.read_body(r, body, len, hash).await,
            BulkReader::Aegis(a) => a.read_body(r, body, len, hash).await,
        }
    }
}
