//! The quantized layer cache (`--kv-dtype q8` or `q4`): each token's keys and values quantized
//! per group of channels ([`kvpress_kernels::kv_quant`]), every KV head in its own rows. Heads
//! hold the same tokens (the dense layout), or each its own after a head-wise press's selection
//! (the flattened layout, no padding): the same cache serves both.
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

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kvpress_core::{
    AttentionOutput, Error, LayerCache, LayerSnapshot, PackedLayer, Result, Selection,
};
use kvpress_kernels::kv_quant::{check_quantizable, Grouping, QuantBits, QuantizedRows};
use kvpress_kernels::{
    decode_attention_parts, merge_attention_parts, ragged_attention, CacheData, HeadProblem,
    HeadRows, RaggedHeads, DECODE_MAX_ROWS,
};

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

impl QuantizedHead {
    /// An empty head: keys grouped by magnitude (their channel order set by the first rows,
    /// [`Grouping::Balanced`]), values in channel order.
    fn new(bits: QuantBits, head_dim: usize) -> Result<Self> {
        Ok(Self {
            keys: QuantizedRows::with_grouping(bits, head_dim, Grouping::Balanced)?,
            values: QuantizedRows::new(bits, head_dim)?,
        })
    }
}

/// Quantized dense layer cache; see the module documentation.
#[derive(Clone, Debug)]
pub struct QuantizedLayerCache {
    bits: QuantBits,
    shape: Option<HeadShape>,
    /// Per head, batch-major (`batch * n_kv_heads` of them); each holds its quantized tokens.
    heads: Vec<QuantizedHead>,
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
            pending_keys: Vec::new(),
            pending_values: Vec::new(),
            pending_len: 0,
        }
    }

    /// The bits of every stored code.
    pub fn bits(&self) -> QuantBits {
        self.bits
    }

    /// A cache holding `head_lengths[h]` tokens in head `h`, quantized from `keys` and `values`
    /// `(total_rows, head_dim)` in head order (a per-head snapshot or saved context).
    pub fn from_head_rows(
        bits: QuantBits,
        (keys, values): (&Tensor, &Tensor),
        head_lengths: &[usize],
        (batch, n_kv_heads): (usize, usize),
    ) -> Result<Self> {
        let (_, head_dim) =
            kvpress_core::check_per_head_rows(keys, values, head_lengths, (batch, n_kv_heads))?;
        let (keys, values) = (quantizable_rows(keys)?, quantizable_rows(values)?);
        let heads = head_ranges(head_lengths, head_dim)
            .map(|range| {
                let mut head = QuantizedHead::new(bits, head_dim)?;
                head.keys.push_rows(&keys[range.clone()])?;
                head.values.push_rows(&values[range])?;
                Ok(head)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::with_heads(bits, heads, (batch, n_kv_heads), head_dim))
    }

    /// A cache of `heads` (batch-major) of `head_dim` channels.
    fn with_heads(
        bits: QuantBits,
        heads: Vec<QuantizedHead>,
        (batch, n_kv_heads): (usize, usize),
        head_dim: usize,
    ) -> Self {
        Self {
            shape: Some(HeadShape {
                batch,
                n_kv_heads,
                head_dim,
            }),
            heads,
            ..Self::new(bits)
        }
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
                let head = QuantizedHead::new(self.bits, head_dim)?;
                self.heads = vec![head; batch * n_kv_heads];
                self.shape = Some(shape);
            }
        }
        Ok((quantizable_rows(keys)?, quantizable_rows(values)?))
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

    /// A cache from a [`PackedLayer`] (a saved context's rows, codes as they are) of heads of
    /// `head_dim` channels, `(batch, n_kv_heads)`.
    pub fn from_packed(
        layer: &PackedLayer,
        (batch, n_kv_heads): (usize, usize),
        head_dim: usize,
    ) -> Result<Self> {
        let bits = QuantBits::from_bits(layer.bits).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}-bit codes; a quantized cache stores 8 or 4 bits",
                layer.bits
            ))
        })?;
        let row_bytes = QuantizedRows::packed_row_bytes(bits, head_dim);
        let rows: usize = layer.head_lengths.iter().sum();
        if layer.head_lengths.len() != batch * n_kv_heads
            || layer.row_bytes != row_bytes
            || layer.keys.len() != rows * row_bytes
            || layer.values.len() != rows * row_bytes
        {
            return Err(Error::Shape(format!(
                "packed rows of {} and {} bytes in rows of {} bytes for {} heads of lengths \
                 summing to {rows}; expected rows of {row_bytes} bytes ({}-bit rows of \
                 {head_dim} channels) for batch {batch} x {n_kv_heads} KV heads",
                layer.keys.len(),
                layer.values.len(),
                layer.row_bytes,
                layer.head_lengths.len(),
                bits.bits()
            )));
        }
        let n_heads = layer.head_lengths.len();
        if let Some(orders) = &layer.key_orders {
            if orders.len() != n_heads * head_dim {
                return Err(Error::Shape(format!(
                    "{} key channel order entries for {n_heads} heads of {head_dim} channels",
                    orders.len()
                )));
            }
        }
        let order = |head: usize| {
            layer
                .key_orders
                .as_ref()
                .map(|orders| orders[head * head_dim..(head + 1) * head_dim].to_vec())
        };
        let heads = head_ranges(&layer.head_lengths, row_bytes)
            .enumerate()
            .map(|(head, range)| {
                let keys = &layer.keys[range.clone()];
                Ok(QuantizedHead {
                    keys: QuantizedRows::from_packed(bits, head_dim, order(head), keys)?,
                    values: QuantizedRows::from_packed(bits, head_dim, None, &layer.values[range])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::with_heads(bits, heads, (batch, n_kv_heads), head_dim))
    }

    /// Every head's key channel order back to back, when some head stores its keys in another
    /// order than the channels' (a head without one is in channel order).
    fn key_orders(&self, head_dim: usize) -> Option<Vec<u16>> {
        if self.heads.iter().all(|h| h.keys.order().is_none()) {
            return None;
        }
        let in_order: Vec<u16> = (0..head_dim as u16).collect();
        Some(
            self.heads
                .iter()
                .flat_map(|h| h.keys.order().unwrap_or(&in_order).to_vec())
                .collect(),
        )
    }

    /// Every head's tokens dequantized to f32, keys and values, back to back in head order
    /// (lengths [`Self::head_lengths`]).
    fn dequantized_head_rows(&self) -> (Vec<f32>, Vec<f32>) {
        let (keys, values, _) = self.dequantized_rows();
        (keys, values)
    }

    /// Tokens quantized in head `i`.
    fn quantized_len(&self, i: usize) -> usize {
        self.heads[i].keys.n_rows()
    }

    /// Tokens stored by each head (quantized and pending).
    pub fn head_lengths(&self) -> Vec<usize> {
        (0..self.heads.len())
            .map(|i| self.quantized_len(i) + self.pending_len)
            .collect()
    }

    /// Whether the heads hold different numbers of tokens (after a head-wise selection).
    fn is_ragged(&self) -> bool {
        self.heads
            .windows(2)
            .any(|pair| pair[0].keys.n_rows() != pair[1].keys.n_rows())
    }

    /// Every head's tokens, dequantized, back to back in head order, with each head's first
    /// row: what ragged attention and the dense view read.
    fn dequantized_rows(&self) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
        let head_dim = self.shape.map_or(0, |s| s.head_dim);
        let rows: usize = self.head_lengths().iter().sum();
        let mut keys = Vec::with_capacity(rows * head_dim);
        let mut values = Vec::with_capacity(rows * head_dim);
        let mut offsets = Vec::with_capacity(self.heads.len());
        for (i, head) in self.heads.iter().enumerate() {
            offsets.push(keys.len() / head_dim.max(1));
            let n = self.quantized_len(i);
            head.keys.dequantize_rows(0, n, &mut keys);
            keys.extend_from_slice(self.pending_head(&self.pending_keys, i));
            head.values.dequantize_rows(0, n, &mut values);
            values.extend_from_slice(self.pending_head(&self.pending_values, i));
        }
        (keys, values, offsets)
    }

    /// Every token, dequantized: `(batch, n_kv_heads, len, head_dim)` f32 keys and values.
    /// An error when the heads hold different numbers of tokens (no dense view exists).
    fn dequantized(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some(shape) = self.shape.filter(|_| self.len() > 0) else {
            return Ok(None);
        };
        if self.is_ragged() {
            return Err(Error::Unsupported(format!(
                "the heads of this layer store different numbers of tokens ({:?}); a dense \
                 (batch, heads, tokens, dim) view does not exist",
                self.head_lengths()
            )));
        }
        let (keys, values, _) = self.dequantized_rows();
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
            let n_quantized = self.quantized_len(i);
            if n_quantized > 0 {
                quantized.push(HeadProblem {
                    queries: head_queries.clone(),
                    positions: vec![n_quantized - 1; group * n_new],
                    keys: quantized_rows(&head.keys),
                    values: quantized_rows(&head.values),
                    n_keys: n_quantized,
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
        let mut quantized = decode_attention_parts(&quantized, head_dim, scale)?.into_iter();
        let mut pending = decode_attention_parts(&pending, head_dim, scale)?.into_iter();
        // Per head, in order: its quantized part (absent when the head keeps no quantized
        // token) merged with its pending part (absent when nothing is pending).
        let mut output = Vec::with_capacity(batch * n_heads * n_new * head_dim);
        for i in 0..self.heads.len() {
            let own_quantized = (self.quantized_len(i) > 0).then(|| quantized.next());
            let own_pending = (self.pending_len > 0).then(|| pending.next());
            match (own_quantized.flatten(), own_pending.flatten()) {
                (Some(q), Some(p)) => output.extend(merge_attention_parts(&q, &p, head_dim)),
                (Some(part), None) | (None, Some(part)) => output.extend(part.output),
                (None, None) => {
                    return Err(Error::Shape(format!(
                        "KV head {i} stores no token to attend over"
                    )))
                }
            }
        }
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

/// The range of each head's rows (of `unit` elements or bytes each) when the heads' rows lie back
/// to back in head order, `head_lengths` rows each.
fn head_ranges(head_lengths: &[usize], unit: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    head_lengths.iter().scan(0, move |first, &len| {
        let range = *first * unit..(*first + len) * unit;
        *first += len;
        Some(range)
    })
}

/// Rows given to replace the kept ones, `dims`, as f32 that can be quantized.
fn replacement_rows(rows: &Tensor, dims: &[usize; 4]) -> Result<Vec<f32>> {
    if rows.dims() != dims {
        return Err(Error::Shape(format!(
            "replacement keys or values {:?} do not match the kept tokens {dims:?}",
            rows.dims()
        )));
    }
    quantizable_rows(rows)
}

/// The values of `tensor` as f32, refused when one cannot be quantized (not finite, or beyond
/// f16's range).
fn quantizable_rows(tensor: &Tensor) -> Result<Vec<f32>> {
    let rows = tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
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
    fn head_lengths(&self) -> Option<Vec<usize>> {
        Some(QuantizedLayerCache::head_lengths(self))
    }

    fn len(&self) -> usize {
        let longest = (0..self.heads.len())
            .map(|i| self.quantized_len(i))
            .max()
            .unwrap_or(0);
        longest + self.pending_len
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
            && (n_heads / shape.n_kv_heads) * n_new <= DECODE_MAX_ROWS
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
        if !self.is_ragged() {
            return crate::dense_cache::attend_over(queries, self.dequantized()?, want_weights);
        }
        if want_weights {
            return Err(Error::Unsupported(
                "attention weights over heads of different lengths".to_string(),
            ));
        }
        let (keys, values, offsets) = self.dequantized_rows();
        let lengths = self.head_lengths();
        let heads = RaggedHeads {
            keys: CacheData::F32(&keys),
            values: CacheData::F32(&values),
            offsets: &offsets,
            lengths: &lengths,
            batch: shape.batch,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
        };
        Ok(AttentionOutput {
            output: ragged_attention(&heads, queries)?,
            weights: None,
        })
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

    /// Drops `len() - len` tokens from every head (undoing appends, as a rewind does): the
    /// newest pending ones first, then quantized rows.
    fn truncate(&mut self, len: usize) -> Result<()> {
        let current = self.len();
        if len > current {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {current} tokens to {len} tokens"
            )));
        }
        let drop = current - len;
        if drop <= self.pending_len {
            let keep = self.pending_len - drop;
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
            return Ok(());
        }
        let from_quantized = drop - self.pending_len;
        let shortest = (0..self.heads.len())
            .map(|i| self.quantized_len(i))
            .min()
            .unwrap_or(0);
        if shortest < from_quantized {
            return Err(Error::InvalidArgument(format!(
                "cannot drop {drop} tokens from a head that stores {}",
                shortest + self.pending_len
            )));
        }
        for head in &mut self.heads {
            let n = head.keys.n_rows() - from_quantized;
            head.keys.truncate(n);
            head.values.truncate(n);
        }
        self.pending_keys.clear();
        self.pending_values.clear();
        self.pending_len = 0;
        Ok(())
    }

    /// Keeps each head's selected tokens: the same number in every head, or (a head-wise
    /// selection) each head its own, which then stores only those.
    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        crate::dense_cache::check_storable(selection)?;
        if !self.is_ragged() && selection.n_tokens() != self.len() {
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
        let lengths = self.head_lengths();
        for (head, kept) in selection.heads().iter().enumerate() {
            if let Some(&last) = kept.iter().max() {
                if last as usize >= lengths[head] {
                    return Err(Error::InvalidArgument(format!(
                        "head {head} keeps token {last} but stores only {} tokens",
                        lengths[head]
                    )));
                }
            }
        }
        let uniform = selection.uniform_len().filter(|_| !self.is_ragged());
        let replaces = keys.is_some() || selection.values().is_some();
        let n_kept = match uniform {
            Some(n_kept) => n_kept,
            None if replaces => {
                return Err(Error::Unsupported(
                    "replacement keys (key re-rotation) or values (merging) for heads of \
                     different lengths: a head-wise cache stores the kept tokens' own keys and \
                     values"
                        .to_string(),
                ))
            }
            None => 0,
        };
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
        if selection.uniform_len().is_none() {
            // A head-wise selection: every head quantized, then each keeps its own rows' codes
            // (rows are quantized independently, so this equals quantizing only the kept ones).
            self.append(keys, values)?;
            if let Err(error) = self.compact(selection, kept_keys) {
                self.clear();
                return Err(error);
            }
            self.shrink_to_fit()?;
            return Ok(bytes_with_everything);
        }
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

    fn bytes_settled(&self) -> usize {
        let codes: usize = self
            .heads
            .iter()
            .map(|h| h.keys.bytes_reserved() + h.values.bytes_reserved())
            .sum();
        let pending = self.shape.map_or(0, |shape| {
            let rows = QuantizedRows::bytes_for(self.bits, shape.head_dim, self.pending_len);
            2 * self.heads.len() * rows
        });
        codes + pending
    }

    fn clear(&mut self) {
        *self = Self::new(self.bits);
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        Ok(LayerSnapshot::Stored(Arc::new(self.clone())))
    }

    fn float_snapshot(&self) -> Result<LayerSnapshot> {
        let Some(shape) = self.shape.filter(|_| self.len() > 0) else {
            return Ok(LayerSnapshot::Dense(None));
        };
        if !self.is_ragged() {
            return Ok(LayerSnapshot::Dense(self.dequantized()?));
        }
        let (keys, values) = self.dequantized_head_rows();
        let head_lengths = self.head_lengths();
        let rows = (head_lengths.iter().sum::<usize>(), shape.head_dim);
        Ok(LayerSnapshot::PerHead {
            keys: Tensor::from_vec(keys, rows, &Device::Cpu)?,
            values: Tensor::from_vec(values, rows, &Device::Cpu)?,
            head_lengths,
            batch: shape.batch,
            n_kv_heads: shape.n_kv_heads,
        })
    }

    fn try_clone(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(self.clone()))
    }

    /// Pending tokens are quantized first (in a copy), as the next forward would.
    fn packed(&self) -> Result<Option<PackedLayer>> {
        if self.pending_len > 0 {
            let mut flushed = self.clone();
            flushed.flush()?;
            return flushed.packed();
        }
        let Some(shape) = self.shape else {
            return Ok(None);
        };
        Ok(Some(PackedLayer {
            bits: self.bits.bits() as u32,
            row_bytes: QuantizedRows::packed_row_bytes(self.bits, shape.head_dim),
            head_lengths: self.head_lengths(),
            keys: self.heads.iter().flat_map(|h| h.keys.to_packed()).collect(),
            values: self
                .heads
                .iter()
                .flat_map(|h| h.values.to_packed())
                .collect(),
            key_orders: self.key_orders(shape.head_dim),
        }))
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

    /// After a head-wise selection each head keeps its own codes; decoding (the kernel over the
    /// codes, merged with the newest f32 tokens) and a longer forward (ragged attention over the
    /// dequantized rows) both equal attention over each head's own dequantized rows.
    #[test]
    fn head_wise_selections_keep_each_heads_own_codes() -> Result<()> {
        for bits in [QuantBits::Eight, QuantBits::Four] {
            let mut cache = QuantizedLayerCache::new(bits);
            cache.append(&random((1, 2, 40, 64), 1)?, &random((1, 2, 40, 64), 2)?)?;
            cache.shrink_to_fit()?;
            let (all_keys, all_values, _) = cache.dequantized_rows();
            let kept = vec![(0..40).step_by(3).collect::<Vec<u32>>(), vec![1, 5, 39]];
            let selection = Selection::new(kept.clone(), 1, 2, 40)?;
            let before = cache.bytes_used();
            cache.compact(&selection, None)?;
            assert_eq!(cache.head_lengths(), vec![14, 3]);
            assert_eq!(
                cache.bytes_used() * 40,
                before * 17 / 2,
                "only the kept rows' codes"
            );
            // The kept rows' codes are the ones stored before: dequantized, the same values.
            let (keys, values, offsets) = cache.dequantized_rows();
            for (h, rows) in kept.iter().enumerate() {
                for (j, &t) in rows.iter().enumerate() {
                    let (at, from) = ((offsets[h] + j) * 64, (h * 40 + t as usize) * 64);
                    assert_eq!(keys[at..at + 64], all_keys[from..from + 64]);
                    assert_eq!(values[at..at + 64], all_values[from..from + 64]);
                }
            }
            for n_new in [1, 6] {
                let new = (random((1, 2, n_new, 64), 3)?, random((1, 2, n_new, 64), 4)?);
                cache.append(&new.0, &new.1)?;
                let queries = random((1, 6, n_new, 64), 5)?;
                let got = cache.attend(&queries, false)?.output;
                let (keys, values, offsets) = cache.dequantized_rows();
                let lengths = cache.head_lengths();
                for h in 0..2 {
                    let rows = offsets[h] * 64..(offsets[h] + lengths[h]) * 64;
                    let shape = (1, 1, lengths[h], 64);
                    let k = Tensor::from_vec(keys[rows.clone()].to_vec(), shape, &Device::Cpu)?;
                    let v = Tensor::from_vec(values[rows].to_vec(), shape, &Device::Cpu)?;
                    let q = queries.narrow(1, 3 * h, 3)?;
                    let want = grouped_query_attention(&q, &k, &v, false)?.output;
                    let diff = max_diff(&got.narrow(1, 3 * h, 3)?, &want)?;
                    assert!(
                        diff < 1e-5,
                        "{bits:?}, {n_new} new tokens, head {h}: {diff}"
                    );
                }
                cache.truncate(cache.len() - n_new)?;
                assert_eq!(cache.head_lengths(), vec![14, 3]);
            }
            assert!(
                cache.keys_values().is_err(),
                "no dense view of ragged heads"
            );
            assert!(cache.attend(&random((1, 6, 1, 64), 6)?, true).is_err());
        }
        Ok(())
    }

    #[test]
    fn per_head_rows_load_into_their_heads() -> Result<()> {
        let rows = random((1, 1, 9, 64), 7)?.reshape((9, 64))?;
        let values = random((1, 1, 9, 64), 8)?.reshape((9, 64))?;
        let cache = QuantizedLayerCache::from_head_rows(
            QuantBits::Eight,
            (&rows, &values),
            &[6, 3],
            (1, 2),
        )?;
        assert_eq!(cache.head_lengths(), vec![6, 3]);
        let (keys, _, offsets) = cache.dequantized_rows();
        assert_eq!(offsets, vec![0, 6]);
        let want = rows.flatten_all()?.to_vec1::<f32>()?;
        let worst = keys
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 5e-3, "{worst}");
        let short =
            QuantizedLayerCache::from_head_rows(QuantBits::Four, (&rows, &values), &[6, 2], (1, 2));
        assert!(short.is_err(), "head lengths must cover the rows");
        Ok(())
    }

    #[test]
    fn packed_layers_rebuild_the_same_codes() -> Result<()> {
        for bits in [QuantBits::Eight, QuantBits::Four] {
            let mut cache = QuantizedLayerCache::new(bits);
            cache.append(&random((1, 2, 12, 64), 1)?, &random((1, 2, 12, 64), 2)?)?;
            let selection = Selection::new(vec![vec![0, 4, 11], vec![2]], 1, 2, 12)?;
            cache.compact(&selection, None)?;
            cache.append(&random((1, 2, 1, 64), 3)?, &random((1, 2, 1, 64), 4)?)?;
            let packed = cache.packed()?.expect("a quantized layer packs");
            assert_eq!(packed.head_lengths, vec![4, 2], "pending tokens packed too");
            let rebuilt = QuantizedLayerCache::from_packed(&packed, (1, 2), 64)?;
            let mut flushed = cache.clone();
            flushed.flush()?;
            assert_eq!(
                rebuilt.dequantized_head_rows(),
                flushed.dequantized_head_rows()
            );
            assert_eq!(rebuilt.packed()?, Some(packed.clone()));
            let short = PackedLayer {
                keys: packed.keys[1..].to_vec(),
                ..packed
            };
            assert!(QuantizedLayerCache::from_packed(&short, (1, 2), 64).is_err());
        }
        Ok(())
    }
}
