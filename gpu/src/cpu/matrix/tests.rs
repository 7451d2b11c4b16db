//! Quantized products against dequantized f32 ones, each kernel against the portable loop, and
//! batch invariance.

use super::*;

fn reference(m: &Matrix, x: &[f32], n: usize) -> Vec<f32> {
    let mut row = vec![0.0; m.cols];
    let mut out = vec![0.0; n * m.rows];
    for o in 0..m.rows {
        m.row(o, &mut row);
        for t in 0..n {
            out[t * m.rows + o] = (0..m.cols).map(|i| row[i] * x[t * m.cols + i]).sum();
        }
    }
    out
}

/// GGUF bytes of a `rows × cols` matrix with a different scale per row and varied quants.
fn q_bytes(dtype: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let per = match dtype {
        GgmlType::Q4_1 => 20,
        GgmlType::Q5_0 => 22,
        _ => 34,
    };
    (0..rows * cols / QK)
        .flat_map(|b| {
            let mut block = vec![0u8; per];
            let row = b / (cols / QK);
            // d = 0.5 (0x3800) or 0.25 (0x3400) by row; m = -1.0 (0xbc00) for Q4_1.
            let d: [u8; 2] = if row.is_multiple_of(2) { [0x00, 0x38] } else { [0x00, 0x34] };
            block[..2].copy_from_slice(&d);
            if per == 20 {
                block[2..4].copy_from_slice(&[0x00, 0xbc]);
            }
            for (j, v) in block[if per == 20 { 4 } else { 2 }..].iter_mut().enumerate() {
                *v = ((b * 31 + j * 7) % 251) as u8;
            }
            block
        })
        .collect()
}

/// Every kernel this CPU has against the f32 product of the decoded rows (within `tol` of the
/// output's scale, for 8-bit activations), against the portable loop (the same integer sums), and
/// each row alone against the batch (bit-identical).
fn check_kernels(m: &Matrix, x: &[f32], n: usize, tol: f32, what: &str) {
    let (rows, cols) = (m.rows, m.cols);
    let exact = reference(m, x, n);
    let scale = exact.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    assert!(scale > 0.0);
    let mut portable = vec![0.0; n * rows];
    m.matmul_with(Isa::Portable, x, n, None, &mut portable, &mut Vec::new());
    for isa in Isa::available() {
        let mut out = vec![0.0; n * rows];
        m.matmul_with(isa, x, n, None, &mut out, &mut Vec::new());
        for (i, (a, b)) in out.iter().zip(&exact).enumerate() {
            assert!((a - b).abs() <= tol * scale, "{what} {isa:?} [{i}]: {a} vs {b}");
        }
        for (a, b) in out.iter().zip(&portable) {
            assert!((a - b).abs() <= 1e-5 * scale, "{what} {isa:?}: {a} vs portable {b}");
        }
        for t in 0..n {
            let mut one = vec![0.0; rows];
            m.matmul_with(isa, &x[t * cols..(t + 1) * cols], 1, None, &mut one, &mut Vec::new());
            assert_eq!(one, out[t * rows..(t + 1) * rows], "{what} {isa:?}: row {t} of {n}");
        }
    }
}

/// Rows decode exactly as the shared dequantizer says.
fn check_rows(m: &Matrix, bytes: &[u8], dtype: GgmlType) {
    let deq = crate::model::quant::dequantize(dtype, bytes, m.rows * m.cols).unwrap();
    let mut row = vec![0.0; m.cols];
    for r in 0..m.rows {
        m.row(r, &mut row);
        assert_eq!(row, deq[r * m.cols..(r + 1) * m.cols], "{dtype} row {r}");
    }
}

#[test]
fn quantized_products_match_dequantized_ones() {
    let (rows, cols, n) = (40, 96, 7);
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.1).collect();
    for dtype in [GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0] {
        let bytes = q_bytes(dtype, rows, cols);
        let m = Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Fast).unwrap();
        assert!(
            !matches!(m.storage, Storage::F32(_) | Storage::Q8_0(_)) || dtype == GgmlType::Q8_0,
            "{dtype} keeps its kernel"
        );
        check_rows(&m, &bytes, dtype);
        check_kernels(&m, &x, n, 1e-2, &format!("{dtype}"));
    }
}

#[test]
fn stacked_and_unquantizable_matrices() {
    let cols = 64;
    let parts = |dtype| {
        [16, 8].map(|rows| Matrix::from_ggml(dtype, &q_bytes(dtype, rows, cols), rows, cols, Precision::Fast).unwrap())
    };
    let x: Vec<f32> = (0..2 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    for dtype in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let [a, b] = parts(dtype);
        let (mut oa, mut ob) = (vec![0.0; 2 * 16], vec![0.0; 2 * 8]);
        a.matmul(&x, 2, None, &mut oa, &mut Vec::new());
        b.matmul(&x, 2, None, &mut ob, &mut Vec::new());
        let s = Matrix::stack(vec![a, b]);
        assert!(!matches!(s.storage, Storage::F32(_)));
        let mut os = vec![0.0; 2 * 24];
        s.matmul(&x, 2, None, &mut os, &mut Vec::new());
        for t in 0..2 {
            assert_eq!(os[t * 24..t * 24 + 16], oa[t * 16..(t + 1) * 16]);
            assert_eq!(os[t * 24 + 16..(t + 1) * 24], ob[t * 8..(t + 1) * 8]);
        }
    }
    // 12 rows is not a multiple of 8: dequantized to f32, still correct.
    let bytes = q_bytes(GgmlType::Q4_1, 12, cols);
    let m = Matrix::from_ggml(GgmlType::Q4_1, &bytes, 12, cols, Precision::Fast).unwrap();
    assert!(matches!(m.storage, Storage::F32(_)));
    let mut out = vec![0.0; 2 * 12];
    m.matmul(&x, 2, None, &mut out, &mut Vec::new());
    for (a, b) in out.iter().zip(reference(&m, &x, 2)) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // No rows in, none out, whatever the storage.
    m.matmul(&[], 0, None, &mut [], &mut Vec::new());
    let [q, _] = parts(GgmlType::Q4_1);
    q.matmul(&[], 0, None, &mut [], &mut Vec::new());
}

#[test]
fn f32_products_add_the_bias() {
    let (rows, cols, n) = (40, 96, 3);
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.1).collect();
    let f = Matrix::from_f32((0..rows * cols).map(|i| i as f32 * 1e-3).collect(), rows, cols);
    let bias: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    let mut out = vec![0.0; n * rows];
    f.matmul(&x, n, Some(&bias), &mut out, &mut Vec::new());
    for (i, (a, b)) in out.iter().zip(reference(&f, &x, n)).enumerate() {
        assert!((a - (b + bias[i % rows])).abs() < 1e-3, "f32 [{i}]");
    }
}

#[test]
fn vector_quantization_matches_the_portable_one() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let blocks: Vec<Vec<f32>> = vec![
            (0..32).map(|i| (i as f32 * 0.731).sin() * 3.0).collect(),
            (0..32).map(|i| if i == 5 { -2.0 } else { i as f32 / 64.0 }).collect(),
            // Ties: values that land on k + 0.5 after scaling round away from zero.
            (0..32).map(|i| [127.0, 0.5, -0.5, 1.5, -2.5][i % 5]).collect(),
            vec![0.0; 32],
        ];
        for c in &blocks {
            let (p, v) = (layout::Q8Block::quantize(c), unsafe { x86::quantize_block(c) });
            assert_eq!((p.d, p.s, p.h, p.q, p.u), (v.d, v.s, v.h, v.q, v.u), "{c:?}");
        }
    }
}

/// Random GGUF k-quant bytes with small super-block scales (bytes `scales` of each block set to
/// f16 2^-7 and 0).
fn k_bytes(dtype: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let (size, scales) = match dtype {
        GgmlType::Q4_K => (144, 0..4),
        GgmlType::Q6_K => (210, 208..210),
        other => panic!("{other} is not a k-quant"),
    };
    let mut seed = 7u64 + size as u64;
    let mut byte = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as u8
    };
    let mut bytes: Vec<u8> = (0..rows * cols / 256 * size).map(|_| byte()).collect();
    for block in bytes.chunks_exact_mut(size) {
        for (i, at) in scales.clone().enumerate() {
            block[at] = if i.is_multiple_of(2) { 0x00 } else { 0x20 }; // f16 0x2000 = 2^-7
        }
    }
    bytes
}

#[test]
fn k_quants_keep_their_width() {
    let (rows, cols, n) = (24, 512, 7);
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1 + (i as f32 * 0.01).sin()).collect();
    for (dtype, bits) in [(GgmlType::Q4_K, 4.75), (GgmlType::Q6_K, 6.625)] {
        let bytes = k_bytes(dtype, rows, cols);
        let m = Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Fast).unwrap();
        assert!(matches!(m.storage, Storage::Q4K(_) | Storage::Q6K(_)), "{dtype} keeps its own kernel");
        assert_eq!(m.bytes() as f64 * 8.0 / (rows * cols) as f64, bits, "{dtype} bits per weight");
        let old = m.requantized_q8_0().unwrap();
        assert_eq!(old.bytes() as f64 * 8.0 / (rows * cols) as f64, 10.0, "Q8_0 bits per weight");
        check_rows(&m, &bytes, dtype);
        check_kernels(&m, &x, n, 1e-2, &format!("{dtype}"));
        // Exact mode reads the same values.
        let exact = Matrix::from_ggml(dtype, &bytes, rows, cols, Precision::Exact).unwrap();
        assert!(matches!(exact.storage, Storage::F32(_)));
        assert_eq!(reference(&exact, &x, n), reference(&m, &x, n));
    }
    // Columns that are not whole super-blocks (no such GGUF exists) and rows not a multiple of
    // 8 fall back as before.
    let bytes = k_bytes(GgmlType::Q6_K, 12, 256);
    let m = Matrix::from_ggml(GgmlType::Q6_K, &bytes, 12, 256, Precision::Fast).unwrap();
    assert!(matches!(m.storage, Storage::F32(_)));
    check_rows(&m, &bytes, GgmlType::Q6_K);
}

#[test]
fn mixed_parts_stack_side_by_side() {
    let (cols, n) = (256, 5);
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let parts = || {
        vec![
            Matrix::from_ggml(GgmlType::Q4_K, &k_bytes(GgmlType::Q4_K, 16, cols), 16, cols, Precision::Fast).unwrap(),
            Matrix::from_ggml(GgmlType::Q6_K, &k_bytes(GgmlType::Q6_K, 8, cols), 8, cols, Precision::Fast).unwrap(),
            Matrix::from_ggml(GgmlType::Q8_0, &q_bytes(GgmlType::Q8_0, 8, cols), 8, cols, Precision::Fast).unwrap(),
        ]
    };
    let bias: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let alone: Vec<Vec<f32>> = parts()
        .iter()
        .scan(0, |at, p| {
            let mut o = vec![0.0; n * p.rows];
            p.matmul(&x, n, Some(&bias[*at..*at + p.rows]), &mut o, &mut Vec::new());
            *at += p.rows;
            Some(o)
        })
        .collect();
    let s = Matrix::stack(parts());
    assert!(matches!(&s.storage, Storage::Stacked(p) if p.len() == 3), "each part keeps its storage");
    assert_eq!(s.bytes(), parts().iter().map(Matrix::bytes).sum::<usize>());
    let mut out = vec![0.0; n * 32];
    s.matmul(&x, n, Some(&bias), &mut out, &mut Vec::new());
    for t in 0..n {
        let got = &out[t * 32..(t + 1) * 32];
        let want: Vec<f32> =
            [(0, 16), (1, 8), (2, 8)].iter().flat_map(|&(p, r)| alone[p][t * r..(t + 1) * r].to_vec()).collect();
        assert_eq!(got, want, "row {t}");
    }
    let mut row = vec![0.0; cols];
    s.row(20, &mut row);
    let mut want = vec![0.0; cols];
    parts()[1].row(4, &mut want);
    assert_eq!(row, want);
    check_kernels(&s, &x, n, 1e-2, "stacked");
}
