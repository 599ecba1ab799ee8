//! TOVA ([arXiv:2401.06104](https://arxiv.org/abs/2401.06104)) as kvpress computes it: a token
//! scores the attention the last query gives it, averaged over all query heads and shared by
//! every KV head; the last token itself is always kept.

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::Result;
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The TOVA press.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tova {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl Tova {
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

/// TOVA scores `(batch, n_kv_heads, n_tokens)` of `input`: the last query's attention over the
/// first `T - 1` keys (the model's weights when present), averaged over every query head,
/// repeated for each KV head, and the last token padded with the largest score plus one. Needs
/// at least two tokens.
pub fn tova_scores(input: &PressInput<'_>) -> Result<Tensor> {
    let weights = ops::window_attention(input, 1)?;
    let (batch, _, _, n_before) = weights.dims4()?;
    let per_sequence = weights.mean(1)?; // (batch, 1, T - 1)
    let per_kv_head = per_sequence
        .broadcast_as((batch, input.shape.n_kv_heads, n_before))?
        .contiguous()?;
    ops::pad_with_max(&per_kv_head, 0, 1)
}

impl Scorer for Tova {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        tova_scores(input)
    }
}

kvpress_core::scorer_press!(Tova, "tova");
kvpress_core::register_press!(
    "tova",
    "attention of the last query, averaged over heads (TOVA)",
    || Box::new(Tova::default())
);
