//! The row loops shared by the SIMD kernels: they differ only in the vector type that holds a
//! block's partial sums ([`BlockLanes`]).

use super::portable::{Q4_1_BYTES, Q8_0_BYTES};

/// Vector operations of one instruction set on a block of 32 weights.
///
/// Every method requires the CPU to support the implementation's instruction set (AVX2, FMA and
/// F16C for `x86::Avx2`; AVX-512F, F16C and FMA for `x86_512::Avx512`); those taking pointers
/// also require them to be readable as far as each method's `# Safety` says.
pub(super) trait BlockLanes: Copy {
    /// All lanes zero.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn zero() -> Self;
    /// Lane-wise sum.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn add(self, other: Self) -> Self;
    /// Sum of all lanes.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn reduce(self) -> f32;
    /// A Q4_1 block unpacked: the work every input row multiplying the block shares.
    type Q4Block: Copy;
    /// Whether [`Self::q4_1_apply`] adds the block's whole product `sum((d * q + m) * x)`;
    /// otherwise it adds `d * sum(q * x)` and the driver adds `m * sum(x)` from the input's
    /// block sums.
    const Q4_1_APPLY_ADDS_MIN: bool;
    /// Unpacks the Q4_1 block at `w`.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set, and `w` must be valid for
    /// reads of one block, [`Q4_1_BYTES`] bytes (no alignment needed).
    unsafe fn q4_1_unpack(w: *const u8) -> Self::Q4Block;
    /// Adds the product of an unpacked Q4_1 block with `x` to `acc` (see
    /// [`Self::Q4_1_APPLY_ADDS_MIN`]).
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set, and `x` must be valid for
    /// reads of 32 f32 (no alignment needed).
    unsafe fn q4_1_apply(block: Self::Q4Block, x: *const f32, acc: Self) -> Self;
    /// A Q8_0 block's weights as floats, with its scale.
    type Q8Block: Copy;
    /// Unpacks the Q8_0 block at `w`.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set, and `w` must be valid for
    /// reads of one block, [`Q8_0_BYTES`] bytes (no alignment needed).
    unsafe fn q8_0_unpack(w: *const u8) -> Self::Q8Block;
    /// `acc + d * sum(q * x)` for an unpacked Q8_0 block.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set, and `x` must be valid for
    /// reads of 32 f32 (no alignment needed).
    unsafe fn q8_0_apply(block: Self::Q8Block, x: *const f32, acc: Self) -> Self;
    /// The f16 at `ptr` (unaligned), as f32.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set, and `ptr` must be valid for
    /// reads of 2 bytes.
    unsafe fn f16_at(ptr: *const u8) -> f32;
}

/// `m * x_block_sum`: the minimum's share of a Q4_1 block's product, when the lanes leave it
/// to the driver.
///
/// # Safety
/// The CPU must support `L`'s instruction set, and `block` must be valid for reads of one Q4_1
/// block, [`Q4_1_BYTES`] bytes.
#[inline(always)]
unsafe fn q4_1_min_term<L: BlockLanes>(block: *const u8, x_block_sum: f32) -> f32 {
    if L::Q4_1_APPLY_ADDS_MIN {
        0.0
    } else {
        // SAFETY: bytes 2..4 of the block (its f16 minimum) are readable by the contract above,
        // which also guarantees `L`'s instruction set.
        unsafe { L::f16_at(block.add(2)) * x_block_sum }
    }
}

/// Q4_1 row dot product with two independent accumulator chains.
///
/// # Safety
/// The CPU must support `L`'s instruction set. The slices may have any lengths: only the
/// blocks that `w_row`, `x` and `x_block_sums` all cover are read.
#[inline(always)]
pub(super) unsafe fn dot_q4_1<L: BlockLanes>(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    let n_blocks = (w_row.len() / Q4_1_BYTES)
        .min(x.len() / 32)
        .min(x_block_sums.len());
    let (w, x) = (w_row.as_ptr(), x.as_ptr());
    // SAFETY: the caller guarantees `L`'s instruction set.
    let (mut acc0, mut acc1) = unsafe { (L::zero(), L::zero()) };
    let (mut offset0, mut offset1) = (0f32, 0f32);
    let mut b = 0;
    while b + 2 <= n_blocks {
        // SAFETY: `b + 1 < n_blocks <= w_row.len() / Q4_1_BYTES`: blocks `b` and `b + 1` lie
        // inside `w_row`.
        let (w0, w1) = unsafe { (w.add(b * Q4_1_BYTES), w.add((b + 1) * Q4_1_BYTES)) };
        // SAFETY: `w0` and `w1` start whole Q4_1 blocks of `w_row` (above), and
        // `b + 1 < n_blocks <= x.len() / 32`, so `x + 32 * b` and `x + 32 * (b + 1)` start 32
        // floats each inside `x`; the caller guarantees `L`'s instruction set.
        unsafe {
            acc0 = L::q4_1_apply(L::q4_1_unpack(w0), x.add(b * 32), acc0);
            acc1 = L::q4_1_apply(L::q4_1_unpack(w1), x.add((b + 1) * 32), acc1);
            offset0 += q4_1_min_term::<L>(w0, x_block_sums[b]);
            offset1 += q4_1_min_term::<L>(w1, x_block_sums[b + 1]);
        }
        b += 2;
    }
    if b < n_blocks {
        // SAFETY: `b < n_blocks`: block `b` lies inside `w_row` and floats `32 * b..32 * b + 32`
        // inside `x`; the caller guarantees `L`'s instruction set.
        unsafe {
            let w0 = w.add(b * Q4_1_BYTES);
            acc0 = L::q4_1_apply(L::q4_1_unpack(w0), x.add(b * 32), acc0);
            offset0 += q4_1_min_term::<L>(w0, x_block_sums[b]);
        }
    }
    // SAFETY: the caller guarantees `L`'s instruction set.
    unsafe { acc0.add(acc1).reduce() + offset0 + offset1 }
}

/// Input rows multiplied together by [`dot_q4_1_rows`] (each unpacked block serves them all).
pub(super) const ROWS_PER_PASS: usize = 4;

/// Q4_1 weight row times several input rows: `out[r] = dot(w_row, xs[r])` for the rows of `xs`
/// (`out.len()` rows of `k` values, with their block sums). Each block is unpacked once per
/// [`ROWS_PER_PASS`] rows; every row sees exactly the operations of [`dot_q4_1`], so the results
/// are bit-identical to one row at a time.
///
/// # Safety
/// The CPU must support `L`'s instruction set, and `xs` must hold `out.len()` rows of `k`
/// values (`xs.len() >= out.len() * k`). `w_row` and `x_block_sums` may have any lengths.
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
        // SAFETY: the caller guarantees `L`'s instruction set and `out.len() * k` values in the
        // whole `xs`; `first + rows <= out.len()`, so the `xs` from row `first` on holds the
        // `rows * k` values each pass (`R = rows`; `rows >= 1`, so `_` is 1) reads.
        unsafe {
            match rows {
                4 => q4_1_pass::<L, 4>(w_row, xs, sums, k, out),
                3 => q4_1_pass::<L, 3>(w_row, xs, sums, k, out),
                2 => q4_1_pass::<L, 2>(w_row, xs, sums, k, out),
                _ => q4_1_pass::<L, 1>(w_row, xs, sums, k, out),
            }
        }
    }
}

/// `R` rows of [`dot_q4_1_rows`], with the accumulators in registers.
///
/// # Safety
/// The CPU must support `L`'s instruction set, and `xs` must hold `R` rows of `k` values
/// (`xs.len() >= R * k`). `sums` and `out` are indexed with bounds checks.
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
    // SAFETY: the caller guarantees `L`'s instruction set.
    let mut acc0 = unsafe { [L::zero(); R] };
    // SAFETY: as above.
    let mut acc1 = unsafe { [L::zero(); R] };
    let mut offset0 = [0f32; R];
    let mut offset1 = [0f32; R];
    let mut b = 0;
    while b + 2 <= n_blocks {
        // SAFETY: `b + 1 < n_blocks <= w_row.len() / Q4_1_BYTES`: blocks `b` and `b + 1` lie
        // inside `w_row`.
        let (w0, w1) = unsafe { (w.add(b * Q4_1_BYTES), w.add((b + 1) * Q4_1_BYTES)) };
        // SAFETY: `w0` and `w1` start whole Q4_1 blocks of `w_row` (above); the caller
        // guarantees `L`'s instruction set.
        let (u0, u1) = unsafe { (L::q4_1_unpack(w0), L::q4_1_unpack(w1)) };
        for r in 0..R {
            // SAFETY: `r < R` and `(b + 2) * 32 <= n_blocks * 32 <= k`, so the 32 floats at
            // `x + r * k + 32 * b` and at `x + r * k + 32 * (b + 1)` lie in row `r` of `xs`,
            // which holds `R * k` values by the contract; `w0` and `w1` start whole blocks.
            unsafe {
                acc0[r] = L::q4_1_apply(u0, x.add(r * k + b * 32), acc0[r]);
                acc1[r] = L::q4_1_apply(u1, x.add(r * k + (b + 1) * 32), acc1[r]);
                offset0[r] += q4_1_min_term::<L>(w0, sums[r * bpr + b]);
                offset1[r] += q4_1_min_term::<L>(w1, sums[r * bpr + b + 1]);
            }
        }
        b += 2;
    }
    if b < n_blocks {
        // SAFETY: `b < n_blocks <= w_row.len() / Q4_1_BYTES`: block `b` lies inside `w_row`.
        let w0 = unsafe { w.add(b * Q4_1_BYTES) };
        // SAFETY: `w0` starts a whole Q4_1 block of `w_row` (above); the caller guarantees
        // `L`'s instruction set.
        let u0 = unsafe { L::q4_1_unpack(w0) };
        for r in 0..R {
            // SAFETY: `r < R` and `(b + 1) * 32 <= k`: the 32 floats at `x + r * k + 32 * b`
            // lie in row `r` of `xs` (`R * k` values by the contract).
            unsafe {
                acc0[r] = L::q4_1_apply(u0, x.add(r * k + b * 32), acc0[r]);
                offset0[r] += q4_1_min_term::<L>(w0, sums[r * bpr + b]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: the caller guarantees `L`'s instruction set.
        out[r] = unsafe { acc0[r].add(acc1[r]).reduce() } + offset0[r] + offset1[r];
    }
}

/// Q8_0 row dot product with two independent accumulator chains.
///
/// # Safety
/// The CPU must support `L`'s instruction set. The slices may have any lengths: only the
/// blocks that both `w_row` and `x` cover are read.
#[inline(always)]
pub(super) unsafe fn dot_q8_0<L: BlockLanes>(w_row: &[u8], x: &[f32]) -> f32 {
    let n_blocks = (w_row.len() / Q8_0_BYTES).min(x.len() / 32);
    let (w, x) = (w_row.as_ptr(), x.as_ptr());
    // SAFETY: the caller guarantees `L`'s instruction set.
    let (mut acc0, mut acc1) = unsafe { (L::zero(), L::zero()) };
    let mut b = 0;
    while b + 2 <= n_blocks {
        // SAFETY: `b + 1 < n_blocks`: blocks `b` and `b + 1` lie inside `w_row` (`n_blocks <=
        // w_row.len() / Q8_0_BYTES`) and floats `32 * b..32 * (b + 2)` inside `x` (`n_blocks <=
        // x.len() / 32`); the caller guarantees `L`'s instruction set.
        unsafe {
            acc0 = L::q8_0_apply(L::q8_0_unpack(w.add(b * Q8_0_BYTES)), x.add(b * 32), acc0);
            acc1 = L::q8_0_apply(
                L::q8_0_unpack(w.add((b + 1) * Q8_0_BYTES)),
                x.add((b + 1) * 32),
                acc1,
            );
        }
        b += 2;
    }
    if b < n_blocks {
        // SAFETY: `b < n_blocks`: block `b` lies inside `w_row` and floats `32 * b..32 * b + 32`
        // inside `x`; the caller guarantees `L`'s instruction set.
        acc0 = unsafe { L::q8_0_apply(L::q8_0_unpack(w.add(b * Q8_0_BYTES)), x.add(b * 32), acc0) };
    }
    // SAFETY: the caller guarantees `L`'s instruction set.
    unsafe { acc0.add(acc1).reduce() }
}

/// Q8_0 weight row times several input rows, bit-identical to [`dot_q8_0`] per row.
///
/// # Safety
/// The CPU must support `L`'s instruction set, and `xs` must hold `out.len()` rows of `k`
/// values (`xs.len() >= out.len() * k`). `w_row` may have any length.
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
        // SAFETY: the caller guarantees `L`'s instruction set and `out.len() * k` values in the
        // whole `xs`; `first + rows <= out.len()`, so the `xs` from row `first` on holds the
        // `rows * k` values each pass (`R = rows`; `rows >= 1`, so `_` is 1) reads.
        unsafe {
            match rows {
                4 => q8_0_pass::<L, 4>(w_row, xs, k, out),
                3 => q8_0_pass::<L, 3>(w_row, xs, k, out),
                2 => q8_0_pass::<L, 2>(w_row, xs, k, out),
                _ => q8_0_pass::<L, 1>(w_row, xs, k, out),
            }
        }
    }
}

/// `R` rows of [`dot_q8_0_rows`], with the accumulators in registers.
///
/// # Safety
/// The CPU must support `L`'s instruction set, and `xs` must hold `R` rows of `k` values
/// (`xs.len() >= R * k`). `out` is indexed with bounds checks.
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
    // SAFETY: the caller guarantees `L`'s instruction set.
    let mut acc0 = unsafe { [L::zero(); R] };
    // SAFETY: as above.
    let mut acc1 = unsafe { [L::zero(); R] };
    let mut b = 0;
    while b + 2 <= n_blocks {
        // SAFETY: `b < n_blocks <= w_row.len() / Q8_0_BYTES`: block `b` lies inside `w_row`;
        // the caller guarantees `L`'s instruction set.
        let u0 = unsafe { L::q8_0_unpack(w.add(b * Q8_0_BYTES)) };
        // SAFETY: as above for block `b + 1 < n_blocks`.
        let u1 = unsafe { L::q8_0_unpack(w.add((b + 1) * Q8_0_BYTES)) };
        for r in 0..R {
            // SAFETY: `r < R` and `(b + 2) * 32 <= n_blocks * 32 <= k`, so the 32 floats at
            // `x + r * k + 32 * b` and at `x + r * k + 32 * (b + 1)` lie in row `r` of `xs`,
            // which holds `R * k` values by the contract.
            unsafe {
                acc0[r] = L::q8_0_apply(u0, x.add(r * k + b * 32), acc0[r]);
                acc1[r] = L::q8_0_apply(u1, x.add(r * k + (b + 1) * 32), acc1[r]);
            }
        }
        b += 2;
    }
    if b < n_blocks {
        // SAFETY: `b < n_blocks <= w_row.len() / Q8_0_BYTES`: block `b` lies inside `w_row`;
        // the caller guarantees `L`'s instruction set.
        let u0 = unsafe { L::q8_0_unpack(w.add(b * Q8_0_BYTES)) };
        for r in 0..R {
            // SAFETY: `r < R` and `(b + 1) * 32 <= k`: the 32 floats at `x + r * k + 32 * b`
            // lie in row `r` of `xs` (`R * k` values by the contract).
            acc0[r] = unsafe { L::q8_0_apply(u0, x.add(r * k + b * 32), acc0[r]) };
        }
    }
    for r in 0..R {
        // SAFETY: the caller guarantees `L`'s instruction set.
        out[r] = unsafe { acc0[r].add(acc1[r]).reduce() };
    }
}
