//! The inner loops of decode attention over one block of a KV head's cached rows: the scores of a
//! few query rows, and the score-weighted sum of the values. AVX2 kernels for head dimensions that
//! are multiples of 8 (f16/bf16 rows widened to f32 in registers as they are loaded), portable
//! loops over f32 copies otherwise.

use super::decode_attention::{F32Rows, HeadRows};
use super::matvec::dot_generic;
use super::view::CacheData;

/// `scores[r * stride + j] = scale * dot(queries[r], rows.row(first + j))` for every query row
/// `r` (`queries` holds rows of `head_dim`) and key `j < n_keys`. A 16-bit cache is widened as
/// it is read (portable path: through `buffer`).
#[allow(clippy::too_many_arguments)]
pub(super) fn block_scores(
    queries: &[f32],
    keys: &HeadRows<'_>,
    first: usize,
    n_keys: usize,
    head_dim: usize,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    buffer: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            let block = avx2::Block::new(keys, first, n_keys, head_dim);
            // SAFETY: the CPU supports the kernel's features; `Block::new` checked the rows'
            // bounds, and the kernel checks those of `queries` and `scores`.
            return unsafe {
                match keys.data {
                    CacheData::F32(d) => {
                        avx2::block_scores(queries, d, block, scale, scores, stride)
                    }
                    CacheData::F16(d) => {
                        avx2::block_scores(queries, d, block, scale, scores, stride)
                    }
                    CacheData::BF16(d) => {
                        avx2::block_scores(queries, d, block, scale, scores, stride)
                    }
                }
            };
        }
    }
    let keys = keys.rows_f32(first, n_keys, head_dim, buffer);
    for (r, q) in queries.chunks_exact(head_dim).enumerate() {
        for j in 0..n_keys {
            scores[r * stride + j] = dot_generic(q, keys.row(j, head_dim)) * scale;
        }
    }
}

/// `outputs[r] += sum_j weights[r * stride + j] * rows.row(first + j)` for every row `r` of
/// `outputs` (rows of `head_dim`) and value `j < n_values`.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_values(
    weights: &[f32],
    stride: usize,
    values: &HeadRows<'_>,
    first: usize,
    n_values: usize,
    head_dim: usize,
    outputs: &mut [f32],
    buffer: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            let block = avx2::Block::new(values, first, n_values, head_dim);
            // SAFETY: as in `block_scores`.
            return unsafe {
                match values.data {
                    CacheData::F32(d) => avx2::block_values(weights, stride, d, block, outputs),
                    CacheData::F16(d) => avx2::block_values(weights, stride, d, block, outputs),
                    CacheData::BF16(d) => avx2::block_values(weights, stride, d, block, outputs),
                }
            };
        }
    }
    let values = values.rows_f32(first, n_values, head_dim, buffer);
    accumulate_generic(weights, stride, &values, n_values, head_dim, outputs);
}

/// The portable [`block_values`] over f32 rows.
fn accumulate_generic(
    weights: &[f32],
    stride: usize,
    values: &F32Rows<'_>,
    n_values: usize,
    head_dim: usize,
    outputs: &mut [f32],
) {
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

    use half::{bf16, f16};

    use super::HeadRows;

    /// A stored element type, read eight at a time as f32.
    pub(super) trait Element: Copy {
        /// Eight values from `p` (unaligned), widened to f32.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Element for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Element for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    impl Element for bf16 {
        /// bf16 is the upper half of an f32.
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            let widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(widened, 16))
        }
    }

    /// Rows `first..first + n_rows` of a KV head, as an offset into the storage and a stride,
    /// bounds checked.
    #[derive(Clone, Copy)]
    pub(super) struct Block {
        offset: usize,
        row_stride: usize,
        n_rows: usize,
        head_dim: usize,
    }

    impl Block {
        /// # Panics
        /// If the rows reach past the storage (a caller bug: the cache view is checked when
        /// it is made).
        pub(super) fn new(
            rows: &HeadRows<'_>,
            first: usize,
            n_rows: usize,
            head_dim: usize,
        ) -> Self {
            assert!(
                rows.holds(first, n_rows, head_dim),
                "decode attention: rows out of bounds"
            );
            Self {
                offset: rows.start + first * rows.row_stride,
                row_stride: rows.row_stride,
                n_rows,
                head_dim,
            }
        }
    }

    /// Keys whose scores are reduced together.
    const KEYS_PER_STEP: usize = 8;
    /// Output values of one row kept in registers while the values stream past.
    const OUTPUT_LANES: usize = 64;

    pub(super) fn is_supported() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
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
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block_scores<E: Element>(
        queries: &[f32],
        data: &[E],
        block: Block,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let (n_keys, head_dim) = (block.n_rows, block.head_dim);
        let rows = queries.len() / head_dim;
        if n_keys == 0 {
            return;
        }
        assert!(
            scores.len() >= (rows.max(1) - 1) * stride + n_keys,
            "decode attention: scores out of bounds"
        );
        let (key_base, key_stride) = (data.as_ptr().add(block.offset), block.row_stride);
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
                    acc[0] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(i)), acc[0]);
                    acc[1] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(key_stride + i)), acc[1]);
                    acc[2] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(2 * key_stride + i)), acc[2]);
                    acc[3] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(3 * key_stride + i)), acc[3]);
                    acc[4] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(4 * key_stride + i)), acc[4]);
                    acc[5] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(5 * key_stride + i)), acc[5]);
                    acc[6] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(6 * key_stride + i)), acc[6]);
                    acc[7] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(7 * key_stride + i)), acc[7]);
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
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), E::load8(k.add(i)), acc);
                    i += 8;
                }
                *out.add(j) = lane_sum(acc) * scale;
                j += 1;
            }
        }
    }

    /// See [`super::block_values`]; `head_dim` is a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block_values<E: Element>(
        weights: &[f32],
        stride: usize,
        data: &[E],
        block: Block,
        outputs: &mut [f32],
    ) {
        let (n_values, head_dim) = (block.n_rows, block.head_dim);
        let rows = outputs.len() / head_dim;
        if n_values == 0 {
            return;
        }
        assert!(
            weights.len() >= (rows.max(1) - 1) * stride + n_values,
            "decode attention: weights out of bounds"
        );
        let (value_base, value_stride) = (data.as_ptr().add(block.offset), block.row_stride);
        for r in 0..rows {
            let p = weights.as_ptr().add(r * stride);
            let mut first = 0;
            while first < head_dim {
                let out = outputs.as_mut_ptr().add(r * head_dim + first);
                if head_dim - first >= OUTPUT_LANES {
                    accumulate_values::<E, { OUTPUT_LANES / 8 }>(
                        p,
                        value_base.add(first),
                        value_stride,
                        n_values,
                        out,
                    );
                    first += OUTPUT_LANES;
                } else {
                    accumulate_values::<E, 1>(
                        p,
                        value_base.add(first),
                        value_stride,
                        n_values,
                        out,
                    );
                    first += 8;
                }
            }
        }
    }

    /// `out[..8 * V] += sum_j p[j] * v[j * stride..][..8 * V]`, with the outputs in registers.
    #[inline(always)]
    unsafe fn accumulate_values<E: Element, const V: usize>(
        p: *const f32,
        v: *const E,
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
                *a = _mm256_fmadd_ps(w, E::load8(row.add(8 * i)), *a);
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
}
