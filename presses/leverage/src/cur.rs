//! CurDKV ([arXiv:2509.15038](https://arxiv.org/abs/2509.15038)) as kvpress's `CURPress`
//! computes it: approximate leverage scores of keys (`|k|²`) and values (`|v|²`), optionally
//! after a random Gaussian projection to 20 dimensions, normalised within local windows of
//! `local_window_size` tokens, combined as `leverage_type` says, normalised to sum to 1 per head,
//! and the first `num_sinks` tokens set to 1 (kept).
//!
//! The random projection is kvpress's `torch.randn(head_dim, 20) / sqrt(20)`, one draw per
//! layer: the `(layer + 1)`-th such draw after `torch.manual_seed(seed)`
//! ([`crate::TorchGenerator`]), the same for every head and batch entry.

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use kvpress_kernels::{sgemm, GemmDims, MatMut, MatRef};
use serde::{Deserialize, Serialize};

use crate::TorchGenerator;

/// Columns of the random projection (kvpress's `r`).
const RANDOM_DIMENSION: usize = 20;

/// How key and value leverage combine into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeverageType {
    /// Key leverage only.
    Key,
    /// Value leverage only.
    Value,
    /// Their mean.
    KvAvg,
    /// Their product (kvpress's default).
    #[default]
    KvProduct,
}

/// The CUR press (`cur`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cur {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// First tokens always kept (scored 1).
    pub num_sinks: usize,
    /// How key and value leverage combine.
    pub leverage_type: LeverageType,
    /// Whether keys and values are first projected by a random Gaussian matrix.
    pub use_random_leverage: bool,
    /// Whether leverage is normalised within local windows of `local_window_size` tokens.
    pub use_local_approximation: bool,
    /// Tokens per local window (at least 1).
    pub local_window_size: usize,
    /// `torch.manual_seed` before the prefill, from which the random projections are drawn.
    pub seed: u64,
}

impl Default for Cur {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            num_sinks: 4,
            leverage_type: LeverageType::KvProduct,
            use_random_leverage: false,
            use_local_approximation: true,
            local_window_size: 16,
            seed: 0,
        }
    }
}

impl Cur {
    fn check_parameters(&self) -> Result<()> {
        if self.local_window_size == 0 {
            return Err(Error::InvalidArgument(
                "cur: local_window_size must be at least 1 (kvpress's default is 16)".to_string(),
            ));
        }
        Ok(())
    }

    /// `|x|²` of every row of `vectors` `(rows, d)`, after the random projection when asked.
    fn squared_norms(&self, vectors: &[f32], d: usize, projection: Option<&[f32]>) -> Vec<f32> {
        let Some(projection) = projection else {
            return vectors.chunks_exact(d).map(squared_norm).collect();
        };
        let rows = vectors.len() / d;
        let mut projected = vec![0f32; rows * RANDOM_DIMENSION];
        sgemm(
            GemmDims {
                m: rows,
                n: RANDOM_DIMENSION,
                k: d,
            },
            1.0,
            MatRef {
                data: vectors,
                row_stride: d,
                transposed: false,
            },
            MatRef {
                data: projection,
                row_stride: RANDOM_DIMENSION,
                transposed: false,
            },
            0.0,
            MatMut {
                data: &mut projected,
                row_stride: RANDOM_DIMENSION,
            },
        );
        projected
            .chunks_exact(RANDOM_DIMENSION)
            .map(squared_norm)
            .collect()
    }

    /// One head's scores from its key and value leverage.
    fn head_scores(&self, mut k2: Vec<f32>, mut v2: Vec<f32>) -> Vec<f32> {
        if self.use_local_approximation {
            normalise_windows(&mut k2, self.local_window_size);
            normalise_windows(&mut v2, self.local_window_size);
        }
        let mut scores: Vec<f32> = match self.leverage_type {
            LeverageType::Key => k2,
            LeverageType::Value => v2,
            LeverageType::KvAvg => k2.iter().zip(&v2).map(|(k, v)| (k + v) / 2.0).collect(),
            LeverageType::KvProduct => k2.iter().zip(&v2).map(|(k, v)| k * v).collect(),
        };
        let total: f32 = scores.iter().sum();
        scores.iter_mut().for_each(|s| *s = divide(*s, total));
        let sinks = self.num_sinks.min(scores.len());
        scores[..sinks].fill(1.0);
        scores
    }
}

/// `|x|²`.
fn squared_norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

/// `a / b`, with `0 / 0` read as 0 (kvpress would give NaN for an all-zero window or head).
fn divide(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Divides every value by the sum of its window of `window` tokens (the last window is padded
/// with zeros in kvpress, which does not change its sum).
fn normalise_windows(values: &mut [f32], window: usize) {
    for chunk in values.chunks_mut(window) {
        let total: f32 = chunk.iter().sum();
        chunk.iter_mut().for_each(|x| *x = divide(*x, total));
    }
}

/// The random projection kvpress draws for layer `layer_idx`: the `(layer_idx + 1)`-th
/// `torch.randn(head_dim, 20)` after `torch.manual_seed(seed)`, divided by `sqrt(20)` in f32.
pub fn cur_projection(seed: u64, layer_idx: usize, head_dim: usize) -> Vec<f32> {
    let n = head_dim * RANDOM_DIMENSION;
    let mut generator = TorchGenerator::new(seed);
    for _ in 0..layer_idx {
        generator.skip_randn(n);
    }
    let scale = (RANDOM_DIMENSION as f64).sqrt() as f32;
    generator.randn(n).into_iter().map(|x| x / scale).collect()
}

impl Scorer for Cur {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        let (batch, n_kv_heads, n, d) = input.keys.dims4()?;
        let read = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let (keys, values) = (read(input.keys)?, read(input.values)?);
        let projection = self
            .use_random_leverage
            .then(|| cur_projection(self.seed, input.layer_idx, d));
        let k2 = self.squared_norms(&keys, d, projection.as_deref());
        let v2 = self.squared_norms(&values, d, projection.as_deref());
        let mut scores = Vec::with_capacity(batch * n_kv_heads * n);
        for (k, v) in k2.chunks_exact(n.max(1)).zip(v2.chunks_exact(n.max(1))) {
            scores.extend(self.head_scores(k.to_vec(), v.to_vec()));
        }
        Ok(Tensor::from_vec(
            scores,
            (batch, n_kv_heads, n),
            input.keys.device(),
        )?)
    }
}

kvpress_core::scorer_press!(Cur, "cur");
kvpress_core::register_press!(
    "cur",
    "keeps the tokens of largest locally normalised key and value leverage (CurDKV)",
    || Box::new(Cur::default())
);
