//! AVX2 + FMA + F16C block kernels: 8 lanes per vector.

use std::arch::x86_64::*;

use super::simd_driver::{self, BlockLanes};

/// Whether this CPU runs the kernels of this module.
pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Eight f32 lanes. Its [`BlockLanes`] methods need AVX2, FMA and F16C (their callers, the
/// `#[target_feature]` kernels below, are only run once [`is_supported`] said so).
#[derive(Clone, Copy)]
struct Avx2(__m256);

/// `sum(q[i] * x[i])` over 32 elements given as four vectors of 8 floats.
///
/// # Safety
/// The CPU must support AVX and FMA, and `x` must be valid for reads of 32 f32 (no alignment
/// needed).
#[inline(always)]
unsafe fn float_block_product(q: [__m256; 4], x: *const f32) -> __m256 {
    // SAFETY: the four unaligned loads read floats 0..8, 8..16, 16..24 and 24..32 from `x`,
    // which the caller guarantees readable, as it guarantees AVX and FMA.
    unsafe {
        let mut t = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
        t = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x.add(8)), t);
        t = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x.add(16)), t);
        _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x.add(24)), t)
    }
}

impl BlockLanes for Avx2 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: a register-only AVX operation; `BlockLanes`'s contract guarantees AVX2.
        Self(unsafe { _mm256_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: a register-only AVX operation; `BlockLanes`'s contract guarantees AVX2.
        Self(unsafe { _mm256_add_ps(self.0, other.0) })
    }

    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        let v = self.0;
        // SAFETY: register-only AVX/SSE operations; `BlockLanes`'s contract guarantees AVX2.
        unsafe {
            let sum128 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let sum64 = _mm_add_ps(sum128, _mm_movehl_ps(sum128, sum128));
            _mm_cvtss_f32(_mm_add_ss(sum64, _mm_shuffle_ps(sum64, sum64, 1)))
        }
    }

    type Q4Block = ([__m256; 4], f32);
    const Q4_1_APPLY_ADDS_MIN: bool = false;

    #[inline(always)]
    unsafe fn q4_1_unpack(w: *const u8) -> Self::Q4Block {
        // SAFETY: `BlockLanes::q4_1_unpack`'s contract makes the 20 bytes of the block at `w`
        // readable: the unaligned 16-byte load reads bytes 4..20 (the nibbles) and `f16_at`
        // bytes 0..2 (the scale). The contract also guarantees AVX2, FMA and F16C.
        unsafe {
            let low_nibbles = _mm_set1_epi8(0x0F);
            let qs = _mm_loadu_si128(w.add(4) as *const __m128i);
            let lo = _mm_and_si128(qs, low_nibbles);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low_nibbles);
            let q = [
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
            ];
            (q, Self::f16_at(w))
        }
    }

    #[inline(always)]
    unsafe fn q4_1_apply((q, d): Self::Q4Block, x: *const f32, acc: Self) -> Self {
        // SAFETY: `BlockLanes::q4_1_apply`'s contract makes 32 floats at `x` readable, what
        // `float_block_product` reads, and guarantees AVX2 and FMA.
        Self(unsafe { _mm256_fmadd_ps(_mm256_set1_ps(d), float_block_product(q, x), acc.0) })
    }

    type Q8Block = ([__m256; 4], f32);

    #[inline(always)]
    unsafe fn q8_0_unpack(w: *const u8) -> Self::Q8Block {
        // SAFETY: `BlockLanes::q8_0_unpack`'s contract makes the 34 bytes of the block at `w`
        // readable: the four unaligned 8-byte loads read bytes 2..34 (the weights) and `f16_at`
        // bytes 0..2 (the scale). The contract also guarantees AVX2 and F16C.
        unsafe {
            let load8 = |offset: usize| {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    w.add(2 + offset) as *const __m128i
                )))
            };
            ([load8(0), load8(8), load8(16), load8(24)], Self::f16_at(w))
        }
    }

    #[inline(always)]
    unsafe fn q8_0_apply((q, d): Self::Q8Block, x: *const f32, acc: Self) -> Self {
        // SAFETY: `BlockLanes::q8_0_apply`'s contract makes 32 floats at `x` readable, what
        // `float_block_product` reads, and guarantees AVX2 and FMA.
        Self(unsafe { _mm256_fmadd_ps(_mm256_set1_ps(d), float_block_product(q, x), acc.0) })
    }

    #[inline(always)]
    unsafe fn f16_at(ptr: *const u8) -> f32 {
        // SAFETY: `BlockLanes::f16_at`'s contract makes the 2 bytes at `ptr` readable (read
        // unaligned) and guarantees F16C.
        unsafe {
            let bits = (ptr as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
    }
}

/// Q4_1 row dot product (layout in `super::portable::dot_q4_1`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`is_supported`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    // SAFETY: AVX2, FMA and F16C, which `Avx2`'s methods need, are guaranteed by this
    // function's contract (and enabled for it); the driver bounds its reads by the
    // slices' lengths.
    unsafe { simd_driver::dot_q4_1::<Avx2>(w_row, x, x_block_sums) }
}

/// Q4_1 weight row times several input rows (see `simd_driver::dot_q4_1_rows`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`is_supported`]), and `xs` must hold `out.len()`
/// rows of `k` values (`xs.len() >= out.len() * k`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    // SAFETY: AVX2, FMA and F16C, which `Avx2`'s methods need, are guaranteed by this
    // function's contract (and enabled for it), as is `xs.len() >= out.len() * k`.
    unsafe { simd_driver::dot_q4_1_rows::<Avx2>(w_row, xs, x_block_sums, k, out) }
}

/// Q8_0 weight row times several input rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`is_supported`]), and `xs` must hold `out.len()`
/// rows of `k` values (`xs.len() >= out.len() * k`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    // SAFETY: AVX2, FMA and F16C, which `Avx2`'s methods need, are guaranteed by this
    // function's contract (and enabled for it), as is `xs.len() >= out.len() * k`.
    unsafe { simd_driver::dot_q8_0_rows::<Avx2>(w_row, xs, x_block_sums, k, out) }
}

/// Q8_0 row dot product.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`is_supported`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(w_row: &[u8], x: &[f32], _x_block_sums: &[f32]) -> f32 {
    // SAFETY: AVX2, FMA and F16C, which `Avx2`'s methods need, are guaranteed by this
    // function's contract (and enabled for it); the driver bounds its reads by the
    // slices' lengths.
    unsafe { simd_driver::dot_q8_0::<Avx2>(w_row, x) }
}
