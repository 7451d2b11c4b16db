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

fn f16(b: &[u8]) -> f32 {
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
/// `get_scale_min_k4`), scaled by the super-block's `d` and `dmin`.
fn k4_scale_min(scales: &[u8], j: usize, d: f32, dmin: f32) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
