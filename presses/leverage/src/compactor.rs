//! Compactor (Chari & Van Durme 2025, [arXiv:2507.08143](https://arxiv.org/abs/2507.08143)), as
//! kvpress's `CompactorPress` computes it: the first `sink_size_start` and last `sink_size_end`
//! tokens are protected; on the tokens between them, the z-normalised leverage scores
//! ([`crate::LeverageScore`]) and non-causal attention scores ([`crate::NonCausalAttn`]) are
//! blended as `blending * leverage + attention`, `blending` defaulting to the compression ratio.
//! The protected tokens get the largest blended score of the layer (the maximum itself, not
//! above it, as kvpress pads).

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::leverage::{check_sketch_dimension, leverage_z_scores};
use crate::non_causal::{check_chunk_size, non_causal_z_scores};
use crate::pre_rope::check_prefill;

/// The Compactor press (`compactor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compactor {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// First tokens always kept (attention sinks).
    pub sink_size_start: usize,
    /// Last tokens always kept.
    pub sink_size_end: usize,
    /// Tokens per chunk of the non-causal attention (at least 1).
    pub chunk_size: usize,
    /// Columns of the leverage scores' Gaussian sketch (1 to 4096).
    pub sketch_dimension: usize,
    /// Weight of the leverage scores; `None` (kvpress's default) uses the compression ratio the
    /// press runs at.
    pub blending: Option<f64>,
    /// `torch.manual_seed` before the prefill, from which the sketches are drawn (kvpress's
    /// reference fixtures use 0).
    pub seed: u64,
}

impl Default for Compactor {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            sink_size_start: 8,
            sink_size_end: 4,
            chunk_size: 256,
            sketch_dimension: 48,
            blending: None,
            seed: 0,
        }
    }
}

impl Compactor {
    fn check_parameters(&self) -> Result<()> {
        check_sketch_dimension("compactor", self.sketch_dimension)?;
        check_chunk_size("compactor", self.chunk_size)?;
        if let Some(blending) = self.blending {
            if !blending.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "compactor: blending {blending} must be a finite number (or null for the \
                     compression ratio)"
                )));
            }
        }
        Ok(())
    }

    /// The protected tokens at each end of `n` tokens, as kvpress counts them.
    fn protected(&self, n: usize) -> (usize, usize) {
        let left = self.sink_size_start.min(n);
        let right = self.sink_size_end.min(n - left);
        (left, right)
    }
}

impl Scorer for Compactor {
    fn scores_depend_on_ratio(&self) -> bool {
        self.blending.is_none()
    }

    fn score(&self, input: &PressInput<'_>, compression_ratio: f64) -> Result<Tensor> {
        check_prefill("compactor", input)?;
        let (batch, n_kv_heads, n, _) = input.keys.dims4()?;
        let (left, right) = self.protected(n);
        let middle = left..n - right;
        let device = input.keys.device();
        if middle.is_empty() {
            // Every token is protected (kvpress fails on an empty middle): all tie.
            return Ok(Tensor::zeros(
                (batch, n_kv_heads, n),
                candle_core::DType::F32,
                device,
            )?);
        }
        let leverage = leverage_z_scores(input, self.sketch_dimension, self.seed, middle.clone())?;
        let attention = non_causal_z_scores(input, self.chunk_size, middle.clone())?;
        let blending = self.blending.unwrap_or(compression_ratio) as f32;
        let blended: Vec<f32> = leverage
            .iter()
            .zip(&attention)
            .map(|(l, a)| blending * l + a)
            .collect();
        let max = blended.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut scores = Vec::with_capacity(batch * n_kv_heads * n);
        for row in blended.chunks_exact(middle.len()) {
            scores.extend(std::iter::repeat_n(max, left));
            scores.extend_from_slice(row);
            scores.extend(std::iter::repeat_n(max, right));
        }
        Ok(Tensor::from_vec(scores, (batch, n_kv_heads, n), device)?)
    }
}

kvpress_core::scorer_press!(Compactor, "compactor");
kvpress_core::register_press!(
    "compactor",
    "blends sketched leverage of the pre-RoPE keys with non-causal chunked attention, protecting the first and last tokens (Compactor)",
    || Box::new(Compactor::default())
);
