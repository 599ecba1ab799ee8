//! Rebuilding layer caches from their layout-independent snapshots ([`LayerSnapshot`]): loading
//! a saved context, and restoring a context after decode-time compression shortened it.

use kvpress_core::{LayerCache, LayerSnapshot, ModelCache};
use kvpress_models::DenseLayerCache;

use crate::Result;

/// A layer cache holding exactly what `snapshot` holds: a dense cache for a dense snapshot, the
/// flattened per-head cache for heads of their own lengths, a copy of the cache for a cache kept
/// as it is stored (quantized).
pub fn layer_from_snapshot(snapshot: &LayerSnapshot) -> Result<Box<dyn LayerCache>> {
    Ok(match snapshot {
        LayerSnapshot::Dense(None) => Box::new(DenseLayerCache::new()),
        LayerSnapshot::Dense(Some((keys, values))) => {
            let mut cache = DenseLayerCache::with_dtype(keys.dtype());
            cache.append(keys, values)?;
            Box::new(cache)
        }
        LayerSnapshot::PerHead {
            keys,
            values,
            head_lengths,
            batch,
            n_kv_heads,
        } => Box::new(adakv::FlatLayerCache::from_rows(
            keys,
            values,
            head_lengths,
            *batch,
            *n_kv_heads,
        )?),

        LayerSnapshot::Stored(layer) => layer.try_clone().ok_or_else(|| {
            crate::Error::InvalidInput(
                "a layer snapshot holds a cache that cannot be copied (its `try_clone` gives \
                 nothing)"
                    .to_string(),
            )
        })?,
    })
}

/// Every layer's snapshot.
pub fn snapshot_layers(cache: &ModelCache) -> Result<Vec<LayerSnapshot>> {
    (0..cache.n_layers())
        .map(|i| match cache.layer(i) {
            Some(layer) => Ok(layer.snapshot()?),
            None => Err(crate::Error::InvalidInput(format!("no layer {i}"))),
        })
        .collect()
}

/// A model cache rebuilt from snapshots, at position `seen_tokens`.
pub fn cache_from_snapshots(snapshots: &[LayerSnapshot], seen_tokens: usize) -> Result<ModelCache> {
    let layers = snapshots
        .iter()
        .map(layer_from_snapshot)
        .collect::<Result<Vec<_>>>()?;
    let mut cache = ModelCache::from_layers(layers);
    cache.set_seen_tokens(seen_tokens);
    Ok(cache)
}
