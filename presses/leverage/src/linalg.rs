//! The small dense linear algebra of leverage scores (k x k matrices, k the sketch size), in
//! f64: Cholesky factorisation with kvpress's adaptive jitter, and the inverse of a triangular
//! factor.

use kvpress_core::{Error, Result};

/// The lower Cholesky factor `L` (row-major `k x k`, `L Lᵀ = a`) of the symmetric matrix `a`,
/// or `None` when `a` is not (numerically) positive definite.
pub(crate) fn cholesky(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; k * k];
    for j in 0..k {
        let pivot = a[j * k + j] - l[j * k..j * k + j].iter().map(|x| x * x).sum::<f64>();
        if !(pivot > 0.0 && pivot.is_finite()) {
            return None;
        }
        let diagonal = pivot.sqrt();
        l[j * k + j] = diagonal;
        for i in j + 1..k {
            let dot: f64 = (0..j).map(|p| l[i * k + p] * l[j * k + p]).sum();
            l[i * k + j] = (a[i * k + j] - dot) / diagonal;
        }
    }
    Some(l)
}

/// kvpress's `chol_with_jitter(G, jitter=1e-2, max_tries=5)`: the Cholesky factor of
/// `g + jitter I`, the jitter starting at `1e-2` and growing tenfold after each failure, five
/// tries at most.
pub(crate) fn cholesky_with_jitter(g: &[f64], k: usize) -> Result<Vec<f64>> {
    let mut jitter = 1e-2f64;
    let mut shifted = g.to_vec();
    for _ in 0..5 {
        for (i, row) in shifted.chunks_exact_mut(k).enumerate() {
            row[i] = g[i * k + i] + jitter;
        }
        if let Some(l) = cholesky(&shifted, k) {
            return Ok(l);
        }
        jitter = (10.0 * jitter).max(1e-8);
    }
    Err(Error::InvalidArgument(format!(
        "the {k} x {k} sketched Gram matrix has no Cholesky factor even with a jitter of 100 \
         (non-finite keys?)"
    )))
}

/// The inverse of the lower-triangular `l` (row-major `k x k`, nonzero diagonal), itself lower
/// triangular.
pub(crate) fn lower_triangular_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let mut inverse = vec![0f64; k * k];
    for j in 0..k {
        inverse[j * k + j] = 1.0 / l[j * k + j];
        for i in j + 1..k {
            let sum: f64 = (j..i).map(|p| l[i * k + p] * inverse[p * k + j]).sum();
            inverse[i * k + j] = -sum / l[i * k + i];
        }
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_factors_and_inverts() {
        let a = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let l = cholesky(&a, 3).expect("positive definite");
        for i in 0..3 {
            for j in 0..3 {
                let product: f64 = (0..3).map(|p| l[i * 3 + p] * l[j * 3 + p]).sum();
                assert!((product - a[i * 3 + j]).abs() < 1e-12);
            }
        }
        let inverse = lower_triangular_inverse(&l, 3);
        for i in 0..3 {
            for j in 0..3 {
                let product: f64 = (0..3).map(|p| inverse[i * 3 + p] * l[p * 3 + j]).sum();
                assert!((product - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn the_jitter_rescues_a_singular_matrix() {
        assert!(cholesky(&[0.0; 4], 2).is_none());
        let l = cholesky_with_jitter(&[0.0; 4], 2).expect("jitter 1e-2");
        assert!((l[0] - 0.1).abs() < 1e-12 && (l[3] - 0.1).abs() < 1e-12);
        assert!(cholesky_with_jitter(&[f64::NAN; 4], 2).is_err());
    }
}
