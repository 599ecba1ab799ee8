//! The inner loops of decode attention over one block of cached keys held as f32 (in the core's
//! cache): the scores of a few query rows, and the score-weighted sum of the values. AVX2 kernels
//! for head dimensions that are multiples of 8, portable loops otherwise.

use super::decode_attention::F32Rows;
use super::matvec::dot_generic;

/// `scores[r * stride + j] = scale * dot(queries[r], keys.row(j))` for every query row `r`
/// (`queries` holds rows of `head_dim`) and key `j < n_keys`.
pub(super) fn block_scores(
    queries: &[f32],
    keys: &F32Rows<'_>,
    n_keys: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            // SAFETY: the CPU supports the kernel's features; slice bounds are checked inside.
            return unsafe {
                avx2::block_scores(queries, keys, n_keys, head_dim, scale, scores, stride)
            };
        }
    }
    for (r, q) in queries.chunks_exact(head_dim).enumerate() {
        for j in 0..n_keys {
            scores[r * stride + j] = dot_generic(q, keys.row(j, head_dim)) * scale;
        }
    }
}

/// `outputs[r] += sum_j weights[r * stride + j] * values.row(j)` for every row `r` of `outputs`
/// (rows of `head_dim`) and value `j < n_values`.
pub(super) fn block_values(
    weights: &[f32],
    stride: usize,
    values: &F32Rows<'_>,
    n_values: usize,
    head_dim: usize,
    outputs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            // SAFETY: the CPU supports the kernel's features; slice bounds are checked inside.
            return unsafe {
                avx2::block_values(weights, stride, values, n_values, head_dim, outputs)
            };
        }
    }
    for (r, out) in outputs.chunks_exact_mut(head_dim).enumerate() {
        for j in 0..n_values {
            let p = weights[r * stride + j];
            if p != 0.0 {
                let value = values.row(j, head_dim);
                out.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::F32Rows;

    /// Keys whose scores are reduced together.
    const KEYS_PER_STEP: usize = 8;
    /// Output values of one row kept in registers while the values stream past.
    const OUTPUT_LANES: usize = 64;

    pub(super) fn is_supported() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// The sums of the lanes of each of eight vectors, as one vector.
    #[inline(always)]
    unsafe fn transpose_sums(v: &[__m256; 8]) -> __m256 {
        let s01 = _mm256_hadd_ps(v[0], v[1]);
        let s23 = _mm256_hadd_ps(v[2], v[3]);
        let s45 = _mm256_hadd_ps(v[4], v[5]);
        let s67 = _mm256_hadd_ps(v[6], v[7]);
        let t0 = _mm256_hadd_ps(s01, s23);
        let t1 = _mm256_hadd_ps(s45, s67);
        _mm256_add_ps(
            _mm256_permute2f128_ps(t0, t1, 0x20),
            _mm256_permute2f128_ps(t0, t1, 0x31),
        )
    }

    /// The sum of the lanes of `v`.
    #[inline(always)]
    unsafe fn lane_sum(v: __m256) -> f32 {
        let sum128 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let sum64 = _mm_add_ps(sum128, _mm_movehl_ps(sum128, sum128));
        _mm_cvtss_f32(_mm_add_ss(sum64, _mm_shuffle_ps(sum64, sum64, 1)))
    }

    /// See [`super::block_scores`]; `head_dim` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_scores(
        queries: &[f32],
        keys: &F32Rows<'_>,
        n_keys: usize,
        head_dim: usize,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let rows = queries.len() / head_dim;
        if n_keys == 0 {
            return;
        }
        assert!(
            keys.data.len() >= (n_keys - 1) * keys.row_stride + head_dim
                && scores.len() >= (rows.max(1) - 1) * stride + n_keys,
            "decode attention: block out of bounds"
        );
        let (key_base, key_stride) = (keys.data.as_ptr(), keys.row_stride);
        let scale_lanes = _mm256_set1_ps(scale);
        for r in 0..rows {
            let q = queries.as_ptr().add(r * head_dim);
            let out = scores.as_mut_ptr().add(r * stride);
            let mut j = 0;
            while j + KEYS_PER_STEP <= n_keys {
                let k = key_base.add(j * key_stride);
                let mut acc = [_mm256_setzero_ps(); KEYS_PER_STEP];
                let mut i = 0;
                while i < head_dim {
                    let q_lanes = _mm256_loadu_ps(q.add(i));
                    acc[0] = _mm256_fmadd_ps(q_lanes, _mm256_loadu_ps(k.add(i)), acc[0]);
                    acc[1] =
                        _mm256_fmadd_ps(q_lanes, _mm256_loadu_ps(k.add(key_stride + i)), acc[1]);
                    acc[2] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(2 * key_stride + i)),
                        acc[2],
                    );
                    acc[3] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(3 * key_stride + i)),
                        acc[3],
                    );
                    acc[4] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(4 * key_stride + i)),
                        acc[4],
                    );
                    acc[5] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(5 * key_stride + i)),
                        acc[5],
                    );
                    acc[6] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(6 * key_stride + i)),
                        acc[6],
                    );
                    acc[7] = _mm256_fmadd_ps(
                        q_lanes,
                        _mm256_loadu_ps(k.add(7 * key_stride + i)),
                        acc[7],
                    );
                    i += 8;
                }
                _mm256_storeu_ps(out.add(j), _mm256_mul_ps(transpose_sums(&acc), scale_lanes));
                j += KEYS_PER_STEP;
            }
            while j < n_keys {
                let k = key_base.add(j * key_stride);
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i < head_dim {
                    acc =
                        _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(k.add(i)), acc);
                    i += 8;
                }
                *out.add(j) = lane_sum(acc) * scale;
                j += 1;
            }
        }
    }

    /// See [`super::block_values`]; `head_dim` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_values(
        weights: &[f32],
        stride: usize,
        values: &F32Rows<'_>,
        n_values: usize,
        head_dim: usize,
        outputs: &mut [f32],
    ) {
        let rows = outputs.len() / head_dim;
        if n_values == 0 {
            return;
        }
        assert!(
            values.data.len() >= (n_values - 1) * values.row_stride + head_dim
                && weights.len() >= (rows.max(1) - 1) * stride + n_values,
            "decode attention: block out of bounds"
        );
        let (value_base, value_stride) = (values.data.as_ptr(), values.row_stride);
        for r in 0..rows {
            let p = weights.as_ptr().add(r * stride);
            let mut first = 0;
            while first < head_dim {
                let out = outputs.as_mut_ptr().add(r * head_dim + first);
                if head_dim - first >= OUTPUT_LANES {
                    accumulate_values::<{ OUTPUT_LANES / 8 }>(
                        p,
                        value_base.add(first),
                        value_stride,
                        n_values,
                        out,
                    );
                    first += OUTPUT_LANES;
                } else {
                    accumulate_values::<1>(p, value_base.add(first), value_stride, n_values, out);
                    first += 8;
                }
            }
        }
    }

    /// `out[..8 * V] += sum_j p[j] * v[j * stride..][..8 * V]`, with the outputs in registers.
    #[inline(always)]
    unsafe fn accumulate_values<const V: usize>(
        p: *const f32,
        v: *const f32,
        stride: usize,
        n_values: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); V];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(out.add(8 * i));
        }
        for j in 0..n_values {
            let weight = *p.add(j);
            if weight == 0.0 {
                continue;
            }
            let w = _mm256_set1_ps(weight);
            let row = v.add(j * stride);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * i)), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * i), *a);
        }
    }
}

#[cfg(test)]
mod tests {
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
        for (d, n, rows) in [(64, 29, 3), (128, 8, 1), (24, 13, 5), (12, 7, 2)] {
            let keys: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
            let q: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let view = F32Rows {
                data: &keys,
                row_stride: d,
            };
            let mut scores = vec![0f32; rows * n];
            block_scores(&q, &view, n, d, 0.125, &mut scores, n);
            let want = naive_scores(&q, &keys, d, 0.125);
            for (g, w) in scores.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "d={d} n={n}: {g} vs {w}");
            }
            // Weighted values, accumulating onto what the outputs hold.
            let mut out = vec![1f32; rows * d];
            block_values(&scores, n, &view, n, d, &mut out);
            for r in 0..rows {
                for i in 0..d {
                    let want: f32 = 1.0
                        + (0..n)
                            .map(|j| scores[r * n + j] * keys[j * d + i])
                            .sum::<f32>();
                    assert!((out[r * d + i] - want).abs() < 1e-3, "d={d} r={r} i={i}");
                }
            }
        }
    }
}
