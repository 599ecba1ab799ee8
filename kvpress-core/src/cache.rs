//! KV caches: the per-layer trait a model appends to and attends over, and the whole-model
//! cache that tracks positions. The layouts live with their kernels: the dense one in
//! `kvpress-models`, the flattened per-head one in `adakv`.
//!
//! Positions and cache lengths are separate: after a press evicts tokens, new tokens keep their
//! original RoPE positions ([`ModelCache::seen_tokens`]) while attention masks follow the cache
//! length ([`LayerCache::len`]).

use std::sync::Arc;

use candle_core::Tensor;

use crate::attention::AttentionOutput;
use crate::press::Selection;
use crate::{Error, Result};

/// One attention layer's key/value store. Keys are stored post-RoPE, values as projected;
/// K/V are never repeated per query head.
///
/// Attention is a method of the cache because the storage layout decides the kernel: the dense
/// cache uses batched matmuls, a ragged per-head cache brings its own kernel.
pub trait LayerCache: Send + Sync + std::fmt::Debug {
    /// Tokens currently stored per KV head (the longest head for ragged layouts).
    fn len(&self) -> usize;

    /// Tokens stored by each head (`batch * n_kv_heads` entries), for layouts whose heads may
    /// hold different numbers; `None` (the default) when every head holds [`Self::len`].
    fn head_lengths(&self) -> Option<Vec<usize>> {
        None
    }

    /// Whether nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the keys and values `(batch, n_kv_heads, n_new, head_dim)` of new tokens.
    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()>;

    /// Causal attention of `queries` `(batch, n_heads, n_new, head_dim)`, the queries of the last
    /// `n_new` appended tokens, over the whole cache. Weights are computed only when asked.
    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput>;

    /// Views of the stored keys and values, `(batch, n_kv_heads, len, head_dim)`; `None` when
    /// empty. Views stay valid until the next `append`, `truncate`, `replace` or `clear`.
    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>>;

    /// Replaces the whole content (e.g. with the tokens a press kept).
    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()>;

    /// Drops every token from index `len` on.
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// Keeps only the tokens `selection` lists for each head (what a press decided), storing
    /// `keys` for them instead of the cached keys when given (re-rotated keys). A selection may
    /// also keep only some key channels ([`Selection::key_channels`], ThinK) or bring values
    /// for the kept tokens ([`Selection::values`], merging): a cache stores them as said, or
    /// refuses the selection with an error and changes nothing.
    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()>;

    /// Drops the tokens `selection` does not keep, as [`Self::compact`] does, but keeps the
    /// storage reserved: for frequent small evictions while decoding (DMS), where the cache
    /// grows again right after. The default is [`Self::compact`]; a cache may override it to
    /// move only the rows after the first dropped one of each head.
    fn evict(&mut self, selection: &Selection) -> Result<()> {
        self.compact(selection, None)
    }

    /// Releases slack reserved for appends, so that what is allocated is what is stored.
    fn shrink_to_fit(&mut self) -> Result<()>;

    /// Stores in this empty cache the tokens `selection` keeps out of `keys` and `values`
    /// `(batch, n_kv_heads, tokens, head_dim)` (with `kept_keys` instead of the kept keys when
    /// given): what `append`, `compact` and `shrink_to_fit` do in turn, which is the default.
    /// Returns the bytes the cache reserved holding every token, before the selection. Caches
    /// override it to skip storing the dropped tokens first.
    fn store_selected(
        &mut self,
        keys: &Tensor,
        values: &Tensor,
        selection: &Selection,
        kept_keys: Option<&Tensor>,
    ) -> Result<usize> {
        self.append(keys, values)?;
        let bytes_with_everything = self.bytes_reserved();
        self.compact(selection, kept_keys)?;
        self.shrink_to_fit()?;
        Ok(bytes_with_everything)
    }

    /// Bytes holding stored tokens.
    fn bytes_used(&self) -> usize;

    /// Bytes allocated, including slack reserved for future appends.
    fn bytes_reserved(&self) -> usize;

    /// Bytes the stored tokens take once the cache has settled them in its storage: what
    /// compression reports call the full cache. [`Self::bytes_reserved`] (the default) for
    /// caches that store tokens as they come; a cache that keeps its newest tokens in a wider
    /// type until the next forward (the quantized cache keeps them in f32) counts them as it
    /// will store them.
    fn bytes_settled(&self) -> usize {
        self.bytes_reserved()
    }

    /// Empties the cache and frees its storage.
    fn clear(&mut self);

    /// The stored tokens in a layout-independent form, for saving a compressed context.
    fn snapshot(&self) -> Result<LayerSnapshot>;

    /// The stored tokens as floats, `Dense` or `PerHead` (never `Stored`): what a press reads
    /// when it compresses a cache that already holds compressed tokens (decode-time
    /// compression). The default is [`Self::snapshot`]; a cache whose snapshot is itself (the
    /// quantized cache) gives its tokens dequantized.
    fn float_snapshot(&self) -> Result<LayerSnapshot> {
        self.snapshot()
    }

    /// A copy of this cache, for layouts whose snapshot is the cache itself
    /// ([`LayerSnapshot::Stored`]); `None` (the default) for the others.
    fn try_clone(&self) -> Option<Box<dyn LayerCache>> {
        None
    }

    /// The stored rows as packed bytes, for layouts that store codes rather than floats (a
    /// quantized cache): what a saved context holds of them. `None` (the default) for the
    /// others, whose [`Self::snapshot`] gives their tensors.
    fn packed(&self) -> Result<Option<PackedLayer>> {
        Ok(None)
    }
}

/// A quantized layer's rows as stored ([`LayerCache::packed`]): per head, in head order, its
/// key (and value) rows, each row its codes then every group's step and minimum (f16,
/// little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLayer {
    /// Bits per code (8 or 4).
    pub bits: u32,
    /// Bytes of one packed row.
    pub row_bytes: usize,
    /// Rows of each head (`batch * n_kv_heads` of them).
    pub head_lengths: Vec<usize>,
    /// Key rows of every head, back to back.
    pub keys: Vec<u8>,
    /// Value rows of every head, back to back.
    pub values: Vec<u8>,
    /// The channel order the key rows are stored in, every head's back to back (`head_dim`
    /// entries each: stored position `p` holds channel `order[p]`), when the keys are grouped
    /// by magnitude; `None` when every row is in channel order.
    pub key_orders: Option<Vec<u16>>,
}

/// What one layer cache stores, independent of its buffers: enough to rebuild it exactly.
#[derive(Debug, Clone)]
pub enum LayerSnapshot {
    /// Every head holds the same tokens count: keys and values `(batch, n_kv_heads, len,
    /// head_dim)` (`None` when empty).
    Dense(Option<(Tensor, Tensor)>),
    /// Heads of different lengths: each head's rows back to back, `(total_rows, head_dim)`,
    /// with the length of every head (`batch * n_kv_heads` of them).
    PerHead {
        /// Key rows.
        keys: Tensor,
        /// Value rows.
        values: Tensor,
        /// Rows of each head, in order.
        head_lengths: Vec<usize>,
        /// Batch size.
        batch: usize,
        /// KV heads per sequence.
        n_kv_heads: usize,
    },
    /// Tokens in a storage the forms above would change (a quantized cache): a copy of the
    /// layer cache itself, which [`LayerCache::try_clone`] rebuilds exactly; its
    /// [`LayerCache::keys_values`] reads the tokens (dequantized).
    Stored(Arc<dyn LayerCache>),
}

/// Checks rows laid out as [`LayerSnapshot::PerHead`] holds them: keys and values of one
/// shape `(total_rows, head_dim)`, and `batch * n_kv_heads` head lengths summing to the rows.
/// Returns `(total_rows, head_dim)`.
pub fn check_per_head_rows(
    keys: &Tensor,
    values: &Tensor,
    head_lengths: &[usize],
    (batch, n_kv_heads): (usize, usize),
) -> Result<(usize, usize)> {
    let (rows, head_dim) = keys
        .dims2()
        .map_err(|_| Error::Shape(format!("keys {:?} must be (rows, head_dim)", keys.dims())))?;
    if values.dims() != keys.dims()
        || head_lengths.len() != batch * n_kv_heads
        || head_lengths.iter().sum::<usize>() != rows
    {
        return Err(Error::Shape(format!(
            "rows {:?}/{:?} do not match {} head lengths summing to {} (batch {batch}, \
             {n_kv_heads} KV heads)",
            keys.dims(),
            values.dims(),
            head_lengths.len(),
            head_lengths.iter().sum::<usize>()
        )));
    }
    Ok((rows, head_dim))
}

/// The caches of all layers of one model plus the number of tokens the model has seen, which is
/// the RoPE position of the next token (it does not shrink when presses evict tokens).
#[derive(Debug)]
pub struct ModelCache {
    layers: Vec<Box<dyn LayerCache>>,
    seen_tokens: usize,
}

impl ModelCache {
    /// A cache made of the given layer caches (any layout).
    pub fn from_layers(layers: Vec<Box<dyn LayerCache>>) -> Self {
        Self {
            layers,
            seen_tokens: 0,
        }
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Tokens the model has processed so far: the position of the next token.
    pub fn seen_tokens(&self) -> usize {
        self.seen_tokens
    }

    /// Sets the number of tokens seen (after a forward, or when rewinding to a saved state).
    pub fn set_seen_tokens(&mut self, seen_tokens: usize) {
        self.seen_tokens = seen_tokens;
    }

    /// Moves every position forward by `n` tokens (after a forward).
    pub fn advance(&mut self, n: usize) {
        self.seen_tokens += n;
    }

    /// One layer's cache.
    pub fn layer(&self, layer_idx: usize) -> Option<&dyn LayerCache> {
        self.layers.get(layer_idx).map(|l| l.as_ref())
    }

    /// One layer's cache, mutably.
    pub fn layer_mut(&mut self, layer_idx: usize) -> Option<&mut (dyn LayerCache + 'static)> {
        self.layers.get_mut(layer_idx).map(|l| l.as_mut())
    }

    /// Cache lengths of every layer.
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.len()).collect()
    }

    /// Bytes holding stored tokens, all layers.
    pub fn bytes_used(&self) -> usize {
        self.layers.iter().map(|l| l.bytes_used()).sum()
    }

    /// Bytes allocated, all layers.
    pub fn bytes_reserved(&self) -> usize {
        self.layers.iter().map(|l| l.bytes_reserved()).sum()
    }

    /// Returns to a saved state: layers longer than `lengths` are truncated to them and the
    /// position is set to `seen_tokens`. A layer shorter than its saved length (a press
    /// compacted it since) cannot be brought back: then every layer is cleared, the position
    /// set to 0, and [`Error::CacheCleared`] says which layer it was, so the cache is never left
    /// half restored.
    pub fn rewind(&mut self, lengths: &[usize], seen_tokens: usize) -> Result<()> {
        let shortened = self
            .layers
            .iter()
            .zip(lengths)
            .position(|(layer, &len)| layer.len() < len);
        if let Some(layer) = shortened {
            let (now, saved) = (self.layers[layer].len(), lengths[layer]);
            self.clear();
            return Err(Error::CacheCleared { layer, now, saved });
        }
        for (layer, &len) in self.layers.iter_mut().zip(lengths) {
            if layer.len() > len {
                layer.truncate(len)?;
            }
        }
        self.seen_tokens = seen_tokens;
        Ok(())
    }

    /// Releases every layer's slack ([`LayerCache::shrink_to_fit`]; a quantized layer also
    /// quantizes the tokens of its latest append, which it held in f32).
    pub fn shrink_to_fit(&mut self) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.shrink_to_fit())
    }

    /// Empties every layer and resets the position to 0.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.clear());
        self.seen_tokens = 0;
    }
}
