//! [`EntropyGatedChunkKv`]: ChunkKV whose spiky chunks keep only their best tokens.

use candle_core::Tensor;
use kvpress_core::press::{n_kept, Compression, Press, PressInput, Scorer, Selection};
use kvpress_core::{Error, Result};
use presses_ops::torch_top_k;
use serde::{Deserialize, Serialize};

use crate::scoring::{check_scoring_inner, head_sums, select_at_ratios};

/// kvpress's `EPSILON` of the entropy gate.
const EPSILON: f32 = 1e-8;

/// kvpress 0.5.5's `EntropyGatedChunkKVPress`: ChunkKV with an entropy gate. The scoring press
/// `inner` scores every token; the scores summed over KV heads are cut into chunks of
/// `chunk_length` tokens, each with a score (the mean) and a normalised entropy of its token
/// scores (shifted to be non-negative). Chunks are visited by decreasing score and kept whole,
/// except those at or above the median score and strictly below the median entropy (important but
/// spiky), which keep only their `low_entropy_chunk_length` best tokens, until
/// `max(1, floor(T (1 - ratio)))` tokens are kept; budget left over goes to the best remaining
/// tokens. Every head keeps the same tokens. The reported scores are the inner scorer's.
///
/// kvpress decides from batch element 0 for every element; here each batch element decides for
/// itself (the same for a batch of one, the only batch kvpress's pipeline runs).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyGatedChunkKv {
    /// The scoring press whose scores rank chunks and tokens.
    pub inner: Box<dyn Press>,
    /// Tokens per chunk (more than `low_entropy_chunk_length`).
    #[serde(default = "default_chunk_length")]
    pub chunk_length: usize,
    /// Tokens kept of an important but spiky chunk (at least 1).
    #[serde(default = "default_low_entropy_chunk_length")]
    pub low_entropy_chunk_length: usize,
}

fn default_chunk_length() -> usize {
    10
}

fn default_low_entropy_chunk_length() -> usize {
    4
}

/// The normalised entropy of a chunk's token scores, in `[0, 1]`: scores shifted up by their
/// minimum when it is negative, normalised to a distribution, entropy divided by `ln(len)`; 0
/// for a single token.
fn chunk_entropy(chunk: &[f32]) -> f32 {
    if chunk.len() < 2 {
        return 0.0;
    }
    let min = chunk.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let shifted: Vec<f32> = chunk.iter().map(|&s| s - min).collect();
    let total = shifted.iter().sum::<f32>() + EPSILON;
    let entropy: f32 = -shifted
        .iter()
        .map(|&s| {
            let p = s / total;
            p * (p + EPSILON).ln()
        })
        .sum::<f32>();
    (entropy / (chunk.len() as f64).ln() as f32).clamp(0.0, 1.0)
}

/// PyTorch's `median`: the lower of the two middle values for an even count.
fn lower_median(values: &[f32]) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// The entropy gate's parameters for one decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gate {
    /// Tokens per chunk.
    pub chunk_length: usize,
    /// Tokens kept of a spiky chunk.
    pub low_entropy_chunk_length: usize,
    /// Tokens kept in all.
    pub budget: usize,
}

/// The sorted tokens the entropy-gated ChunkKV keeps of head-summed `scores` (non-empty).
pub(crate) fn entropy_gated_tokens(scores: &[f32], gate: Gate) -> Vec<u32> {
    let chunks: Vec<&[f32]> = scores.chunks(gate.chunk_length).collect();
    let chunk_scores: Vec<f32> = chunks
        .iter()
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    let entropies: Vec<f32> = chunks.iter().map(|c| chunk_entropy(c)).collect();
    let (score_threshold, entropy_threshold) =
        (lower_median(&chunk_scores), lower_median(&entropies));
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by(|&a, &b| chunk_scores[b].total_cmp(&chunk_scores[a]).then(a.cmp(&b)));
    let mut keep = vec![false; scores.len()];
    let mut budget = gate.budget;
    for c in order {
        if budget == 0 {
            break;
        }
        let (start, len) = (c * gate.chunk_length, chunks[c].len());
        let mut n = len.min(budget);
        if chunk_scores[c] >= score_threshold && entropies[c] < entropy_threshold {
            n = n.min(gate.low_entropy_chunk_length);
        }
        for i in torch_top_k(chunks[c], n) {
            keep[start + i as usize] = true;
        }
        budget -= n;
    }
    if budget > 0 {
        let leftover: Vec<usize> = (0..scores.len()).filter(|&i| !keep[i]).collect();
        let leftover_scores: Vec<f32> = leftover.iter().map(|&i| scores[i]).collect();
        for i in torch_top_k(&leftover_scores, budget) {
            keep[leftover[i as usize]] = true;
        }
    }
    (0..scores.len() as u32)
        .filter(|&i| keep[i as usize])
        .collect()
}

impl EntropyGatedChunkKv {
    /// What the press keeps at `ratio` given the inner `scores` `(batch, n_kv_heads, n_tokens)`.
    fn select(&self, scores: &Tensor, ratio: f64) -> Result<Selection> {
        let (batch, n_kv_heads, n_tokens) = scores.dims3()?;
        let gate = Gate {
            chunk_length: self.chunk_length,
            low_entropy_chunk_length: self.low_entropy_chunk_length,
            budget: n_kept(n_tokens, ratio),
        };
        let kept = head_sums(scores)?
            .iter()
            .flat_map(|summed| std::iter::repeat_n(entropy_gated_tokens(summed, gate), n_kv_heads))
            .collect();
        Selection::new(kept, batch, n_kv_heads, n_tokens)
    }
}

#[typetag::serde(name = "entropy_gated_chunkkv")]
impl Press for EntropyGatedChunkKv {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        check_scoring_inner("entropy_gated_chunkkv", self.inner.as_ref())?;
        if self.low_entropy_chunk_length == 0 || self.chunk_length <= self.low_entropy_chunk_length
        {
            return Err(Error::InvalidArgument(format!(
                "entropy_gated_chunkkv: chunk_length ({}) must be greater than \
                 low_entropy_chunk_length ({}), which must be at least 1",
                self.chunk_length, self.low_entropy_chunk_length
            )));
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
        select_at_ratios(
            "entropy_gated_chunkkv",
            self.inner.as_ref(),
            input,
            ratios,
            |scores, ratio| self.select(scores, ratio),
        )
    }
}

kvpress_core::register_press!(
    "entropy_gated_chunkkv",
    "ChunkKV whose important but low-entropy chunks keep only their best tokens (kvpress's EntropyGatedChunkKV)",
    || Box::new(EntropyGatedChunkKv {
        inner: Box::new(kvpress_core::NoPress::default()),
        chunk_length: default_chunk_length(),
        low_entropy_chunk_length: default_low_entropy_chunk_length(),
    })
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_normalised_and_zero_for_one_token() {
        assert!((chunk_entropy(&[1.0, 1.0, 1.0, 1.0]) - 1.0).abs() < 1e-6);
        assert!(chunk_entropy(&[0.0, 0.0, 5.0]) < 1e-6);
        assert_eq!(chunk_entropy(&[3.0]), 0.0);
        // Negative scores are shifted up by the minimum.
        let shifted = chunk_entropy(&[-1.0, 0.0, 1.0]);
        let direct = chunk_entropy(&[0.0, 1.0, 2.0]);
        assert!((shifted - direct).abs() < 1e-6);
    }

    #[test]
    fn spiky_important_chunks_keep_their_best_tokens() {
        // Chunks of 4: flat (mean 1), spiky (mean 2.5, entropy 0), low (0.5), flat high (3).
        let scores = [
            1.0, 1.0, 1.0, 1.0, 10.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0,
        ];
        let gate = Gate {
            chunk_length: 4,
            low_entropy_chunk_length: 1,
            budget: 8,
        };
        // Medians: score 1 (the flat chunk is "high" too), entropy 1 (only the spiky chunk is
        // below). By score: chunk 3 whole (4), chunk 1's best token (1), then 3 of chunk 0's
        // tied tokens, chosen as PyTorch's topk chooses them. Expected values from kvpress
        // 0.5.5's `EntropyGatedChunkKVPress.compress` on these scores.
        assert_eq!(
            entropy_gated_tokens(&scores, gate),
            vec![0, 2, 3, 4, 12, 13, 14, 15]
        );
        // Budget left after every chunk was visited goes to the best remaining tokens (ratio
        // 0.125: 14 tokens).
        let gate = Gate { budget: 14, ..gate };
        assert_eq!(
            entropy_gated_tokens(&scores, gate),
            vec![0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    #[test]
    fn median_is_the_lower_middle_value() {
        assert_eq!(lower_median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(lower_median(&[5.0, 1.0, 3.0]), 3.0);
    }
}
