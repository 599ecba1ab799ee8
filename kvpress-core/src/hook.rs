//! Hook points: what a model hands to a press (or recorder) inside each attention layer.
//!
//! The model calls [`AttentionHook::after_attention`] once per layer and forward, after the new
//! keys/values were appended and attention was computed, before the output projection. The
//! context exposes everything the scoring methods of kvpress need; the hook may shorten the
//! layer's cache (that is how a press compresses).

use candle_core::Tensor;

use crate::attention::AttentionShape;
use crate::cache::LayerCache;
use crate::rope::RotaryEmbedding;
use crate::Result;

/// Which kind of forward the hook is called from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPhase {
    /// The cache was empty before this forward: the context's prefill.
    Prefill,
    /// The cache already held tokens: question tokens or decoding.
    Decode,
}

/// Access to one layer's projection weights, dequantized to f32 `(out, in)` on request (they are
/// not materialised unless a press asks).
pub trait AttentionProjections {
    /// `W_q`, shape `(n_heads * head_dim, hidden)`, in the Hugging Face (rotate-half) row order.
    fn query_weight(&self) -> Result<Tensor>;
    /// Bias of the query projection (Qwen2), shape `(n_heads * head_dim,)`.
    fn query_bias(&self) -> Result<Option<Tensor>>;
    /// RMSNorm weight applied per head to queries before RoPE (Qwen3), shape `(head_dim,)`,
    /// with its epsilon.
    fn query_norm(&self) -> Option<(Tensor, f64)>;
    /// `W_o`, shape `(hidden, n_heads * head_dim)`.
    fn output_weight(&self) -> Result<Tensor>;
}

/// Everything a hook sees for one layer and one forward.
pub struct LayerContext<'a> {
    /// Index of the layer.
    pub layer_idx: usize,
    /// Number of layers in the model.
    pub n_layers: usize,
    /// Prefill (empty cache before this forward) or decode.
    pub phase: ForwardPhase,
    /// RoPE position of the first new token (tokens seen before this forward).
    pub position_offset: usize,
    /// Head layout of the layer.
    pub shape: AttentionShape,
    /// Attention input: the RMS-normalised hidden states, `(batch, n_new, hidden)`.
    pub hidden_states: &'a Tensor,
    /// Post-RoPE queries of the new tokens, `(batch, n_heads, n_new, head_dim)`.
    pub queries: &'a Tensor,
    /// Post-RoPE keys of the new tokens, `(batch, n_kv_heads, n_new, head_dim)`.
    pub keys: &'a Tensor,
    /// Values of the new tokens, `(batch, n_kv_heads, n_new, head_dim)`.
    pub values: &'a Tensor,
    /// Softmax attention weights `(batch, n_heads, n_new, cache_len)`, present only when the
    /// hook asked for them through [`AttentionHook::wants_attention_weights`].
    pub attention_weights: Option<&'a Tensor>,
    /// Rotary tables of the model, for any position.
    pub rotary: &'a RotaryEmbedding,
    /// The layer's projection weights.
    pub projections: &'a dyn AttentionProjections,
    /// The layer's cache, already holding the new tokens; a hook may compact or replace it.
    pub cache: &'a mut dyn LayerCache,
}

/// Code that runs inside each attention layer: presses, recorders, observers.
pub trait AttentionHook: Send {
    /// Whether the model must compute attention weights for this layer and phase (they cost
    /// `n_new * cache_len` memory per head, so models compute them only on request).
    fn wants_attention_weights(&self, _layer_idx: usize, _phase: ForwardPhase) -> bool {
        false
    }

    /// Called after attention of `context.layer_idx`, before the output projection.
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> Result<()>;
}

/// A hook that does nothing; a model running with it computes exactly what it computes without
/// a hook.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOpHook;

impl AttentionHook for NoOpHook {
    fn after_attention(&mut self, _context: &mut LayerContext<'_>) -> Result<()> {
        Ok(())
    }
}
