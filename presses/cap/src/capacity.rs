//! CAPKV's capacity leverage: for one query head with token weights `w` and value vectors `v`,
//! `A = I + Σ_t (w_t + ε) v_t v_tᵀ` and token `t` has leverage `v_tᵀ A⁻¹ v_t`, computed through
//! the Cholesky factor `L` of `A` (`A` is symmetric positive definite) as `|L⁻¹ v_t|²`.

use kvpress_core::{Error, Result};
use kvpress_kernels::{sgemm, GemmDims, MatMut, MatRef};

/// The lower Cholesky factor of the symmetric positive definite `a` (row-major `d x d`).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for j in 0..d {
        let pivot = a[j * d + j] - l[j * d..j * d + j].iter().map(|x| x * x).sum::<f64>();
        if !(pivot > 0.0 && pivot.is_finite()) {
            return None;
        }
        let diagonal = pivot.sqrt();
        l[j * d + j] = diagonal;
        for i in j + 1..d {
            let dot: f64 = (0..j).map(|p| l[i * d + p] * l[j * d + p]).sum();
            l[i * d + j] = (a[i * d + j] - dot) / diagonal;
        }
    }
    Some(l)
}

/// `(L⁻¹)ᵀ` of the lower-triangular `l` (row-major `d x d`).
fn inverse_transposed(l: &[f64], d: usize) -> Vec<f64> {
    let mut inverse = vec![0f64; d * d];
    for j in 0..d {
        inverse[j * d + j] = 1.0 / l[j * d + j];
        for i in j + 1..d {
            let sum: f64 = (j..i).map(|p| l[i * d + p] * inverse[p * d + j]).sum();
            inverse[i * d + j] = -sum / l[i * d + i];
        }
    }
    (0..d * d)
        .map(|ij| inverse[(ij % d) * d + ij / d])
        .collect()
}

/// `C = alpha Aᵀ A` for the row-major `rows x cols` matrix `a`, in f32 (`cols x cols`).
fn gram(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols * cols];
    sgemm(
        GemmDims {
            m: cols,
            n: cols,
            k: rows,
        },
        1.0,
        MatRef {
            data: a,
            row_stride: cols,
            transposed: true,
        },
        MatRef {
            data: a,
            row_stride: cols,
            transposed: false,
        },
        0.0,
        MatMut {
            data: &mut out,
            row_stride: cols,
        },
    );
    out
}

/// Leverage `v_tᵀ A_h⁻¹ v_t` of the `group` query heads sharing one KV head: `values` `(n, d)`,
/// `weights` `(group, n)`, `A_h = I + Σ_t (w_t + epsilon) v_t v_tᵀ`. Returns `(group, n)`
/// flattened. The products run in f32 as kvpress's do; the factorisation in f64.
pub(crate) fn capacity_leverage(
    values: &[f32],
    weights: &[f64],
    [group, n, d]: [usize; 3],
    epsilon: f64,
) -> Result<Vec<f64>> {
    // Each head's whitening (L⁻¹)ᵀ side by side: (d, group * d).
    let mut whitening = vec![0f32; d * group * d];
    for (h, head_weights) in weights.chunks_exact(n).enumerate() {
        let scaled: Vec<f32> = values
            .chunks_exact(d)
            .zip(head_weights)
            .flat_map(|(v, w)| {
                let root = (w + epsilon).sqrt() as f32;
                v.iter().map(move |x| x * root)
            })
            .collect();
        let mut capacity: Vec<f64> = gram(&scaled, n, d).into_iter().map(f64::from).collect();
        (0..d).for_each(|i| capacity[i * d + i] += 1.0);
        let l = cholesky(&capacity, d).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cap: the capacity matrix of head {h} is not positive definite (non-finite \
                 values or weights?)"
            ))
        })?;
        for (ij, w) in inverse_transposed(&l, d).into_iter().enumerate() {
            whitening[(ij / d) * group * d + h * d + ij % d] = w as f32;
        }
    }
    // v_tᵀ (L Lᵀ)⁻¹ v_t = |L⁻¹ v_t|²: the rows of V L⁻ᵀ, squared and summed, every head at once.
    let mut whitened = vec![0f32; n * group * d];
    sgemm(
        GemmDims {
            m: n,
            n: group * d,
            k: d,
        },
        1.0,
        MatRef {
            data: values,
            row_stride: d,
            transposed: false,
        },
        MatRef {
            data: &whitening,
            row_stride: group * d,
            transposed: false,
        },
        0.0,
        MatMut {
            data: &mut whitened,
            row_stride: group * d,
        },
    );
    let mut leverage = vec![0f64; group * n];
    for (t, row) in whitened.chunks_exact(group * d).enumerate() {
        for (h, part) in row.chunks_exact(d).enumerate() {
            leverage[h * n + t] = part.iter().map(|&z| f64::from(z) * f64::from(z)).sum();
        }
    }
    Ok(leverage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vᵀ A⁻¹ v` by solving `A x = v` with Gaussian elimination, the plain way.
    fn reference(values: &[f64], weights: &[f64], n: usize, d: usize, epsilon: f64) -> Vec<f64> {
        let mut a = vec![0f64; d * d];
        for i in 0..d {
            a[i * d + i] = 1.0;
        }
        for t in 0..n {
            let v = &values[t * d..(t + 1) * d];
            for i in 0..d {
                for j in 0..d {
                    a[i * d + j] += (weights[t] + epsilon) * v[i] * v[j];
                }
            }
        }
        (0..n)
            .map(|t| {
                let v = &values[t * d..(t + 1) * d];
                let (mut m, mut x) = (a.clone(), v.to_vec());
                for c in 0..d {
                    for r in c + 1..d {
                        let f = m[r * d + c] / m[c * d + c];
                        for k in c..d {
                            m[r * d + k] -= f * m[c * d + k];
                        }
                        x[r] -= f * x[c];
                    }
                }
                for c in (0..d).rev() {
                    let s: f64 = (c + 1..d).map(|k| m[c * d + k] * x[k]).sum();
                    x[c] = (x[c] - s) / m[c * d + c];
                }
                v.iter().zip(&x).map(|(a, b)| a * b).sum()
            })
            .collect()
    }

    #[test]
    fn leverage_equals_a_plain_solve() -> Result<()> {
        let (n, d) = (7, 3);
        let values: Vec<f64> = (0..n * d)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let weights: Vec<f64> = (0..n).map(|t| (t as f64 * 0.3).exp() / 5.0).collect();
        let values32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let values: Vec<f64> = values32.iter().map(|&v| f64::from(v)).collect();
        let got = capacity_leverage(&values32, &weights, [1, n, d], 1e-6)?;
        let want = reference(&values, &weights, n, d, 1e-6);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * w.abs(), "{g} vs {w}");
        }
        Ok(())
    }
}
