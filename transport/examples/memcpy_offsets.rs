//! `memcpy` of 16 KiB (a TLS record's plaintext) against the offset of the destination from the
//! source within a 4 KiB page, beside `transport`'s copies: why ring's sealing copies with vector
//! moves where `memcpy` is slow (`aead::copy_plaintext`). Run with
//! `cargo run --release -p transport --example memcpy_offsets`.

use std::time::Instant;

const LEN: usize = 16 << 10;
const ROUNDS: usize = 20_000;

/// GB/s of `copy` from the page-aligned source plus `src_off` to the page-aligned destination
/// plus `dst_off`.
/// A way to copy `src` into `dst`.
type Copy = fn(&mut [u8], &[u8]);

fn rate(src_off: usize, dst_off: usize, copy: Copy) -> f64 {
    let src_buf = vec![5u8; LEN + 8192];
    let mut dst_buf = vec![0u8; LEN + 8192];
    let align = |p: *const u8| (4096 - p as usize % 4096) % 4096;
    let (s, d) = (align(src_buf.as_ptr()) + src_off, align(dst_buf.as_ptr()) + dst_off);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        copy(&mut dst_buf[d..d + LEN], std::hint::black_box(&src_buf[s..s + LEN]));
        std::hint::black_box(&dst_buf);
    }
    (ROUNDS * LEN) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let copies: [(&str, Copy); 3] = [
        ("memcpy", |d, s| d.copy_from_slice(s)),
        ("vector copy", transport::aead::copy_by_vectors),
        ("chosen", transport::aead::copy_plaintext),
    ];
    for (name, copy) in copies {
        let line: Vec<String> = [0, 1, 5, 16, 22, 32, 40, 63, 64, 65, 96, 100, 128, 2048, 4000, 4095]
            .iter()
            .map(|&d| format!("+{d}: {:.1}", rate(0, d, copy)))
            .collect();
        println!("{name:>11}, GB/s by destination offset past the source's: {}", line.join(", "));
    }
}
