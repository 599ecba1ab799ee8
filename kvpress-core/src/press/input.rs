//! [`PressInput`]: what a press sees of one layer when it compresses.

use candle_core::{DType, Tensor};

use crate::attention::AttentionShape;
use crate::hook::{AttentionProjections, LayerContext};
use crate::rope::RotaryEmbedding;
use crate::{Error, Result};

/// One layer's cache and the forward that filled it, as handed to [`crate::Press::compress`].
///
/// Keys and values are the whole layer cache in f32, `(batch, n_kv_heads, n_tokens, head_dim)`,
/// keys post-RoPE. The queries and hidden states are those of the forward's tokens (the whole
/// context during prefill), which are the last tokens of the cache.
#[derive(Clone, Copy)]
pub struct PressInput<'a> {
    /// Index of the layer.
    pub layer_idx: usize,
    /// Number of layers in the model.
    pub n_layers: usize,
    /// Head layout.
    pub shape: AttentionShape,
    /// Attention input (normalised hidden states) of the forward's tokens, `(batch, n_q, hidden)`.
    pub hidden_states: &'a Tensor,
    /// Post-RoPE queries of the forward's tokens, `(batch, n_heads, n_q, head_dim)`.
    pub queries: &'a Tensor,
    /// RoPE position of the first query token.
    pub query_position: usize,
    /// Cached keys, post-RoPE, f32, `(batch, n_kv_heads, n_tokens, head_dim)`.
    pub keys: &'a Tensor,
    /// Cached values, f32, `(batch, n_kv_heads, n_tokens, head_dim)`.
    pub values: &'a Tensor,
    /// Attention weights of the forward's queries over the cache, `(batch, n_heads, n_q,
    /// n_tokens)`, present only when the press asked for them.
    pub attention_weights: Option<&'a Tensor>,
    /// Rotary tables of the model.
    pub rotary: &'a RotaryEmbedding,
    /// The layer's projection weights.
    pub projections: &'a dyn AttentionProjections,
    /// When heads of different lengths are presented as one tensor (a per-head cache compressed
    /// again while decoding): the leading padding tokens of each head (`batch * n_kv_heads`
    /// entries). Padding is not context: scorers give it no attention and allocators never keep
    /// it ([`Self::mask_padding`]).
    pub front_padding: Option<&'a [usize]>,
    /// How many of the forward's last tokens are the question that will be asked of this
    /// context, when the front end prefilled the context and the question together for a press
    /// that asks for it ([`crate::press::PressDescription::needs_question`], e.g. Finch); 0
    /// otherwise.
    pub question_tokens: usize,
    /// While decoding, for presses whose schedule asks for it
    /// ([`crate::press::DecodingSchedule::tracks_attention`], CaM): the attention the generated
    /// tokens gave each cached token so far; `None` otherwise.
    pub attention_history: Option<AttentionHistory<'a>>,
}

/// The attention generated tokens gave the cache, accumulated by the runtime while decoding.
#[derive(Debug, Clone, Copy)]
pub struct AttentionHistory<'a> {
    /// `(batch, n_kv_heads, n_tokens)`: per cached token, the sum over the forwards since the
    /// prefill of the attention the forward's last query gave it (mean over each KV head's query
    /// heads); tokens cached later have summed fewer forwards.
    pub sums: &'a Tensor,
    /// Forwards since the last compression (or since the prefill): the question's forward, then
    /// one per generated token (kvpress's `layer_step_counts`).
    pub new_forwards: usize,
}

impl std::fmt::Debug for PressInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressInput")
            .field("layer_idx", &self.layer_idx)
            .field("shape", &self.shape)
            .field("keys", &self.keys.dims())
            .field("queries", &self.queries.dims())
            .finish_non_exhaustive()
    }
}

/// Keys and values of a layer cache converted to f32, owned so that a [`PressInput`] can borrow
/// them.
#[derive(Debug, Clone)]
pub struct CachedKeysValues {
    /// Keys `(batch, n_kv_heads, n_tokens, head_dim)`.
    pub keys: Tensor,
    /// Values `(batch, n_kv_heads, n_tokens, head_dim)`.
    pub values: Tensor,
}

impl CachedKeysValues {
    /// Reads the cache of `context` as contiguous f32 tensors.
    pub fn of(context: &LayerContext<'_>) -> Result<Self> {
        Self::from_stored(context.cache.keys_values()?)
    }

    /// Keys and values a cache gave ([`crate::LayerCache::keys_values`] or a dense snapshot) as
    /// contiguous f32 tensors; an error when it holds nothing.
    pub fn from_stored(stored: Option<(Tensor, Tensor)>) -> Result<Self> {
        let (keys, values) =
            stored.ok_or_else(|| Error::Shape("cannot compress an empty cache".to_string()))?;
        Ok(Self {
            keys: keys.to_dtype(DType::F32)?.contiguous()?,
            values: values.to_dtype(DType::F32)?.contiguous()?,
        })
    }

    /// The press input for `context` over these keys and values.
    pub fn input<'a>(&'a self, context: &'a LayerContext<'_>) -> PressInput<'a> {
        PressInput {
            layer_idx: context.layer_idx,
            n_layers: context.n_layers,
            shape: context.shape,
            hidden_states: context.hidden_states,
            queries: context.queries,
            query_position: context.position_offset,
            keys: &self.keys,
            values: &self.values,
            attention_weights: context.attention_weights,
            rotary: context.rotary,
            projections: context.projections,
            front_padding: None,
            question_tokens: 0,
            attention_history: None,
        }
    }
}

impl<'a> PressInput<'a> {
    /// Batch size.
    pub fn batch(&self) -> Result<usize> {
        Ok(self.keys.dim(0)?)
    }

    /// Tokens in the layer cache.
    pub fn n_tokens(&self) -> Result<usize> {
        Ok(self.keys.dim(2)?)
    }

    /// Number of query tokens of the forward.
    pub fn n_queries(&self) -> Result<usize> {
        Ok(self.queries.dim(2)?)
    }

    /// Position after the last query token: where future tokens start.
    pub fn next_position(&self) -> Result<usize> {
        Ok(self.query_position + self.n_queries()?)
    }

    /// Leading padding tokens of head `head` (`batch_idx * n_kv_heads + kv_head`); 0 without
    /// padding.
    pub fn padding_of(&self, head: usize) -> usize {
        self.front_padding
            .and_then(|p| p.get(head).copied())
            .unwrap_or(0)
    }

    /// `scores` `(batch, n_kv_heads, n_tokens)` with every padding position set to minus
    /// infinity, so that no allocator keeps it.
    pub fn mask_padding(&self, scores: Tensor) -> Result<Tensor> {
        let Some(padding) = self.front_padding else {
            return Ok(scores);
        };
        let (batch, heads, n) = scores.dims3()?;
        let mut data = scores
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (row, &pad) in data.chunks_exact_mut(n).zip(padding) {
            row[..pad.min(n)].fill(f32::NEG_INFINITY);
        }
        Ok(Tensor::from_vec(data, (batch, heads, n), scores.device())?)
    }

    /// The same input over other keys and values (e.g. what a previous press kept).
    pub fn with_keys_values(&self, keys: &'a Tensor, values: &'a Tensor) -> Self {
        Self {
            keys,
            values,
            attention_weights: None,
            front_padding: None,
            attention_history: None,
            ..*self
        }
    }
}

/// Tensors of a chunk of the input (tokens `start..start + len`), owned so that a chunk's
/// [`PressInput`] can borrow them.
#[derive(Debug, Clone)]
pub struct InputChunk {
    hidden_states: Tensor,
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    query_position: usize,
}

impl InputChunk {
    /// Cuts tokens `start..start + len` out of `input`, whose queries must cover every cached
    /// token (a prefill).
    pub fn new(input: &PressInput<'_>, start: usize, len: usize) -> Result<Self> {
        let n_tokens = input.n_tokens()?;
        if input.front_padding.is_some() {
            return Err(Error::Unsupported(
                "chunked scoring of heads of different lengths".to_string(),
            ));
        }
        if input.n_queries()? != n_tokens {
            return Err(Error::InvalidArgument(format!(
                "chunked scoring needs the queries of every cached token ({n_tokens}), got {}",
                input.n_queries()?
            )));
        }
        Ok(Self {
            hidden_states: input.hidden_states.narrow(1, start, len)?,
            queries: input.queries.narrow(2, start, len)?,
            keys: input.keys.narrow(2, start, len)?.contiguous()?,
            values: input.values.narrow(2, start, len)?.contiguous()?,
            query_position: input.query_position + start,
        })
    }

    /// The chunk as a press input (no attention weights).
    pub fn input<'a>(&'a self, whole: &PressInput<'a>) -> PressInput<'a> {
        PressInput {
            hidden_states: &self.hidden_states,
            queries: &self.queries,
            query_position: self.query_position,
            keys: &self.keys,
            values: &self.values,
            attention_weights: None,
            front_padding: None,
            question_tokens: 0,
            attention_history: None,
            ..*whole
        }
    }
}
