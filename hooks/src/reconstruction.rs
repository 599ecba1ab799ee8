//! The second pass of presses that score by reconstructing the context (KVzip) or reading it
//! again (KVCompose) ([`kvpress_core::press::ReconstructionScoring`]). KVCompose's is the
//! context's own ids fed once more right after it ([`SecondPass::ContextAgain`]). KVzip's is the
//! model's reconstruction prompt ([`kvpress_models::ReconstructionPrompt`]), fed chunk by chunk
//! on top of the context's cache, as kvpress 0.5.5's `KVzipPress` feeds it:
//!
//! - the context after its chat-template prefix is cut into chunks of `chunk_size` tokens;
//! - chunk 0 is fed as "Repeat the previous context exactly." + the chat suffix + the chunk,
//!   later ones as "Repeat the part of the previous context exactly, starting with" + the
//!   previous chunk's last 8 tokens + the chat suffix + the chunk, at the positions after the
//!   context;
//! - in every layer the press scores the chunk's tokens from that forward's queries, then the
//!   layer's cache is cut back to the context (so each chunk sees the context alone, and at most
//!   one layer's prompt attention exists at a time);
//! - once every chunk is scored, the press chooses every layer's tokens at once and each layer
//!   is compacted.

use std::ops::Range;
use std::time::Instant;

use candle_core::{DType, Tensor};
use kvpress_core::press::{ReconstructionScoring, SecondPass};
use kvpress_core::{AttentionHook, LayerContext, ModelCache};
use kvpress_models::Model;

use crate::press_hook::LayerRecord;
use crate::{Error, Result};

/// Tokens of the previous chunk repeated after the prompt of each later chunk (kvpress's
/// `prev_postfix_size`).
const PREVIOUS_TOKENS: usize = 8;

/// One reconstruction forward: what `model` is fed and which context tokens it scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconstructionChunk {
    /// Token ids fed after the context.
    pub ids: Vec<u32>,
    /// The context tokens (cache positions) it reconstructs.
    pub tokens: Range<usize>,
}

/// The forwards of `pass` over a context of `context_ids` (the chat-templated context, as
/// prefilled) on `model`: KVzip's reconstruction chunks ([`reconstruction_chunks`]), or the
/// context itself once more (KVCompose); an error when they do not fit the model's positions.
pub fn second_pass_chunks(
    model: &Model,
    context_ids: &[u32],
    pass: SecondPass,
) -> Result<Vec<ReconstructionChunk>> {
    match pass {
        SecondPass::Reconstruct { chunk_size } => {
            reconstruction_chunks(model, context_ids, chunk_size)
        }
        SecondPass::ContextAgain => {
            let len = context_ids.len();
            let positions = model.config().max_position_embeddings;
            if 2 * len > positions {
                return Err(Error::InvalidInput(format!(
                    "the context is read again right after itself: its {len} tokens need {} \
                     positions, and the model has {positions}; use a context of at most {} \
                     tokens",
                    2 * len,
                    positions / 2
                )));
            }
            Ok(vec![ReconstructionChunk {
                ids: context_ids.to_vec(),
                tokens: 0..len,
            }])
        }
    }
}

/// The reconstruction forwards of a context of `context_ids` (the chat-templated context, as
/// prefilled) on `model`, with chunks of `chunk_size` tokens; an error when the context and a
/// chunk's prompt do not fit the model's positions.
pub fn reconstruction_chunks(
    model: &Model,
    context_ids: &[u32],
    chunk_size: usize,
) -> Result<Vec<ReconstructionChunk>> {
    let prompt = model.reconstruction_prompt().ok_or_else(|| {
        Error::InvalidInput(
            "this model has no reconstruction prompts (they are made from its tokenizer and chat \
             template when it is loaded from a file); a press that reconstructs the context \
             (kvzip) cannot run"
                .to_string(),
        )
    })?;
    let prefix = prompt.prefix_tokens;
    if context_ids.len() <= prefix || chunk_size == 0 {
        return Err(Error::InvalidInput(format!(
            "the context ({} tokens) has nothing after its chat-template prefix ({prefix} \
             tokens) to reconstruct",
            context_ids.len()
        )));
    }
    let text = &context_ids[prefix..];
    let pieces: Vec<&[u32]> = text.chunks(chunk_size).collect();
    let chunks: Vec<ReconstructionChunk> = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut ids = match i {
                0 => prompt.first.clone(),
                _ => {
                    let previous = pieces[i - 1];
                    let mut ids = prompt.next.clone();
                    ids.extend_from_slice(
                        &previous[previous.len().saturating_sub(PREVIOUS_TOKENS)..],
                    );
                    ids
                }
            };
            ids.extend_from_slice(&prompt.suffix);
            ids.extend_from_slice(piece);
            let start = prefix + i * chunk_size;
            ReconstructionChunk {
                ids,
                tokens: start..start + piece.len(),
            }
        })
        .collect();
    let context_len = context_ids.len();
    let positions = model.config().max_position_embeddings;
    let longest = chunks.iter().map(|c| c.ids.len()).max().unwrap_or(0);
    if context_len + longest > positions {
        // The most prompt tokens a chunk of any size can bring with it.
        let overhead =
            prompt.first.len().max(prompt.next.len() + PREVIOUS_TOKENS) + prompt.suffix.len();
        return Err(Error::InvalidInput(format!(
            "the context is reconstructed after itself: {context_len} context tokens and a \
             reconstruction prompt of {longest} tokens (chunk_size {chunk_size} and the \
             prompt's words) need {} positions, and the model has {positions}; use a smaller \
             chunk_size (at most {}) or a shorter context",
            context_len + longest,
            positions.saturating_sub(context_len + overhead),
        )));
    }
    Ok(chunks)
}

/// Scores the context of `context_len` tokens in `cache` (prefilled, uncompressed) by feeding
/// its reconstruction `chunks` ([`reconstruction_chunks`]): one `(1, n_kv_heads, context_len)`
/// tensor per layer (the prefix tokens score 0). The cache holds the context alone again
/// afterwards, whether the pass succeeded or not.
pub(crate) fn score(
    model: &Model,
    cache: &mut ModelCache,
    context_len: usize,
    chunks: &[ReconstructionChunk],
    scoring: &dyn ReconstructionScoring,
) -> Result<Vec<Tensor>> {
    let n_layers = cache.n_layers();
    let n_kv_heads = model.config().n_kv_heads;
    let mut scores = vec![vec![0f32; n_kv_heads * context_len]; n_layers];
    for chunk in chunks {
        let mut hook = ChunkHook {
            scoring,
            chunk: chunk.tokens.clone(),
            context_len,
            scores: &mut scores,
        };
        let input = Tensor::new(chunk.ids.as_slice(), model.device())?.unsqueeze(0)?;
        let result = model.forward(&input, cache, Some(&mut hook));
        for layer in 0..n_layers {
            if let Some(layer) = cache.layer_mut(layer) {
                if layer.len() > context_len {
                    layer.truncate(context_len)?;
                }
            }
        }
        cache.set_seen_tokens(context_len);
        result?;
    }
    Ok(scores
        .into_iter()
        .map(|s| Tensor::from_vec(s, (1, n_kv_heads, context_len), model.device()))
        .collect::<candle_core::Result<_>>()?)
}

/// `source`'s tokens moved, layer by layer, into the empty layers of `target` (e.g. from the
/// model's dense cache, where the reconstruction pass runs fastest, into the flattened per-head
/// cache that stores what a head-wise selection keeps); each source layer is freed once moved.
pub(crate) fn move_layers(mut source: ModelCache, mut target: ModelCache) -> Result<ModelCache> {
    for layer_idx in 0..source.n_layers() {
        let from = source
            .layer_mut(layer_idx)
            .ok_or_else(|| Error::InvalidInput(format!("no layer {layer_idx}")))?;
        let stored = from.keys_values()?;
        let to = target
            .layer_mut(layer_idx)
            .ok_or_else(|| Error::InvalidInput(format!("no target layer {layer_idx}")))?;
        if let Some((keys, values)) = stored {
            to.append(&keys, &values)?;
        }
        from.clear();
    }
    target.set_seen_tokens(source.seen_tokens());
    Ok(target)
}

/// Compacts every layer of `cache` to its selection; one record per layer, with the scores of
/// the layers in `score_layers` and `shared_seconds` (the pass's time, shared equally) added to
/// each layer's own compaction time.
pub(crate) fn compact(
    cache: &mut ModelCache,
    selections: Vec<kvpress_core::press::Selection>,
    scores: Vec<Tensor>,
    score_layers: &[usize],
    shared_seconds: f64,
) -> Result<Vec<LayerRecord>> {
    let mut records = Vec::with_capacity(selections.len());
    for (layer_idx, (selection, layer_scores)) in selections.into_iter().zip(scores).enumerate() {
        let start = Instant::now();
        let layer = cache
            .layer_mut(layer_idx)
            .ok_or_else(|| Error::InvalidInput(format!("no layer {layer_idx}")))?;
        let bytes_before = layer.bytes_settled();
        layer.compact(&selection, None)?;
        layer.shrink_to_fit()?;
        records.push(LayerRecord {
            layer_idx,
            scores: score_layers
                .contains(&layer_idx)
                .then(|| layer_scores.to_dtype(DType::F32))
                .transpose()?,
            selection,
            cache_len: layer.len(),
            bytes_before,
            bytes_after: layer.bytes_reserved(),
            seconds: shared_seconds + start.elapsed().as_secs_f64(),
            notes: Vec::new(),
        });
    }
    Ok(records)
}

/// Scores one chunk in every layer and cuts the layer's cache back to the context.
struct ChunkHook<'a> {
    scoring: &'a dyn ReconstructionScoring,
    chunk: Range<usize>,
    context_len: usize,
    scores: &'a mut [Vec<f32>],
}

impl AttentionHook for ChunkHook<'_> {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        let chunk_scores = self
            .scoring
            .score_chunk(context, self.chunk.clone())?
            .to_dtype(DType::F32)?
            .get(0)?
            .to_vec2::<f32>()?;
        let layer = &mut self.scores[context.layer_idx];
        for (head, head_scores) in chunk_scores.iter().enumerate() {
            let row = &mut layer[head * self.context_len..(head + 1) * self.context_len];
            row[self.chunk.clone()].copy_from_slice(head_scores);
        }
        context.cache.truncate(self.context_len)
    }
}
