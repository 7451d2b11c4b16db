//! The AEAD library behind the data plane's encryption (QUIC's packet protection, the handshake
//! and records of TLS over TCP): ring's or aws-lc-rs's, whichever seals and opens TLS records
//! faster on this CPU, measured once per process, unless the configuration names one.
//!
//! Neither is fastest everywhere. aws-lc's AES-GCM uses AVX-512 with VAES where the CPU has it;
//! ring 0.17's uses VAES at 256 bits with AVX2. On an AMD EPYC of family 26 (AVX-512) aws-lc-rs
//! sealed 16 KiB records 1.8–2.1x as fast as ring; on one of family 25 model 1 (AVX2 and VAES,
//! no AVX-512) ring sealed them 1.9x as fast as aws-lc-rs (docs/benchmarks.md, `cargo run
//! --release -p transport --example aead_speed`). The measurement takes a few milliseconds.

use std::sync::OnceLock;
use std::time::Instant;

pub use vocab::config::CryptoLibrary;

/// The bytes of an AEAD tag (AES-GCM and ChaCha20-Poly1305 alike).
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const NONCE_LEN: usize = 12;

/// A library that seals and opens: what `CryptoLibrary::Fastest` resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadLibrary {
    Ring,
    AwsLc,
}

/// The AEADs of TLS 1.3's cipher suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// A key that did not fit its algorithm, or a record that did not open (wrong key, or changed on
/// the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the AEAD refused the key or the record")]
pub(crate) struct AeadFailure;

/// One direction's AEAD key, from either library (ring's boxed: it is 544 bytes to aws-lc-rs's
/// handful).
pub(crate) enum AeadKey {
    Ring(Box<ring::aead::LessSafeKey>),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl AeadKey {
    pub(crate) fn new(library: AeadLibrary, algorithm: Algorithm, key: &[u8]) -> Result<Self, AeadFailure> {
        Ok(match library {
            AeadLibrary::Ring => {
                use ring::aead::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
                let alg = match algorithm {
                    Algorithm::Aes128Gcm => &AES_128_GCM,
                    Algorithm::Aes256Gcm => &AES_256_GCM,
                    Algorithm::Chacha20Poly1305 => &CHACHA20_POLY1305,
                };
                Self::Ring(Box::new(LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| AeadFailure)?)))
            }
            AeadLibrary::AwsLc => {
                use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
                let alg = match algorithm {
                    Algorithm::Aes128Gcm => &AES_128_GCM,
                    Algorithm::Aes256Gcm => &AES_256_GCM,
                    Algorithm::Chacha20Poly1305 => &CHACHA20_POLY1305,
                };
                Self::AwsLc(LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| AeadFailure)?))
            }
        })
    }

    /// Encrypt `plaintext` and then `trailer` (TLS's inner content type) into `out`, which is
    /// exactly as long as both and the tag: the ciphertext, then the tag. aws-lc-rs encrypts
    /// from the caller's bytes straight into `out`; ring, which seals only in place, copies them
    /// there first (into a buffer the writer reuses, so one in cache).
    pub(crate) fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; 5],
        plaintext: &[u8],
        trailer: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        let sealed_len = plaintext.len() + trailer.len();
        if out.len() != sealed_len + TAG_LEN {
            return Err(AeadFailure);
        }
        match self {
            Self::Ring(key) => {
                use ring::aead::{Aad, Nonce};
                let (sealed, tag_out) = out.split_at_mut(sealed_len);
                copy_plaintext(&mut sealed[..plaintext.len()], plaintext);
                sealed[plaintext.len()..].copy_from_slice(trailer);
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                    .map_err(|_| AeadFailure)?;
                tag_out.copy_from_slice(tag.as_ref());
            }
            Self::AwsLc(key) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                let (ciphertext, trailer_and_tag) = out.split_at_mut(plaintext.len());
                key.seal_out_of_place_scatter(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    plaintext,
                    ciphertext,
                    trailer,
                    trailer_and_tag,
                )
                .map_err(|_| AeadFailure)?;
            }
        }
        Ok(())
    }

    /// Open the ciphertext and tag at `in_out[shift..]`, writing the plaintext to the front of
    /// `in_out` as it decrypts; the plaintext.
    pub(crate) fn open_within<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: [u8; 5],
        in_out: &'a mut [u8],
        shift: usize,
    ) -> Result<&'a mut [u8], AeadFailure> {
        match self {
            Self::Ring(key) => {
                use ring::aead::{Aad, Nonce};
                key.open_within(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out, shift..)
                    .map_err(|_| AeadFailure)
            }
            Self::AwsLc(key) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                key.open_within(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out, shift..)
                    .map_err(|_| AeadFailure)
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, around a trap of glibc's `memcpy`: it copies 16 KiB with `rep
/// movsb`, which on the AMD EPYC of family 25 here ran at 1.8–3.0 GB/s instead of 35–94 GB/s
/// when the destination lay 1 to 31 bytes past the source's offset in a 4 KiB page (`cargo run
/// --release -p transport --example memcpy_offsets`; `perf` put 37% of `AeadLibrary::measure`'s
/// time in it). Records sealed one after another in the writer's buffer shift by 22 bytes each and
/// meet that case in turn. There the bytes move in 32-byte moves instead (12–16 GB/s), elsewhere
/// through `memcpy`.
#[doc(hidden)]
pub fn copy_plaintext(dst: &mut [u8], src: &[u8]) {
    let distance = (dst.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize) % 4096;
    if (1..32).contains(&distance) { copy_by_vectors(dst, src) } else { dst.copy_from_slice(src) }
}

/// `dst.copy_from_slice(src)` in 32-byte moves. The fence keeps LLVM from turning the loop back
/// into a `memcpy` call; it emits no instruction.
#[doc(hidden)]
pub fn copy_by_vectors(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    let mut dst_chunks = dst.chunks_exact_mut(32);
    let mut src_chunks = src.chunks_exact(32);
    for (d, s) in (&mut dst_chunks).zip(&mut src_chunks) {
        let block: [u8; 32] = s.try_into().expect("32 bytes");
        d.copy_from_slice(&block);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
    dst_chunks.into_remainder().copy_from_slice(src_chunks.remainder());
}

/// The record size the measurement seals and opens: a full TLS record.
const RECORD: usize = 16 << 10;

impl AeadLibrary {
    pub const ALL: [AeadLibrary; 2] = [AeadLibrary::Ring, AeadLibrary::AwsLc];

    /// The library `choice` names, or the one measured fastest on this CPU.
    pub fn resolve(choice: CryptoLibrary) -> Self {
        match choice {
            CryptoLibrary::Ring => Self::Ring,
            CryptoLibrary::AwsLc => Self::AwsLc,
            CryptoLibrary::Fastest => Self::fastest(),
        }
    }

    /// The library that seals and opens AES-128-GCM records faster here: measured on the first
    /// call (three rounds of 4 MiB each, taking turns), then remembered for the process.
    pub fn fastest() -> Self {
        static FASTEST: OnceLock<AeadLibrary> = OnceLock::new();
        *FASTEST.get_or_init(|| {
            let rates = Self::measure(4 << 20, 3);
            let fastest = if rates[0] >= rates[1] { Self::Ring } else { Self::AwsLc };
            tracing::info!(
                ring_gb_s = rates[0],
                aws_lc_gb_s = rates[1],
                chosen = fastest.label(),
                "AEAD library for the data plane, measured"
            );
            fastest
        })
    }

    /// GB/s of plaintext that each library (in `ALL`'s order) seals and opens again as 16 KiB
    /// AES-128-GCM records, the median of `rounds` rounds of `bytes` each, taking turns.
    pub fn measure(bytes: usize, rounds: usize) -> [f64; 2] {
        let mut rates = [Vec::new(), Vec::new()];
        for _ in 0..rounds.max(1) {
            for (library, rates) in Self::ALL.into_iter().zip(&mut rates) {
                rates.push(library.seal_and_open_rate(bytes));
            }
        }
        rates.map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
    }

    /// GB/s of plaintext sealed and opened again in 16 KiB records, one round of `bytes`.
    fn seal_and_open_rate(self, bytes: usize) -> f64 {
        let key = AeadKey::new(self, Algorithm::Aes128Gcm, &[7; 16]).expect("a 16-byte key");
        let plaintext = vec![0x5a_u8; RECORD];
        let mut record = vec![0u8; RECORD + 1 + TAG_LEN];
        let records = bytes.div_ceil(RECORD).max(1);
        let mut seal_and_open = |seq: usize| {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[4..].copy_from_slice(&(seq as u64).to_be_bytes());
            key.seal_into(nonce, [23, 3, 3, 0, 0], &plaintext, &[23], &mut record).expect("sealed");
            let opened = key.open_within(nonce, [23, 3, 3, 0, 0], &mut record, 0).expect("opened");
            std::hint::black_box(opened);
        };
        seal_and_open(0);
        let start = Instant::now();
        for seq in 1..=records {
            seal_and_open(seq);
        }
        (records * RECORD) as f64 / start.elapsed().as_secs_f64() / 1e9
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::AwsLc => "aws-lc-rs",
        }
    }

    /// rustls's provider from this library, with AES-128-GCM first (the default order starts with
    /// AES-256-GCM): fewer rounds for bulk data.
    pub(crate) fn rustls_provider(self) -> rustls::crypto::CryptoProvider {
        let mut provider = match self {
            Self::Ring => rustls::crypto::ring::default_provider(),
            Self::AwsLc => rustls::crypto::aws_lc_rs::default_provider(),
        };
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        provider
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both libraries seal the same bytes for the same key and nonce (AES-GCM is deterministic),
    /// and each opens what the other sealed, for every algorithm.
    #[test]
    fn the_libraries_seal_alike_and_open_each_others_records() {
        let plaintext: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for (algorithm, key_len) in
            [(Algorithm::Aes128Gcm, 16), (Algorithm::Aes256Gcm, 32), (Algorithm::Chacha20Poly1305, 32)]
        {
            let key_bytes: Vec<u8> = (0..key_len as u8).collect();
            let sealed = AeadLibrary::ALL.map(|library| {
                let key = AeadKey::new(library, algorithm, &key_bytes).unwrap();
                let mut out = vec![0u8; plaintext.len() + 1 + TAG_LEN];
                key.seal_into([9; NONCE_LEN], [23, 3, 3, 0, 1], &plaintext, &[23], &mut out).unwrap();
                out
            });
            assert_eq!(sealed[0], sealed[1], "{algorithm:?}");
            assert_ne!(&sealed[0][..plaintext.len()], &plaintext[..]);
            for library in AeadLibrary::ALL {
                let key = AeadKey::new(library, algorithm, &key_bytes).unwrap();
                // Shifted: the plaintext lands 7 bytes before where the ciphertext lay.
                let mut in_out = vec![0u8; 7];
                in_out.extend_from_slice(&sealed[0]);
                let opened = key.open_within([9; NONCE_LEN], [23, 3, 3, 0, 1], &mut in_out, 7).unwrap();
                assert_eq!(&opened[..plaintext.len()], &plaintext[..]);
                assert_eq!(opened[plaintext.len()], 23);
                // A changed byte, or another nonce, does not open.
                let mut changed = sealed[0].clone();
                changed[100] ^= 1;
                assert_eq!(key.open_within([9; NONCE_LEN], [23, 3, 3, 0, 1], &mut changed, 0), Err(AeadFailure));
                let mut other = sealed[0].clone();
                assert_eq!(key.open_within([8; NONCE_LEN], [23, 3, 3, 0, 1], &mut other, 0), Err(AeadFailure));
            }
        }
    }

    #[test]
    fn the_copies_copy_every_length_and_offset() {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 253) as u8).collect();
        for (offset, len) in [(0, 0), (1, 31), (3, 32), (5, 33), (17, 100), (22, 16_385), (0, 16_384)] {
            for copy in [copy_by_vectors, copy_plaintext] {
                let mut dst = vec![0u8; len + 64];
                copy(&mut dst[offset..offset + len], &src[7..7 + len]);
                assert_eq!(&dst[offset..offset + len], &src[7..7 + len]);
                assert!(dst[..offset].iter().chain(&dst[offset + len..]).all(|&b| b == 0), "nothing outside");
            }
        }
    }

    #[test]
    fn a_wrong_key_length_or_output_length_is_refused() {
        assert!(AeadKey::new(AeadLibrary::Ring, Algorithm::Aes128Gcm, &[0; 15]).is_err());
        assert!(AeadKey::new(AeadLibrary::AwsLc, Algorithm::Aes256Gcm, &[0; 16]).is_err());
        for library in AeadLibrary::ALL {
            let key = AeadKey::new(library, Algorithm::Aes128Gcm, &[0; 16]).unwrap();
            let mut short = vec![0u8; 10 + TAG_LEN];
            assert_eq!(key.seal_into([0; NONCE_LEN], [0; 5], &[1; 10], &[23], &mut short), Err(AeadFailure));
        }
    }

    #[test]
    fn a_named_library_is_used_and_the_measurement_gives_both_rates() {
        assert_eq!(AeadLibrary::resolve(CryptoLibrary::Ring), AeadLibrary::Ring);
        assert_eq!(AeadLibrary::resolve(CryptoLibrary::AwsLc), AeadLibrary::AwsLc);
        let rates = AeadLibrary::measure(64 << 10, 1);
        assert!(rates.iter().all(|r| r.is_finite() && *r > 0.0), "{rates:?}");
        let fastest = AeadLibrary::resolve(CryptoLibrary::Fastest);
        assert!(AeadLibrary::ALL.contains(&fastest));
        assert_eq!(AeadLibrary::fastest(), fastest, "measured once, then remembered");
    }
}
