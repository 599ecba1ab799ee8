//! StreamingLLM ([arXiv:2309.17453](https://arxiv.org/abs/2309.17453)) as kvpress computes it:
//! the first `n_sink` tokens (attention sinks) and the most recent tokens are kept; the tokens
//! pruned are those right after the sinks.

use candle_core::{Device, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The StreamingLLM press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingLlm {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Number of initial tokens always kept (attention sinks); the context must be longer.
    pub n_sink: usize,
}

impl Default for StreamingLlm {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            n_sink: 4,
        }
    }
}

impl StreamingLlm {
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

/// StreamingLLM scores `(batch, n_kv_heads, n_tokens)` at `compression_ratio`: one everywhere
/// except zero on the `n_pruned = T - floor(T * (1 - ratio))` tokens after the first `n_sink`
/// (clipped to the context). Fails when the context is not longer than `n_sink`.
pub fn streaming_llm_scores(
    batch: usize,
    n_kv_heads: usize,
    n_tokens: usize,
    n_sink: usize,
    compression_ratio: f64,
    device: &Device,
) -> Result<Tensor> {
    if n_tokens <= n_sink {
        return Err(Error::InvalidArgument(format!(
            "streaming_llm: the context ({n_tokens} tokens) must be longer than n_sink = \
             {n_sink}; use a smaller n_sink or a longer context"
        )));
    }
    // kvpress: `k_len - int(k_len * (1 - compression_ratio))`, without the at-least-one clamp of
    // the kept count.
    let n_pruned =
        n_tokens - ((n_tokens as f64 * (1.0 - compression_ratio)) as usize).min(n_tokens);
    let end = (n_sink + n_pruned).min(n_tokens);
    let row: Vec<f32> = (0..n_tokens)
        .map(|j| if (n_sink..end).contains(&j) { 0.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(row, (1, 1, n_tokens), device)?
        .broadcast_as((batch, n_kv_heads, n_tokens))?
        .contiguous()?)
}

impl Scorer for StreamingLlm {
    fn score(&self, input: &PressInput<'_>, compression_ratio: f64) -> Result<Tensor> {
        streaming_llm_scores(
            input.batch()?,
            input.shape.n_kv_heads,
            input.n_tokens()?,
            self.n_sink,
            compression_ratio,
            input.keys.device(),
        )
    }
}

kvpress_core::scorer_press!(StreamingLlm, "streaming_llm");
kvpress_core::register_press!(
    "streaming_llm",
    "keeps the first n_sink tokens and the most recent ones (StreamingLLM)",
    || Box::new(StreamingLlm::default())
);
