//! Moving KV blocks between workers: the versioned, validated rkyv frame (`frame`), pooled
//! aligned buffers (`buffers`), the cluster CA and mutual TLS (`certs`) with the AEAD library
//! measured fastest on the CPU (`aead`), the data plane over QUIC
//! or TLS on TCP (`records` after the handshake: `aegis_records` or `tls_records`) with its same-host shared-memory rings and
//! in-process hand-off (`plane`, `tcp`, `shm`). Actors decide what to move; this crate moves it.
//! (Blocks between two CUDA workers of one process do not come here: `gpu::cuda::peer` copies
//! them device to device.)

pub mod aead;
mod aegis_records;
pub mod bench;
pub mod certs;
pub mod frame;
pub mod plane;
mod records;
pub mod shm;
mod tcp;
mod tls_records;

pub use aead::{AeadLibrary, CryptoLibrary};
pub use certs::Identity;
pub use frame::{Frame, FrameError, FrameHeader};
pub use plane::{DataPlane, Inbox, KvNetwork, PeerAddr, PlaneConfig, QuicMtu, TransportError};
pub use records::BulkCipher;
pub use runtime::buffers::{Buffer, BufferPool};
