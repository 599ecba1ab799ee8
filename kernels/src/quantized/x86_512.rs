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

/// Sixteen f32 lanes. Its [`BlockLanes`] methods need AVX-512F, F16C and FMA (their callers,
/// the `#[target_feature]` kernels below, are only run once [`is_supported`] said so).
#[derive(Clone, Copy)]
struct Avx512(__m512);

impl BlockLanes for Avx512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: a register-only AVX-512F operation; `BlockLanes`'s contract guarantees
        // AVX-512F.
        Self(unsafe { _mm512_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: a register-only AVX-512F operation; `BlockLanes`'s contract guarantees
        // AVX-512F.
        Self(unsafe { _mm512_add_ps(self.0, other.0) })
    }

    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        // SAFETY: a register-only AVX-512F operation; `BlockLanes`'s contract guarantees
        // AVX-512F.
        unsafe { _mm512_reduce_add_ps(self.0) }
    }

    /// The block's 32 weights dequantized (`d * q + m`), as two vectors of 16.
    type Q4Block = (__m512, __m512);
    const Q4_1_APPLY_ADDS_MIN: bool = true;

    /// A Q4_1 nibble takes one of 16 values, `d * q + m` for `q < 16`: one vector holds them
    /// all, and a lane permutation indexed by the nibbles dequantizes the block (instead of
    /// converting every nibble to float and scaling the block's product).
    #[inline(always)]
    unsafe fn q4_1_unpack(w: *const u8) -> Self::Q4Block {
        // SAFETY: `BlockLanes::q4_1_unpack`'s contract makes the 20 bytes of the block at `w`
        // readable: the unaligned 4-byte read takes bytes 0..4 (scale and minimum) and the
        // unaligned 16-byte load bytes 4..20 (the nibbles). The contract also guarantees
        // AVX-512F (which implies the SSE3 of `movehdup`), F16C and FMA.
        unsafe {
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
            // Byte i in the low bits of lane i: the permutation reads only bits 0..4 of each
            // lane, so the low nibble needs no mask and the high one a shift.
            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(w.add(4) as *const __m128i));
            (
                _mm512_permutexvar_ps(bytes, nibble_values),
                _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), nibble_values),
            )
        }
    }

    #[inline(always)]
    unsafe fn q4_1_apply((lo, hi): Self::Q4Block, x: *const f32, acc: Self) -> Self {
        // SAFETY: `BlockLanes::q4_1_apply`'s contract makes the 32 floats at `x` readable: the
        // two unaligned loads read floats 0..16 and 16..32. It also guarantees AVX-512F.
        unsafe {
            let acc = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc.0);
            Self(_mm512_fmadd_ps(hi, _mm512_loadu_ps(x.add(16)), acc))
        }
    }

    type Q8Block = (__m512, __m512, f32);

    #[inline(always)]
    unsafe fn q8_0_unpack(w: *const u8) -> Self::Q8Block {
        // SAFETY: `BlockLanes::q8_0_unpack`'s contract makes the 34 bytes of the block at `w`
        // readable: the two unaligned 16-byte loads read bytes 2..18 and 18..34 (the weights)
        // and `f16_at` bytes 0..2 (the scale). It also guarantees AVX-512F and F16C.
        unsafe {
            let q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                w.add(2) as *const __m128i
            )));
            let q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                w.add(18) as *const __m128i
            )));
            (q0, q1, Self::f16_at(w))
        }
    }

    #[inline(always)]
    unsafe fn q8_0_apply((q0, q1, d): Self::Q8Block, x: *const f32, acc: Self) -> Self {
        // SAFETY: `BlockLanes::q8_0_apply`'s contract makes the 32 floats at `x` readable: the
        // two unaligned loads read floats 16..32 and 0..16. It also guarantees AVX-512F.
        unsafe {
            let t = _mm512_fmadd_ps(
                q1,
                _mm512_loadu_ps(x.add(16)),
                _mm512_mul_ps(q0, _mm512_loadu_ps(x)),
            );
            Self(_mm512_fmadd_ps(_mm512_set1_ps(d), t, acc.0))
        }
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
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q4_1(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    // SAFETY: AVX-512F, F16C and FMA, which `Avx512`'s methods need, are guaranteed by
    // this function's contract (and enabled for it); the driver bounds its reads by the
    // slices' lengths.
    unsafe { simd_driver::dot_q4_1::<Avx512>(w_row, x, x_block_sums) }
}

/// Q4_1 weight row times several input rows (see `simd_driver::dot_q4_1_rows`).
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]), and `xs` must hold
/// `out.len()` rows of `k` values (`xs.len() >= out.len() * k`).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q4_1_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    // SAFETY: AVX-512F, F16C and FMA, which `Avx512`'s methods need, are guaranteed by
    // this function's contract (and enabled for it), as is `xs.len() >= out.len() * k`.
    unsafe { simd_driver::dot_q4_1_rows::<Avx512>(w_row, xs, x_block_sums, k, out) }
}

/// Q8_0 weight row times several input rows.
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]), and `xs` must hold
/// `out.len()` rows of `k` values (`xs.len() >= out.len() * k`).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q8_0_rows(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    // SAFETY: AVX-512F, F16C and FMA, which `Avx512`'s methods need, are guaranteed by
    // this function's contract (and enabled for it), as is `xs.len() >= out.len() * k`.
    unsafe { simd_driver::dot_q8_0_rows::<Avx512>(w_row, xs, x_block_sums, k, out) }
}

/// Q8_0 row dot product.
///
/// # Safety
/// The CPU must support AVX-512F, F16C and FMA ([`is_supported`]).
#[target_feature(enable = "avx512f,f16c,fma")]
pub(super) unsafe fn dot_q8_0(w_row: &[u8], x: &[f32], _x_block_sums: &[f32]) -> f32 {
    // SAFETY: AVX-512F, F16C and FMA, which `Avx512`'s methods need, are guaranteed by
    // this function's contract (and enabled for it); the driver bounds its reads by the
    // slices' lengths.
    unsafe { simd_driver::dot_q8_0::<Avx512>(w_row, x) }
}
