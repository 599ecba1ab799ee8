//! Approximate leverage scores of the pre-RoPE keys (kvpress's `LeverageScorePress`, from
//! Chari & Van Durme 2025, "Compactor", [arXiv:2507.08143](https://arxiv.org/abs/2507.08143)).
//!
//! Per KV head, the keys `K` (`n x d`, before RoPE) are centred over the tokens and sketched on
//! the right with a Gaussian `Φ` (`d x k`, scaled by `1/sqrt(k)`): `X = (K - mean) Φ`. A token's
//! score is its leverage in `X`, `x_iᵀ (XᵀX + jitter I)⁻¹ x_i`, computed through the Cholesky
//! factor `L` of `XᵀX` (kvpress's jitter `1e-2`, grown tenfold on failure) as `|L⁻¹ x_i|²`.
//! Scores are z-normalised over all heads of the layer together. Keys with an unusual direction
//! (outliers of the key geometry) score high and are kept. kvpress projects the hidden states
//! again for the pre-RoPE keys; here the cached keys are rotated back with the model's tables.
//!
//! `Φ` is what kvpress draws: the `(layer + 1)`-th `torch.randn(batch, n_kv_heads, d, k)` after
//! `torch.manual_seed(seed)`, reproduced bit for bit by [`crate::TorchGenerator`]. Layers are
//! drawn independently of the order they are scored in (the draw of layer `l` skips the `l`
//! draws before it), so wrappers that score a layer more than once (chunks, several ratios) see
//! the same `Φ` each time, where kvpress would draw a new one.

use std::ops::Range;

use candle_core::{Device, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use kvpress_kernels::{sgemm, GemmDims, MatMut, MatRef};
use serde::{Deserialize, Serialize};

use crate::linalg::{cholesky_with_jitter, lower_triangular_inverse};
use crate::pre_rope::{check_prefill, derotate};
use crate::zscore::z_normalise;
use crate::TorchGenerator;

/// The leverage-score press (`leverage_score`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeverageScore {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Columns `k` of the Gaussian sketch (1 to 4096).
    pub sketch_dimension: usize,
    /// `torch.manual_seed` before the prefill, from which the sketches are drawn (kvpress's
    /// reference fixtures use 0).
    pub seed: u64,
}

impl Default for LeverageScore {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            sketch_dimension: 48,
            seed: 0,
        }
    }
}

impl LeverageScore {
    fn check_parameters(&self) -> Result<()> {
        check_sketch_dimension("leverage_score", self.sketch_dimension)
    }
}

/// The largest sketch accepted (its Gram matrix has `k²` entries per head; a sketch wider than
/// the head dimension adds nothing).
const MAX_SKETCH_DIMENSION: usize = 4096;

/// Refuses a sketch of no columns, or one too wide to hold.
pub(crate) fn check_sketch_dimension(press: &str, sketch_dimension: usize) -> Result<()> {
    if !(1..=MAX_SKETCH_DIMENSION).contains(&sketch_dimension) {
        return Err(Error::InvalidArgument(format!(
            "{press}: sketch_dimension {sketch_dimension} must be in 1..={MAX_SKETCH_DIMENSION} \
             (kvpress's default is 48)"
        )));
    }
    Ok(())
}

/// The unscaled Gaussian sketch kvpress draws for layer `layer_idx`: the `(layer_idx + 1)`-th
/// `torch.randn(batch, n_kv_heads, head_dim, sketch_dimension)` after `torch.manual_seed(seed)`,
/// row-major (kvpress multiplies it by `1/sqrt(sketch_dimension)`).
pub fn leverage_sketch(seed: u64, layer_idx: usize, shape: [usize; 4]) -> Vec<f32> {
    let n = shape.iter().product();
    let mut generator = TorchGenerator::new(seed);
    for _ in 0..layer_idx {
        generator.skip_randn(n);
    }
    generator.randn(n)
}

/// Raw leverage scores (before z-normalisation), `batch * n_kv_heads` rows of `n` tokens, of
/// the pre-RoPE keys `keys` `(batch, n_kv_heads, n, d)` (row-major) under the unscaled sketch
/// `sketch` `(batch, n_kv_heads, d, k)`.
///
/// The products with the sketch and with `L⁻ᵀ` run in f32 like kvpress's; the Gram matrix
/// `XᵀX` is accumulated and factored in f64. kvpress accumulates it in f32, which is unstable:
/// the Gram matrices of real keys have condition numbers up to ~1e7, so its scores move by a few
/// percent when the keys change by one rounding step; these move by ~1e-5 relative.
pub fn leverage_scores(
    keys: &[f32],
    sketch: &[f32],
    [rows, n, d, k]: [usize; 4],
) -> Result<Vec<f64>> {
    if keys.len() != rows * n * d || sketch.len() != rows * d * k || n == 0 {
        return Err(Error::Shape(format!(
            "leverage scores need keys ({rows}, {n}, {d}) and a sketch ({rows}, {d}, {k}), \
             got {} and {} values",
            keys.len(),
            sketch.len()
        )));
    }
    // kvpress scales the float32 draw in float32.
    let scale = (1.0 / (k as f64).sqrt()) as f32;
    let mut scores = Vec::with_capacity(rows * n);
    for (head_keys, head_sketch) in keys.chunks_exact(n * d).zip(sketch.chunks_exact(d * k)) {
        let phi: Vec<f32> = head_sketch.iter().map(|&x| x * scale).collect();
        let x = product(&centred(head_keys, d), &phi, [n, d, k]);
        let x64 = Tensor::from_vec(
            x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>(),
            (n, k),
            &Device::Cpu,
        )?;
        let gram = x64.t()?.matmul(&x64)?.flatten_all()?.to_vec1::<f64>()?;
        let l = cholesky_with_jitter(&gram, k)?;
        let inverse = lower_triangular_inverse(&l, k);
        let inverse_t: Vec<f32> = (0..k * k)
            .map(|ij| inverse[(ij % k) * k + ij / k] as f32)
            .collect();
        // x_iᵀ (L Lᵀ)⁻¹ x_i = |L⁻¹ x_i|²: the rows of X L⁻ᵀ, squared and summed.
        let whitened = product(&x, &inverse_t, [n, k, k]);
        scores.extend(whitened.chunks_exact(k).map(|z| {
            z.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .max(0.0)
        }));
    }
    Ok(scores)
}

/// The rows of `x` (`n x d`) minus their mean (computed in f64).
fn centred(x: &[f32], d: usize) -> Vec<f32> {
    let n = x.len() / d;
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m += f64::from(v));
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    x.chunks_exact(d)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m) as f32)
        })
        .collect()
}

/// `a b` for row-major `a` (`m x k`) and `b` (`k x n`), f32.
fn product(a: &[f32], b: &[f32], [m, k, n]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    sgemm(
        GemmDims { m, n, k },
        1.0,
        MatRef {
            data: a,
            row_stride: k,
            transposed: false,
        },
        MatRef {
            data: b,
            row_stride: n,
            transposed: false,
        },
        0.0,
        MatMut {
            data: &mut out,
            row_stride: n,
        },
    );
    out
}

/// kvpress's leverage scorer on tokens `range` of a prefill: z-normalised leverage of their
/// pre-RoPE keys (centred over `range`), `batch * n_kv_heads` rows of `range.len()` tokens, in
/// f32.
pub(crate) fn leverage_z_scores(
    input: &PressInput<'_>,
    sketch_dimension: usize,
    seed: u64,
    range: Range<usize>,
) -> Result<Vec<f32>> {
    let (batch, n_kv_heads, _, d) = input.keys.dims4()?;
    let n = range.len();
    let keys = input.keys.narrow(2, range.start, n)?;
    let pre_rope = derotate(&keys, input.rotary, input.query_position + range.start)?;
    let shape = [batch, n_kv_heads, d, sketch_dimension];
    let sketch = leverage_sketch(seed, input.layer_idx, shape);
    let raw = leverage_scores(
        &pre_rope,
        &sketch,
        [batch * n_kv_heads, n, d, sketch_dimension],
    )?;
    Ok(z_normalise(&raw))
}

impl Scorer for LeverageScore {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        check_prefill("leverage_score", input)?;
        let (batch, n_kv_heads, n, _) = input.keys.dims4()?;
        let z = leverage_z_scores(input, self.sketch_dimension, self.seed, 0..n)?;
        Ok(Tensor::from_vec(
            z,
            (batch, n_kv_heads, n),
            input.keys.device(),
        )?)
    }
}

kvpress_core::scorer_press!(LeverageScore, "leverage_score");
kvpress_core::register_press!(
    "leverage_score",
    "keeps the keys of highest (sketched) statistical leverage among the pre-RoPE keys (Compactor's geometry score)",
    || Box::new(LeverageScore::default())
);
