//! Observed attention (related to H2O, [arXiv:2306.14048](https://arxiv.org/abs/2306.14048)) as
//! kvpress computes it: a token scores the attention it received, summed over the queries and
//! divided by the number of queries that can see it causally, then averaged over each KV head's
//! query heads. The model must compute its attention weights.

use candle_core::{DType, Tensor};
use kvpress_core::press::{
    check_compression_ratio, score_and_allocate, Compression, Press, PressDescription, PressInput,
    Scorer, UniformAllocator,
};
use kvpress_core::{Error, Result};
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The observed-attention press (asks the model for its attention weights).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservedAttention {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

/// Observed-attention scores `(batch, n_kv_heads, n_tokens)` from attention weights `(batch,
/// n_heads, n_queries, n_tokens)`: `s_j = sum_i A[i, j] / (T - j)`, averaged over each KV head's
/// group of query heads.
pub fn observed_attention_scores(weights: &Tensor, n_kv_heads: usize) -> Result<Tensor> {
    let (_, _, _, n_tokens) = weights.dims4().map_err(|_| {
        Error::Shape(format!(
            "observed_attention: attention weights must be (batch, n_heads, n_queries, n_tokens), \
             got {:?}",
            weights.dims()
        ))
    })?;
    let (batch, n_heads, n_queries, _) = weights.dims4()?;
    let weights = weights.to_dtype(DType::F32)?.contiguous()?;
    // Column sums of every head's (n_queries, T) block, read in place (the weights of a long
    // prefill are large; reducing the middle dimension with tensor ops is slow).
    let received = kvpress_kernels::f32_slice(&weights, |data, start, _| {
        let data = &data[start..start + batch * n_heads * n_queries * n_tokens];
        let mut received = vec![0f32; batch * n_heads * n_tokens];
        for (head, sums) in received.chunks_exact_mut(n_tokens).enumerate() {
            let block = &data[head * n_queries * n_tokens..(head + 1) * n_queries * n_tokens];
            for row in block.chunks_exact(n_tokens) {
                sums.iter_mut().zip(row).for_each(|(s, &w)| *s += w);
            }
            for (j, s) in sums.iter_mut().enumerate() {
                *s /= (n_tokens - j) as f32;
            }
        }
        received
    })
    .ok_or_else(|| Error::Unsupported("observed_attention runs on CPU tensors".to_string()))?;
    let received = Tensor::from_vec(received, (batch, n_heads, n_tokens), weights.device())?;
    ops::mean_over_query_groups(&received, n_kv_heads)
}

impl Scorer for ObservedAttention {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        let weights = input.attention_weights.ok_or_else(|| {
            Error::InvalidArgument(
                "observed_attention needs the attention weights, but the model did not compute \
                 them: run it through a pipeline that honours needs_attention_weights (or set \
                 PressInput::attention_weights)"
                    .to_string(),
            )
        })?;
        let n_tokens = input.n_tokens()?;
        if weights.rank() != 4 || weights.dim(3)? != n_tokens {
            return Err(Error::Shape(format!(
                "observed_attention: attention weights {:?} do not cover the {n_tokens} cached \
                 tokens (expected (batch, n_heads, n_queries, {n_tokens}))",
                weights.dims()
            )));
        }
        observed_attention_scores(weights, input.shape.n_kv_heads)
    }
}

#[typetag::serde(name = "observed_attention")]
impl Press for ObservedAttention {
    fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    fn validate(&self) -> Result<()> {
        check_compression_ratio("observed_attention", self.compression_ratio)
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }

    fn compress_at_ratio(
        &self,
        input: &PressInput<'_>,
        compression_ratio: f64,
    ) -> Result<Compression> {
        score_and_allocate(self, &UniformAllocator, input, compression_ratio)
    }
}

kvpress_core::register_press!(
    "observed_attention",
    "average attention each token received from the queries (needs attention weights)",
    || Box::new(ObservedAttention::default())
);
