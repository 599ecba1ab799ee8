//! Decode attention's inner loops over a block of quantized rows ([`crate::kv_quant`]), read
//! as codes: nothing is dequantized into memory.
//!
//! A group of 32 channels stores `x = code * step + min`, so a query row's score against it is
//! `step * dot(q, codes) + min * sum(q)`, and a weight `p` adds `p * step * code + p * min` to
//! each output channel. The codes of each row are widened to f32 once, in registers, and used
//! for every query row of the block. Four-bit codes hold channels `2i` and `2i + 1` in the low
//! and high nibble of byte `i`; the kernels work on a group's channels in the order `0, 2, ..,
//! 30, 1, 3, .., 31` (low nibbles, then high ones), so the queries and the outputs are put into
//! that order once per block, never the codes.
//!
//! On x86-64 with AVX2, FMA and F16C the kernels of the `avx2` module run (codes widened eight
//! at a time, up to four query rows per pass with their accumulators in registers); elsewhere
//! portable loops over fixed-size arrays.

use half::f16;

use super::decode_attention::HeadRows;
use super::kv_quant::{QuantBits, QuantizedView, GROUP_SIZE};
use super::view::CacheData;

/// Channels per group, as the kernels require.
const G: usize = GROUP_SIZE;
/// Most query rows per block (as in [`super::decode_attention`]).
const MAX_ROWS: usize = super::decode_attention::MAX_ROWS;

/// Rows `first..first + n_rows` of a KV head stored quantized in groups of 32 channels that
/// start with each row, bounds checked.
pub(super) struct QuantBlock<'a> {
    view: QuantizedView<'a>,
    /// Element of the first row's first channel.
    first_element: usize,
    row_stride: usize,
    n_rows: usize,
    head_dim: usize,
}

impl<'a> QuantBlock<'a> {
    /// The block, or `None` when the rows are not quantized in groups of 32 that start with
    /// each row (the kernels' layout; other layouts take the dequantizing path).
    ///
    /// # Panics
    /// If the rows reach past the storage (a caller bug: the cache view is checked when it is
    /// made).
    pub(super) fn new(
        rows: &HeadRows<'a>,
        first: usize,
        n_rows: usize,
        head_dim: usize,
    ) -> Option<Self> {
        let CacheData::Quantized(view) = rows.data else {
            return None;
        };
        let aligned = view.group == G
            && head_dim.is_multiple_of(G)
            && rows.start.is_multiple_of(G)
            && rows.row_stride.is_multiple_of(G);
        if !aligned {
            return None;
        }
        assert!(
            rows.holds(first, n_rows, head_dim),
            "decode attention: rows out of bounds"
        );
        Some(Self {
            view,
            first_element: rows.start + first * rows.row_stride,
            row_stride: rows.row_stride,
            n_rows,
            head_dim,
        })
    }

    fn groups_per_row(&self) -> usize {
        self.head_dim / G
    }

    /// Group `g` of row `j`: its codes (32 bytes, or 16 in 4 bits), step and minimum.
    #[inline(always)]
    fn group(&self, j: usize, g: usize) -> (&'a [u8], f32, f32) {
        let (codes, [step, min]) = self.group_f16(j, g);
        (codes, step.to_f32(), min.to_f32())
    }

    /// [`Self::group`] with the step and minimum as stored.
    #[inline(always)]
    fn group_f16(&self, j: usize, g: usize) -> (&'a [u8], [f16; 2]) {
        let element = self.first_element + j * self.row_stride + g * G;
        let group = element / G;
        let codes = match self.view.bits {
            QuantBits::Eight => &self.view.codes[element..element + G],
            QuantBits::Four => &self.view.codes[element / 2..element / 2 + G / 2],
        };
        let params = &self.view.params[2 * group..2 * group + 2];
        (codes, [params[0], params[1]])
    }
}

/// A group's codes widened to f32, in the kernels' channel order (see the module docs).
#[inline(always)]
fn widen(bits: QuantBits, codes: &[u8], out: &mut [f32; G]) {
    match bits {
        QuantBits::Eight => {
            let codes: &[u8; G] = codes.try_into().expect("a group holds 32 codes");
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = c as f32;
            }
        }
        QuantBits::Four => {
            let bytes: &[u8; G / 2] = codes.try_into().expect("a group holds 16 bytes");
            let (low, high) = out.split_at_mut(G / 2);
            for ((l, h), &b) in low.iter_mut().zip(high.iter_mut()).zip(bytes) {
                *l = (b & 0x0f) as f32;
                *h = (b >> 4) as f32;
            }
        }
    }
}

/// Channel `i` of a group in the kernels' order is channel `order(bits, i)` of the row.
#[inline(always)]
fn channel(bits: QuantBits, i: usize) -> usize {
    match bits {
        QuantBits::Eight => i,
        QuantBits::Four if i < G / 2 => 2 * i,
        QuantBits::Four => 2 * (i - G / 2) + 1,
    }
}

/// Writes `rows` (of `head_dim`) into `out` with every group's channels put into the kernels'
/// order.
fn to_kernel_order(bits: QuantBits, rows: &[f32], out: &mut [f32]) {
    for (dst, src) in out.chunks_exact_mut(G).zip(rows.chunks_exact(G)) {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[channel(bits, i)];
        }
    }
}

/// The dot product of two groups.
#[inline(always)]
fn dot_group(a: &[f32; G], b: &[f32; G]) -> f32 {
    let mut lanes = [0f32; 8];
    for (a8, b8) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += a8[l] * b8[l];
        }
    }
    lanes.iter().sum()
}

/// `scores[r * stride + j] = scale * dot(queries[r], row j of the block)`, the rows read as
/// codes. `queries` holds rows of `head_dim` (at most 16); `buffer` is scratch space, reused
/// from block to block.
pub(super) fn quantized_block_scores(
    queries: &[f32],
    block: &QuantBlock<'_>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    buffer: &mut Vec<f32>,
) {
    let head_dim = block.head_dim;
    let rows = queries.len() / head_dim;
    assert!(rows <= MAX_ROWS, "decode attention: too many query rows");
    assert!(
        block.n_rows == 0 || scores.len() >= (rows.max(1) - 1) * stride + block.n_rows,
        "decode attention: scores out of bounds"
    );
    buffer.resize(queries.len() + queries.len() / G, 0.0);
    let (ordered, sums) = buffer.split_at_mut(queries.len());
    to_kernel_order(block.view.bits, queries, ordered);
    // Per row and group, the sum of the query's channels (what the minimum multiplies).
    for (sum, group) in sums.iter_mut().zip(ordered.chunks_exact(G)) {
        *sum = group.iter().sum();
    }
    let problem = ScoreRows {
        ordered,
        sums,
        rows,
    };
    #[cfg(target_arch = "x86_64")]
    if avx2::is_supported() {
        // SAFETY: `avx2::is_supported()` detected AVX2, FMA and F16C, the kernel's only requirements
        // (every slice it reads is bounds checked).
        return unsafe { avx2::scores(&problem, block, scale, scores, stride) };
    }
    scores_portable(&problem, block, scale, scores, stride);
}

/// Query rows in the kernels' channel order, with their sums per group.
struct ScoreRows<'a> {
    ordered: &'a [f32],
    sums: &'a [f32],
    rows: usize,
}

impl ScoreRows<'_> {
    /// Group `g` of row `r`, in the kernels' order.
    #[inline(always)]
    fn group(&self, r: usize, g: usize, head_dim: usize) -> &[f32; G] {
        let at = r * head_dim + g * G;
        self.ordered[at..at + G].try_into().expect("whole groups")
    }
}

fn scores_portable(
    problem: &ScoreRows<'_>,
    block: &QuantBlock<'_>,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    let mut widened = [0f32; G];
    let mut row_scores = [0f32; MAX_ROWS];
    for j in 0..block.n_rows {
        row_scores[..problem.rows].fill(0.0);
        for g in 0..groups {
            let (codes, step, min) = block.group(j, g);
            widen(bits, codes, &mut widened);
            for (r, score) in row_scores[..problem.rows].iter_mut().enumerate() {
                let q = problem.group(r, g, head_dim);
                *score += step * dot_group(q, &widened) + min * problem.sums[r * groups + g];
            }
        }
        for (r, score) in row_scores[..problem.rows].iter().enumerate() {
            scores[r * stride + j] = score * scale;
        }
    }
}

/// `outputs[r] += sum_j weights[r * stride + j] * row j of the block` for every row `r` of
/// `outputs` (rows of `head_dim`, at most 16), the rows read as codes; `buffer` is scratch
/// space, reused from block to block.
pub(super) fn quantized_block_values(
    weights: &[f32],
    stride: usize,
    block: &QuantBlock<'_>,
    outputs: &mut [f32],
    buffer: &mut Vec<f32>,
) {
    let head_dim = block.head_dim;
    let rows = outputs.len() / head_dim;
    assert!(rows <= MAX_ROWS, "decode attention: too many output rows");
    assert!(
        block.n_rows == 0 || weights.len() >= (rows.max(1) - 1) * stride + block.n_rows,
        "decode attention: weights out of bounds"
    );
    let bits = block.view.bits;
    let groups = block.groups_per_row();
    buffer.resize(outputs.len() + rows * groups, 0.0);
    let (ordered, offsets) = buffer.split_at_mut(outputs.len());
    to_kernel_order(bits, outputs, ordered);
    // Per row and group, the sum of weight x minimum (added to each of the group's channels).
    offsets.fill(0.0);
    let mut sums = ValueSums {
        ordered,
        offsets,
        rows,
    };
    accumulate_codes(weights, stride, block, &mut sums);
    for ((dst, src), offset) in outputs
        .chunks_exact_mut(G)
        .zip(sums.ordered.chunks_exact(G))
        .zip(sums.offsets.iter())
    {
        for (i, &s) in src.iter().enumerate() {
            dst[channel(bits, i)] = s + offset;
        }
    }
}

/// Output rows being accumulated: the code terms in the kernels' channel order, and per row and
/// group the sum of the minimum terms.
struct ValueSums<'a> {
    ordered: &'a mut [f32],
    offsets: &'a mut [f32],
    rows: usize,
}

impl ValueSums<'_> {
    /// Group `g` of output row `r`, in the kernels' order.
    #[inline(always)]
    fn group(&mut self, r: usize, g: usize, head_dim: usize) -> &mut [f32; G] {
        let at = r * head_dim + g * G;
        (&mut self.ordered[at..at + G])
            .try_into()
            .expect("whole groups")
    }
}

/// Adds every row of the block, weighted, to `sums`: the AVX2 kernel when the CPU has it.
fn accumulate_codes(
    weights: &[f32],
    stride: usize,
    block: &QuantBlock<'_>,
    sums: &mut ValueSums<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::is_supported() {
        // SAFETY: `avx2::is_supported()` detected AVX2, FMA and F16C, the kernel's only
        // requirements (every slice it reads or writes is bounds checked).
        return unsafe { avx2::values(weights, stride, block, sums) };
    }
    values_portable(weights, stride, block, sums);
}

fn values_portable(
    weights: &[f32],
    stride: usize,
    block: &QuantBlock<'_>,
    sums: &mut ValueSums<'_>,
) {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    let mut widened = [0f32; G];
    for j in 0..block.n_rows {
        for g in 0..groups {
            let (codes, step, min) = block.group(j, g);
            widen(bits, codes, &mut widened);
            for r in 0..sums.rows {
                let p = weights[r * stride + j];
                if p == 0.0 {
                    continue;
                }
                sums.offsets[r * groups + g] += p * min;
                let scaled_step = p * step;
                for (o, &c) in sums.group(r, g, head_dim).iter_mut().zip(&widened) {
                    *o += scaled_step * c;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::decode_block::avx2::lane_sum;
    use super::{QuantBits, QuantBlock, ScoreRows, ValueSums, G};

    pub(super) fn is_supported() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Group `g` of row `j` of `block`: its codes, step and minimum (converted by F16C).
    ///
    /// # Safety
    /// The CPU must support F16C.
    #[inline(always)]
    unsafe fn group<'a>(block: &QuantBlock<'a>, j: usize, g: usize) -> (&'a [u8], f32, f32) {
        let (codes, [step, min]) = block.group_f16(j, g);
        let packed = (step.to_bits() as i32) | ((min.to_bits() as i32) << 16);
        // SAFETY: register-only SSE2/F16C operations; the caller guarantees F16C.
        let both = unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(packed)) };
        let mut out = [0f32; 4];
        // SAFETY: `out` holds four floats, the store's width.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), both) };
        (codes, out[0], out[1])
    }

    /// A group's codes widened to f32, in the kernels' channel order, as four vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    unsafe fn widen(bits: QuantBits, codes: &[u8]) -> [__m256; 4] {
        // SAFETY: the loads read 32 bytes (8 bits: four loads of 8 at offsets 0, 8, 16, 24) or
        // 16 bytes (4 bits: one load), which the asserts below keep inside `codes`; the caller
        // guarantees AVX2 (which implies the SSE2 and SSE4.1 operations used).
        unsafe {
            match bits {
                QuantBits::Eight => {
                    assert!(codes.len() >= G);
                    let p = codes.as_ptr();
                    [
                        widen8(_mm_loadl_epi64(p as *const __m128i)),
                        widen8(_mm_loadl_epi64(p.add(8) as *const __m128i)),
                        widen8(_mm_loadl_epi64(p.add(16) as *const __m128i)),
                        widen8(_mm_loadl_epi64(p.add(24) as *const __m128i)),
                    ]
                }
                QuantBits::Four => {
                    assert!(codes.len() >= G / 2);
                    let bytes = _mm_loadu_si128(codes.as_ptr() as *const __m128i);
                    let mask = _mm_set1_epi8(0x0f);
                    let low = _mm_and_si128(bytes, mask);
                    let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                    [
                        widen8(low),
                        widen8(_mm_srli_si128(low, 8)),
                        widen8(high),
                        widen8(_mm_srli_si128(high, 8)),
                    ]
                }
            }
        }
    }

    /// The low eight bytes of `bytes` as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    unsafe fn widen8(bytes: __m128i) -> __m256 {
        // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)) }
    }

    /// Query or output rows handled together (their accumulators stay in registers).
    const ROWS_PER_PASS: usize = 4;

    /// See [`super::quantized_block_scores`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; everything else is checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores(
        problem: &ScoreRows<'_>,
        block: &QuantBlock<'_>,
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let mut out = RowScores {
            scores,
            stride,
            scale,
        };
        for first in (0..problem.rows).step_by(ROWS_PER_PASS) {
            // SAFETY: (every arm) AVX2, FMA and F16C are enabled; the rows `first..first + R`
            // exist (`R <= problem.rows - first`).
            unsafe {
                match problem.rows - first {
                    1 => scores_of::<1>(problem, block, first, &mut out),
                    2 => scores_of::<2>(problem, block, first, &mut out),
                    3 => scores_of::<3>(problem, block, first, &mut out),
                    _ => scores_of::<ROWS_PER_PASS>(problem, block, first, &mut out),
                }
            }
        }
    }

    /// Where scores go: `scores[r * stride + j]`, scaled by `scale`.
    struct RowScores<'a> {
        scores: &'a mut [f32],
        stride: usize,
        scale: f32,
    }

    /// The scores of query rows `first..first + R` against every row of the block.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `first + R <= problem.rows`.
    #[inline(always)]
    unsafe fn scores_of<const R: usize>(
        problem: &ScoreRows<'_>,
        block: &QuantBlock<'_>,
        first: usize,
        out: &mut RowScores<'_>,
    ) {
        let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
        for j in 0..block.n_rows {
            // SAFETY: a register-only AVX operation; AVX is enabled.
            let mut acc = [unsafe { _mm256_setzero_ps() }; R];
            let mut offsets = [0f32; R];
            for g in 0..groups {
                // SAFETY: F16C is enabled.
                let (codes, step, min) = unsafe { group(block, j, g) };
                // SAFETY: AVX2 is enabled; `widen` checks the length of `codes`.
                let c = unsafe { widen(bits, codes) };
                // SAFETY: a register-only AVX operation; AVX is enabled.
                let step = unsafe { _mm256_set1_ps(step) };
                for r in 0..R {
                    let q = problem.group(first + r, g, head_dim).as_ptr();
                    // SAFETY: `q` points to 32 floats (a `&[f32; 32]`); the four loads read
                    // them at offsets 0, 8, 16, 24; AVX2 and FMA are enabled.
                    unsafe {
                        let mut t = _mm256_mul_ps(_mm256_loadu_ps(q), c[0]);
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(8)), c[1], t);
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16)), c[2], t);
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(24)), c[3], t);
                        acc[r] = _mm256_fmadd_ps(step, t, acc[r]);
                    }
                    offsets[r] += min * problem.sums[(first + r) * groups + g];
                }
            }
            for r in 0..R {
                // SAFETY: register-only; AVX is enabled.
                let sum = unsafe { lane_sum(acc[r]) };
                out.scores[(first + r) * out.stride + j] = (sum + offsets[r]) * out.scale;
            }
        }
    }

    /// See [`super::quantized_block_values`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; everything else is checked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn values(
        weights: &[f32],
        stride: usize,
        block: &QuantBlock<'_>,
        sums: &mut ValueSums<'_>,
    ) {
        for first in (0..sums.rows).step_by(ROWS_PER_PASS) {
            let weights = RowWeights {
                weights,
                stride,
                first,
            };
            // SAFETY: (every arm) AVX2, FMA and F16C are enabled; the rows `first..first + R`
            // exist (`R <= sums.rows - first`).
            unsafe {
                match sums.rows - first {
                    1 => values_of::<1>(&weights, block, sums),
                    2 => values_of::<2>(&weights, block, sums),
                    3 => values_of::<3>(&weights, block, sums),
                    _ => values_of::<ROWS_PER_PASS>(&weights, block, sums),
                }
            }
        }
    }

    /// The weights of output rows from `first` on: row `first + r` weighs value `j` by
    /// `weights[(first + r) * stride + j]`.
    struct RowWeights<'a> {
        weights: &'a [f32],
        stride: usize,
        first: usize,
    }

    /// Output rows `first..first + R` of `sums` plus their weighted sums of every row of the
    /// block, group by group, the outputs in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights.first + R <= sums.rows`.
    #[inline(always)]
    unsafe fn values_of<const R: usize>(
        weights: &RowWeights<'_>,
        block: &QuantBlock<'_>,
        sums: &mut ValueSums<'_>,
    ) {
        let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
        let first = weights.first;
        for g in 0..groups {
            // SAFETY: a register-only AVX operation; AVX is enabled.
            let mut acc = [[unsafe { _mm256_setzero_ps() }; 4]; R];
            for (r, a) in acc.iter_mut().enumerate() {
                let out = sums.group(first + r, g, head_dim).as_ptr();
                for (i, lanes) in a.iter_mut().enumerate() {
                    // SAFETY: `out` points to 32 floats; `8 * i + 8 <= 32`; AVX is enabled.
                    *lanes = unsafe { _mm256_loadu_ps(out.add(8 * i)) };
                }
            }
            let mut offsets = [0f32; R];
            for j in 0..block.n_rows {
                // SAFETY: F16C is enabled.
                let (codes, step, min) = unsafe { group(block, j, g) };
                // SAFETY: AVX2 is enabled; `widen` checks the length of `codes`.
                let c = unsafe { widen(bits, codes) };
                for r in 0..R {
                    let p = weights.weights[(first + r) * weights.stride + j];
                    offsets[r] += p * min;
                    // SAFETY: register-only AVX/FMA operations; both are enabled.
                    unsafe {
                        let scaled_step = _mm256_set1_ps(p * step);
                        for i in 0..4 {
                            acc[r][i] = _mm256_fmadd_ps(scaled_step, c[i], acc[r][i]);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                sums.offsets[(first + r) * groups + g] += offsets[r];
                let out = sums.group(first + r, g, head_dim).as_mut_ptr();
                for (i, lanes) in a.iter().enumerate() {
                    // SAFETY: `out` points to 32 floats borrowed from `sums` alone; `8 * i + 8
                    // <= 32`; AVX is enabled.
                    unsafe { _mm256_storeu_ps(out.add(8 * i), *lanes) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_quant::QuantizedRows;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.61 + seed).sin() * 2.0) + (i % 5) as f32 * 0.1)
            .collect()
    }

    fn head_rows(store: &QuantizedRows) -> HeadRows<'_> {
        HeadRows {
            data: CacheData::Quantized(store.view()),
            start: 0,
            row_stride: store.row_len(),
        }
    }

    /// Scores and weighted sums from codes equal those over the dequantized rows, for any
    /// number of query rows (the kernels take them up to four at a time).
    #[test]
    fn codes_give_the_dequantized_rows_results() {
        let head_dim = 64;
        for (bits, rows) in [QuantBits::Eight, QuantBits::Four]
            .into_iter()
            .flat_map(|bits| [1, 3, 6].map(|rows| (bits, rows)))
        {
            let mut store = QuantizedRows::new(bits, head_dim).unwrap();
            store.push_rows(&data(40 * head_dim, 0.3)).unwrap();
            let mut dequantized = Vec::new();
            store.dequantize_rows(0, 40, &mut dequantized);
            let (first, n) = (5, 30);
            let block = QuantBlock::new(&head_rows(&store), first, n, head_dim).unwrap();
            let queries = data(rows * head_dim, 1.7);
            let stride = 33;
            let mut scores = vec![0f32; rows * stride];
            quantized_block_scores(
                &queries,
                &block,
                0.125,
                &mut scores,
                stride,
                &mut Vec::new(),
            );
            let weights = data(rows * stride, 2.9);
            let mut outputs = data(rows * head_dim, 4.1);
            let mut want_outputs = outputs.clone();
            quantized_block_values(&weights, stride, &block, &mut outputs, &mut Vec::new());
            for r in 0..rows {
                let q = &queries[r * head_dim..(r + 1) * head_dim];
                for j in 0..n {
                    let row = &dequantized[(first + j) * head_dim..(first + j + 1) * head_dim];
                    let want: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() * 0.125;
                    let got = scores[r * stride + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{bits:?} score {r},{j}: {got} {want}"
                    );
                    let w = weights[r * stride + j];
                    for (o, v) in want_outputs[r * head_dim..(r + 1) * head_dim]
                        .iter_mut()
                        .zip(row)
                    {
                        *o += w * v;
                    }
                }
            }
            for (got, want) in outputs.iter().zip(&want_outputs) {
                assert!((got - want).abs() < 1e-4, "{bits:?} output {got} {want}");
            }
        }
    }

    #[test]
    fn unaligned_layouts_take_the_dequantizing_path() {
        let store = QuantizedRows::new(QuantBits::Eight, 48).unwrap();
        assert!(QuantBlock::new(&head_rows(&store), 0, 0, 48).is_none());
    }
}
