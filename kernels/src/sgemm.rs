//! `C = alpha * op(A) op(B) + beta * C` on row-major f32 slices.

use std::ffi::c_int;

use rayon::prelude::*;

use super::blas::{blas, Blas, NO_TRANS, ROW_MAJOR, TRANS};

/// Sizes of a product: `C` is `m x n`, `A` is `m x k`, `B` is `k x n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmDims {
    /// Rows of `C` and `A`.
    pub m: usize,
    /// Columns of `C` and `B`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
}

/// A read-only row-major matrix: element `(i, j)` is `data[i * row_stride + j]`, or, when
/// `transposed`, the matrix is the transpose of the stored one (element `(i, j)` is
/// `data[j * row_stride + i]`).
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// Storage.
    pub data: &'a [f32],
    /// Distance between consecutive stored rows.
    pub row_stride: usize,
    /// Whether the logical matrix is the transpose of the stored rows.
    pub transposed: bool,
}

/// A writable row-major matrix: element `(i, j)` is `data[i * row_stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    /// Storage.
    pub data: &'a mut [f32],
    /// Distance between consecutive rows.
    pub row_stride: usize,
}

/// `C (m x n) = alpha * A (m x k) * B (k x n) + beta * C`. Uses the run-time BLAS when present,
/// else the `gemm` crate with rayon threads.
///
/// # Panics
/// If a slice is too short for the dimensions and strides (a programming error, not user input).
pub fn sgemm(dims: GemmDims, alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    let GemmDims { m, n, k } = dims;
    if m == 0 || n == 0 {
        return;
    }
    check_bounds(a, m, k, "A");
    check_bounds(b, k, n, "B");
    assert!(c.data.len() >= (m - 1) * c.row_stride + n, "C is too short");
    if let Some(blas) = blas() {
        let threads = rayon::current_num_threads();
        if threads > 1 && m * n * k >= MIN_PARALLEL_WORK {
            split_across_threads(blas, threads, dims, alpha, a, b, beta, c);
            return;
        }
        blas_sgemm(blas, dims, alpha, a, b, beta, c);
        return;
    }
    gemm_crate_sgemm(dims, alpha, a, b, beta, c);
}

/// Products smaller than this (m * n * k) run on one thread.
const MIN_PARALLEL_WORK: usize = 1 << 18;
/// Fewest rows of C one thread takes.
const MIN_ROWS_PER_THREAD: usize = 4;

/// Runs one single-threaded BLAS product per rayon thread, each on a block of rows of C (when C
/// has many rows) or a block of its columns (decode steps: one row, many columns).
#[allow(clippy::too_many_arguments)]
fn split_across_threads(
    blas: &Blas,
    threads: usize,
    dims: GemmDims,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) {
    if dims.m >= threads * MIN_ROWS_PER_THREAD {
        split_rows(blas, threads, dims, alpha, a, b, beta, c);
    } else {
        split_columns(blas, threads, dims, alpha, a, b, beta, c);
    }
}

/// [`split_across_threads`] over blocks of rows of C: each thread writes its rows in place.
#[allow(clippy::too_many_arguments)]
fn split_rows(
    blas: &Blas,
    threads: usize,
    dims: GemmDims,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) {
    let GemmDims { m, n, k } = dims;
    let row_stride = c.row_stride;
    let rows_per_part = m.div_ceil(threads);
    let parts: Vec<(usize, &mut [f32])> = c
        .data
        .chunks_mut(rows_per_part * row_stride)
        .enumerate()
        .map(|(i, chunk)| (i * rows_per_part, chunk))
        .collect();
    parts.into_par_iter().for_each(|(first, chunk)| {
        let rows = rows_per_part.min(m - first);
        let offset = if a.transposed {
            first
        } else {
            first * a.row_stride
        };
        let a_part = MatRef {
            data: &a.data[offset..],
            ..a
        };
        blas_sgemm(
            blas,
            GemmDims { m: rows, n, k },
            alpha,
            a_part,
            b,
            beta,
            MatMut {
                data: chunk,
                row_stride,
            },
        );
    });
}

/// [`split_across_threads`] over blocks of columns of C. Column blocks of C are interleaved in
/// memory, so each thread computes into its own output buffer, copied back afterwards.
#[allow(clippy::too_many_arguments)]
fn split_columns(
    blas: &Blas,
    threads: usize,
    dims: GemmDims,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) {
    let GemmDims { m, n, k } = dims;
    let row_stride = c.row_stride;
    let cols_per_part = n.div_ceil(threads);
    let c_data = &*c.data;
    let results: Vec<(usize, usize, Vec<f32>)> = (0..n.div_ceil(cols_per_part))
        .into_par_iter()
        .map(|part| {
            let first = part * cols_per_part;
            let cols = cols_per_part.min(n - first);
            let offset = if b.transposed {
                first * b.row_stride
            } else {
                first
            };
            let b_part = MatRef {
                data: &b.data[offset..],
                ..b
            };
            let mut out = vec![0f32; m * cols];
            if beta != 0.0 {
                for i in 0..m {
                    out[i * cols..(i + 1) * cols].copy_from_slice(
                        &c_data[i * row_stride + first..i * row_stride + first + cols],
                    );
                }
            }
            blas_sgemm(
                blas,
                GemmDims { m, n: cols, k },
                alpha,
                a,
                b_part,
                beta,
                MatMut {
                    data: &mut out,
                    row_stride: cols,
                },
            );
            (first, cols, out)
        })
        .collect();
    for (first, cols, out) in results {
        for i in 0..m {
            c.data[i * row_stride + first..i * row_stride + first + cols]
                .copy_from_slice(&out[i * cols..(i + 1) * cols]);
        }
    }
}

fn blas_sgemm(
    blas: &Blas,
    dims: GemmDims,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) {
    let GemmDims { m, n, k } = dims;
    let trans = |t: bool| if t { TRANS } else { NO_TRANS };
    // SAFETY: `sgemm` asserted (`check_bounds` and the assert on C) that A holds `m x k`, B
    // `k x n` and C `m x n` elements at their row strides, each row stride at least a stored
    // row; `split_across_threads` passes row or column blocks of those same operands (or a
    // private `m x cols` buffer for C), which stay inside them. CBLAS reads A and B and writes
    // C within exactly those elements; C is borrowed mutably, so it overlaps neither A nor B.
    // `blas.sgemm` is `cblas_sgemm` of a library `Blas` keeps loaded.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            trans(a.transposed),
            trans(b.transposed),
            m as c_int,
            n as c_int,
            k as c_int,
            alpha,
            a.data.as_ptr(),
            a.row_stride as c_int,
            b.data.as_ptr(),
            b.row_stride as c_int,
            beta,
            c.data.as_mut_ptr(),
            c.row_stride as c_int,
        )
    };
}

/// The pure-Rust fallback: the `gemm` crate on rayon's threads.
fn gemm_crate_sgemm(
    dims: GemmDims,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) {
    let GemmDims { m, n, k } = dims;
    let (a_rs, a_cs) = strides(a);
    let (b_rs, b_cs) = strides(b);
    // SAFETY: the callers (`sgemm`, and in tests the same operands after `sgemm` checked them)
    // pass matrices that `check_bounds` and the assert on C showed to hold `m x k` (A), `k x n`
    // (B) and `m x n` (C) elements at the strides given here (when `m` or `n` is 0 nothing is
    // checked, and gemm returns without touching memory), so gemm reads and writes only inside
    // the slices; C is borrowed mutably, so it overlaps neither A nor B. Note gemm's
    // convention: dst = alpha*dst + beta*lhs*rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            1,
            c.row_stride as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// `(row stride, column stride)` of the logical matrix.
fn strides(m: MatRef<'_>) -> (isize, isize) {
    if m.transposed {
        (1, m.row_stride as isize)
    } else {
        (m.row_stride as isize, 1)
    }
}

fn check_bounds(m: MatRef<'_>, rows: usize, cols: usize, name: &str) {
    let (stored_rows, stored_cols) = if m.transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    if stored_rows == 0 || stored_cols == 0 {
        return;
    }
    assert!(
        stored_cols <= m.row_stride,
        "{name}: row stride shorter than a row"
    );
    assert!(
        m.data.len() >= (stored_rows - 1) * m.row_stride + stored_cols,
        "{name} is too short"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b_t: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b_t[j * k + p]).sum();
            }
        }
        c
    }

    /// Runs `product` through [`sgemm`] (the BLAS when one is installed) and through the `gemm`
    /// crate fallback, so that both back ends are tested on every machine.
    fn both_backends(
        dims: GemmDims,
        alpha: f32,
        a: MatRef<'_>,
        b: MatRef<'_>,
        beta: f32,
        c: &[f32],
    ) -> [Vec<f32>; 2] {
        let n = dims.n;
        let mut via_dispatch = c.to_vec();
        sgemm(
            dims,
            alpha,
            a,
            b,
            beta,
            MatMut {
                data: &mut via_dispatch,
                row_stride: n,
            },
        );
        let mut via_gemm = c.to_vec();
        gemm_crate_sgemm(
            dims,
            alpha,
            a,
            b,
            beta,
            MatMut {
                data: &mut via_gemm,
                row_stride: n,
            },
        );
        [via_dispatch, via_gemm]
    }

    fn assert_close(got: &[f32], want: impl IntoIterator<Item = f32>, tolerance: f32) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tolerance, "{g} vs {w}");
        }
    }

    fn row_major(data: &[f32], row_stride: usize) -> MatRef<'_> {
        MatRef {
            data,
            row_stride,
            transposed: false,
        }
    }

    fn transposed(data: &[f32], row_stride: usize) -> MatRef<'_> {
        MatRef {
            data,
            row_stride,
            transposed: true,
        }
    }

    #[test]
    fn large_products_split_across_threads_match_naive() {
        let (m, n, k) = (70, 300, 40);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b_t: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b_t);
        for rows in [m, 1] {
            let dims = GemmDims { m: rows, n, k };
            for got in both_backends(
                dims,
                1.0,
                row_major(&a, k),
                transposed(&b_t, k),
                0.0,
                &vec![0.0; rows * n],
            ) {
                assert_close(&got, want[..rows * n].iter().copied(), 1e-4);
            }
        }
    }

    #[test]
    fn matches_naive_product_with_transposes_alpha_and_beta() {
        let (m, n, k) = (5, 7, 3);
        let dims = GemmDims { m, n, k };
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b_t: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b_t);
        for c in both_backends(
            dims,
            2.0,
            row_major(&a, k),
            transposed(&b_t, k),
            0.5,
            &vec![1.0; m * n],
        ) {
            assert_close(&c, want.iter().map(|w| 2.0 * w + 0.5), 1e-5);
        }
        // B given untransposed (k x n), A given transposed (stored k x m).
        let b: Vec<f32> = (0..k * n).map(|i| b_t[(i % n) * k + i / n]).collect();
        let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        for c in both_backends(
            dims,
            1.0,
            transposed(&a_t, m),
            row_major(&b, n),
            0.0,
            &vec![0.0; m * n],
        ) {
            assert_close(&c, want.iter().copied(), 1e-5);
        }
    }
}
