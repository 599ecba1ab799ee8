//! Finch's scores: the question's attention over the context.

use candle_core::{Tensor, D};
use kvpress_core::{Error, PressInput, Result};
use presses_ops as ops;

/// Finch scores `(batch, n_kv_heads, n_tokens)` of `input` whose last `question_tokens` tokens
/// are the question: the question queries' causal softmax over every key, the question's own
/// columns dropped; with `normalize`, the weights of question query `i` multiplied by its
/// position `n_tokens - question_tokens + i` (kvpress's "number of non-zero weights"); the mean
/// over the question's queries and over each KV head's query heads; the question's tokens then
/// score the largest score plus one, so that they are kept.
pub fn finch_scores(
    input: &PressInput<'_>,
    question_tokens: usize,
    normalize: bool,
) -> Result<Tensor> {
    let n_tokens = input.n_tokens()?;
    if question_tokens == 0 || question_tokens >= n_tokens {
        return Err(Error::InvalidArgument(format!(
            "finch: the question ({question_tokens} tokens) must be at least one token and \
             shorter than the prefilled context with it ({n_tokens} tokens)"
        )));
    }
    let mut weights = ops::window_attention(input, question_tokens)?;
    if normalize {
        let first = (n_tokens - question_tokens) as f32;
        let counts: Vec<f32> = (0..question_tokens).map(|i| first + i as f32).collect();
        let counts = Tensor::from_vec(counts, (1, 1, question_tokens, 1), weights.device())?;
        weights = weights.broadcast_mul(&counts)?;
    }
    let per_query_head = weights.mean(D::Minus2)?;
    let per_kv_head = ops::mean_over_query_groups(&per_query_head, input.shape.n_kv_heads)?;
    ops::pad_with_max(&per_kv_head, 0, question_tokens)
}
