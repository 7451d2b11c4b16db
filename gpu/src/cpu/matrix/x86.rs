//! The integer kernels on x86-64, one copy per instruction set: AVX-VNNI (`vpdpbusd` on 256-bit
//! vectors), AVX-512 VNNI with VL (the same instruction, EVEX-encoded) and plain AVX2
//! (`vpmaddubsw` + `vpmaddwd`). Each computes eight weight rows (one interleaved group) against
//! up to four activation rows, so every unpacked weight vector is used four times. All three give
//! the same integer sums, and each activation row goes through the same operations whatever the
//! tile it is in: results do not depend on the batch.

use std::arch::x86_64::*;

use super::layout::{Q8Block, QK};

/// `Q8Block::quantize` with AVX2: the same integers (rounding half away from zero) and scales.
#[target_feature(enable = "avx2,fma")]
pub fn quantize_block(c: &[f32]) -> Q8Block {
    assert!(c.len() >= QK);
    // SAFETY: `c` holds at least 32 f32; the loads are unaligned.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = |x| _mm256_andnot_ps(sign, x);
    let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let half = _mm256_set1_ps(0.5);
    let ints: [__m256i; 4] = std::array::from_fn(|i| {
        let r = _mm256_mul_ps(v[i], inv);
        // r + copysign(0.5, r), truncated: |r| <= 127 so no saturation is needed.
        _mm256_cvttps_epi32(_mm256_add_ps(r, _mm256_or_ps(half, _mm256_and_ps(sign, r))))
    });
    let hsum = |v: __m256i| {
        let t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01)))
    };
    let h = [hsum(_mm256_add_epi32(ints[0], ints[1])), hsum(_mm256_add_epi32(ints[2], ints[3]))];
    // Pack 32 × i32 to 32 × i8; the packs work per 128-bit lane, so restore the order after.
    let w16 = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
    let q8 = _mm256_permutevar8x32_epi32(w16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let u8s = _mm256_xor_si256(q8, _mm256_set1_epi8(-128));
    let (mut q, mut u) = ([0i8; QK], [0u8; QK]);
    // SAFETY: both hold 32 bytes; the stores are unaligned.
    unsafe {
        _mm256_storeu_si256(q.as_mut_ptr().cast(), q8);
        _mm256_storeu_si256(u.as_mut_ptr().cast(), u8s);
    }
    Q8Block { d, s: d * (h[0] + h[1]) as f32, h, q, u }
}

/// How far ahead the kernels prefetch quantized weights, in bytes (scales follow the same
/// number of blocks ahead). Past a group's end this is the next group's data. Measured: without
/// it, matrices larger than the caches are bound by memory latency, not bandwidth.
const PREFETCH_BYTES: usize = 8192;

/// Prefetch the cache lines of `[base + ahead, base + ahead + len)`; any address is allowed.
#[inline(always)]
fn prefetch<T>(base: *const T, ahead: usize, len: usize) {
    for line in (0..len).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(base.cast::<i8>().wrapping_add(ahead + line)) };
    }
}

/// Broadcast the four bytes at `q[at..at + 4]` to every 32-bit lane.
#[inline(always)]
fn bytes4<T: Copy>(q: &[T; 32], at: usize) -> i32 {
    debug_assert!(at + 4 <= 32 && size_of::<T>() == 1);
    // SAFETY: `at + 4 <= 32` and T is one byte; the read is unaligned.
    unsafe { q.as_ptr().add(at).cast::<i32>().read_unaligned() }
}

macro_rules! isa {
    ($name:ident, $features:literal, $dp_uw:ident, $dp_s8:ident, $offset_x:literal) => {
        pub mod $name {
            use std::arch::x86_64::*;

            use super::super::kquant::{Q4KBlock, Q6KBlock};
            use super::super::layout::{LANES, Q8Block};
            use super::*;

            /// Q4_1 group × up to four rows of activations: `[k][r] = Σ_b d·dx·Σq·qx + m·sx`.
            #[target_feature(enable = $features)]
            pub fn q4_1<const N: usize>(
                d: &[[f32; LANES]],
                m: &[[f32; LANES]],
                qs: &[[u8; 128]],
                x: [&[Q8Block]; N],
            ) -> [[f32; LANES]; N] {
                let [out] = q4_1_groups::<1, N>([(d, m, qs)], x);
                out
            }

            /// `q4_1` for `G` groups at once: each activation broadcast serves `G` groups (only
            /// worth it with enough vector registers to hold them: AVX-512's 32).
            #[target_feature(enable = $features)]
            pub fn q4_1_groups<const G: usize, const N: usize>(
                w: [(&[[f32; LANES]], &[[f32; LANES]], &[[u8; 128]]); G],
                x: [&[Q8Block]; N],
            ) -> [[[f32; LANES]; N]; G] {
                let mask = _mm256_set1_epi8(0x0f);
                let mut acc = [[_mm256_setzero_ps(); N]; G];
                let blocks = w[0].0.len();
                for b in 0..blocks {
                    let mut dv = [_mm256_setzero_ps(); G];
                    let mut mv = [_mm256_setzero_ps(); G];
                    let mut lo = [[_mm256_setzero_si256(); 4]; G];
                    let mut hi = [[_mm256_setzero_si256(); 4]; G];
                    for (gi, &(d, m, qs)) in w.iter().enumerate() {
                        let (d, m, q) = (&d[b], &m[b], &qs[b]);
                        // SAFETY: the arrays hold 8 f32 each; the loads are unaligned.
                        (dv[gi], mv[gi]) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(m.as_ptr())) };
                        const AHEAD: usize = PREFETCH_BYTES / 128;
                        prefetch(q.as_ptr(), AHEAD * 128, 128);
                        prefetch(d.as_ptr(), AHEAD * 32, 32);
                        prefetch(m.as_ptr(), AHEAD * 32, 32);
                        for c in 0..4 {
                            // SAFETY: chunk `c` is bytes 32c..32c+32 of 128.
                            let raw = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * c).cast()) };
                            lo[gi][c] = _mm256_and_si256(raw, mask);
                            hi[gi][c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                        }
                    }
                    for k in 0..N {
                        let xb = &x[k][b];
                        // Two independent chains per group: the dot-product instruction's latency,
                        // not its throughput, would bound one chain.
                        let mut s0 = [_mm256_setzero_si256(); G];
                        let mut s1 = [_mm256_setzero_si256(); G];
                        for c in 0..4 {
                            let (xl, xh) =
                                (_mm256_set1_epi32(bytes4(&xb.q, 4 * c)), _mm256_set1_epi32(bytes4(&xb.q, 16 + 4 * c)));
                            for gi in 0..G {
                                s0[gi] = $dp_uw(s0[gi], lo[gi][c], xl);
                                s1[gi] = $dp_uw(s1[gi], hi[gi][c], xh);
                            }
                        }
                        let (xd, xs) = (_mm256_set1_ps(xb.d), _mm256_set1_ps(xb.s));
                        for gi in 0..G {
                            let isum = _mm256_add_epi32(s0[gi], s1[gi]);
                            let scale = _mm256_mul_ps(dv[gi], xd);
                            acc[gi][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[gi][k]);
                            acc[gi][k] = _mm256_fmadd_ps(mv[gi], xs, acc[gi][k]);
                        }
                    }
                }
                let mut out = [[[0.0; LANES]; N]; G];
                for gi in 0..G {
                    for k in 0..N {
                        // SAFETY: `out[gi][k]` holds 8 f32.
                        unsafe { _mm256_storeu_ps(out[gi][k].as_mut_ptr(), acc[gi][k]) };
                    }
                }
                out
            }

            /// Q5_0 group × up to four rows of activations: `[k][r] = Σ_b d·dx·(Σq·qx − 16·Σqx)`,
            /// the fifth bits moved from `qh` onto the nibbles.
            #[target_feature(enable = $features)]
            pub fn q5_0<const N: usize>(
                d: &[[f32; LANES]],
                qs: &[[u8; 128]],
                qh: &[[u8; 32]],
                x: [&[Q8Block]; N],
            ) -> [[f32; LANES]; N] {
                let (low4, bit4) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x10));
                let mut acc = [_mm256_setzero_ps(); N];
                for (b, ((d, q), h)) in d.iter().zip(qs).zip(qh).enumerate() {
                    const AHEAD: usize = PREFETCH_BYTES / 128;
                    prefetch(q.as_ptr(), AHEAD * 128, 128);
                    prefetch(h.as_ptr(), AHEAD * 32, 32);
                    prefetch(d.as_ptr(), AHEAD * 32, 32);
                    // SAFETY: 8 f32 and 32 bytes; the loads are unaligned.
                    let (dv, h) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_si256(h.as_ptr().cast())) };
                    // Bit c of each byte moved to bit 4, for chunk c.
                    let fifth = [
                        _mm256_slli_epi16(h, 4),
                        _mm256_slli_epi16(h, 3),
                        _mm256_slli_epi16(h, 2),
                        _mm256_slli_epi16(h, 1),
                        h,
                        _mm256_srli_epi16(h, 1),
                        _mm256_srli_epi16(h, 2),
                        _mm256_srli_epi16(h, 3),
                    ];
                    let mut w = [_mm256_setzero_si256(); 8];
                    for c in 0..4 {
                        // SAFETY: chunk `c` is bytes 32c..32c+32 of 128.
                        let raw = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * c).cast()) };
                        w[c] = _mm256_or_si256(_mm256_and_si256(raw, low4), _mm256_and_si256(fifth[c], bit4));
                        let high = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
                        w[c + 4] = _mm256_or_si256(high, _mm256_and_si256(fifth[c + 4], bit4));
                    }
                    for k in 0..N {
                        let xb = &x[k][b];
                        let mut s = [_mm256_setzero_si256(); 2];
                        for c in 0..8 {
                            s[c % 2] = $dp_uw(s[c % 2], w[c], _mm256_set1_epi32(bytes4(&xb.q, 4 * c)));
                        }
                        let offset = _mm256_set1_epi32(16 * (xb.h[0] + xb.h[1]));
                        let isum = _mm256_sub_epi32(_mm256_add_epi32(s[0], s[1]), offset);
                        acc[k] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, _mm256_set1_ps(xb.d)), acc[k]);
                    }
                }
                store(acc)
            }

            /// Q4_K group × up to four rows of activations: Q4_1's sums, with each block's scale
            /// and minimum made from the super-block's `d`, `dmin` and its 6-bit integers.
            #[target_feature(enable = $features)]
            pub fn q4_k<const N: usize>(w: &[Q4KBlock], x: [&[Q8Block]; N]) -> [[f32; LANES]; N] {
                let mask = _mm256_set1_epi8(0x0f);
                let mut acc = [_mm256_setzero_ps(); N];
                for (sb, blk) in w.iter().enumerate() {
                    prefetch(std::ptr::from_ref(blk), PREFETCH_BYTES, size_of::<Q4KBlock>());
                    // SAFETY: 8 f32 each; the loads are unaligned.
                    let (d, dmin) = unsafe { (_mm256_loadu_ps(blk.d.as_ptr()), _mm256_loadu_ps(blk.dmin.as_ptr())) };
                    for j in 0..8 {
                        let (dsc, dm) = (
                            _mm256_mul_ps(d, bytes8::<false>(&blk.sc[j])),
                            _mm256_mul_ps(dmin, bytes8::<false>(&blk.m[j])),
                        );
                        let (mut lo, mut hi) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
                        for c in 0..4 {
                            // SAFETY: chunk `c` is bytes 32c..32c+32 of 128.
                            let raw = unsafe { _mm256_loadu_si256(blk.qs[j].as_ptr().add(32 * c).cast()) };
                            lo[c] = _mm256_and_si256(raw, mask);
                            hi[c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                        }
                        for k in 0..N {
                            let xb = &x[k][8 * sb + j];
                            let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                            for c in 0..4 {
                                s0 = $dp_uw(s0, lo[c], _mm256_set1_epi32(bytes4(&xb.q, 4 * c)));
                                s1 = $dp_uw(s1, hi[c], _mm256_set1_epi32(bytes4(&xb.q, 16 + 4 * c)));
                            }
                            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                            acc[k] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dsc, _mm256_set1_ps(xb.d)), acc[k]);
                            acc[k] = _mm256_fnmadd_ps(dm, _mm256_set1_ps(xb.s), acc[k]);
                        }
                    }
                }
                store(acc)
            }

            /// Q6_K group × up to four rows of activations: per 16-value half `h` of each block,
            /// `d·sc·dx·(Σq·qx − 32·Σqx)`, the 6-bit `q` unpacked from its two planes.
            #[target_feature(enable = $features)]
            pub fn q6_k<const N: usize>(w: &[Q6KBlock], x: [&[Q8Block]; N]) -> [[f32; LANES]; N] {
                let (low4, top2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
                let mut acc = [_mm256_setzero_ps(); N];
                for (sb, blk) in w.iter().enumerate() {
                    prefetch(std::ptr::from_ref(blk), PREFETCH_BYTES, size_of::<Q6KBlock>());
                    // SAFETY: 8 f32; the load is unaligned.
                    let d = unsafe { _mm256_loadu_ps(blk.d.as_ptr()) };
                    for j in 0..8 {
                        let dsc = [
                            _mm256_mul_ps(d, bytes8::<true>(&blk.sc[2 * j])),
                            _mm256_mul_ps(d, bytes8::<true>(&blk.sc[2 * j + 1])),
                        ];
                        // SAFETY: four 32-byte chunks of 128 and two of 64; the loads are unaligned.
                        let ql: [__m256i; 4] = std::array::from_fn(|c| unsafe {
                            _mm256_loadu_si256(blk.ql[j].as_ptr().add(32 * c).cast())
                        });
                        let qh: [__m256i; 2] = std::array::from_fn(|h| unsafe {
                            _mm256_loadu_si256(blk.qh[j].as_ptr().add(32 * h).cast())
                        });
                        let mut q = [_mm256_setzero_si256(); 8];
                        for h in 0..2 {
                            // The top bits of chunk 4h + c sit at bits 2c..2c+2: moved to bits 4..6.
                            let top = [
                                _mm256_slli_epi16(qh[h], 4),
                                _mm256_slli_epi16(qh[h], 2),
                                qh[h],
                                _mm256_srli_epi16(qh[h], 2),
                            ];
                            for c in 0..4 {
                                let low = if h == 0 { ql[c] } else { _mm256_srli_epi16(ql[c], 4) };
                                q[4 * h + c] =
                                    _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_and_si256(top[c], top2));
                            }
                        }
                        for k in 0..N {
                            let xb = &x[k][8 * sb + j];
                            let mut s = [_mm256_setzero_si256(); 2];
                            for c in 0..8 {
                                s[c / 4] = $dp_uw(s[c / 4], q[c], _mm256_set1_epi32(bytes4(&xb.q, 4 * c)));
                            }
                            let xd = _mm256_set1_ps(xb.d);
                            for h in 0..2 {
                                let isum = _mm256_sub_epi32(s[h], _mm256_set1_epi32(32 * xb.h[h]));
                                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dsc[h], xd), acc[k]);
                            }
                        }
                    }
                }
                store(acc)
            }

            /// Q8_0 group × up to four rows of activations: `[k][r] = Σ_b d·dx·Σq·qx`.
            #[target_feature(enable = $features)]
            pub fn q8_0<const N: usize>(
                d: &[[f32; LANES]],
                offset: &[[i32; LANES]],
                qs: &[[i8; 256]],
                x: [&[Q8Block]; N],
            ) -> [[f32; LANES]; N] {
                let mut acc = [_mm256_setzero_ps(); N];
                for (b, ((d, off), q)) in d.iter().zip(offset).zip(qs).enumerate() {
                    // SAFETY: 8 f32 and 8 i32; the loads are unaligned.
                    let (dv, offv) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_si256(off.as_ptr().cast())) };
                    const AHEAD: usize = PREFETCH_BYTES / 256;
                    prefetch(q.as_ptr(), AHEAD * 256, 256);
                    prefetch(d.as_ptr(), AHEAD * 32, 32);
                    prefetch(off.as_ptr(), AHEAD * 32, 32);
                    let mut w = [_mm256_setzero_si256(); 8];
                    for c in 0..8 {
                        // SAFETY: chunk `c` is bytes 32c..32c+32 of 256.
                        w[c] = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * c).cast()) };
                    }
                    for k in 0..N {
                        let xb = &x[k][b];
                        let mut s = [_mm256_setzero_si256(); 2];
                        for c in 0..8 {
                            let xq = _mm256_set1_epi32(bytes4(&xb.q, 4 * c));
                            let xu = _mm256_set1_epi32(bytes4(&xb.u, 4 * c));
                            s[c % 2] = $dp_s8(s[c % 2], w[c], xq, xu);
                        }
                        let mut isum = _mm256_add_epi32(s[0], s[1]);
                        if $offset_x {
                            isum = _mm256_sub_epi32(isum, offv);
                        }
                        let scale = _mm256_mul_ps(dv, _mm256_set1_ps(xb.d));
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[k]);
                    }
                }
                store(acc)
            }

            /// The accumulators as arrays.
            #[target_feature(enable = $features)]
            fn store<const N: usize>(acc: [__m256; N]) -> [[f32; LANES]; N] {
                let mut out = [[0.0; LANES]; N];
                for k in 0..N {
                    // SAFETY: `out[k]` holds 8 f32.
                    unsafe { _mm256_storeu_ps(out[k].as_mut_ptr(), acc[k]) };
                }
                out
            }

            /// Eight bytes (signed with `SIGNED`) as eight f32.
            #[target_feature(enable = $features)]
            fn bytes8<const SIGNED: bool>(b: &[impl Copy; LANES]) -> __m256 {
                // SAFETY: eight one-byte values; the load is unaligned.
                let v = unsafe { _mm_loadl_epi64(b.as_ptr().cast()) };
                _mm256_cvtepi32_ps(if SIGNED { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
            }
        }
    };
}

// `acc + Σ₄ w·x` per 32-bit lane, for unsigned weights of up to 6 bits and signed activations.
#[target_feature(enable = "avx2,fma,avxvnni")]
fn dp_uw_avxvnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, w, x)
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn dp_uw_avx512vnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, x)
}

#[target_feature(enable = "avx2,fma")]
fn dp_uw_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    // 63·127·2 fits in i16: no saturation.
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
}

// `acc + Σ₄ w·x` per lane for signed 8-bit weights: VNNI takes the activations offset by 128
// (`xu`, unsigned) and the caller subtracts `128·Σw`; AVX2 moves the weights' sign onto `xq`.
#[target_feature(enable = "avx2,fma,avxvnni")]
fn dp_s8_avxvnni(acc: __m256i, w: __m256i, _xq: __m256i, xu: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(acc, xu, w)
}

#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn dp_s8_avx512vnni(acc: __m256i, w: __m256i, _xq: __m256i, xu: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, xu, w)
}

#[target_feature(enable = "avx2,fma")]
fn dp_s8_avx2(acc: __m256i, w: __m256i, xq: __m256i, _xu: __m256i) -> __m256i {
    let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
    _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)))
}

isa!(avxvnni, "avx2,fma,avxvnni", dp_uw_avxvnni, dp_s8_avxvnni, true);
isa!(avx512vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dp_uw_avx512vnni, dp_s8_avx512vnni, true);
isa!(avx2, "avx2,fma", dp_uw_avx2, dp_s8_avx2, false);
