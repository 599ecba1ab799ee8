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
    /// A Q4_1 block unpacked: the work every input row multiplying the block shares.
    type Q4Block: Copy;
    /// Whether [`Self::q4_1_apply`] adds the block's whole product `sum((d * q + m) * x)`;
    /// otherwise it adds `d * sum(q * x)` and the driver adds `m * sum(x)` from the input's
    /// block sums.
    const Q4_1_APPLY_ADDS_MIN: bool;
    /// Unpacks the Q4_1 block at `w`.
    unsafe fn q4_1_unpack(w: *const u8) -> Self::Q4Block;
    /// Adds the product of an unpacked Q4_1 block with `x` to `acc` (see
    /// [`Self::Q4_1_APPLY_ADDS_MIN`]).
    unsafe fn q4_1_apply(block: Self::Q4Block, x: *const f32, acc: Self) -> Self;
    /// A Q8_0 block's weights as floats, with its scale.
    type Q8Block: Copy;
    /// Unpacks the Q8_0 block at `w`.
    unsafe fn q8_0_unpack(w: *const u8) -> Self::Q8Block;
    /// `acc + d * sum(q * x)` for an unpacked Q8_0 block.
    unsafe fn q8_0_apply(block: Self::Q8Block, x: *const f32, acc: Self) -> Self;
    /// The f16 at `ptr` (unaligned), as f32.
    unsafe fn f16_at(ptr: *const u8) -> f32;
}

/// `m * x_block_sum`: the minimum's share of a Q4_1 block's product, when the lanes leave it
/// to the driver.
#[inline(always)]
unsafe fn q4_1_min_term<L: BlockLanes>(block: *const u8, x_block_sum: f32) -> f32 {
    if L::Q4_1_APPLY_ADDS_MIN {
        0.0
    } else {
        L::f16_at(block.add(2)) * x_block_sum
    }
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
        acc0 = L::q4_1_apply(L::q4_1_unpack(w0), x.add(b * 32), acc0);
        acc1 = L::q4_1_apply(L::q4_1_unpack(w1), x.add((b + 1) * 32), acc1);
        offset0 += q4_1_min_term::<L>(w0, x_block_sums[b]);
        offset1 += q4_1_min_term::<L>(w1, x_block_sums[b + 1]);
        b += 2;
    }
    if b < n_blocks {
        let w0 = w.add(b * Q4_1_BYTES);
        acc0 = L::q4_1_apply(L::q4_1_unpack(w0), x.add(b * 32), acc0);
        offset0 += q4_1_min_term::<L>(w0, x_block_sums[b]);
    }
    acc0.add(acc1).reduce() + offset0 + offset1
}

/// Input rows multiplied together by [`dot_q4_1_rows`] (each unpacked block serves them all).
pub(super) const ROWS_PER_PASS: usize = 4;

/// Q4_1 weight row times several input rows: `out[r] = dot(w_row, xs[r])` for the rows of `xs`
/// (`out.len()` rows of `k` values, with their block sums). Each block is unpacked once per
/// [`ROWS_PER_PASS`] rows; every row sees exactly the operations of [`dot_q4_1`], so the results
/// are bit-identical to one row at a time.
#[inline(always)]
pub(super) unsafe fn dot_q4_1_rows<L: BlockLanes>(
    w_row: &[u8],
    xs: &[f32],
    x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    for first in (0..out.len()).step_by(ROWS_PER_PASS) {
        let rows = ROWS_PER_PASS.min(out.len() - first);
        let bpr = k / 32;
        let xs = &xs[first * k..];
        let sums = &x_block_sums[first * bpr..];
        let out = &mut out[first..first + rows];
        match rows {
            4 => q4_1_pass::<L, 4>(w_row, xs, sums, k, out),
            3 => q4_1_pass::<L, 3>(w_row, xs, sums, k, out),
            2 => q4_1_pass::<L, 2>(w_row, xs, sums, k, out),
            _ => q4_1_pass::<L, 1>(w_row, xs, sums, k, out),
        }
    }
}

/// `R` rows of [`dot_q4_1_rows`], with the accumulators in registers.
// Several per-row arrays are indexed together; an index loop says that most plainly.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn q4_1_pass<L: BlockLanes, const R: usize>(
    w_row: &[u8],
    xs: &[f32],
    sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let n_blocks = (w_row.len() / Q4_1_BYTES).min(k / 32);
    let bpr = k / 32;
    let (w, x) = (w_row.as_ptr(), xs.as_ptr());
    let mut acc0 = [L::zero(); R];
    let mut acc1 = [L::zero(); R];
    let mut offset0 = [0f32; R];
    let mut offset1 = [0f32; R];
    let mut b = 0;
    while b + 2 <= n_blocks {
        let (w0, w1) = (w.add(b * Q4_1_BYTES), w.add((b + 1) * Q4_1_BYTES));
        let (u0, u1) = (L::q4_1_unpack(w0), L::q4_1_unpack(w1));
        for r in 0..R {
            acc0[r] = L::q4_1_apply(u0, x.add(r * k + b * 32), acc0[r]);
            acc1[r] = L::q4_1_apply(u1, x.add(r * k + (b + 1) * 32), acc1[r]);
            offset0[r] += q4_1_min_term::<L>(w0, sums[r * bpr + b]);
            offset1[r] += q4_1_min_term::<L>(w1, sums[r * bpr + b + 1]);
        }
        b += 2;
    }
    if b < n_blocks {
        let w0 = w.add(b * Q4_1_BYTES);
        let u0 = L::q4_1_unpack(w0);
        for r in 0..R {
            acc0[r] = L::q4_1_apply(u0, x.add(r * k + b * 32), acc0[r]);
            offset0[r] += q4_1_min_term::<L>(w0, sums[r * bpr + b]);
        }
    }
    for r in 0..R {
        out[r] = acc0[r].add(acc1[r]).reduce() + offset0[r] + offset1[r];
    }
}

/// Q8_0 row dot product with two independent accumulator chains.
#[inline(always)]
pub(super) unsafe fn dot_q8_0<L: BlockLanes>(w_row: &[u8], x: &[f32]) -> f32 {
    let n_blocks = (w_row.len() / Q8_0_BYTES).min(x.len() / 32);
    let (w, x) = (w_row.as_ptr(), x.as_ptr());
    let (mut acc0, mut acc1) = (L::zero(), L::zero());
    let mut b = 0;
    while b + 2 <= n_blocks {
        acc0 = L::q8_0_apply(L::q8_0_unpack(w.add(b * Q8_0_BYTES)), x.add(b * 32), acc0);
        acc1 = L::q8_0_apply(
            L::q8_0_unpack(w.add((b + 1) * Q8_0_BYTES)),
            x.add((b + 1) * 32),
            acc1,
        );
        b += 2;
    }
    if b < n_blocks {
        acc0 = L::q8_0_apply(L::q8_0_unpack(w.add(b * Q8_0_BYTES)), x.add(b * 32), acc0);
    }
    acc0.add(acc1).reduce()
}

/// Q8_0 weight row times several input rows, bit-identical to [`dot_q8_0`] per row.
#[inline(always)]
pub(super) unsafe fn dot_q8_0_rows<L: BlockLanes>(
    w_row: &[u8],
    xs: &[f32],
    _x_block_sums: &[f32],
    k: usize,
    out: &mut [f32],
) {
    for first in (0..out.len()).step_by(ROWS_PER_PASS) {
        let rows = ROWS_PER_PASS.min(out.len() - first);
        let xs = &xs[first * k..];
        let out = &mut out[first..first + rows];
        match rows {
            4 => q8_0_pass::<L, 4>(w_row, xs, k, out),
            3 => q8_0_pass::<L, 3>(w_row, xs, k, out),
            2 => q8_0_pass::<L, 2>(w_row, xs, k, out),
            _ => q8_0_pass::<L, 1>(w_row, xs, k, out),
        }
    }
}

/// `R` rows of [`dot_q8_0_rows`], with the accumulators in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn q8_0_pass<L: BlockLanes, const R: usize>(
    w_row: &[u8],
    xs: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let n_blocks = (w_row.len() / Q8_0_BYTES).min(k / 32);
    let (w, x) = (w_row.as_ptr(), xs.as_ptr());
    let mut acc0 = [L::zero(); R];
    let mut acc1 = [L::zero(); R];
    let mut b = 0;
    while b + 2 <= n_blocks {
        let u0 = L::q8_0_unpack(w.add(b * Q8_0_BYTES));
        let u1 = L::q8_0_unpack(w.add((b + 1) * Q8_0_BYTES));
        for r in 0..R {
            acc0[r] = L::q8_0_apply(u0, x.add(r * k + b * 32), acc0[r]);
            acc1[r] = L::q8_0_apply(u1, x.add(r * k + (b + 1) * 32), acc1[r]);
        }
        b += 2;
    }
    if b < n_blocks {
        let u0 = L::q8_0_unpack(w.add(b * Q8_0_BYTES));
        for r in 0..R {
            acc0[r] = L::q8_0_apply(u0, x.add(r * k + b * 32), acc0[r]);
        }
    }
    for r in 0..R {
        out[r] = acc0[r].add(acc1[r]).reduce();
    }
}
