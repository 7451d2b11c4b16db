//! AES-128-GCM speed of the two AEAD libraries the data plane can use, ring and aws-lc-rs, on
//! 16 KiB TLS records: sealing alone (`seal_in_place_separate_tag`) and the data plane's own
//! measurement (`AeadLibrary::measure`, sealing and opening); beside them AEGIS-128X2 (the `aegis`
//! crate, libaegis) on the same records and on the 256 KiB records of the TLS-over-TCP path
//! (`transport.bulk_cipher`). Run with `cargo run --release -p transport --example aead_speed`.

use std::time::Instant;

use transport::AeadLibrary;

const RECORD: usize = 16 << 10;
const BYTES: usize = 2 << 30;

/// Seal `BYTES` of 16 KiB records with `seal(sequence number, record)`; GB/s.
fn rate(seal: impl FnMut(u64, &mut [u8])) -> f64 {
    rate_of(RECORD, seal)
}

/// The same with records of `len` bytes.
fn rate_of(len: usize, mut seal: impl FnMut(u64, &mut [u8])) -> f64 {
    let mut record = vec![7u8; len];
    let start = Instant::now();
    for seq in 0..(BYTES / len) as u64 {
        seal(seq, &mut record);
    }
    BYTES as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn nonce(seq: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

fn main() {
    let ring_key = {
        use ring::aead::{AES_128_GCM, LessSafeKey, UnboundKey};
        LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1; 16]).expect("a 16-byte key"))
    };
    let aws_key = {
        use aws_lc_rs::aead::{AES_128_GCM, LessSafeKey, UnboundKey};
        LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1; 16]).expect("a 16-byte key"))
    };
    for _ in 0..3 {
        let ring = rate(|seq, record| {
            use ring::aead::{Aad, Nonce};
            let nonce = Nonce::assume_unique_for_key(nonce(seq));
            let tag = ring_key.seal_in_place_separate_tag(nonce, Aad::from([0u8; 5]), record).expect("sealed");
            std::hint::black_box(&tag);
        });
        let aws = rate(|seq, record| {
            use aws_lc_rs::aead::{Aad, Nonce};
            let nonce = Nonce::assume_unique_for_key(nonce(seq));
            let tag = aws_key.seal_in_place_separate_tag(nonce, Aad::from([0u8; 5]), record).expect("sealed");
            std::hint::black_box(&tag);
        });
        let aegis = |len: usize| {
            rate_of(len, |seq, record| {
                let mut nonce = [0u8; 16];
                nonce[8..].copy_from_slice(&seq.to_be_bytes());
                let tag = aegis::aegis128x2::Aegis128X2::<16>::new(&[1; 16], &nonce).encrypt_in_place(record, &[0; 4]);
                std::hint::black_box(&tag);
            })
        };
        let (aegis_16k, aegis_256k) = (aegis(RECORD), aegis(256 << 10));
        println!(
            "sealing: ring {ring:.2} GB/s, aws-lc-rs {aws:.2} GB/s, ratio {:.2}; AEGIS-128X2 {aegis_16k:.2} GB/s \
             ({:.2}x ring), {aegis_256k:.2} GB/s on 256 KiB records",
            aws / ring,
            aegis_16k / ring
        );
    }
    for bytes in [4 << 20, 256 << 20] {
        let [ring, aws] = AeadLibrary::measure(bytes, 3);
        println!(
            "sealing and opening ({} MiB rounds): ring {ring:.2} GB/s, aws-lc-rs {aws:.2} GB/s, ratio {:.2}; chosen: {}",
            bytes >> 20,
            aws / ring,
            if ring >= aws { "ring" } else { "aws-lc-rs" }
        );
    }
}
