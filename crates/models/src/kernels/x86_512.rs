//! AVX-512 block kernels: one 512-bit vector holds 16 weights; Q4_1 blocks are dequantized by a
//! lane permutation of their 16 possible values.

use std::arch::x86_64::*;

use super::simd_driver::{self, BlockLanes};

/// Whether this CPU runs the kernels of this module.
pub(super) fn is_supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

#[derive(Clone, Copy)]
struct Avx512(__m512);

impl BlockLanes for Avx512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(_mm512_setzero_ps())
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Self(_mm512_add_ps(self.0, other.0))
    }

    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        _mm512_reduce_add_ps(self.0)
    }

    /// The block's 32 weights dequantized (`d * q + m`), as two vectors of 16.
    type Q4Block = (__m512, __m512);
    const Q4_1_APPLY_ADDS_MIN: bool = true;

    /// A Q4_1 nibble takes one of 16 values, `d * q + m` for `q < 16`: one vector holds them
    /// all, and a lane permutation indexed by the nibbles dequantizes the block (instead of
    /// converting every nibble to float and scaling the block's product).
    #[inline(always)]
    unsafe fn q4_1_unpack(w: *const u8) -> Self::Q4Block {
        let scale_and_min = _mm_cvtph_ps(_mm_cvtsi32_si128((w as *const i32).read_unaligned()));
        let d = _mm512_broadcastss_ps(scale_and_min);
        let m = _mm512_broadcastss_ps(_mm_movehdup_ps(scale_and_min));
        let nibble_values = _mm512_fmadd_ps(
            _mm512_setr_ps(
                0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
            ),
            d,
            m,
        );
        // Byte i in the low bits of lane i: the permutation reads only bits 0..4 of each lane,
        // so the low nibble needs no mask and the high one a shift.
        let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(w.add(4) as *const __m128i));
        (
            _mm512_permutexvar_ps(bytes, nibble_values),
            _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), nibble_values),
        )
    }

    #[inline(always)]
    unsafe fn q4_1_apply((lo, hi): Self::Q4Block, x: *const f32, acc: Self) -> Self {
        let acc = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc.0);
        Self(_mm512_fmadd_ps(hi, _mm512_loadu_ps(x.add(16)), acc))
    }

    type Q8Block = (__m512, __m512, f32);

    #[inline(always)]
    unsafe fn q8_0_unpack(w: *const u8) -> Self::Q8Block {
        let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            w.add(2) as *const __m128i
        )));
        let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            w.add(18) as *const __m128i
        )));
        (q0, q1, Self::f16_at(w))
    }

    #[inline(always)]
    unsafe fn q8_0_apply((q0, q1, d): Self::Q8Block, x: *const f32, acc: Self) -> Self {
        let t = _mm512_fmadd_ps(
            q1,
            _mm512_loadu_ps(x.add(16)),
            _mm512_mul_ps(q0, _mm512_loadu_ps(x)),
        );
        Self(_mm512_fmadd_ps(_mm512_set1_ps(d), t, acc.0))
    }

    #[inline(always)]
    unsafe fn f16_at(ptr: *const u8) -> f32 {
        let bits = (ptr as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// Q4_1 row dot product (layout in `super::portable::dot_q4_1`).
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q4_1(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    simd_driver::dot_q4_1::<Avx512>(w_row, x, x_block_sums)
}

/// Q4_1 weight row times several input rows (see `simd_driver::dot_q4_1_rows`).
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q4_1_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    simd_driver::dot_q4_1_rows::<Avx512>(w_row, xs, x_block_sums, k, out)
}

/// Q8_0 weight row times several input rows.
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q8_0_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    simd_driver::dot_q8_0_rows::<Avx512>(w_row, xs, x_block_sums, k, out)
}

/// Q8_0 row dot product.
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q8_0(w_row: &[u8], x: &[f32], _x_block_sums: &[f32]) -> f32 {
    simd_driver::dot_q8_0::<Avx512>(w_row, x)
}
