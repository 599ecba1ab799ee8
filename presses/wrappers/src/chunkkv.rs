//! [`ChunkKv`]: whole chunks kept by their scores summed over heads (ChunkKV).

use kvpress_core::press::{Compression, Press, PressInput, Scorer, Selection};
use kvpress_core::{Error, Result};
use presses_ops::torch_top_k;
use serde::{Deserialize, Serialize};

use crate::scoring::{check_scoring_inner, head_sums, select_at_ratios};

/// ChunkKV ([arXiv:2502.00299](https://arxiv.org/abs/2502.00299)) as kvpress's `ChunkKVPress`
/// computes it: the scoring press `inner` scores every token of the whole layer; the context is
/// cut into chunks of `chunk_length` tokens (the last one may be shorter), each chunk scores the
/// mean over its tokens of the scores summed over KV heads, and the best
/// `max(1, floor(n_chunks (1 - ratio)))` chunks are kept whole, by every head alike. A context
/// shorter than one chunk is compressed by `inner` itself. The reported scores
/// are the inner scorer's.
///
/// kvpress chooses the chunks of batch element 0 for every element; here each batch element
/// chooses its own (the same for a batch of one, the only batch kvpress's pipeline runs).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkKv {
    /// The scoring press whose scores rank the chunks.
    pub inner: Box<dyn Press>,
    /// Tokens per chunk.
    #[serde(default = "default_chunk_length")]
    pub chunk_length: usize,
}

fn default_chunk_length() -> usize {
    20
}

/// The tokens ChunkKV keeps of a context whose head-summed scores are `summed`, in chunks of
/// `chunk_length` (at least one complete chunk), at `ratio`: the sorted indices of the best
/// chunks.
pub(crate) fn chunkkv_tokens(summed: &[f32], chunk_length: usize, ratio: f64) -> Vec<u32> {
    let n_tokens = summed.len();
    let n_complete = n_tokens / chunk_length;
    let mean = |chunk: &[f32]| chunk.iter().sum::<f32>() / chunk.len() as f32;
    let chunk_scores: Vec<f32> = summed.chunks(chunk_length).map(mean).collect();
    let n_chunks = chunk_scores.len();
    debug_assert!(n_complete >= 1 && n_chunks == n_tokens.div_ceil(chunk_length));
    let n_chunks_kept = ((n_chunks as f64 * (1.0 - ratio)) as usize).max(1);
    torch_top_k(&chunk_scores, n_chunks_kept)
        .into_iter()
        .flat_map(|c| {
            let start = c as usize * chunk_length;
            start as u32..(start + chunk_length).min(n_tokens) as u32
        })
        .collect()
}

impl ChunkKv {
    /// What ChunkKV keeps at `ratio` given the inner `scores` `(batch, n_kv_heads, n_tokens)`.
    fn select(
        &self,
        input: &PressInput<'_>,
        scores: &candle_core::Tensor,
        ratio: f64,
    ) -> Result<Selection> {
        let (batch, n_kv_heads, n_tokens) = scores.dims3()?;
        let kept = head_sums(&input.mask_padding(scores.clone())?)?
            .iter()
            .flat_map(|summed| {
                let tokens = chunkkv_tokens(summed, self.chunk_length, ratio);
                std::iter::repeat_n(tokens, n_kv_heads)
            })
            .collect();
        Selection::new(kept, batch, n_kv_heads, n_tokens)
    }
}

#[typetag::serde(name = "chunkkv")]
impl Press for ChunkKv {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        check_scoring_inner("chunkkv", self.inner.as_ref())?;
        if self.chunk_length == 0 {
            return Err(Error::InvalidArgument(
                "chunkkv: chunk_length must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        self.inner.scorer()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        let mut compressions = self.compress_at_ratios(input, &[ratio])?;
        Ok(compressions.remove(0))
    }

    /// Scores once for all `ratios` when the inner scores do not depend on the ratio.
    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        if input.n_tokens()? < self.chunk_length {
            return self.inner.compress_at_ratios(input, ratios);
        }
        select_at_ratios(
            "chunkkv",
            self.inner.as_ref(),
            input,
            ratios,
            |scores, ratio| self.select(input, scores, ratio),
        )
    }
}

kvpress_core::register_press!(
    "chunkkv",
    "keeps whole chunks of chunk_length tokens ranked by the inner press's scores summed over heads (ChunkKV)",
    || Box::new(ChunkKv {
        inner: Box::new(kvpress_core::NoPress::default()),
        chunk_length: default_chunk_length(),
    })
);
