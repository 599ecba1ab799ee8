//! [`Chunked`]: the context compressed chunk by chunk.

use candle_core::{DType, Tensor};
use kvpress_core::press::{
    n_kept, scores_at_ratios, Compression, InputChunk, Press, PressInput, Scorer, Selection,
};
use kvpress_core::{Error, Result, RotaryEmbedding};
use presses_ops::TorchTopK;
use serde::{Deserialize, Serialize};

use crate::scoring::{check_scoring_inner, scorer_of};

/// Splits the context into chunks of `chunk_length` tokens and scores each chunk on its own with
/// the scoring press `inner` (scores see only the chunk's keys); each head keeps its
/// `max(1, floor(len (1 - ratio)))` best tokens of every chunk (tied scores resolved as
/// PyTorch's `topk` resolves them), so that every part of the context keeps its share
/// (kvpress's `ChunkPress`, after FINCH). As in kvpress, only the inner press's scores are used: an inner press's own budget rule (PyramidKV's per-layer budgets) does not
/// apply, and the inner press must be a scoring press (no head-wise, re-rotating, attention
/// weight or decode-time press). The scores reported are the chunks' scores side by side.
///
/// **Query positions.** kvpress hands the inner press the chunk's hidden states but the rotary
/// tables of the whole forward, so a scorer that rotates its own queries (SnapKV's window, TOVA's
/// last query) rotates the chunk's last queries with the RoPE of the *context's* last positions:
/// in every chunk but the last, the window queries sit `T - chunk_end` positions further from
/// the keys than they are. This is kvpress's behaviour and the default here
/// (`queries_at_own_positions = false`): the chunk's queries are rotated as if the chunk ended
/// at the context's last token (keys keep their positions). `queries_at_own_positions = true`
/// gives the inner press the queries at their own positions (the chunk is scored as if it were a
/// context of its own), which is what the method means.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunked {
    /// The press run on each chunk.
    pub inner: Box<dyn Press>,
    /// Tokens per chunk (the last chunk may be shorter).
    #[serde(default = "default_chunk_length")]
    pub chunk_length: usize,
    /// `false` (kvpress): every chunk's queries are rotated as if the chunk ended at the
    /// context's last position; `true`: queries keep their own positions (not in kvpress).
    #[serde(default)]
    pub queries_at_own_positions: bool,
}

fn default_chunk_length() -> usize {
    1024
}

/// `queries` `(batch, heads, n, head_dim)` at positions `first..first + n` re-rotated to
/// `first + shift..`: undone at their own positions, then applied at the shifted ones (the same
/// tables the model's RoPE uses, so each angle is the one a direct rotation would use).
fn shift_query_positions(
    rotary: &RotaryEmbedding,
    queries: &Tensor,
    first: usize,
    shift: usize,
) -> Result<Tensor> {
    let n = queries.dim(2)?;
    let queries = queries.to_dtype(DType::F32)?;
    let (cos, sin) = rotary.tables_for_range(first, n, DType::F32)?;
    let unrotated = RotaryEmbedding::apply(&queries, &cos, &sin.neg()?)?;
    let (cos, sin) = rotary.tables_for_range(first + shift, n, DType::F32)?;
    RotaryEmbedding::apply(&unrotated, &cos, &sin)
}

impl Chunked {
    /// The inner scorer's scores of tokens `start..start + len` at each of `ratios` (`None` at
    /// ratio 0), the chunk seen as a layer of its own.
    fn score_chunk(
        &self,
        input: &PressInput<'_>,
        start: usize,
        len: usize,
        ratios: &[f64],
    ) -> Result<Vec<Option<Tensor>>> {
        let scorer = scorer_of("chunk", self.inner.as_ref())?;
        let chunk = InputChunk::new(input, start, len)?;
        let chunk_input = chunk.input(input);
        let shift = input.n_tokens()? - (start + len);
        if self.queries_at_own_positions || shift == 0 {
            return scores_at_ratios(scorer, &chunk_input, ratios);
        }
        let queries = shift_query_positions(
            input.rotary,
            chunk_input.queries,
            chunk_input.query_position,
            shift,
        )?;
        let shifted = PressInput {
            queries: &queries,
            ..chunk_input
        };
        scores_at_ratios(scorer, &shifted, ratios)
    }
}

#[typetag::serde(name = "chunk")]
impl Press for Chunked {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        check_scoring_inner("chunk", self.inner.as_ref())?;
        if self.chunk_length == 0 {
            return Err(Error::InvalidArgument(
                "chunk: chunk_length must be at least 1".to_string(),
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

    /// Scores each chunk once for all `ratios` when the inner scores do not depend on the ratio.
    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        if ratios.iter().all(|&r| r == 0.0) {
            return ratios
                .iter()
                .map(|_| Compression::keep_all(input))
                .collect();
        }
        let n_tokens = input.n_tokens()?;
        let (batch, n_kv_heads) = (input.batch()?, input.shape.n_kv_heads);
        let mut kept = vec![vec![Vec::new(); batch * n_kv_heads]; ratios.len()];
        let mut scores = vec![Vec::new(); ratios.len()];
        for start in (0..n_tokens).step_by(self.chunk_length.max(1)) {
            let len = self.chunk_length.min(n_tokens - start);
            let chunk_scores = self.score_chunk(input, start, len, ratios)?;
            for (r, (&ratio, chunk_scores)) in ratios.iter().zip(chunk_scores).enumerate() {
                let Some(chunk_scores) = chunk_scores else {
                    continue;
                };
                let selection = TorchTopK::keep_top(&chunk_scores, n_kept(len, ratio))?;
                for (all, head) in kept[r].iter_mut().zip(selection.heads()) {
                    all.extend(head.iter().map(|&i| i + start as u32));
                }
                scores[r].push(chunk_scores);
            }
        }
        ratios
            .iter()
            .zip(kept.into_iter().zip(scores))
            .map(|(&ratio, (kept, scores))| {
                if ratio == 0.0 || scores.is_empty() {
                    return Compression::keep_all(input);
                }
                let selection = Selection::new(kept, batch, n_kv_heads, n_tokens)?;
                Ok(Compression::select(
                    selection,
                    Some(Tensor::cat(&scores, 2)?),
                ))
            })
            .collect()
    }
}

kvpress_core::register_press!(
    "chunk",
    "compresses the context in independent chunks of chunk_length tokens",
    || Box::new(Chunked {
        inner: Box::new(kvpress_core::NoPress::default()),
        chunk_length: default_chunk_length(),
        queries_at_own_positions: false,
    })
);
