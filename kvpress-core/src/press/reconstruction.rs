//! Presses that score tokens by a second forward pass over the context's cache, in which the
//! model reconstructs its context (KVzip) or reads it again (KVCompose), and choose what to keep
//! across every layer at once. They do not fit the per-layer `compress` of [`super::Press`]: the
//! runtime prefills the context without compressing, feeds the second pass ([`SecondPass`])
//! chunk by chunk on top of the context's cache (each layer is scored by
//! [`ReconstructionScoring::score_chunk`] and its cache cut back to the context right after),
//! then asks [`ReconstructionScoring::select`] for every layer's selection.

use std::ops::Range;

use candle_core::Tensor;

use super::Selection;
use crate::hook::LayerContext;
use crate::Result;

/// What the second pass feeds on top of the context's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondPass {
    /// The model's reconstruction prompt (KVzip: "Repeat the previous context exactly."), with
    /// the context after its chat-template prefix cut into chunks of `chunk_size` tokens, one
    /// forward each.
    Reconstruct {
        /// Context tokens reconstructed by each forward.
        chunk_size: usize,
    },
    /// The context's own tokens again, in one forward right after the context (KVCompose):
    /// every context token is scored by the attention of its repeated context.
    ContextAgain,
}

/// Scoring by context reconstruction.
pub trait ReconstructionScoring: Send + Sync {
    /// What the second pass feeds.
    fn second_pass(&self) -> SecondPass;

    /// Scores the context tokens `chunk` (cache positions) in one layer, during the forward of
    /// the chunk's reconstruction prompt: `context.queries` are the prompt tokens' queries and
    /// the layer's cache holds the whole context followed by the prompt's tokens. Returns
    /// `(batch, n_kv_heads, chunk.len())` f32 scores (higher: more important).
    fn score_chunk(&self, context: &LayerContext<'_>, chunk: Range<usize>) -> Result<Tensor>;

    /// Every layer's selection from every layer's scores `(batch, n_kv_heads, context_len)`
    /// (tokens never reconstructed, the chat-template prefix, score 0).
    fn select(&self, scores: &[Tensor]) -> Result<Vec<Selection>>;
}
