//! The AVX2 (with FMA and F16C) kernels of [`super`]: integer queries against codes widened
//! to i16 for the scores, codes widened to f32 in registers for the weighted values.

use std::arch::x86_64::*;

use super::{IntQueries, QuantBits, QuantBlock, ScoreRows, ValueSums, G};

pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
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

/// Rounds `ordered` (rows of whole groups, in the kernels' order) to `ints`, group by
/// group ([`IntQueries`]), eight channels per instruction.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn set_int_queries(ordered: &[f32], ints: &mut IntQueries) {
    ints.ints.resize(ordered.len(), 0);
    ints.scales.clear();
    for (group, out) in ordered.chunks_exact(G).zip(ints.ints.chunks_exact_mut(G)) {
        let (group, out): (&[f32; G], &mut [i16; G]) = (
            group.try_into().expect("whole groups"),
            out.try_into().expect("whole groups"),
        );
        // SAFETY: the loads read the 32 floats of `group` at offsets 0, 8, 16, 24 and the
        // stores write the 32 i16 of `out` (64 bytes) at offsets 0 and 16; AVX2 is enabled.
        unsafe {
            let p = group.as_ptr();
            let x = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
            let sign = _mm256_set1_ps(-0.0);
            let largest = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, x[0]), _mm256_andnot_ps(sign, x[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, x[2]), _mm256_andnot_ps(sign, x[3])),
            );
            let halves = _mm_max_ps(
                _mm256_castps256_ps128(largest),
                _mm256_extractf128_ps(largest, 1),
            );
            let pairs = _mm_max_ps(halves, _mm_movehl_ps(halves, halves));
            let largest = _mm_cvtss_f32(_mm_max_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
            let scale = largest / i16::MAX as f32;
            ints.scales.push(scale);
            let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            // Rounded to nearest (ties to even), within i16: |x| * inverse <= 32767.
            let int = |v: __m256| _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse));
            // `packs` interleaves 128-bit lanes; the permutation puts them back in order.
            let low = _mm256_permute4x64_epi64(_mm256_packs_epi32(int(x[0]), int(x[1])), 0xd8);
            let high = _mm256_permute4x64_epi64(_mm256_packs_epi32(int(x[2]), int(x[3])), 0xd8);
            let o = out.as_mut_ptr() as *mut __m256i;
            _mm256_storeu_si256(o, low);
            _mm256_storeu_si256(o.add(1), high);
        }
    }
}

/// `[sum(a), sum(b), sum(c), sum(d)]` of four vectors of i32.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn sum4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
    unsafe {
        let abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
        _mm_add_epi32(
            _mm256_castsi256_si128(abcd),
            _mm256_extracti128_si256(abcd, 1),
        )
    }
}

/// A group's codes widened to i16, in the kernels' channel order, as two vectors of 16.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn widen16(bits: QuantBits, codes: &[u8]) -> [__m256i; 2] {
    // SAFETY: the loads read 32 bytes (8 bits: two loads of 16) or 16 bytes (4 bits: one
    // load), which the asserts keep inside `codes`; the caller guarantees AVX2.
    unsafe {
        match bits {
            QuantBits::Eight => {
                assert!(codes.len() >= G);
                let p = codes.as_ptr() as *const __m128i;
                [
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(p)),
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(1))),
                ]
            }
            QuantBits::Four => {
                assert!(codes.len() >= G / 2);
                let bytes = _mm_loadu_si128(codes.as_ptr() as *const __m128i);
                let mask = _mm_set1_epi8(0x0f);
                [
                    _mm256_cvtepu8_epi16(_mm_and_si128(bytes, mask)),
                    _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)),
                ]
            }
        }
    }
}

/// Query rows scored together (their accumulators for four keys stay in registers).
const SCORE_ROWS_PER_PASS: usize = 3;
/// Keys scored together (their sums are reduced together).
const KEYS_PER_STEP: usize = 4;

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
    for first in (0..problem.rows).step_by(SCORE_ROWS_PER_PASS) {
        // SAFETY: (every arm) AVX2, FMA and F16C are enabled; the rows `first..first + R`
        // exist (`R <= problem.rows - first`).
        unsafe {
            match problem.rows - first {
                1 => scores_of::<1>(problem, block, first, &mut out),
                2 => scores_of::<2>(problem, block, first, &mut out),
                _ => scores_of::<SCORE_ROWS_PER_PASS>(problem, block, first, &mut out),
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

/// The scores of query rows `first..first + R` against every row of the block: four keys
/// at a time from the integer queries ([`four_keys`]), then the remaining keys one by one
/// from the f32 queries.
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
    let n = block.n_rows;
    let whole = n - n % KEYS_PER_STEP;
    for j0 in (0..whole).step_by(KEYS_PER_STEP) {
        // SAFETY: AVX2, FMA and F16C are enabled; keys `j0..j0 + 4` are in the block.
        let keys = unsafe { four_keys::<R>(problem, block, first, j0) };
        for (r, sums) in keys.iter().enumerate() {
            let at = (first + r) * out.stride + j0;
            let dst: &mut [f32; 4] = (&mut out.scores[at..at + KEYS_PER_STEP])
                .try_into()
                .expect("four scores");
            // SAFETY: `dst` holds four floats, the store's width; AVX is enabled.
            unsafe { _mm_storeu_ps(dst.as_mut_ptr(), _mm_mul_ps(*sums, _mm_set1_ps(out.scale))) };
        }
    }
    for j in whole..n {
        // SAFETY: AVX2, FMA and F16C are enabled; key `j` is in the block.
        let row_scores = unsafe { one_key::<R>(problem, block, first, j) };
        for (r, score) in row_scores.iter().enumerate() {
            out.scores[(first + r) * out.stride + j] = score * out.scale;
        }
    }
}

/// Adds, per query row `first + r`, the products of group `g` of key `j` (its codes times
/// its step) with the query to `acc[r]` (a vector still to be summed).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline(always)]
unsafe fn add_group_products<const R: usize>(
    problem: &ScoreRows<'_>,
    block: &QuantBlock<'_>,
    (first, j, g): (usize, usize, usize),
    acc: &mut [__m256; R],
) {
    let head_dim = block.head_dim;
    let codes = block.codes(j, g);
    // SAFETY: AVX2 is enabled; `widen` checks the length of `codes`.
    let c = unsafe { widen(block.view.bits, codes) };
    let step = problem.params[2 * (j * block.groups_per_row() + g)];
    // SAFETY: register-only AVX operations; AVX is enabled.
    let c = unsafe {
        let step = _mm256_set1_ps(step);
        [
            _mm256_mul_ps(c[0], step),
            _mm256_mul_ps(c[1], step),
            _mm256_mul_ps(c[2], step),
            _mm256_mul_ps(c[3], step),
        ]
    };
    for (r, a) in acc.iter_mut().enumerate() {
        let q = problem.group(first + r, g, head_dim).as_ptr();
        // SAFETY: `q` points to 32 floats (a `&[f32; 32]`); the four loads read them at
        // offsets 0, 8, 16, 24; AVX and FMA are enabled.
        unsafe {
            let mut t = _mm256_fmadd_ps(_mm256_loadu_ps(q), c[0], *a);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(8)), c[1], t);
            t = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16)), c[2], t);
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(24)), c[3], t);
        }
    }
}

/// Per query row `first + r`, the unscaled score `sum_g step * dot(q, codes) + min *
/// sum(q)` of key `j`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline(always)]
unsafe fn one_key<const R: usize>(
    problem: &ScoreRows<'_>,
    block: &QuantBlock<'_>,
    first: usize,
    j: usize,
) -> [f32; R] {
    let groups = block.groups_per_row();
    // SAFETY: a register-only AVX operation; AVX is enabled.
    let mut acc = [unsafe { _mm256_setzero_ps() }; R];
    for g in 0..groups {
        // SAFETY: AVX2 and FMA are enabled.
        unsafe { add_group_products::<R>(problem, block, (first, j, g), &mut acc) };
    }
    let mut scores = [0f32; R];
    for (r, (score, a)) in scores.iter_mut().zip(acc).enumerate() {
        // SAFETY: register-only; AVX is enabled.
        *score = unsafe { super::super::decode_block::avx2::lane_sum(a) };
        for g in 0..groups {
            let min = problem.params[2 * (j * groups + g) + 1];
            *score += min * problem.sums[(first + r) * groups + g];
        }
    }
    scores
}

/// The unscaled scores of query rows `first..first + R` against keys `j0..j0 + 4`: per
/// group, the codes (as i16) meet the integer queries in `madd` (pairs of products summed
/// into i32), the four keys' sums are reduced together, then scaled by each key's step and
/// the query's scale; the minimums add `min * sum(q)`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `first + R <= problem.rows`, `j0 + 4 <=
/// block.n_rows`.
#[inline(always)]
unsafe fn four_keys<const R: usize>(
    problem: &ScoreRows<'_>,
    block: &QuantBlock<'_>,
    first: usize,
    j0: usize,
) -> [__m128; R] {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    // SAFETY: a register-only SSE operation; AVX (which implies SSE) is enabled.
    let mut acc = [unsafe { _mm_setzero_ps() }; R];
    for g in 0..groups {
        let param = |k: usize, i: usize| problem.params[2 * ((j0 + k) * groups + g) + i];
        // SAFETY: AVX2 is enabled; `widen16` checks the length of the codes.
        let codes = unsafe {
            [
                widen16(bits, block.codes(j0, g)),
                widen16(bits, block.codes(j0 + 1, g)),
                widen16(bits, block.codes(j0 + 2, g)),
                widen16(bits, block.codes(j0 + 3, g)),
            ]
        };
        // SAFETY: register-only SSE operations; AVX (which implies SSE) is enabled.
        let (steps, mins) = unsafe {
            (
                _mm_setr_ps(param(0, 0), param(1, 0), param(2, 0), param(3, 0)),
                _mm_setr_ps(param(0, 1), param(1, 1), param(2, 1), param(3, 1)),
            )
        };
        for (r, a) in acc.iter_mut().enumerate() {
            let q = problem.ints.group(first + r, g, head_dim).as_ptr() as *const __m256i;
            let q_scale = problem.ints.scales[(first + r) * groups + g];
            let q_sum = problem.sums[(first + r) * groups + g];
            // SAFETY: `q` points to 32 i16 (a `&[i16; 32]`), the two loads' 64 bytes; the
            // rest are register-only AVX2/FMA operations; both are enabled.
            unsafe {
                let (q0, q1) = (_mm256_loadu_si256(q), _mm256_loadu_si256(q.add(1)));
                let mut partial = [_mm256_setzero_si256(); 4];
                for (p, c) in partial.iter_mut().zip(&codes) {
                    *p = _mm256_add_epi32(_mm256_madd_epi16(c[0], q0), _mm256_madd_epi16(c[1], q1));
                }
                let dots = sum4(partial[0], partial[1], partial[2], partial[3]);
                let scaled_steps = _mm_mul_ps(steps, _mm_set1_ps(q_scale));
                *a = _mm_fmadd_ps(scaled_steps, _mm_cvtepi32_ps(dots), *a);
                *a = _mm_fmadd_ps(mins, _mm_set1_ps(q_sum), *a);
            }
        }
    }
    acc
}

/// Output rows handled together (their accumulators stay in registers; four cover a group of
/// four query heads per KV head in one pass over the codes).
const VALUE_ROWS_PER_PASS: usize = 4;

/// See [`super::quantized_block_values`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; everything else is checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn values(block: &QuantBlock<'_>, sums: &mut ValueSums<'_>) {
    for first in (0..sums.rows).step_by(VALUE_ROWS_PER_PASS) {
        // SAFETY: (every arm) AVX2, FMA and F16C are enabled; the rows `first..first + R`
        // exist (`R <= sums.rows - first`).
        unsafe {
            match sums.rows - first {
                1 => values_of::<1>(block, sums, first),
                2 => values_of::<2>(block, sums, first),
                3 => values_of::<3>(block, sums, first),
                _ => values_of::<VALUE_ROWS_PER_PASS>(block, sums, first),
            }
        }
    }
}

/// Output rows `first..first + R` of `sums` plus their weighted sums of every row of the
/// block, group by group, the outputs in registers.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `first + R <= sums.rows`.
#[inline(always)]
unsafe fn values_of<const R: usize>(
    block: &QuantBlock<'_>,
    sums: &mut ValueSums<'_>,
    first: usize,
) {
    let (head_dim, groups, bits) = (block.head_dim, block.groups_per_row(), block.view.bits);
    let n = block.n_rows;
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
        for j in 0..n {
            let codes = block.codes(j, g);
            // SAFETY: AVX2 is enabled; `widen` checks the length of `codes`.
            let c = unsafe { widen(bits, codes) };
            let at = 2 * (j * groups + g);
            let (step, min) = (sums.params[at], sums.params[at + 1]);
            for (r, (a, offset)) in acc.iter_mut().zip(&mut offsets).enumerate() {
                let p = sums.weights.get(first + r, j);
                *offset += p * min;
                // SAFETY: register-only AVX/FMA operations; both are enabled.
                unsafe {
                    let w = _mm256_set1_ps(p * step);
                    for i in 0..4 {
                        a[i] = _mm256_fmadd_ps(w, c[i], a[i]);
                    }
                }
            }
        }
        for (r, offset) in offsets.iter().enumerate() {
            sums.offsets[(first + r) * groups + g] += offset;
        }
        for (r, a) in acc.iter().enumerate() {
            let out = sums.group(first + r, g, head_dim).as_mut_ptr();
            for (i, lanes) in a.iter().enumerate() {
                // SAFETY: `out` points to 32 floats borrowed from `sums` alone; `8 * i + 8
                // <= 32`; AVX is enabled.
                unsafe { _mm256_storeu_ps(out.add(8 * i), *lanes) };
            }
        }
    }
}
