//! Vectorisable row softmax with a polynomial `exp` (Cephes `expf`, relative error about 2e-7).

/// Softmax over `row[..visible]` in place; `row[visible..]` (future keys) becomes 0.
pub fn masked_softmax(row: &mut [f32], visible: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `avx2` and `fma`, the features `masked_softmax_avx2` is compiled for, were detected
            // at run time just above; it has no other precondition.
            return unsafe { masked_softmax_avx2(row, visible) };
        }
    }
    masked_softmax_generic(row, visible)
}

/// [`masked_softmax_generic`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (check with `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_softmax_avx2(row: &mut [f32], visible: usize) {
    masked_softmax_generic(row, visible)
}

#[inline(always)]
fn masked_softmax_generic(row: &mut [f32], visible: usize) {
    let (_, sum) = exp_and_sum_generic(row, visible);
    let inv = 1.0 / sum;
    let visible = visible.min(row.len());
    row[..visible].iter_mut().for_each(|x| *x *= inv);
}

/// [`exp_and_sum_generic`], vectorised with AVX2 when the CPU has it.
pub(super) fn exp_and_sum(row: &mut [f32], visible: usize) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `avx2` and `fma`, the features `exp_and_sum_avx2` is compiled for, were detected
            // at run time just above; it has no other precondition.
            return unsafe { exp_and_sum_avx2(row, visible) };
        }
    }
    exp_and_sum_generic(row, visible)
}

/// [`exp_and_sum_generic`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (check with `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_and_sum_avx2(row: &mut [f32], visible: usize) -> (f32, f32) {
    exp_and_sum_generic(row, visible)
}

/// The unnormalised half of [`masked_softmax`]: `row[..visible]` becomes `exp(x - max)` and the
/// rest 0; returns `(max, sum)` (`-inf` and 0 when nothing is visible), from which partial
/// softmaxes over chunks of keys are merged.
#[inline(always)]
pub(super) fn exp_and_sum_generic(row: &mut [f32], visible: usize) -> (f32, f32) {
    let (seen, future) = row.split_at_mut(visible.min(row.len()));
    let mut max_lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = seen.chunks_exact(8);
    for chunk in &mut chunks {
        for (m, &x) in max_lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&max_lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut lanes = [0f32; 8];
    let mut chunks = seen.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *lane += *x;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    future.fill(0.0);
    (max, sum)
}

/// `e^x` for `x <= 0` (softmax inputs after subtracting the max); inputs below -87 give ~0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    // 2^n: the low bits of `t` hold n; n + 127 (in 1..=254 after the clamp) is the exponent.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    y * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in 0..=2000 {
            let x = -80.0 + i as f32 * 0.045;
            let want = x.exp();
            let got = exp(x);
            assert!(((got - want) / want).abs() < 1e-6, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_masks_the_future() {
        let mut row: Vec<f32> = (0..21).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let original = row.clone();
        masked_softmax(&mut row, 13);
        let max = original[..13]
            .iter()
            .cloned()
            .fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = original[..13].iter().map(|x| (x - max).exp()).sum();
        for i in 0..13 {
            assert!((row[i] - (original[i] - max).exp() / total).abs() < 1e-6);
        }
        assert!(row[13..].iter().all(|&x| x == 0.0));
    }
}
