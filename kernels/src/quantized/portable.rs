//! Portable block kernels (any CPU).

use half::f16;

/// Bytes of a Q4_1 block: f16 scale `d`, f16 minimum `m`, 16 bytes holding 32 nibbles.
pub(super) const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_0 block: f16 scale `d`, 32 signed bytes.
pub(super) const Q8_0_BYTES: usize = 34;

/// Q4_1: element `i < 16` is the low nibble of byte `i`, element `i + 16` its high nibble; value
/// `d * q + m`.
///
/// # Safety
/// Always safe; `unsafe` only to share the kernel signature with the SIMD kernels.
pub(super) unsafe fn dot_q4_1(w_row: &[u8], x: &[f32], x_block_sums: &[f32]) -> f32 {
    let mut total = 0f32;
    for ((block, xb), x_sum) in w_row
        .chunks_exact(Q4_1_BYTES)
        .zip(x.chunks_exact(32))
        .zip(x_block_sums)
    {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let mut acc = 0f32;
        for (i, &q) in block[4..].iter().enumerate() {
            acc += (q & 0x0F) as f32 * xb[i] + (q >> 4) as f32 * xb[i + 16];
        }
        total += d * acc + m * x_sum;
    }
    total
}

/// Q8_0: value `d * q`.
///
/// # Safety
/// Always safe; `unsafe` only to share the kernel signature with the SIMD kernels.
pub(super) unsafe fn dot_q8_0(w_row: &[u8], x: &[f32], _x_block_sums: &[f32]) -> f32 {
    let mut total = 0f32;
    for (block, xb) in w_row.chunks_exact(Q8_0_BYTES).zip(x.chunks_exact(32)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let acc: f32 = block[2..]
            .iter()
            .zip(xb)
            .map(|(&q, &v)| q as i8 as f32 * v)
            .sum();
        total += d * acc;
    }
    total
}
