//! CUDA kernels for the flattened cache (feature `cuda`): PTX compiled by `build.rs` from
//! `adakv/cuda/*.cu`, run through candle custom ops on candle's CUDA backend.
//!
//! The layout is [`crate::FlatLayerCache`]'s: head `h` (`batch_idx * n_kv_heads + kv_head`)
//! owns rows `offsets[h]..offsets[h] + capacities[h]` of a `(2, rows, head_dim)` key/value
//! buffer, the first `lengths[h]` of them stored; the metadata are u32 device vectors.
//!
//! - [`append_token`]: one decoded token per head into its slack, in place.
//! - [`compact`] / [`segment_starts`]: gather a per-head selection into a new buffer (also
//!   lays a layer out again with more slack).
//! - [`decode_attention`]: one query token, `G` query heads per KV head, per-head lengths,
//!   split-K; f32/f16/bf16 with f32 accumulation.
//! - [`top_k`]: k largest per row for rows of any length, ascending indices, ties to the earlier
//!   index (candle's CUDA sort stops at 8192 columns).
//! - [`protect_selection`]: AdaKV's head-wise allocation (kvpress's safeguard rule) from a
//!   sequence's scores, on the device.
//! - [`CudaFlatLayer`]: one layer's cache built from these, and a [`kvpress_core::LayerCache`]
//!   (the semantics of [`crate::FlatLayerCache`]: ragged selections stored as they are,
//!   replacement keys refused, per-head snapshots). An empty layer ([`CudaFlatLayer::new`])
//!   learns its layout from the first append. Kernels where they apply: one token per head
//!   appended in place ([`append_token`]), one query token attended without weights
//!   ([`decode_attention`], head_dim 32/64/128/256, queries of the cache's dtype), compaction,
//!   relayout, shrinking and packing ([`compact`]). Elsewhere exact candle operations on the
//!   device: several tokens per head appended with one copy per head, attention over several
//!   query tokens, with weights or another head_dim computed in f32 per KV head (or over all
//!   heads at once when they share a length and capacity), dense key/value views.
//!
//! Every function checks devices, dtypes and shapes and returns an error naming what is valid.

mod allocate;
mod append;
mod cache;
mod cache_append;
mod compact;
mod decode_attention;
mod kernels;
mod layer_cache;
mod top_k;

pub use allocate::protect_selection;
pub use append::append_token;
pub use cache::CudaFlatLayer;
pub use compact::{compact, segment_starts, KeptRows};
pub use decode_attention::decode_attention;
pub use top_k::top_k;
