//! ggml tensor types and dequantization of the block formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1, and the k-quants Q4_K, Q5_K and Q6_K of 256-value super-blocks).

use std::fmt;

/// A ggml tensor type by its id in the GGUF file (named as ggml names them).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
    /// Any other id (k-quants, i-quants, ...): readable as metadata, not as data.
    Other(u32),
}

/// Every type this build reads.
const KNOWN: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::BF16,
];

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        KNOWN.iter().find(|t| t.id() == id).copied().unwrap_or(Self::Other(id))
    }

    /// The type's id in a GGUF file (ggml's `ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// (elements per block, bytes per block), for the types this build reads.
    pub fn block(self) -> Option<(u64, u64)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q5_0 => Some((32, 22)),
            Self::Q5_1 => Some((32, 24)),
            Self::Q8_0 => Some((32, 34)),
            Self::Q4_K => Some((256, 144)),
            Self::Q5_K => Some((256, 176)),
            Self::Q6_K => Some((256, 210)),
            Self::Other(_) => None,
        }
    }

    /// Bytes of `elements` values; None for unreadable types or a count not a whole number of blocks.
    pub fn byte_size(self, elements: u64) -> Option<u64> {
        let (per_block, bytes) = self.block()?;
        elements.is_multiple_of(per_block).then(|| elements / per_block * bytes)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "ggml type {id}"),
            known => write!(f, "{known:?}"),
        }
    }
}

pub(crate) fn f16(b: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// IEEE half to f32, subnormals and specials included.
pub fn half_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// `count` values of `dtype` from `bytes` (exactly `byte_size(count)` long), or None for a type
/// this build cannot read or a length mismatch.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], count: usize) -> Option<Vec<f32>> {
    if dtype.byte_size(count as u64)? != bytes.len() as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    match dtype {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)))
        }
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16(&block[..2]);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = f16(&block[..2]);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let (d, m) = (f16(&block[..2]), f16(&block[2..4]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 => {
            bytes.chunks_exact(22).for_each(|b| dequantize_q5(&b[6..22], &b[2..6], f16(b), None, &mut out))
        }
        GgmlType::Q5_1 => bytes
            .chunks_exact(24)
            .for_each(|b| dequantize_q5(&b[8..24], &b[4..8], f16(b), Some(f16(&b[2..4])), &mut out)),
        GgmlType::Q4_K => bytes.chunks_exact(144).for_each(|b| dequantize_q4_k(b, &mut out)),
        GgmlType::Q5_K => bytes.chunks_exact(176).for_each(|b| dequantize_q5_k(b, &mut out)),
        GgmlType::Q6_K => bytes.chunks_exact(210).for_each(|b| dequantize_q6_k(b, &mut out)),
        GgmlType::Other(_) => return None,
    }
    Some(out)
}

/// Q5_0 and Q5_1: 16 bytes of low nibbles and 32 fifth bits (`qh`, little-endian) for 32 values
/// each: Q5_0's are `d · (q - 16)`, Q5_1's `d · q + min`.
fn dequantize_q5(qs: &[u8], qh: &[u8], d: f32, min: Option<f32>, out: &mut Vec<f32>) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let (shift, m) = match min {
        None => (-16.0, 0.0),
        Some(m) => (0.0, m),
    };
    let fifth = |bit: usize| if (qh >> bit) & 1 == 1 { 16.0 } else { 0.0 };
    out.extend(qs.iter().enumerate().map(|(j, &q)| (f32::from(q & 0x0f) + fifth(j) + shift) * d + m));
    out.extend(qs.iter().enumerate().map(|(j, &q)| (f32::from(q >> 4) + fifth(j + 16) + shift) * d + m));
}

/// The 6-bit scale and minimum of group `j` of a Q4_K or Q5_K super-block (ggml's
/// `get_scale_min_k4`), from its 12 bytes of packed scales.
pub(crate) fn k4_scale_min_bits(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// `k4_scale_min_bits` scaled by the super-block's `d` and `dmin`.
fn k4_scale_min(scales: &[u8], j: usize, d: f32, dmin: f32) -> (f32, f32) {
    let (sc, m) = k4_scale_min_bits(scales, j);
    (d * f32::from(sc), dmin * f32::from(m))
}

/// Q5_K: Q4_K's layout with 32 bytes of fifth bits after the scales: bit `2p` of `qh[l]` belongs
/// to value `l` of pair `p`'s first group, bit `2p + 1` to its second.
fn dequantize_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales, qh, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..16], &b[16..48], &b[48..176]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let ((d1, m1), (d2, m2)) =
            (k4_scale_min(scales, 2 * pair, d, dmin), k4_scale_min(scales, 2 * pair + 1, d, dmin));
        let high = |l: usize, bit: usize| if (qh[l] >> bit) & 1 == 1 { 16.0 } else { 0.0 };
        out.extend(q.iter().enumerate().map(|(l, &v)| d1 * (f32::from(v & 0x0f) + high(l, 2 * pair)) - m1));
        out.extend(q.iter().enumerate().map(|(l, &v)| d2 * (f32::from(v >> 4) + high(l, 2 * pair + 1)) - m2));
    }
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of 6-bit scales and minimums for eight 32-value groups, and
/// 128 bytes of nibbles (each 32 bytes: the low nibbles are one group, the high ones the next).
fn dequantize_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin, scales, qs) = (f16(&b[0..2]), f16(&b[2..4]), &b[4..16], &b[16..144]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let ((d1, m1), (d2, m2)) =
            (k4_scale_min(scales, 2 * pair, d, dmin), k4_scale_min(scales, 2 * pair + 1, d, dmin));
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0x0f) - m1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 signed 8-bit scales (one per 16
/// values) and `d` (f16); values are `d · scale · (q - 32)` with 6-bit `q`.
fn dequantize_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales, d) = (&b[0..128], &b[128..192], &b[192..208], f16(&b[208..210]));
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &scales[8 * half..]);
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &q) in q.iter().enumerate() {
                y[l + 32 * k] = d * f32::from(sc[is + 2 * k] as i8) * f32::from(q as i8 - 32);
            }
        }
    }
}

/// Quantize to Q8_0 (`values.len()` a multiple of 32) as llama.cpp does: `d = max|x| / 127`.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for b in values.chunks_exact(32) {
        let d = b.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&v| if d > 0.0 { (v / d).round() as i8 as u8 } else { 0 }));
    }
    out
}

/// Quantize to Q5_0 (`values.len()` a multiple of 32) as llama.cpp does: the value of largest
/// magnitude, `m`, sets `d = m / -16`, so that it lands on the end of the range that fits it.
pub fn quantize_q5_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 22);
    for b in values.chunks_exact(32) {
        let m = b.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        let d = half::f16::from_f32(m / -16.0);
        let inv = if d.to_f32() != 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        let q: Vec<u8> = b.iter().map(|&v| (v * inv + 16.5).clamp(0.0, 31.0) as u8).collect();
        let fifth: u32 = q.iter().enumerate().map(|(j, &v)| u32::from(v >> 4) << j).sum();
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&fifth.to_le_bytes());
        out.extend((0..16).map(|j| (q[j] & 15) | (q[j + 16] & 15) << 4));
    }
    out
}

/// Quantize to Q4_K (`values.len()` a multiple of 256), for generated test models: each 32-value
/// block's range sets its scale and minimum, without llama.cpp's search for the best ones.
pub fn quantize_q4_k(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 256 * 144);
    for sb in values.chunks_exact(256) {
        // Per block: w ≈ scale·q − min with q in 0..16 and min ≥ 0.
        let (scale, min): (Vec<f32>, Vec<f32>) = sb
            .chunks_exact(32)
            .map(|b| {
                let lo = b.iter().copied().fold(0.0f32, f32::min);
                let hi = b.iter().copied().fold(lo, f32::max);
                ((hi - lo) / 15.0, -lo)
            })
            .unzip();
        let d = half::f16::from_f32(scale.iter().copied().fold(0.0, f32::max) / 63.0);
        let dmin = half::f16::from_f32(min.iter().copied().fold(0.0, f32::max) / 63.0);
        let bits =
            |v: f32, unit: half::f16| if unit.to_f32() > 0.0 { (v / unit.to_f32()).round().min(63.0) as u8 } else { 0 };
        let sc: Vec<u8> = scale.iter().map(|&v| bits(v, d)).collect();
        let m: Vec<u8> = min.iter().map(|&v| bits(v, dmin)).collect();
        let mut block = [0u8; 144];
        block[0..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
        // The inverse of `k4_scale_min_bits`.
        for j in 0..4 {
            block[4 + j] = sc[j] | (sc[j + 4] >> 4) << 6;
            block[8 + j] = m[j] | (m[j + 4] >> 4) << 6;
            block[12 + j] = (sc[j + 4] & 15) | (m[j + 4] & 15) << 4;
        }
        for (j, b) in sb.chunks_exact(32).enumerate() {
            let (step, low) = (d.to_f32() * f32::from(sc[j]), dmin.to_f32() * f32::from(m[j]));
            for (l, &v) in b.iter().enumerate() {
                let q = if step > 0.0 { ((v + low) / step).round().clamp(0.0, 15.0) as u8 } else { 0 };
                block[16 + 32 * (j / 2) + l] |= q << (4 * (j % 2));
            }
        }
        out.extend_from_slice(&block);
    }
    out
}

/// Quantize to Q6_K (`values.len()` a multiple of 256), for generated test models: each 16-value
/// sub-block's largest magnitude sets its scale.
pub fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 256 * 210);
    for sb in values.chunks_exact(256) {
        let scale: Vec<f32> =
            sb.chunks_exact(16).map(|b| b.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 31.0).collect();
        let d = half::f16::from_f32(scale.iter().copied().fold(0.0, f32::max) / 127.0);
        let sc: Vec<i8> = scale
            .iter()
            .map(|&v| if d.to_f32() > 0.0 { (v / d.to_f32()).round().min(127.0) as i8 } else { 0 })
            .collect();
        let mut block = [0u8; 210];
        for (i, &v) in sb.iter().enumerate() {
            let step = d.to_f32() * f32::from(sc[i / 16]);
            let q = if step > 0.0 { ((v / step).round() + 32.0).clamp(0.0, 63.0) as u8 } else { 32 };
            // The inverse of `dequantize_q6_k`'s unpacking.
            let (half, k, l) = (i / 128, i % 128 / 32, i % 32);
            block[64 * half + l + 32 * (k % 2)] |= (q & 15) << (4 * (k / 2));
            block[128 + 32 * half + l] |= (q >> 4) << (2 * k);
        }
        for (s, &v) in sc.iter().enumerate() {
            block[192 + s] = v as u8;
        }
        block[208..210].copy_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quantizers_round_trip_within_their_steps() {
        let values: Vec<f32> =
            (0..1024).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01 + (i as f32 * 0.1).sin() * 0.3).collect();
        for (dtype, bytes, tol) in [
            (GgmlType::Q4_K, quantize_q4_k(&values), 0.06),
            (GgmlType::Q6_K, quantize_q6_k(&values), 0.02),
            (GgmlType::Q8_0, quantize_q8_0(&values), 0.004),
            // Q5_0 spans -16..15 steps of |m| / 16: the side opposite m may clip by one step.
            (GgmlType::Q5_0, quantize_q5_0(&values), 0.06),
        ] {
            let back = dequantize(dtype, &bytes, values.len()).unwrap();
            let per = GgmlType::block(dtype).unwrap();
            assert_eq!(bytes.len() as u64, values.len() as u64 / per.0 * per.1);
            let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < tol, "{dtype}: off by up to {worst}");
        }
        // All zeros stay zeros.
        let zeros = vec![0.0; 256];
        assert_eq!(dequantize(GgmlType::Q4_K, &quantize_q4_k(&zeros), 256).unwrap(), zeros);
        assert_eq!(dequantize(GgmlType::Q6_K, &quantize_q6_k(&zeros), 256).unwrap(), zeros);
    }

    #[test]
    fn half_conversion_covers_the_edges() {
        let cases = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x3555, 0.333_251_95),
        ];
        for (h, want) in cases {
            assert_eq!(half_to_f32(h), want, "{h:#06x}");
        }
        assert!(half_to_f32(0x7c00).is_infinite());
        assert!(half_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn q4_1_block_layout() {
        // d = 0.5, m = -1: low nibbles are elements 0..16, high nibbles 16..32.
        let mut block = vec![0x00, 0x38, 0x00, 0xbc];
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 6.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn length_mismatch_and_unknown_types_are_refused() {
        assert_eq!(dequantize(GgmlType::Q8_0, &[0; 33], 32), None);
        assert_eq!(dequantize(GgmlType::Q4_0, &[0; 18], 16), None);
        assert_eq!(dequantize(GgmlType::Other(12), &[0; 144], 256), None);
        assert_eq!(GgmlType::Other(12).to_string(), "ggml type 12");
    }
}
