//! The row loops shared by the SIMD kernels: they differ only in the vector type that holds a
//! block's partial sums ([`BlockLanes`]).

use super::portable::{Q4_1_BYTES, Q8_0_BYTES};

/// Vector operations of one instruction set on a block of 32 weights.
pub(super) trait BlockLanes: Copy {
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// Lane-wise sum.
    unsafe fn add(self, other: Self) -> Self;
    /// Sum of all lanes.
    unsafe fn reduce(self) -> f32;
    /// `acc + d * sum(q * x)` for the Q4_1 block at `w` (without the `m * sum(x)` term).
    unsafe fn q4_1_block(w: *const u8, x: *const f32, acc: Self) -> Self;
    /// `acc + d * sum(q * x)` for the Q8_0 block at `w`.
    unsafe fn q8_0_block(w: *const u8, x: *const f32, acc: Self) -> Self;
    /// The f16 at `ptr` (unaligned), as f32.
    unsafe fn f16_at(ptr: *const u8) -> f32;
}

/// Q4_1 row dot product with two independent accumulator chains.
#[inline(always)]
pub(super) unsafe fn dot_q4_1<L: BlockLanes>(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    let n_blocks = (w_row.len() / Q4_1_BYTES)
        .min(x.len() / 32)
        .min(x_block_sums.len());
    let (w, x) = (w_row.as_ptr(), x.as_ptr());
    let (mut acc0, mut acc1) = (L::zero(), L::zero());
    let (mut offset0, mut offset1) = (0f32, 0f32);
    let mut b = 0;
    while b + 2 <= n_blocks {
        let (w0, w1) = (w.add(b * Q4_1_BYTES), w.add((b + 1) * Q4_1_BYTES));
        acc0 = L::q4_1_block(w0, x.add(b * 32), acc0);
        acc1 = L::q4_1_block(w1, x.add((b + 1) * 32), acc1);
        offset0 += L::f16_at(w0.add(2)) * x_block_sums[b];
        offset1 += L::f16_at(w1.add(2)) * x_block_sums[b + 1];
        b += 2;
    }
    if b < n_blocks {
        let w0 = w.add(b * Q4_1_BYTES);
        acc0 = L::q4_1_block(w0, x.add(b * 32), acc0);
        offset0 += L::f16_at(w0.add(2)) * x_block_sums[b];
    }
    acc0.add(acc1).reduce() + offset0 + offset1
}

/// Q8_0 row dot product with two independent accumulator chains.
#[inline(always)]
pub(super) unsafe fn dot_q8_0<L: BlockLanes>(w_row: &[u8], x: &[f32]) -> f32 {
    let n_blocks = (w_row.len() / Q8_0_BYTES).min(x.len() / 32);
    let (w, x) = (w_row.as_ptr(), x.as_ptr());
    let (mut acc0, mut acc1) = (L::zero(), L::zero());
    let mut b = 0;
    while b + 2 <= n_blocks {
        acc0 = L::q8_0_block(w.add(b * Q8_0_BYTES), x.add(b * 32), acc0);
        acc1 = L::q8_0_block(w.add((b + 1) * Q8_0_BYTES), x.add((b + 1) * 32), acc1);
        b += 2;
    }
    if b < n_blocks {
        acc0 = L::q8_0_block(w.add(b * Q8_0_BYTES), x.add(b * 32), acc0);
    }
    acc0.add(acc1).reduce()
}
