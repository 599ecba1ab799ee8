//! The dense layer cache: every KV head holds the same tokens, in preallocated buffers that grow
//! geometrically; attention runs through the kernels of `kvpress-kernels`.

use candle_core::{DType, Tensor};
use kvpress_core::{
    AttentionOutput, Error, LayerCache, LayerSnapshot, ModelCache, Result, Selection,
};
use kvpress_kernels::grouped_query_attention;

use crate::{KvStorage, QuantizedLayerCache};

/// A model cache of `n_layers` dense layer caches storing keys and values as `storage` says:
/// floats of a dtype, or quantized ([`crate::QuantizedLayerCache`]).
pub fn dense_model_cache(n_layers: usize, storage: KvStorage) -> ModelCache {
    ModelCache::from_layers(
        (0..n_layers)
            .map(|_| match storage {
                KvStorage::Float(dtype) => {
                    Box::new(DenseLayerCache::with_dtype(dtype)) as Box<dyn LayerCache>
                }
                KvStorage::Quantized(bits) => Box::new(QuantizedLayerCache::new(bits)),
            })
            .collect(),
    )
}

/// Keys given to replace the kept ones (re-rotated keys), checked against the kept `values` and
/// in their dtype.
pub(crate) fn replacement_keys(keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    if keys.dims() != values.dims() {
        return Err(Error::Shape(format!(
            "replacement keys {:?} do not match the kept values {:?}",
            keys.dims(),
            values.dims()
        )));
    }
    Ok(keys.to_dtype(values.dtype())?)
}

/// Refuses what a dense cache cannot store of a selection: key channels (every head stores
/// every channel of its keys).
pub(crate) fn check_storable(selection: &Selection) -> Result<()> {
    if selection.key_channels().is_some() {
        return Err(Error::Unsupported(
            "this selection keeps only some key channels (think), which the dense cache cannot \
             store: the press's own layer cache (Press::new_layer_cache) stores them"
                .to_string(),
        ));
    }
    Ok(())
}

/// The values the kept tokens store, `dtype`: the selection's replacement values (merging,
/// checked against the kept keys' shape and copied), else the kept rows of `cached`.
pub(crate) fn kept_values(selection: &Selection, cached: &Tensor, dtype: DType) -> Result<Tensor> {
    let Some(values) = selection.values() else {
        return Ok(selection.gather(cached)?.to_dtype(dtype)?);
    };
    let (b, h, _, d) = cached.dims4()?;
    let n_kept = selection.uniform_len().unwrap_or(0);
    if values.dims() != [b, h, n_kept, d] {
        return Err(Error::Shape(format!(
            "replacement values {:?} do not match the {n_kept} kept tokens of a cache of {:?}",
            values.dims(),
            cached.dims()
        )));
    }
    Ok(values.to_dtype(dtype)?.copy()?)
}

/// Causal grouped-query attention of `queries` over `stored` keys and values (the kernels');
/// an error when nothing is stored.
pub(crate) fn attend_over(
    queries: &Tensor,
    stored: Option<(Tensor, Tensor)>,
    want_weights: bool,
) -> Result<AttentionOutput> {
    let (keys, values) =
        stored.ok_or_else(|| Error::Shape("attend called on an empty cache".to_string()))?;
    let attended = grouped_query_attention(queries, &keys, &values, want_weights)?;
    Ok(AttentionOutput {
        output: attended.output,
        weights: attended.weights,
    })
}

/// Dense layer cache: all heads have the same length, stored in preallocated buffers of shape
/// `(batch, n_kv_heads, capacity, head_dim)` that grow geometrically, so appending a decoded
/// token copies only that token. The storage dtype may be narrower than the model's (an f16
/// cache of an f32 model halves the cache's memory and the bytes a decode step reads).
#[derive(Debug, Default)]
pub struct DenseLayerCache {
    storage: Option<(Tensor, Tensor)>,
    len: usize,
    dtype: Option<DType>,
}

/// Minimum slack, in tokens, reserved when the buffers (re)grow.
const MIN_SLACK_TOKENS: usize = 256;

impl DenseLayerCache {
    /// An empty cache storing keys and values in the dtype they are appended in; buffers are
    /// allocated on the first append.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache that stores keys and values as `dtype` (converting on append).
    pub fn with_dtype(dtype: DType) -> Self {
        Self {
            dtype: Some(dtype),
            ..Self::default()
        }
    }

    fn capacity(&self) -> usize {
        self.storage.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    fn check_pair(keys: &Tensor, values: &Tensor) -> Result<()> {
        if keys.rank() != 4 || keys.dims() != values.dims() {
            return Err(Error::Shape(format!(
                "keys {:?} and values {:?} must both be (batch, n_kv_heads, tokens, head_dim)",
                keys.dims(),
                values.dims()
            )));
        }
        Ok(())
    }

    /// Makes room for `needed` tokens, copying the stored ones into larger buffers if required.
    fn reserve(&mut self, template: &Tensor, needed: usize) -> Result<()> {
        let capacity = self.capacity();
        if let Some((k, _)) = &self.storage {
            let (b, h, _, d) = k.dims4()?;
            let (tb, th, _, td) = template.dims4()?;
            if (b, h, d) != (tb, th, td) || k.dtype() != template.dtype() {
                return Err(Error::Shape(format!(
                    "cannot append {:?} ({:?}) to a cache of {:?} ({:?})",
                    template.dims(),
                    template.dtype(),
                    k.dims(),
                    k.dtype()
                )));
            }
        }
        if needed <= capacity {
            return Ok(());
        }
        // The first allocation is exact (a prefilled or compressed context stores what it holds);
        // later ones grow geometrically so that decoding copies each token once.
        let new_capacity = if capacity == 0 {
            needed
        } else {
            needed.max(capacity + (capacity / 4).max(MIN_SLACK_TOKENS))
        };
        let (b, h, _, d) = template.dims4()?;
        let shape = (b, h, new_capacity, d);
        let new_keys = Tensor::zeros(shape, template.dtype(), template.device())?;
        let new_values = Tensor::zeros(shape, template.dtype(), template.device())?;
        if let Some((keys, values)) = &self.storage {
            if self.len > 0 {
                new_keys.slice_set(&keys.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                new_values.slice_set(&values.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
        }
        self.storage = Some((new_keys, new_values));
        Ok(())
    }
}

impl LayerCache for DenseLayerCache {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        Self::check_pair(keys, values)?;
        let (keys, values) = match self.dtype {
            Some(dtype) if keys.dtype() != dtype => {
                (&keys.to_dtype(dtype)?, &values.to_dtype(dtype)?)
            }
            _ => (keys, values),
        };
        let n_new = keys.dims()[2];
        self.reserve(keys, self.len + n_new)?;
        let (k_buf, v_buf) = self
            .storage
            .as_ref()
            .expect("reserve allocated the buffers");
        k_buf.slice_set(&keys.contiguous()?, 2, self.len)?;
        v_buf.slice_set(&values.contiguous()?, 2, self.len)?;
        self.len += n_new;
        Ok(())
    }

    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        attend_over(queries, self.keys_values()?, want_weights)
    }

    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.storage {
            Some((k, v)) if self.len > 0 => {
                Ok(Some((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?)))
            }
            _ => Ok(None),
        }
    }

    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        Self::check_pair(keys, values)?;
        self.clear();
        self.append(keys, values)
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {} tokens to {len} tokens",
                self.len
            )));
        }
        self.len = len;
        Ok(())
    }

    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        check_storable(selection)?;
        if selection.n_tokens() != self.len {
            return Err(Error::Shape(format!(
                "a selection over {} tokens cannot compact a cache of {} tokens",
                selection.n_tokens(),
                self.len
            )));
        }
        if selection.keeps_everything() && keys.is_none() && selection.values().is_none() {
            return Ok(());
        }
        let (cached_keys, cached_values) = match self.keys_values()? {
            Some(kv) => kv,
            None => return Ok(()),
        };
        let values = kept_values(selection, &cached_values, cached_values.dtype())?;
        let keys = match keys {
            Some(keys) => replacement_keys(keys, &values)?,
            None => selection.gather(&cached_keys)?,
        };
        self.replace(&keys, &values)
    }

    fn store_selected(
        &mut self,
        keys: &Tensor,
        values: &Tensor,
        selection: &Selection,
        kept_keys: Option<&Tensor>,
    ) -> Result<usize> {
        Self::check_pair(keys, values)?;
        check_storable(selection)?;
        if self.len > 0 {
            return Err(Error::InvalidArgument(format!(
                "store_selected needs an empty cache; this one holds {} tokens",
                self.len
            )));
        }
        let dtype = self.dtype.unwrap_or(values.dtype());
        // What an exact first `append` of every token would reserve.
        let bytes_with_everything = 2 * values.elem_count() * dtype.size_in_bytes();
        // Gathering makes new tensors nobody else holds: they become the buffers. Given keys
        // belong to the caller and are copied.
        let values = kept_values(selection, values, dtype)?;
        let keys = match kept_keys {
            Some(k) => replacement_keys(k, &values)?.copy()?,
            None => selection.gather(keys)?.to_dtype(dtype)?,
        };
        self.len = keys.dims()[2];
        self.storage = if self.len == 0 {
            None
        } else {
            Some((keys, values))
        };
        Ok(bytes_with_everything)
    }

    fn shrink_to_fit(&mut self) -> Result<()> {
        if self.capacity() == self.len {
            return Ok(());
        }
        match self.keys_values()? {
            Some((keys, values)) => {
                let (keys, values) = (keys.contiguous()?, values.contiguous()?);
                self.replace(&keys, &values)
            }
            None => {
                self.clear();
                Ok(())
            }
        }
    }

    fn bytes_used(&self) -> usize {
        // Keys and values, each `elem_count / capacity` elements per token.
        self.storage.as_ref().map_or(0, |(k, _)| {
            2 * k.elem_count() / self.capacity() * self.len * k.dtype().size_in_bytes()
        })
    }

    fn bytes_reserved(&self) -> usize {
        self.storage.as_ref().map_or(0, |(k, v)| {
            (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
        })
    }

    fn clear(&mut self) {
        self.storage = None;
        self.len = 0;
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        Ok(LayerSnapshot::Dense(match self.keys_values()? {
            Some((k, v)) => Some((k.contiguous()?, v.contiguous()?)),
            None => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tokens(n: usize, start: f32) -> Result<Tensor> {
        let data: Vec<f32> = (0..2 * n * 4).map(|i| start + i as f32).collect();
        Ok(Tensor::from_vec(data, (1, 2, n, 4), &Device::Cpu)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?)
    }

    #[test]
    fn storing_a_selection_equals_appending_then_compacting() -> Result<()> {
        let (keys, values) = (tokens(10, 0.0)?, tokens(10, 100.0)?);
        let selection = Selection::new(vec![vec![0, 4, 9], vec![1, 2, 3]], 1, 2, 10)?;
        let rotated = tokens(3, -50.0)?;
        for dtype in [DType::F32, DType::F16] {
            for kept_keys in [None, Some(&rotated)] {
                let mut stepwise = DenseLayerCache::with_dtype(dtype);
                stepwise.append(&keys, &values)?;
                let before = stepwise.bytes_reserved();
                stepwise.compact(&selection, kept_keys)?;
                stepwise.shrink_to_fit()?;
                let mut direct = DenseLayerCache::with_dtype(dtype);
                let reported = direct.store_selected(&keys, &values, &selection, kept_keys)?;
                assert_eq!(reported, before);
                assert_eq!(direct.len(), 3);
                assert_eq!(direct.bytes_reserved(), stepwise.bytes_reserved());
                let (k1, v1) = direct.keys_values()?.expect("stored");
                let (k2, v2) = stepwise.keys_values()?.expect("stored");
                assert_eq!(
                    (k1.dtype(), max_diff(&k1, &k2)?, max_diff(&v1, &v2)?),
                    (dtype, 0.0, 0.0)
                );
                // Later appends write into the cache's own buffers, never into the caller's.
                direct.append(&tokens(1, 7.0)?, &tokens(1, 7.0)?)?;
                assert_eq!(max_diff(&rotated, &tokens(3, -50.0)?)?, 0.0);
                assert_eq!(max_diff(&values, &tokens(10, 100.0)?)?, 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn appends_grow_and_keep_content() -> Result<()> {
        let mut cache = DenseLayerCache::new();
        let first = tokens(300, 0.0)?;
        cache.append(&first, &first)?;
        let mut all = vec![first];
        for step in 0..300 {
            let t = tokens(1, 10_000.0 + step as f32)?;
            cache.append(&t, &t)?;
            all.push(t);
        }
        assert_eq!(cache.len(), 600);
        let (k, v) = cache.keys_values()?.unwrap();
        let want = Tensor::cat(&all, 2)?;
        assert_eq!(
            k.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            v.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(cache.bytes_used(), 2 * 2 * 600 * 4 * 4);
        assert!(cache.bytes_reserved() >= cache.bytes_used());
        Ok(())
    }

    #[test]
    fn half_precision_storage_halves_the_bytes_and_attends_like_f32() -> Result<()> {
        let keys = Tensor::randn(0f32, 1.0, (1, 2, 300, 8), &Device::Cpu)?;
        let values = Tensor::randn(0f32, 1.0, (1, 2, 300, 8), &Device::Cpu)?;
        let mut full = DenseLayerCache::new();
        full.append(&keys, &values)?;
        for dtype in [DType::F16, DType::BF16] {
            let mut half = DenseLayerCache::with_dtype(dtype);
            half.append(&keys, &values)?;
            assert_eq!(half.bytes_used() * 2, full.bytes_used());
            assert_eq!(half.keys_values()?.unwrap().0.dtype(), dtype);
            // Prefill-sized and decode-sized queries take different kernels.
            for n_queries in [1, 40] {
                let queries = Tensor::randn(0f32, 1.0, (1, 4, n_queries, 8), &Device::Cpu)?;
                let want = full.attend(&queries, false)?.output;
                let got = half.attend(&queries, false)?.output;
                assert_eq!(got.dtype(), DType::F32);
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 3e-2, "{dtype:?} n_queries={n_queries}: {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn truncate_and_replace() -> Result<()> {
        let mut cache = DenseLayerCache::new();
        let t = tokens(10, 0.0)?;
        cache.append(&t, &t)?;
        cache.truncate(4)?;
        assert_eq!(cache.len(), 4);
        assert!(matches!(cache.truncate(5), Err(Error::InvalidArgument(_))));
        let small = tokens(2, 7.0)?;
        cache.replace(&small, &small)?;
        let (k, _) = cache.keys_values()?.unwrap();
        assert_eq!(
            k.flatten_all()?.to_vec1::<f32>()?,
            small.flatten_all()?.to_vec1::<f32>()?
        );
        cache.clear();
        assert!(cache.keys_values()?.is_none());
        assert!(cache.is_empty());
        Ok(())
    }

    #[test]
    fn mismatched_appends_are_errors() -> Result<()> {
        let mut cache = DenseLayerCache::new();
        cache.append(&tokens(2, 0.0)?, &tokens(2, 0.0)?)?;
        let other = Tensor::zeros((1, 3, 1, 4), DType::F32, &Device::Cpu)?;
        assert!(matches!(cache.append(&other, &other), Err(Error::Shape(_))));
        assert!(matches!(
            cache.append(&tokens(1, 0.0)?, &other),
            Err(Error::Shape(_))
        ));
        let empty = DenseLayerCache::new();
        assert!(empty.attend(&other, false).is_err());
        Ok(())
    }

    #[test]
    fn model_cache_tracks_positions_separately_from_lengths() -> Result<()> {
        let mut cache = dense_model_cache(2, KvStorage::Float(DType::F32));
        let t = tokens(5, 0.0)?;
        cache.layer_mut(0).unwrap().append(&t, &t)?;
        cache.set_seen_tokens(5);
        cache.layer_mut(0).unwrap().truncate(2)?;
        assert_eq!(cache.lengths(), vec![2, 0]);
        assert_eq!(cache.seen_tokens(), 5);
        cache.clear();
        assert_eq!(cache.seen_tokens(), 0);
        Ok(())
    }
}
