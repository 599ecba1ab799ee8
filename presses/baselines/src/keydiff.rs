//! KeyDiff ([arXiv:2504.15364](https://arxiv.org/abs/2504.15364)) as kvpress computes it: a
//! token scores minus the cosine similarity of its key to the anchor, the mean of the
//! L2-normalised keys of its head, so the most distinctive keys are kept.

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::Result;
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The KeyDiff press.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyDiff {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl KeyDiff {
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

/// PyTorch's `F.normalize` epsilon: vectors are divided by `max(||x||, 1e-12)`.
const NORMALIZE_EPS: f64 = 1e-12;
/// PyTorch's `F.cosine_similarity` epsilon: each norm is clamped to at least `1e-8`.
const COSINE_EPS: f64 = 1e-8;

/// `vectors / max(||vectors||, eps)` along the last dimension.
fn divide_by_clamped_norm(vectors: &Tensor, eps: f64) -> Result<Tensor> {
    let norms = ops::vector_norms(vectors)?.clamp(eps, f64::INFINITY)?;
    Ok(vectors.broadcast_div(&norms.unsqueeze(candle_core::D::Minus1)?)?)
}

/// KeyDiff scores `(batch, n_kv_heads, n_tokens)` of keys `(batch, n_kv_heads, n_tokens,
/// head_dim)`: with `anchor = mean_t normalize(k_t)`, the score is `-cos(k_t, anchor)`, computed
/// as PyTorch 2 does (`sum(k / max(||k||, 1e-8) * a / max(||a||, 1e-8))`).
pub fn keydiff_scores(keys: &Tensor) -> Result<Tensor> {
    let keys = keys.to_dtype(DType::F32)?;
    let anchor = divide_by_clamped_norm(&keys, NORMALIZE_EPS)?.mean_keepdim(2)?;
    let keys_unit = divide_by_clamped_norm(&keys, COSINE_EPS)?;
    let anchor_unit = divide_by_clamped_norm(&anchor, COSINE_EPS)?;
    Ok(keys_unit
        .broadcast_mul(&anchor_unit)?
        .sum(candle_core::D::Minus1)?
        .neg()?)
}

impl Scorer for KeyDiff {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        keydiff_scores(input.keys)
    }
}

kvpress_core::scorer_press!(KeyDiff, "keydiff");
kvpress_core::register_press!(
    "keydiff",
    "keeps the keys least similar to the mean normalised key (KeyDiff)",
    || Box::new(KeyDiff::default())
);
