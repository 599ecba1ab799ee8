//! KNorm ([arXiv:2406.11430](https://arxiv.org/abs/2406.11430)): a token scores minus the L2
//! norm of its key, so the keys of smallest norm are kept (low-norm keys tend to receive the most
//! attention).

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::Result;
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The KNorm press.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knorm {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl Knorm {
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

/// KNorm scores `(batch, n_kv_heads, n_tokens)` of keys `(batch, n_kv_heads, n_tokens,
/// head_dim)`: `-||k||_2` in f32.
pub fn knorm_scores(keys: &Tensor) -> Result<Tensor> {
    Ok(ops::vector_norms(&keys.to_dtype(candle_core::DType::F32)?)?.neg()?)
}

impl Scorer for Knorm {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        knorm_scores(input.keys)
    }
}

kvpress_core::scorer_press!(Knorm, "knorm");
kvpress_core::register_press!(
    "knorm",
    "keeps the keys of smallest L2 norm (KNorm)",
    || { Box::new(Knorm::default()) }
);
