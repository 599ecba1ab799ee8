//! `y = W x` for a row-major f32 `W (n, k)` and a few input vectors: the decode-step product,
//! bound by memory bandwidth, so it streams each weight row once for all inputs and splits rows
//! across rayon's threads.

use rayon::prelude::*;

/// Parallel tasks per thread (several, so that uneven progress evens out).
const TASKS_PER_THREAD: usize = 4;
/// Fewest weight rows per task.
const MIN_ROWS_PER_TASK: usize = 16;

/// `out[r * n + j] = dot(w[j], xs[r])` for every input `r` (`xs` holds `m` rows of `k`).
pub fn matvec_f32(w: &[f32], n: usize, k: usize, xs: &[f32], m: usize, out: &mut [f32]) {
    assert!(
        w.len() >= n * k && xs.len() >= m * k,
        "matvec: slices too short"
    );
    for_each_output_row(n, m, out, |j, dst| {
        let row = &w[j * k..(j + 1) * k];
        for (r, d) in dst.iter_mut().enumerate() {
            *d = dot(row, &xs[r * k..(r + 1) * k]);
        }
    });
}

/// Parallel driver of matrix-vector kernels: calls `row_kernel(j, outputs)` for every weight row
/// `j < n`, where `outputs[r]` receives the product of row `j` with input `r < m`; the results
/// land in `out` laid out `(m, n)`. Each weight row is visited once, by one thread.
pub fn for_each_output_row(
    n: usize,
    m: usize,
    out: &mut [f32],
    row_kernel: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert!(out.len() >= m * n, "matvec: output too short");
    let rows_per_task = n
        .div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
        .max(MIN_ROWS_PER_TASK);
    if m == 1 {
        out[..n]
            .par_chunks_mut(rows_per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, d) in chunk.iter_mut().enumerate() {
                    row_kernel(task * rows_per_task + i, std::slice::from_mut(d));
                }
            });
        return;
    }
    let mut by_row = vec![0f32; n * m];
    by_row
        .par_chunks_mut(rows_per_task * m)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, dst) in chunk.chunks_mut(m).enumerate() {
                row_kernel(task * rows_per_task + i, dst);
            }
        });
    for j in 0..n {
        for r in 0..m {
            out[r * n + j] = by_row[j * m + r];
        }
    }
}

/// Dot product with 16 independent lanes (vectorised with AVX2 when the CPU has it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: `avx2` and `fma`, the features `dot_avx2` is compiled for, were detected
            // at run time just above; it has no other precondition.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_generic(a, b)
}

/// [`dot_generic`] compiled with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (check with `is_x86_feature_detected!`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[inline(always)]
pub(super) fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut a_chunks = a.chunks_exact(16);
    let mut b_chunks = b.chunks_exact(16);
    for (ca, cb) in (&mut a_chunks).zip(&mut b_chunks) {
        for i in 0..16 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    // Pairwise reduction: a chain of 15 dependent additions would dominate short dot products.
    for width in [8, 4, 2, 1] {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_products() {
        let (n, k, m) = (300, 37, 2);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.013).sin()).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut out = vec![0f32; m * n];
        matvec_f32(&w, n, k, &xs, m, &mut out);
        for r in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| w[j * k + p] * xs[r * k + p]).sum();
                assert!((out[r * n + j] - want).abs() < 1e-4);
            }
        }
    }
}
