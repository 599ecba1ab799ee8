//! The principal direction of a set of queries: the first right singular vector of the stacked
//! (uncentred) queries `X` (`N x d`), which is the eigenvector of largest eigenvalue of `XᵀX`,
//! computed here from the accumulated `XᵀX` by Jacobi rotations (f64; `d x d` is small).

/// Largest number of Jacobi sweeps; a symmetric matrix converges in well under 20.
const MAX_SWEEPS: usize = 100;

/// Eigenvalues and eigenvectors of the symmetric `n x n` matrix `a` (row-major) by cyclic Jacobi
/// rotations: `(values, vectors)` with `vectors[i * n + k]` the `i`-th component of the
/// eigenvector of `values[k]` (the columns are the eigenvectors), in no particular order.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: an n x n matrix");
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _ in 0..MAX_SWEEPS {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= f64::EPSILON * f64::EPSILON * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation J (J[p][p] = J[q][q] = c, J[p][q] = s, J[q][p] = -s) with
                // (Jᵀ A J)[p][q] = 0: t = tan(angle), the root of t² + 2θt - 1 of smaller size.
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The principal direction of a set of queries, from their sums.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The unit first right singular vector of the stacked queries, oriented so that the
    /// queries' mean projects on it non-negatively (`E⟨q, u⟩ ≥ 0`, the paper's orientation).
    pub direction: Vec<f64>,
    /// Its share of the queries' energy: largest eigenvalue of `XᵀX` over its trace (1 when
    /// every query lies on the direction).
    pub share: f64,
}

/// The principal direction of the queries whose `Σ q qᵀ` is `second_moment` (`d x d`) and whose
/// `Σ q` is `sum` (`d`).
pub fn principal_direction(second_moment: &[f64], sum: &[f64]) -> Principal {
    let d = sum.len();
    let (values, vectors) = symmetric_eigen(second_moment, d);
    let top = (0..d)
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap_or(0);
    let mut direction: Vec<f64> = (0..d).map(|i| vectors[i * d + top]).collect();
    let projection: f64 = direction.iter().zip(sum).map(|(u, s)| u * s).sum();
    if projection < 0.0 {
        direction.iter_mut().for_each(|u| *u = -*u);
    }
    let trace: f64 = (0..d).map(|i| second_moment[i * d + i]).sum();
    let share = if trace > 0.0 {
        values[top] / trace
    } else {
        0.0
    };
    Principal { direction, share }
}
