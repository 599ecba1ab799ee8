//! The quantized dense layer cache (`--kv-dtype q8` or `q4`): every KV head holds the same
//! tokens, each token's keys and values quantized per group of channels
//! ([`kvpress_kernels::kv_quant`]).
//!
//! The tokens of the latest append stay in f32 until the next append: the forward that appended
//! them attends over them at full precision (a prefill attends over its own exact keys, as
//! kvpress's quantized cache does), and decoding quantizes each token when the next one comes.
//! Compaction, `replace` and `shrink_to_fit` quantize them at once. Rows are quantized
//! independently, so compaction, truncation and snapshots move codes without quantizing again.
//!
//! Decode steps read the codes directly (widened to f32 in registers, never dequantized into
//! memory); prefills and callers that want attention weights or the
//! stored keys and values ([`LayerCache::keys_values`], what presses score) get them
//! dequantized to f32.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kvpress_core::{AttentionOutput, Error, LayerCache, LayerSnapshot, Result, Selection};
use kvpress_kernels::kv_quant::{check_quantizable, QuantBits, QuantizedRows};
use kvpress_kernels::{
    decode_attention_parts, merge_attention_parts, CacheData, HeadProblem, HeadRows,
};

/// Most query rows per KV head (group size x new tokens) that take the decode kernel.
const MAX_DECODE_ROWS: usize = 16;

/// Sizes fixed by the first append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeadShape {
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// One KV head's quantized keys and values.
#[derive(Clone, Debug)]
struct QuantizedHead {
    keys: QuantizedRows,
    values: QuantizedRows,
}

/// Quantized dense layer cache; see the module documentation.
#[derive(Clone, Debug)]
pub struct QuantizedLayerCache {
    bits: QuantBits,
    shape: Option<HeadShape>,
    /// Per head, batch-major (`batch * n_kv_heads` of them).
    heads: Vec<QuantizedHead>,
    /// Tokens quantized in every head.
    quantized_len: usize,
    /// The latest append's keys and values, `(batch, n_kv_heads, pending_len, head_dim)` f32.
    pending_keys: Vec<f32>,
    pending_values: Vec<f32>,
    pending_len: usize,
}

impl QuantizedLayerCache {
    /// An empty cache storing `bits`-bit codes.
    pub fn new(bits: QuantBits) -> Self {
        Self {
            bits,
            shape: None,
            heads: Vec::new(),
            quantized_len: 0,
            pending_keys: Vec::new(),
            pending_values: Vec::new(),
            pending_len: 0,
        }
    }

    /// The bits of every stored code.
    pub fn bits(&self) -> QuantBits {
        self.bits
    }

    /// Checks that `keys` and `values` are `(batch, n_kv_heads, tokens, head_dim)` of this
    /// cache's heads (fixing them on the first append) and returns them as f32 vectors.
    fn take_rows(&mut self, keys: &Tensor, values: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        if keys.rank() != 4 || keys.dims() != values.dims() {
            return Err(Error::Shape(format!(
                "keys {:?} and values {:?} must both be (batch, n_kv_heads, tokens, head_dim)",
                keys.dims(),
                values.dims()
            )));
        }
        let (batch, n_kv_heads, _, head_dim) = keys.dims4()?;
        let shape = HeadShape {
            batch,
            n_kv_heads,
            head_dim,
        };
        match self.shape {
            Some(own) if own != shape => {
                return Err(Error::Shape(format!(
                    "cannot append {:?} to a cache of (batch {}, {} KV heads, head dim {})",
                    keys.dims(),
                    own.batch,
                    own.n_kv_heads,
                    own.head_dim
                )))
            }
            Some(_) => {}
            None => {
                let head = QuantizedHead {
                    keys: QuantizedRows::new(self.bits, head_dim)?,
                    values: QuantizedRows::new(self.bits, head_dim)?,
                };
                self.heads = vec![head; batch * n_kv_heads];
                self.shape = Some(shape);
            }
        }
        let rows = |t: &Tensor| -> Result<Vec<f32>> {
            let rows = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            check_quantizable(&rows)?;
            Ok(rows)
        };
        Ok((rows(keys)?, rows(values)?))
    }

    /// Quantizes `keys` and `values` (`(batch, n_kv_heads, n, head_dim)` f32, back to back) into
    /// every head.
    fn quantize_into_heads(&mut self, keys: &[f32], values: &[f32]) -> Result<()> {
        let per_head = keys.len() / self.heads.len().max(1);
        for (i, head) in self.heads.iter_mut().enumerate() {
            head.keys
                .push_rows(&keys[i * per_head..(i + 1) * per_head])?;
            head.values
                .push_rows(&values[i * per_head..(i + 1) * per_head])?;
        }
        if let Some(shape) = self.shape {
            self.quantized_len += per_head / shape.head_dim;
        }
        Ok(())
    }

    /// Quantizes the pending tokens.
    fn flush(&mut self) -> Result<()> {
        if self.pending_len == 0 {
            return Ok(());
        }
        let (keys, values) = (
            std::mem::take(&mut self.pending_keys),
            std::mem::take(&mut self.pending_values),
        );
        self.pending_len = 0;
        self.quantize_into_heads(&keys, &values)
    }

    /// Head `i`'s pending rows of `rows` (keys or values).
    fn pending_head<'a>(&self, rows: &'a [f32], i: usize) -> &'a [f32] {
        let per_head = self.pending_len * self.shape.map_or(0, |s| s.head_dim);
        &rows[i * per_head..(i + 1) * per_head]
    }

    /// Every token, dequantized: `(batch, n_kv_heads, len, head_dim)` f32 keys and values.
    fn dequantized(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some(shape) = self.shape.filter(|_| self.len() > 0) else {
            return Ok(None);
        };
        let mut keys = Vec::with_capacity(self.heads.len() * self.len() * shape.head_dim);
        let mut values = Vec::with_capacity(keys.capacity());
        for (i, head) in self.heads.iter().enumerate() {
            head.keys.dequantize_rows(0, self.quantized_len, &mut keys);
            keys.extend_from_slice(self.pending_head(&self.pending_keys, i));
            head.values
                .dequantize_rows(0, self.quantized_len, &mut values);
            values.extend_from_slice(self.pending_head(&self.pending_values, i));
        }
        let dims = (shape.batch, shape.n_kv_heads, self.len(), shape.head_dim);
        Ok(Some((
            Tensor::from_vec(keys, dims, &Device::Cpu)?,
            Tensor::from_vec(values, dims, &Device::Cpu)?,
        )))
    }

    /// Decode attention read from the codes: per KV head, one problem over the quantized
    /// tokens (all visible to the new queries) and one over the pending f32 tokens (causal),
    /// merged exactly.
    fn attend_decode(&self, queries: &Tensor, shape: HeadShape) -> Result<Tensor> {
        let (batch, n_heads, n_new, head_dim) = queries.dims4()?;
        let group = n_heads / shape.n_kv_heads;
        let queries = queries.flatten_all()?.to_vec1::<f32>()?;
        let rows_per_head = group * n_new * head_dim;
        let mut quantized = Vec::new();
        let mut pending = Vec::new();
        for (i, head) in self.heads.iter().enumerate() {
            let head_queries = queries[i * rows_per_head..(i + 1) * rows_per_head].to_vec();
            if self.quantized_len > 0 {
                quantized.push(HeadProblem {
                    queries: head_queries.clone(),
                    positions: vec![self.quantized_len - 1; group * n_new],
                    keys: quantized_rows(&head.keys),
                    values: quantized_rows(&head.values),
                    n_keys: self.quantized_len,
                });
            }
            if self.pending_len > 0 {
                let first = self.pending_len - n_new;
                pending.push(HeadProblem {
                    queries: head_queries,
                    positions: (0..group).flat_map(|_| first..first + n_new).collect(),
                    keys: f32_rows(self.pending_head(&self.pending_keys, i), head_dim),
                    values: f32_rows(self.pending_head(&self.pending_values, i), head_dim),
                    n_keys: self.pending_len,
                });
            }
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let quantized = decode_attention_parts(&quantized, head_dim, scale)?;
        let pending = decode_attention_parts(&pending, head_dim, scale)?;
        let output: Vec<f32> = match (quantized.is_empty(), pending.is_empty()) {
            (false, false) => quantized
                .iter()
                .zip(&pending)
                .flat_map(|(q, p)| merge_attention_parts(q, p, head_dim))
                .collect(),
            (false, true) => quantized.into_iter().flat_map(|q| q.output).collect(),
            (true, _) => pending.into_iter().flat_map(|p| p.output).collect(),
        };
        Ok(Tensor::from_vec(
            output,
            (batch, n_heads, n_new, head_dim),
            &Device::Cpu,
        )?)
    }

    /// The kept tokens' keys and values of a selection over `keys` and `values`, as f32
    /// vectors: the selection's replacement values and `kept_keys` when given.
    fn kept_rows(
        &mut self,
        selection: &Selection,
        keys: &Tensor,
        values: &Tensor,
        kept_keys: Option<&Tensor>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let kept_values = crate::dense_cache::kept_values(selection, values, DType::F32)?;
        let kept_keys = match kept_keys {
            Some(k) => crate::dense_cache::replacement_keys(k, &kept_values)?,
            None => selection.gather(keys)?.to_dtype(DType::F32)?,
        };
        self.take_rows(&kept_keys, &kept_values)
    }
}

/// Rows given to replace the kept ones, `dims`, as f32 that can be quantized.
fn replacement_rows(rows: &Tensor, dims: &[usize; 4]) -> Result<Vec<f32>> {
    if rows.dims() != dims {
        return Err(Error::Shape(format!(
            "replacement keys or values {:?} do not match the kept tokens {dims:?}",
            rows.dims()
        )));
    }
    let rows = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    check_quantizable(&rows)?;
    Ok(rows)
}

/// A head's quantized rows as the decode kernel reads them.
fn quantized_rows(rows: &QuantizedRows) -> HeadRows<'_> {
    HeadRows {
        data: CacheData::Quantized(rows.view()),
        start: 0,
        row_stride: rows.row_len(),
    }
}

/// f32 rows of `head_dim` as the decode kernel reads them.
fn f32_rows(rows: &[f32], head_dim: usize) -> HeadRows<'_> {
    HeadRows {
        data: CacheData::F32(rows),
        start: 0,
        row_stride: head_dim,
    }
}

impl LayerCache for QuantizedLayerCache {
    fn len(&self) -> usize {
        self.quantized_len + self.pending_len
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let (keys, values) = self.take_rows(keys, values)?;
        self.flush()?;
        self.pending_len = keys.len() / (self.heads.len() * self.shape.map_or(1, |s| s.head_dim));
        self.pending_keys = keys;
        self.pending_values = values;
        Ok(())
    }

    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        let Some(shape) = self.shape.filter(|_| self.len() > 0) else {
            return Err(Error::Shape("attend called on an empty cache".to_string()));
        };
        let (batch, n_heads, n_new, head_dim) = queries.dims4()?;
        let decodes = !want_weights
            && (batch, head_dim) == (shape.batch, shape.head_dim)
            && n_heads % shape.n_kv_heads == 0
            && (n_heads / shape.n_kv_heads) * n_new <= MAX_DECODE_ROWS
            && n_new <= self.pending_len
            && queries.dtype() == DType::F32
            && queries.device().is_cpu();
        if decodes {
            return Ok(AttentionOutput {
                output: self.attend_decode(queries, shape)?,
                weights: None,
            });
        }
        // Prefills (their cost is in the products, not in reading the cache once), weights
        // asked for, or queries reaching past the pending tokens: over every token dequantized.
        crate::dense_cache::attend_over(queries, self.dequantized()?, want_weights)
    }

    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>> {
        self.dequantized()
    }

    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let mut replaced = Self::new(self.bits);
        let (keys, values) = replaced.take_rows(keys, values)?;
        replaced.quantize_into_heads(&keys, &values)?;
        *self = replaced;
        Ok(())
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len() {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {} tokens to {len} tokens",
                self.len()
            )));
        }
        if len >= self.quantized_len {
            let keep = len - self.quantized_len;
            let head_dim = self.shape.map_or(0, |s| s.head_dim);
            let old = self.pending_len * head_dim;
            let kept = |rows: &[f32]| -> Vec<f32> {
                rows.chunks(old.max(1))
                    .flat_map(|head| head[..keep * head_dim].to_vec())
                    .collect()
            };
            self.pending_keys = kept(&self.pending_keys);
            self.pending_values = kept(&self.pending_values);
            self.pending_len = keep;
        } else {
            for head in &mut self.heads {
                head.keys.truncate(len);
                head.values.truncate(len);
            }
            self.quantized_len = len;
            self.pending_keys.clear();
            self.pending_values.clear();
            self.pending_len = 0;
        }
        Ok(())
    }

    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        crate::dense_cache::check_storable(selection)?;
        if selection.n_tokens() != self.len() {
            return Err(Error::Shape(format!(
                "a selection over {} tokens cannot compact a cache of {} tokens",
                selection.n_tokens(),
                self.len()
            )));
        }
        if selection.keeps_everything() && keys.is_none() && selection.values().is_none() {
            return Ok(());
        }
        let Some(shape) = self.shape else {
            return Ok(());
        };
        if (selection.batch(), selection.n_kv_heads()) != (shape.batch, shape.n_kv_heads) {
            return Err(Error::Shape(format!(
                "a selection over (batch {}, {} KV heads) cannot compact a cache of (batch {}, \
                 {} KV heads)",
                selection.batch(),
                selection.n_kv_heads(),
                shape.batch,
                shape.n_kv_heads
            )));
        }
        let n_kept = selection.uniform_len().ok_or_else(|| {
            Error::Unsupported(
                "the heads of this layer keep different numbers of tokens, which the quantized \
                 dense cache cannot store: head-wise presses need the flattened per-head cache \
                 (--kv-dtype f32)"
                    .to_string(),
            )
        })?;
        // Replacement keys (re-rotated) and values (merged) are new rows, quantized; the rest
        // keeps its codes. Everything is checked before the cache changes.
        let dims = [shape.batch, shape.n_kv_heads, n_kept, shape.head_dim];
        let new_keys = keys.map(|k| replacement_rows(k, &dims)).transpose()?;
        let new_values = selection
            .values()
            .map(|v| replacement_rows(v, &dims))
            .transpose()?;
        self.flush()?;
        let per_head = n_kept * shape.head_dim;
        let kept_rows =
            |rows: &QuantizedRows, new: &Option<Vec<f32>>, i: usize, kept: &[u32]| match new {
                Some(new) => {
                    let mut replaced = rows.empty_like();
                    replaced.push_rows(&new[i * per_head..(i + 1) * per_head])?;
                    Ok::<_, Error>(replaced)
                }
                None => Ok(rows.gather(kept)?),
            };
        let heads = self
            .heads
            .iter()
            .zip(selection.heads())
            .enumerate()
            .map(|(i, (head, kept))| {
                Ok(QuantizedHead {
                    keys: kept_rows(&head.keys, &new_keys, i, kept)?,
                    values: kept_rows(&head.values, &new_values, i, kept)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.heads = heads;
        self.quantized_len = n_kept;
        Ok(())
    }

    fn store_selected(
        &mut self,
        keys: &Tensor,
        values: &Tensor,
        selection: &Selection,
        kept_keys: Option<&Tensor>,
    ) -> Result<usize> {
        crate::dense_cache::check_storable(selection)?;
        if !self.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "store_selected needs an empty cache; this one holds {} tokens",
                self.len()
            )));
        }
        let (batch, n_kv_heads, n_tokens, head_dim) = keys.dims4()?;
        let bytes_with_everything =
            batch * n_kv_heads * 2 * QuantizedRows::bytes_for(self.bits, head_dim, n_tokens);
        // Rows are quantized independently: quantizing the kept ones equals quantizing every
        // token and keeping their codes.
        let mut stored = Self::new(self.bits);
        let (keys, values) = stored.kept_rows(selection, keys, values, kept_keys)?;
        stored.quantize_into_heads(&keys, &values)?;
        stored.shrink_to_fit()?;
        *self = stored;
        Ok(bytes_with_everything)
    }

    /// Quantizes the pending tokens too: what is allocated is what is stored, in codes.
    fn shrink_to_fit(&mut self) -> Result<()> {
        self.flush()?;
        for head in &mut self.heads {
            head.keys.shrink_to_fit();
            head.values.shrink_to_fit();
        }
        self.pending_keys.shrink_to_fit();
        self.pending_values.shrink_to_fit();
        Ok(())
    }

    fn bytes_used(&self) -> usize {
        let codes: usize = self
            .heads
            .iter()
            .map(|h| h.keys.bytes_used() + h.values.bytes_used())
            .sum();
        codes + 4 * (self.pending_keys.len() + self.pending_values.len())
    }

    fn bytes_reserved(&self) -> usize {
        let codes: usize = self
            .heads
            .iter()
            .map(|h| h.keys.bytes_reserved() + h.values.bytes_reserved())
            .sum();
        codes + 4 * (self.pending_keys.capacity() + self.pending_values.capacity())
    }

    fn clear(&mut self) {
        *self = Self::new(self.bits);
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        Ok(LayerSnapshot::Stored(Arc::new(self.clone())))
    }

    fn try_clone(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpress_kernels::grouped_query_attention;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    #[test]
    fn decoding_reads_the_codes_and_the_newest_tokens_in_f32() -> Result<()> {
        for bits in [QuantBits::Eight, QuantBits::Four] {
            let mut cache = QuantizedLayerCache::new(bits);
            cache.append(&random((1, 2, 300, 64), 1)?, &random((1, 2, 300, 64), 2)?)?;
            // The forward that appended tokens attends over them exactly.
            let (keys, _) = cache.keys_values()?.expect("stored");
            assert_eq!(max_diff(&keys, &random((1, 2, 300, 64), 1)?)?, 0.0);
            let (new_keys, new_values) = (random((1, 2, 3, 64), 3)?, random((1, 2, 3, 64), 4)?);
            cache.append(&new_keys, &new_values)?;
            assert_eq!(cache.len(), 303);
            // Three new tokens of four query heads: the decode kernel (quantized part and
            // pending part merged) against attention over everything dequantized.
            let queries = random((1, 4, 3, 64), 5)?;
            let got = cache.attend(&queries, false)?.output;
            let (k, v) = cache.keys_values()?.expect("stored");
            let want = grouped_query_attention(&queries, &k, &v, false)?.output;
            assert!(max_diff(&got, &want)? < 1e-5, "{bits:?}");
            // The older tokens are quantized now; the 3 newest are not.
            let old = k.narrow(2, 0, 300)?;
            let error = max_diff(&old, &random((1, 2, 300, 64), 1)?)?;
            assert!(error > 0.0 && error < 0.07, "{bits:?}: {error}");
            assert_eq!(max_diff(&k.narrow(2, 300, 3)?, &new_keys)?, 0.0);
            cache.shrink_to_fit()?;
            let row_bytes = QuantizedRows::bytes_for(bits, 64, 1);
            assert_eq!(cache.bytes_used(), 2 * 2 * 303 * row_bytes);
            assert_eq!(cache.bytes_reserved(), cache.bytes_used());
        }
        Ok(())
    }

    #[test]
    fn truncating_into_the_pending_tokens_keeps_the_rest_exact() -> Result<()> {
        let mut cache = QuantizedLayerCache::new(QuantBits::Four);
        cache.append(&random((1, 2, 10, 64), 1)?, &random((1, 2, 10, 64), 2)?)?;
        let (question_keys, question_values) =
            (random((1, 2, 6, 64), 3)?, random((1, 2, 6, 64), 4)?);
        cache.append(&question_keys, &question_values)?;
        cache.truncate(13)?;
        let (k, v) = cache.keys_values()?.expect("stored");
        assert_eq!(k.dims(), [1, 2, 13, 64]);
        assert_eq!(
            max_diff(&k.narrow(2, 10, 3)?, &question_keys.narrow(2, 0, 3)?)?,
            0.0
        );
        assert_eq!(
            max_diff(&v.narrow(2, 10, 3)?, &question_values.narrow(2, 0, 3)?)?,
            0.0
        );
        cache.truncate(4)?;
        assert_eq!(cache.len(), 4);
        assert!(cache.truncate(5).is_err());
        Ok(())
    }
}
