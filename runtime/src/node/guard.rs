//! The read side of a control-plane connection before it authenticates: frames are held to a
//! small size, the handshake has a deadline, and an incoming peer's first frame (its name) is
//! shown to the gate before ractor_cluster sees it. Once the session authenticates the guard
//! steps aside and bytes pass untouched.
//!
//! ractor_cluster frames are a u64 big-endian length and a protobuf `NetworkMessage`; the first
//! frame an initiating node sends is `auth.name`, its `name@host`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// The largest frame a peer may send before it authenticates. Handshake frames are tens of
/// bytes; ractor_cluster allows 16 MiB afterwards.
pub const FRAME_LIMIT_BEFORE_AUTH: u64 = 64 * 1024;

/// Why the scan stopped a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("a {declared}-byte frame before authenticating (the limit is {limit})")]
    FrameTooLarge { declared: u64, limit: u64 },
}

/// Follows frame boundaries through bytes as they arrive, in any chunking: refuses a frame
/// longer than the limit as soon as its length is read, and hands back the first frame's body
/// once it is complete.
#[derive(Debug)]
pub struct FrameScan {
    limit: u64,
    header: [u8; 8],
    header_len: usize,
    /// Body bytes still to come in the current frame.
    remaining: u64,
    /// The first frame's body, while it is being read; `None` once it was handed out.
    first: Option<Vec<u8>>,
}

impl FrameScan {
    pub fn new(limit: u64) -> Self {
        Self { limit, header: [0; 8], header_len: 0, remaining: 0, first: Some(Vec::new()) }
    }

    /// Feed the next bytes. Returns the first frame's body when these bytes complete it.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<Vec<u8>>, ScanError> {
        let mut completed = None;
        while !bytes.is_empty() {
            if self.remaining == 0 && self.header_len < 8 {
                let take = (8 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == 8 {
                    let declared = u64::from_be_bytes(self.header);
                    if declared > self.limit {
                        return Err(ScanError::FrameTooLarge { declared, limit: self.limit });
                    }
                    self.remaining = declared;
                    if declared == 0 {
                        self.header_len = 0;
                        completed = completed.or_else(|| self.first.take());
                    }
                }
                continue;
            }
            let take = (self.remaining.min(bytes.len() as u64)) as usize;
            if let Some(first) = &mut self.first {
                first.extend_from_slice(&bytes[..take]);
            }
            self.remaining -= take as u64;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                self.header_len = 0;
                completed = completed.or_else(|| self.first.take());
            }
        }
        Ok(completed)
    }
}

/// The part of ractor_cluster's protocol the gate reads: `NetworkMessage.auth.name.name`.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NetworkMessage {
        #[prost(message, optional, tag = "1")]
        pub auth: Option<AuthenticationMessage>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthenticationMessage {
        #[prost(message, optional, tag = "1")]
        pub name: Option<NameMessage>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NameMessage {
        #[prost(string, tag = "1")]
        pub name: String,
    }
}

/// The node name (`name` of `name@host`) an opening frame claims, or `None` when the frame is not
/// a name message.
pub fn claimed_name(frame: &[u8]) -> Option<String> {
    let msg: wire::NetworkMessage = prost::Message::decode(frame).ok()?;
    let full = msg.auth?.name?.name;
    let name = full.split_once('@').map_or(full.as_str(), |(n, _)| n);
    (!name.is_empty()).then(|| name.to_string())
}

/// Decides whether a peer may go on after its first frame (the gate's admission check).
pub trait Admit: Send + Sync {
    /// `Err` carries the reason, for the error and the log.
    fn admit(&self, claimed: Option<String>) -> Result<(), io::Error>;
}

/// Why the guard closed a connection, for the caller's count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardStop {
    Deadline,
    Frame(ScanError),
}

/// What a connection holds until it authenticates.
struct Pending {
    scan: FrameScan,
    deadline: Pin<Box<tokio::time::Sleep>>,
    authenticated: Arc<AtomicBool>,
    /// Checks the opening frame of an incoming connection; `None` for one we dialled, or once used.
    admit: Option<Box<dyn Admit>>,
    report: Box<dyn Fn(GuardStop) + Send + Sync>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A read half under the gate until `authenticated` is set.
pub struct GuardedRead<R> {
    inner: R,
    pending: Option<Pending>,
}

/// What a guarded connection is held to.
pub struct Guard {
    pub limit: u64,
    pub deadline: tokio::time::Instant,
    pub authenticated: Arc<AtomicBool>,
    pub admit: Option<Box<dyn Admit>>,
    /// Called once when the guard closes the connection (for the metric and the log).
    pub report: Box<dyn Fn(GuardStop) + Send + Sync>,
    /// The slot this connection takes among the unauthenticated ones, given back with it.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl<R> GuardedRead<R> {
    pub fn new(inner: R, guard: Guard) -> Self {
        let pending = Pending {
            scan: FrameScan::new(guard.limit),
            deadline: Box::pin(tokio::time::sleep_until(guard.deadline)),
            authenticated: guard.authenticated,
            admit: guard.admit,
            report: guard.report,
            _permit: guard.permit,
        };
        Self { inner, pending: Some(pending) }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(p) = &mut this.pending {
            if p.authenticated.load(Ordering::Acquire) {
                this.pending = None;
            } else if p.deadline.as_mut().poll(cx).is_ready() {
                (p.report)(GuardStop::Deadline);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no authentication before the deadline",
                )));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(p) = &mut this.pending {
            let first = p.scan.feed(&buf.filled()[before..]).map_err(|e| {
                (p.report)(GuardStop::Frame(e.clone()));
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?;
            if let Some(frame) = first
                && let Some(admit) = p.admit.take()
            {
                admit.admit(claimed_name(&frame))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u64).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn name_frame(name: &str) -> Vec<u8> {
        let msg = wire::NetworkMessage {
            auth: Some(wire::AuthenticationMessage { name: Some(wire::NameMessage { name: name.into() }) }),
        };
        msg.encode_to_vec()
    }

    #[test]
    fn the_first_frame_comes_back_whole_in_any_chunking() {
        let body = name_frame("n1@localhost");
        let mut bytes = frame(&body);
        bytes.extend(frame(b"second"));
        for chunk in [1, 3, 8, 9, bytes.len()] {
            let mut scan = FrameScan::new(1024);
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                got.extend(scan.feed(piece).unwrap());
            }
            assert_eq!(got, vec![body.clone()], "chunks of {chunk}");
        }
        assert_eq!(claimed_name(&body).as_deref(), Some("n1"));
    }

    #[test]
    fn a_large_frame_is_refused_at_its_header() {
        let mut scan = FrameScan::new(1024);
        assert_eq!(scan.feed(&frame(b"ok")).unwrap(), Some(b"ok".to_vec()));
        let header = (16u64 << 20).to_be_bytes();
        assert_eq!(scan.feed(&header[..5]).unwrap(), None);
        assert_eq!(scan.feed(&header[5..]), Err(ScanError::FrameTooLarge { declared: 16 << 20, limit: 1024 }));
        // A frame exactly at the limit passes.
        let mut scan = FrameScan::new(4);
        assert_eq!(scan.feed(&frame(b"four")).unwrap(), Some(b"four".to_vec()));
    }

    #[test]
    fn only_a_name_message_claims_a_name() {
        assert_eq!(claimed_name(b"\xff\xff garbage"), None);
        assert_eq!(claimed_name(&[]), None, "an empty message has no auth part");
        assert_eq!(claimed_name(&name_frame("@host")), None);
        assert_eq!(claimed_name(&name_frame("plain")).as_deref(), Some("plain"));
    }
}
