//! The decode-block kernels against naive loops.

use super::*;

fn naive_scores(q: &[f32], keys: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let n = keys.len() / d;
    q.chunks(d)
        .flat_map(|q| {
            (0..n).map(move |j| {
                q.iter()
                    .zip(&keys[j * d..(j + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * scale
            })
        })
        .collect()
}

#[test]
fn block_kernels_match_naive_loops() {
    use half::{bf16, f16};
    for (d, n, rows) in [(64, 29, 3), (128, 8, 1), (24, 13, 5), (12, 7, 2)] {
        // One head's rows with a stride wider than the head (as in a cache with slack),
        // read from row 1 on.
        let stride_rows = d + 8;
        let stored: Vec<f32> = (0..(n + 1) * stride_rows)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let keys: Vec<f32> = (1..=n)
            .flat_map(|j| stored[j * stride_rows..j * stride_rows + d].to_vec())
            .collect();
        let q: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.11).cos()).collect();
        let halves: Vec<f16> = stored.iter().map(|&v| f16::from_f32(v)).collect();
        let brains: Vec<bf16> = stored.iter().map(|&v| bf16::from_f32(v)).collect();
        for (name, data, tolerance) in [
            ("f32", CacheData::F32(&stored), 1e-4),
            ("f16", CacheData::F16(&halves), 2e-2),
            ("bf16", CacheData::BF16(&brains), 1e-1),
        ] {
            let view = HeadRows {
                data,
                start: 0,
                row_stride: stride_rows,
            };
            let mut buffer = Vec::new();
            let mut scores = vec![0f32; rows * n];
            block_scores(&q, &view, 1, n, d, 0.125, &mut scores, n, &mut buffer);
            let want = naive_scores(&q, &keys, d, 0.125);
            for (g, w) in scores.iter().zip(&want) {
                assert!((g - w).abs() < tolerance, "{name} d={d} n={n}: {g} vs {w}");
            }
            // Weighted values, accumulating onto what the outputs hold.
            let mut out = vec![1f32; rows * d];
            block_values(&scores, n, &view, 1, n, d, &mut out, &mut buffer);
            for r in 0..rows {
                for i in 0..d {
                    let want: f32 = 1.0
                        + (0..n)
                            .map(|j| scores[r * n + j] * keys[j * d + i])
                            .sum::<f32>();
                    let got = out[r * d + i];
                    assert!(
                        (got - want).abs() < 10.0 * tolerance,
                        "{name} d={d} r={r} i={i}"
                    );
                }
            }
        }
    }
}
