//! [`LayerCache`] for [`CudaFlatLayer`], and its attention: the decode kernel where it applies
//! (one query token, no weights, queries of the cache's dtype, a head dimension it takes),
//! otherwise exact attention from candle operations on the device (f32 accumulation), per KV
//! head over its own rows, or over all heads at once when they share one length and capacity.
//!
//! The semantics are [`crate::FlatLayerCache`]'s: `len()` is the longest head, `truncate`
//! drops the same number of tokens from every head, ragged selections are stored as they are,
//! replacement keys, pruned key channels and replacement values are refused, and `snapshot` is
//! always [`LayerSnapshot::PerHead`].

use candle_core::{DType, Device, Tensor, D};
use kvpress_core::attention::AttentionOutput;
use kvpress_core::press::Selection;
use kvpress_core::{Error, LayerCache, LayerSnapshot, Result};

use super::cache::CudaFlatLayer;
use super::decode_attention::{decode_attention, HEAD_DIMS};
use super::kernels::{check_cuda, dtype_suffix};

/// Upper bound on the score elements materialised at once by the candle-ops attention (per
/// chunk of query rows), as in the dense attention of `kvpress-kernels`.
const MAX_SCORE_ELEMENTS: usize = 1 << 24;

impl CudaFlatLayer {
    /// Causal attention of `queries` `(batch, n_heads, n_new, head_dim)`, the queries of the
    /// last `n_new` appended tokens, over every head's own stored tokens (query row `i` sees
    /// the first `len - n_new + i + 1` tokens of its KV head); returned in the queries' dtype.
    /// One token of the cache's dtype with a head dimension of 32, 64, 128 or 256 runs the
    /// split-K [`decode_attention`] kernel; anything else candle operations.
    pub fn attend(&self, queries: &Tensor) -> Result<Tensor> {
        Ok(self.attention(queries, false)?.output)
    }

    /// [`CudaFlatLayer::attend`], with the weights `(batch, n_heads, n_new, len)` when asked
    /// (only when every head stores the same number of tokens).
    fn attention(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        let (n_new, group) = self.check_queries(queries)?;
        let len = self.max_len();
        if want_weights && self.host_lengths.iter().any(|&l| l as usize != len) {
            return Err(Error::Unsupported(
                "attention weights over heads of different lengths".to_string(),
            ));
        }
        let kernel = n_new == 1
            && !want_weights
            && queries.dtype() == self.dtype
            && HEAD_DIMS.contains(&self.head_dim);
        if kernel {
            let storage = self.storage()?;
            let output = decode_attention(
                queries,
                &storage.kv,
                &storage.offsets,
                &storage.lengths,
                len,
            )?;
            return Ok(AttentionOutput {
                output,
                weights: None,
            });
        }
        self.attention_with_candle_ops(queries, group, want_weights)
    }

    /// Checks queries against the layer; returns the new tokens and the query heads per KV
    /// head.
    fn check_queries(&self, queries: &Tensor) -> Result<(usize, usize)> {
        if self.max_len() == 0 {
            return Err(Error::Shape("attend called on an empty cache".to_string()));
        }
        let (batch, n_heads, n_new, head_dim) = queries.dims4().map_err(|_| {
            Error::Shape(format!(
                "queries {:?} must be (batch, n_heads, n_new, head_dim)",
                queries.dims()
            ))
        })?;
        check_cuda(queries, "queries", Some(&self.storage()?.kv))?;
        dtype_suffix(queries.dtype(), "queries")?;
        let n_kv_heads = self.n_kv_heads;
        if batch != self.batch
            || head_dim != self.head_dim
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
        {
            return Err(Error::Shape(format!(
                "queries {:?} cannot attend over a flattened cache of batch {}, {n_kv_heads} KV \
                 heads, head dim {} (query heads must be a multiple of the KV heads)",
                queries.dims(),
                self.batch,
                self.head_dim
            )));
        }
        let shortest = self.host_lengths.iter().copied().min().unwrap_or(0) as usize;
        if shortest < n_new {
            return Err(Error::Shape(format!(
                "{n_new} new queries but a head stores only {shortest} tokens"
            )));
        }
        Ok((n_new, n_heads / n_kv_heads))
    }

    /// Attention from candle operations: all heads at once over [`Self::uniform_views`], else
    /// one KV head at a time over its own rows.
    fn attention_with_candle_ops(
        &self,
        queries: &Tensor,
        group: usize,
        want_weights: bool,
    ) -> Result<AttentionOutput> {
        let (batch, n_heads, n_new, d) = queries.dims4()?;
        let heads = self.host_lengths.len();
        let q = queries
            .to_dtype(DType::F32)?
            .reshape((heads, group, n_new, d))?;
        let blocks = match self.uniform_views()? {
            Some((keys, values)) => {
                let len = keys.dim(2)?;
                let keys = keys.reshape((heads, len, d))?;
                vec![attend_block(
                    &q,
                    &keys,
                    &values.reshape((heads, len, d))?,
                    want_weights,
                )?]
            }
            None => (0..heads)
                .map(|head| {
                    let (keys, values) = self.head_rows(head)?;
                    let q = q.narrow(0, head, 1)?;
                    attend_block(&q, &keys.unsqueeze(0)?, &values.unsqueeze(0)?, want_weights)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let (outputs, weights): (Vec<Tensor>, Vec<Option<Tensor>>) = blocks.into_iter().unzip();
        let output = Tensor::cat(&outputs, 0)?
            .reshape((batch, n_heads, n_new, d))?
            .to_dtype(queries.dtype())?;
        let weights = match weights.into_iter().collect::<Option<Vec<_>>>() {
            Some(weights) if want_weights => Some(
                Tensor::cat(&weights, 0)?
                    .reshape((batch, n_heads, n_new, self.max_len()))?
                    .to_dtype(queries.dtype())?,
            ),
            _ => None,
        };
        Ok(AttentionOutput { output, weights })
    }

    /// The stored keys and values of one head, `(len, head_dim)` views of the buffer.
    fn head_rows(&self, head: usize) -> Result<(Tensor, Tensor)> {
        let storage = self.storage()?;
        let (offset, len) = (self.host_offsets[head], self.host_lengths[head]);
        let rows = storage.kv.narrow(1, offset as usize, len as usize)?;
        Ok((rows.get(0)?, rows.get(1)?))
    }

    /// Views `(batch, n_kv_heads, len, head_dim)` of the keys and values when every head stores
    /// `len` tokens in regions of one capacity (the layout after a prefill and its appends);
    /// `None` otherwise.
    fn uniform_views(&self) -> Result<Option<(Tensor, Tensor)>> {
        let (len, capacity) = match (self.host_lengths.first(), self.host_capacities.first()) {
            (Some(&len), Some(&capacity)) => (len as usize, capacity as usize),
            _ => return Ok(None),
        };
        let uniform = self.host_lengths.iter().all(|&l| l as usize == len)
            && self.host_capacities.iter().all(|&c| c as usize == capacity);
        let storage = match &self.storage {
            Some(storage) if uniform && len > 0 => storage,
            _ => return Ok(None),
        };
        let shape = (2, self.batch, self.n_kv_heads, capacity, self.head_dim);
        let kv = storage.kv.reshape(shape)?.narrow(3, 0, len)?;
        Ok(Some((kv.get(0)?, kv.get(1)?)))
    }
}

/// Causal attention of `q` `(m, group, n, d)` (f32) over `keys`/`values` `(m, len, d)`: query
/// row `i` sees the first `len - n + i + 1` keys, scale `1/sqrt(d)`, f32 throughout, query rows
/// in chunks that bound the score matrix. Returns `(m, group, n, d)` and, when asked, the
/// weights `(m, group, n, len)`. Needs `n <= len`.
fn attend_block(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    want_weights: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (m, group, n, d) = q.dims4()?;
    let len = keys.dim(1)?;
    let keys = keys.to_dtype(DType::F32)?.contiguous()?;
    let values = values.to_dtype(DType::F32)?.contiguous()?;
    let scale = 1.0 / (d as f64).sqrt();
    let first = len - n;
    let rows_per_chunk = (MAX_SCORE_ELEMENTS / (m * group * len).max(1)).clamp(1, n.max(1));
    let (mut outputs, mut weights) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let rows = rows_per_chunk.min(n - start);
        let visible = first + start + rows;
        let qc = (q
            .narrow(2, start, rows)?
            .contiguous()?
            .reshape((m, group * rows, d))?
            * scale)?;
        let kc = keys.narrow(1, 0, visible)?.contiguous()?;
        let vc = values.narrow(1, 0, visible)?.contiguous()?;
        let scores = qc.matmul(&kc.t()?)?.reshape((m, group, rows, visible))?;
        let scores = match rows {
            1 => scores,
            _ => scores.broadcast_add(&causal_mask(rows, first + start, visible, q.device())?)?,
        };
        let probs = softmax_last_dim(&scores)?;
        let out = probs
            .reshape((m, group * rows, visible))?
            .matmul(&vc)?
            .reshape((m, group, rows, d))?;
        outputs.push(out);
        if want_weights {
            weights.push(probs.pad_with_zeros(D::Minus1, 0, len - visible)?);
        }
        start += rows;
    }
    let output = Tensor::cat(&outputs, 2)?;
    let weights = match want_weights {
        true => Some(Tensor::cat(&weights, 2)?),
        false => None,
    };
    Ok((output, weights))
}

/// Softmax over the last dimension from elementwise operations (candle-nn's fused op needs its
/// own `cuda` feature).
fn softmax_last_dim(scores: &Tensor) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?;
    let exp = scores.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    Ok(exp.broadcast_div(&sum)?)
}

/// `(rows, visible)` additive f32 mask: row `r` (at position `first_row_position + r`) sees keys
/// `0..=first_row_position + r`.
fn causal_mask(
    rows: usize,
    first_row_position: usize,
    visible: usize,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            (0..visible).map(move |j| match j > first_row_position + r {
                true => f32::NEG_INFINITY,
                false => 0.0,
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (rows, visible), device)?)
}

impl LayerCache for CudaFlatLayer {
    fn len(&self) -> usize {
        self.max_len()
    }

    fn head_lengths(&self) -> Option<Vec<usize>> {
        Some(self.host_lengths.iter().map(|&l| l as usize).collect())
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        CudaFlatLayer::append(self, keys, values)
    }

    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        self.attention(queries, want_weights)
    }

    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>> {
        let len = self.max_len();
        if len == 0 {
            return Ok(None);
        }
        if self.host_lengths.iter().any(|&l| l as usize != len) {
            return Err(Error::Unsupported(format!(
                "the heads of this layer store different numbers of tokens ({:?}); a dense \
                 (batch, heads, tokens, dim) view does not exist",
                self.host_lengths
            )));
        }
        if let Some(views) = self.uniform_views()? {
            return Ok(Some(views));
        }
        let (kv, _) = self.packed()?;
        let kv = kv.reshape((2, self.batch, self.n_kv_heads, len, self.head_dim))?;
        Ok(Some((kv.get(0)?, kv.get(1)?)))
    }

    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        self.check_new(keys, values)?;
        self.reset();
        CudaFlatLayer::append(self, keys, values)
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        let current = self.max_len();
        if len > current {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {current} tokens to {len} tokens"
            )));
        }
        let drop = (current - len) as u32;
        if let Some(&shortest) = self.host_lengths.iter().min() {
            if shortest < drop {
                return Err(Error::InvalidArgument(format!(
                    "cannot drop {drop} tokens from a head that stores {shortest}"
                )));
            }
        }
        if drop == 0 {
            return Ok(());
        }
        let lengths = self.host_lengths.iter().map(|&l| l - drop).collect();
        self.set_lengths(lengths)
    }

    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        if selection.heads().len() != self.host_lengths.len() {
            return Err(Error::Shape(format!(
                "a selection of {} heads cannot compact a cache of {} heads",
                selection.heads().len(),
                self.host_lengths.len()
            )));
        }
        if keys.is_some() {
            return Err(Error::Unsupported(
                "replacement keys (key re-rotation) with a head-wise cache".to_string(),
            ));
        }
        crate::flat_cache::refuse_refinements(selection)?;
        self.compact_heads(selection.heads(), 0)
    }

    fn shrink_to_fit(&mut self) -> Result<()> {
        if self.host_capacities != self.host_lengths {
            self.relayout(0)?;
        }
        Ok(())
    }

    fn bytes_used(&self) -> usize {
        CudaFlatLayer::bytes_used(self)
    }

    fn bytes_reserved(&self) -> usize {
        CudaFlatLayer::bytes_reserved(self)
    }

    fn clear(&mut self) {
        self.reset();
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        let (kv, lengths) = self.packed()?;
        Ok(LayerSnapshot::PerHead {
            keys: kv.get(0)?,
            values: kv.get(1)?,
            head_lengths: lengths.into_iter().map(|l| l as usize).collect(),
            batch: self.batch,
            n_kv_heads: self.n_kv_heads,
        })
    }
}
