//! The inner loops of decode attention over one block of a KV head's cached rows: the scores of a
//! few query rows, and the score-weighted sum of the values. AVX2 kernels for head dimensions that
//! are multiples of 8 (f16/bf16 rows widened to f32 in registers as they are loaded), the
//! quantized kernels of [`super::quant_block`] for 8- and 4-bit codes, portable loops over f32
//! copies otherwise.

use super::decode_attention::{F32Rows, HeadRows};
use super::matvec::dot_generic;
use super::quant_block::{quantized_block_scores, quantized_block_values, QuantBlock};
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
    if let Some(block) = QuantBlock::new(keys, first, n_keys, head_dim) {
        return quantized_block_scores(queries, &block, scale, scores, stride, buffer);
    }
    if let CacheData::Quantized(_) = keys.data {
        let widened = dequantized_block(keys, first, n_keys, head_dim, buffer);
        let no_buffer = &mut Vec::new();
        return block_scores(
            queries, &widened, 0, n_keys, head_dim, scale, scores, stride, no_buffer,
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            let block = avx2::Block::new(keys, first, n_keys, head_dim);
            // SAFETY: `avx2::is_supported()` detected AVX2, FMA and F16C at run time, the
            // kernel's features; `head_dim` is a multiple of 8 (checked just above); `block` was
            // made by `Block::new`, which asserted that rows `first..first + n_keys` lie inside
            // `keys.data`, the storage each arm passes. The kernel takes the query rows from
            // `queries.len()` and asserts that `scores` holds every row at `stride`.
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
                    CacheData::Quantized(_) => unreachable!("dequantized into f32 rows above"),
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
    if let Some(block) = QuantBlock::new(values, first, n_values, head_dim) {
        return quantized_block_values(weights, stride, &block, outputs, buffer);
    }
    if let CacheData::Quantized(_) = values.data {
        let widened = dequantized_block(values, first, n_values, head_dim, buffer);
        let no_buffer = &mut Vec::new();
        return block_values(
            weights, stride, &widened, 0, n_values, head_dim, outputs, no_buffer,
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8) && avx2::is_supported() {
            let block = avx2::Block::new(values, first, n_values, head_dim);
            // SAFETY: `avx2::is_supported()` detected AVX2, FMA and F16C at run time, the
            // kernel's features; `head_dim` is a multiple of 8 (checked just above); `block` was
            // made by `Block::new`, which asserted that rows `first..first + n_values` lie
            // inside `values.data`, the storage each arm passes. The kernel takes the output rows
            // from `outputs.len()` and asserts that `weights` holds every row at `stride`.
            return unsafe {
                match values.data {
                    CacheData::F32(d) => avx2::block_values(weights, stride, d, block, outputs),
                    CacheData::F16(d) => avx2::block_values(weights, stride, d, block, outputs),
                    CacheData::BF16(d) => avx2::block_values(weights, stride, d, block, outputs),
                    CacheData::Quantized(_) => unreachable!("dequantized into f32 rows above"),
                }
            };
        }
    }
    let values = values.rows_f32(first, n_values, head_dim, buffer);
    accumulate_generic(weights, stride, &values, n_values, head_dim, outputs);
}

/// Rows `first..first + n_rows` of quantized rows in a layout the code kernels do not take
/// (groups not starting with each row), dequantized into `buffer` (a block stays in the core's
/// cache) and read as f32 rows from 0.
fn dequantized_block<'b>(
    rows: &HeadRows<'b>,
    first: usize,
    n_rows: usize,
    head_dim: usize,
    buffer: &'b mut Vec<f32>,
) -> HeadRows<'b> {
    let dequantized = rows.rows_f32(first, n_rows, head_dim, buffer);
    HeadRows {
        data: CacheData::F32(dequantized.data),
        start: 0,
        row_stride: dequantized.row_stride,
    }
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
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::HeadRows;

    /// A stored element type, read eight at a time as f32.
    pub(super) trait Element: Copy {
        /// Eight values from `p` (unaligned), widened to f32.
        ///
        /// # Safety
        /// `p` must be valid for reads of eight consecutive `Self` (no alignment needed), and
        /// the CPU must support AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Element for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            // SAFETY: by `load8`'s contract `p` is readable for eight f32 (32 bytes, the
            // unaligned load's width) and the CPU has AVX.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Element for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            // SAFETY: by `load8`'s contract `p` is readable for eight f16 (16 bytes, the
            // unaligned load's width) and the CPU has F16C (and the SSE2 it implies).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
    }

    impl Element for bf16 {
        /// bf16 is the upper half of an f32.
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            // SAFETY: by `load8`'s contract `p` is readable for eight bf16 (16 bytes, the
            // unaligned load's width) and the CPU has AVX2.
            unsafe {
                let widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(widened, 16))
            }
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
    ///
    /// # Safety
    /// The CPU must support AVX (the callers are compiled with AVX2 enabled).
    #[inline(always)]
    unsafe fn transpose_sums(v: &[__m256; 8]) -> __m256 {
        // SAFETY: register-only AVX operations, and the caller guarantees AVX.
        unsafe {
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
    }

    /// The sum of the lanes of `v`.
    ///
    /// # Safety
    /// The CPU must support AVX (the callers are compiled with AVX2 enabled).
    #[inline(always)]
    pub(crate) unsafe fn lane_sum(v: __m256) -> f32 {
        // SAFETY: register-only AVX/SSE operations, and the caller guarantees AVX.
        unsafe {
            let sum128 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let sum64 = _mm_add_ps(sum128, _mm_movehl_ps(sum128, sum128));
            _mm_cvtss_f32(_mm_add_ss(sum64, _mm_shuffle_ps(sum64, sum64, 1)))
        }
    }

    /// See [`super::block_scores`]; `head_dim` is a multiple of 8.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C ([`is_supported`]); `block` must come from
    /// [`Block::new`] over rows whose storage is `data` (so that its rows lie inside `data`),
    /// and `block.head_dim` must be a multiple of 8. `queries` and `scores` are checked here.
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
        // SAFETY: `Block::new` checked that the block's rows, from `block.offset` on, lie inside
        // the storage the caller passes as `data`, so the offset is within `data`.
        let (key_base, key_stride) = (unsafe { data.as_ptr().add(block.offset) }, block.row_stride);
        let scale_lanes = _mm256_set1_ps(scale);
        for r in 0..rows {
            // SAFETY: `r < rows = queries.len() / head_dim`, so row `r` starts inside `queries`.
            let q = unsafe { queries.as_ptr().add(r * head_dim) };
            // SAFETY: `r * stride <= (rows - 1) * stride`, which the assert above keeps below
            // `scores.len()`.
            let out = unsafe { scores.as_mut_ptr().add(r * stride) };
            let mut j = 0;
            while j + KEYS_PER_STEP <= n_keys {
                // SAFETY: key `j < n_keys` is a row of the block, inside `data` (`Block::new`).
                let k = unsafe { key_base.add(j * key_stride) };
                // SAFETY: `q` is query row `r`, `head_dim` floats of `queries`; `j + 8 <= n_keys`,
                // so the eight key rows at `k + m * key_stride` (m < 8) are rows `j + m` of the
                // block, each of `head_dim` elements inside `data` (`Block::new`); `head_dim` is
                // a multiple of 8; AVX2, FMA and F16C are enabled.
                let sums = unsafe { dot_8_keys(q, k, key_stride, head_dim) };
                // SAFETY: `j + 8 <= n_keys`, so the eight scores stored at `out + j` are in row
                // `r` of `scores` (asserted above).
                unsafe { _mm256_storeu_ps(out.add(j), _mm256_mul_ps(sums, scale_lanes)) };
                j += KEYS_PER_STEP;
            }
            while j < n_keys {
                // SAFETY: key `j < n_keys` is a row of the block, inside `data` (`Block::new`).
                let k = unsafe { key_base.add(j * key_stride) };
                // SAFETY: `q` is query row `r` and `k` key row `j`, `head_dim` elements each
                // (a multiple of 8), inside `queries` and `data`; AVX2, FMA and F16C are enabled.
                let sum = unsafe { dot_key(q, k, head_dim) };
                // SAFETY: `j < n_keys`, so `out + j` is in row `r` of `scores` (asserted above).
                unsafe { *out.add(j) = sum * scale };
                j += 1;
            }
        }
    }

    /// The dot products of the query row at `q` with the eight key rows at `k + m * key_stride`
    /// (`m < 8`), as one vector (lane `m` for key `m`), unscaled.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `head_dim` must be a multiple of 8; `q` must be
    /// valid for reads of `head_dim` f32 and each `k + m * key_stride`, `m < 8`, for reads of
    /// `head_dim` elements.
    #[inline(always)]
    unsafe fn dot_8_keys<E: Element>(
        q: *const f32,
        k: *const E,
        key_stride: usize,
        head_dim: usize,
    ) -> __m256 {
        // SAFETY: a register-only AVX operation; the caller guarantees AVX.
        let mut acc = unsafe { [_mm256_setzero_ps(); KEYS_PER_STEP] };
        let mut i = 0;
        while i < head_dim {
            // SAFETY: `i + 8 <= head_dim` (a multiple of 8), so the eight floats at `q + i` are
            // in the query row, and the eight elements at `k + m * key_stride + i` (m < 8) are in
            // key row `m`, all readable by the caller's contract; the caller guarantees AVX2, FMA
            // and F16C (for `E::load8`).
            unsafe {
                let q_lanes = _mm256_loadu_ps(q.add(i));
                acc[0] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(i)), acc[0]);
                acc[1] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(key_stride + i)), acc[1]);
                acc[2] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(2 * key_stride + i)), acc[2]);
                acc[3] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(3 * key_stride + i)), acc[3]);
                acc[4] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(4 * key_stride + i)), acc[4]);
                acc[5] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(5 * key_stride + i)), acc[5]);
                acc[6] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(6 * key_stride + i)), acc[6]);
                acc[7] = _mm256_fmadd_ps(q_lanes, E::load8(k.add(7 * key_stride + i)), acc[7]);
            }
            i += 8;
        }
        // SAFETY: register-only AVX operations; the caller guarantees AVX.
        unsafe { transpose_sums(&acc) }
    }

    /// The dot product of the query row at `q` with the key row at `k`, unscaled.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `head_dim` must be a multiple of 8; `q` must be
    /// valid for reads of `head_dim` f32 and `k` for reads of `head_dim` elements.
    #[inline(always)]
    unsafe fn dot_key<E: Element>(q: *const f32, k: *const E, head_dim: usize) -> f32 {
        // SAFETY: a register-only AVX operation; the caller guarantees AVX.
        let mut acc = unsafe { _mm256_setzero_ps() };
        let mut i = 0;
        while i < head_dim {
            // SAFETY: `i + 8 <= head_dim` (a multiple of 8): the eight floats at `q + i` are in
            // the query row, the eight elements at `k + i` in the key row, both readable by the
            // caller's contract; the caller guarantees AVX2, FMA and F16C.
            acc = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), E::load8(k.add(i)), acc) };
            i += 8;
        }
        // SAFETY: register-only AVX/SSE operations; the caller guarantees AVX.
        unsafe { lane_sum(acc) }
    }

    /// See [`super::block_values`]; `head_dim` is a multiple of 8.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C ([`is_supported`]); `block` must come from
    /// [`Block::new`] over rows whose storage is `data` (so that its rows lie inside `data`),
    /// and `block.head_dim` must be a multiple of 8. `weights` and `outputs` are checked here.
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
        // SAFETY: `Block::new` checked that the block's rows, from `block.offset` on, lie inside
        // the storage the caller passes as `data`, so the offset is within `data`.
        let (value_base, value_stride) =
            (unsafe { data.as_ptr().add(block.offset) }, block.row_stride);
        for r in 0..rows {
            // SAFETY: `r * stride <= (rows - 1) * stride`, which the assert above keeps below
            // `weights.len()`.
            let p = unsafe { weights.as_ptr().add(r * stride) };
            let mut first = 0;
            while first < head_dim {
                // SAFETY: `r < rows = outputs.len() / head_dim` and `first < head_dim`, so the
                // offset is inside `outputs`.
                let out = unsafe { outputs.as_mut_ptr().add(r * head_dim + first) };
                if head_dim - first >= OUTPUT_LANES {
                    // SAFETY: AVX2, FMA and F16C are enabled. `p` reads weights `r * stride +
                    // j` for `j < n_values`, inside `weights` (asserted above); value row `j`
                    // is read at columns `first..first + 64 <= head_dim`, inside `data`
                    // (`Block::new`); `out` covers the same 64 columns of output row `r`, in
                    // `outputs`, which is borrowed mutably and so aliases neither input.
                    unsafe {
                        accumulate_values::<E, { OUTPUT_LANES / 8 }>(
                            p,
                            value_base.add(first),
                            value_stride,
                            n_values,
                            out,
                        )
                    };
                    first += OUTPUT_LANES;
                } else {
                    // SAFETY: as above, with 8 columns: `head_dim - first` is a positive
                    // multiple of 8, so `first + 8 <= head_dim`.
                    unsafe {
                        accumulate_values::<E, 1>(
                            p,
                            value_base.add(first),
                            value_stride,
                            n_values,
                            out,
                        )
                    };
                    first += 8;
                }
            }
        }
    }

    /// `out[..8 * V] += sum_j p[j] * v[j * stride..][..8 * V]`, with the outputs in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and F16C for `E::load8`; `p` must be valid for reads
    /// of `n_values` f32; for every `j < n_values`, `v + j * stride` must be valid for reads of
    /// `8 * V` elements; `out` must be valid for reads and writes of `8 * V` f32 that no other
    /// pointer here reaches.
    #[inline(always)]
    unsafe fn accumulate_values<E: Element, const V: usize>(
        p: *const f32,
        v: *const E,
        stride: usize,
        n_values: usize,
        out: *mut f32,
    ) {
        // SAFETY: a register-only AVX operation; the caller guarantees AVX.
        let mut acc = unsafe { [_mm256_setzero_ps(); V] };
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: `i < V`, and the caller guarantees the `8 * V` floats at `out` readable,
            // so the eight at `out + 8 * i` are; AVX is available.
            *a = unsafe { _mm256_loadu_ps(out.add(8 * i)) };
        }
        for j in 0..n_values {
            // SAFETY: `j < n_values`, and the caller guarantees `n_values` readable weights.
            let weight = unsafe { *p.add(j) };
            if weight == 0.0 {
                continue;
            }
            // SAFETY: a register-only AVX operation; the caller guarantees AVX.
            let w = unsafe { _mm256_set1_ps(weight) };
            // SAFETY: `j < n_values`, so the caller guarantees `v + j * stride` readable for
            // `8 * V` elements: the offset stays inside that allocation.
            let row = unsafe { v.add(j * stride) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: the eight elements at `row + 8 * i`, `i < V`, are readable (above);
                // the caller guarantees AVX2, FMA and F16C.
                *a = unsafe { _mm256_fmadd_ps(w, E::load8(row.add(8 * i)), *a) };
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees that the `8 * V` floats at `out` are writable and
            // reached by no other pointer; `i < V`; AVX is available.
            unsafe { _mm256_storeu_ps(out.add(8 * i), *a) };
        }
    }
}

#[cfg(test)]
mod tests;
