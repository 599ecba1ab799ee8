//! [`FlatLayerCache`]: one layer's keys and values with a length per KV head, stored back to back.

use candle_core::{DType, Device, Tensor};
use kvpress_core::attention::AttentionOutput;
use kvpress_core::press::Selection;
use kvpress_core::{Error, LayerCache, LayerSnapshot, Result};

use kvpress_kernels::{ragged_attention, RaggedHeads};

use crate::flat_rows::FlatRows;

/// Minimum number of tokens reserved per head when a layer grows.
const MIN_SLACK_TOKENS: usize = 64;

/// A layer cache whose KV heads keep different numbers of tokens (what a head-wise press
/// decided), with no padding: one buffer for keys and one for values, each head's rows back
/// to back, located by `offsets`, stored in f32, f16 or bf16 ([`FlatRows`]; the decode kernels
/// read 16-bit rows directly, converting in registers).
///
/// Heads are numbered `batch_idx * n_kv_heads + kv_head`. Every append adds the same new tokens
/// to every head; when a head's region is full, the layer is laid out again with slack for every
/// head proportional to the layer's size, so appending is amortized O(1) per head and token.
/// `len()` is the longest head; `truncate(len)` drops the same number of tokens from every head
/// (it undoes appends, which is what rewinding after an answer needs).
#[derive(Debug, Clone)]
pub struct FlatLayerCache {
    keys: FlatRows,
    values: FlatRows,
    offsets: Vec<usize>,
    capacities: Vec<usize>,
    lengths: Vec<usize>,
    batch: usize,
    n_kv_heads: usize,
    head_dim: usize,
    device: Device,
}

impl Default for FlatLayerCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FlatLayerCache {
    /// An empty f32 cache; its layout is set by the first append.
    pub fn new() -> Self {
        Self {
            keys: FlatRows::F32(Vec::new()),
            values: FlatRows::F32(Vec::new()),
            offsets: Vec::new(),
            capacities: Vec::new(),
            lengths: Vec::new(),
            batch: 0,
            n_kv_heads: 0,
            head_dim: 0,
            device: Device::Cpu,
        }
    }

    /// An empty cache storing its rows as `dtype` (f32, f16 or bf16; anything else is refused,
    /// naming those).
    pub fn with_dtype(dtype: DType) -> Result<Self> {
        Ok(Self {
            keys: FlatRows::zeros(dtype, 0)?,
            values: FlatRows::zeros(dtype, 0)?,
            ..Self::new()
        })
    }

    /// The storage dtype of the rows.
    pub fn dtype(&self) -> DType {
        self.keys.dtype()
    }

    /// A cache holding `head_lengths[h]` rows per head, taken from `keys`/`values` `(total_rows,
    /// head_dim)` in head order (the inverse of [`LayerCache::snapshot`]); stored exactly, in
    /// the rows' dtype (f32, f16 or bf16).
    pub fn from_rows(
        keys: &Tensor,
        values: &Tensor,
        head_lengths: &[usize],
        batch: usize,
        n_kv_heads: usize,
    ) -> Result<Self> {
        let (_, head_dim) =
            kvpress_core::check_per_head_rows(keys, values, head_lengths, (batch, n_kv_heads))?;
        let mut offsets = Vec::with_capacity(head_lengths.len());
        let mut start = 0;
        for &len in head_lengths {
            offsets.push(start);
            start += len;
        }
        let dtype = keys.dtype();
        Ok(Self {
            keys: FlatRows::from_tensor(keys, dtype)?,
            values: FlatRows::from_tensor(values, dtype)?,
            offsets,
            capacities: head_lengths.to_vec(),
            lengths: head_lengths.to_vec(),
            batch,
            n_kv_heads,
            head_dim,
            device: keys.device().clone(),
        })
    }

    /// Tokens stored by each head (`batch * n_kv_heads` entries).
    pub fn head_lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// First row of each head's region in the buffers; non-decreasing.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Rows allocated to each head (stored tokens plus slack).
    pub fn capacities(&self) -> &[usize] {
        &self.capacities
    }

    /// Rows holding tokens, summed over heads.
    pub fn stored_rows(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// The elements of one head's rows, `(len, head_dim)` row-major, in the buffers.
    fn head_range(&self, head: usize) -> std::ops::Range<usize> {
        let start = self.offsets[head] * self.head_dim;
        start..start + self.lengths[head] * self.head_dim
    }

    /// The keys of one head, `(len, head_dim)` row-major, as f32 (converted into `buffer`
    /// unless stored as f32).
    pub fn head_keys<'a>(&'a self, head: usize, buffer: &'a mut Vec<f32>) -> &'a [f32] {
        let range = self.head_range(head);
        self.keys.data().f32_range(range.start, range.len(), buffer)
    }

    /// The values of one head, `(len, head_dim)` row-major, as f32 (converted into `buffer`
    /// unless stored as f32).
    pub fn head_values<'a>(&'a self, head: usize, buffer: &'a mut Vec<f32>) -> &'a [f32] {
        let range = self.head_range(head);
        self.values
            .data()
            .f32_range(range.start, range.len(), buffer)
    }

    /// Bytes of the bookkeeping (offsets, capacities, lengths).
    pub fn metadata_bytes(&self) -> usize {
        3 * self.lengths.len() * std::mem::size_of::<usize>()
    }

    fn n_heads_total(&self) -> usize {
        self.lengths.len()
    }

    fn ragged(&self) -> RaggedHeads<'_> {
        RaggedHeads {
            keys: self.keys.data(),
            values: self.values.data(),
            offsets: &self.offsets,
            lengths: &self.lengths,
            batch: self.batch,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Lays the buffers out again with `capacities` rows per head, keeping every stored token.
    fn relayout(&mut self, capacities: Vec<usize>) {
        let d = self.head_dim;
        let total: usize = capacities.iter().sum();
        let mut keys = self.keys.zeros_like(total * d);
        let mut values = self.values.zeros_like(total * d);
        let mut offsets = Vec::with_capacity(capacities.len());
        let mut start = 0;
        for (head, &capacity) in capacities.iter().enumerate() {
            let n = self.lengths[head] * d;
            let from = self.offsets.get(head).copied().unwrap_or(0) * d;
            keys.copy_from(start * d, &self.keys, from, n);
            values.copy_from(start * d, &self.values, from, n);
            offsets.push(start);
            start += capacity;
        }
        self.keys = keys;
        self.values = values;
        self.offsets = offsets;
        self.capacities = capacities;
    }

    fn check_new(&self, keys: &Tensor, values: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let dims = keys.dims4().map_err(|_| {
            Error::Shape(format!(
                "keys {:?} must be (batch, n_kv_heads, tokens, head_dim)",
                keys.dims()
            ))
        })?;
        if keys.dims() != values.dims() {
            return Err(Error::Shape(format!(
                "keys {:?} and values {:?} differ in shape",
                keys.dims(),
                values.dims()
            )));
        }
        let (b, h, _, d) = dims;
        if !self.lengths.is_empty() && (b, h, d) != (self.batch, self.n_kv_heads, self.head_dim) {
            return Err(Error::Shape(format!(
                "cannot append {:?} to a cache of batch {}, {} KV heads, head dim {}",
                keys.dims(),
                self.batch,
                self.n_kv_heads,
                self.head_dim
            )));
        }
        Ok(dims)
    }

    /// Every head's stored key and value rows, back to back in head order (no slack), in the
    /// storage dtype.
    fn stored_rows_in_order(&self) -> (FlatRows, FlatRows) {
        let rows = self.stored_rows() * self.head_dim;
        let mut keys = self.keys.empty_like(rows);
        let mut values = self.values.empty_like(rows);
        for head in 0..self.n_heads_total() {
            keys.extend_from(&self.keys, self.head_range(head));
            values.extend_from(&self.values, self.head_range(head));
        }
        (keys, values)
    }

    fn dense_tensors(&self) -> Result<Option<(Tensor, Tensor)>> {
        let len = self.len();
        if len == 0 {
            return Ok(None);
        }
        if self.lengths.iter().any(|&l| l != len) {
            return Err(Error::Unsupported(format!(
                "the heads of this layer store different numbers of tokens ({:?}); a dense \
                 (batch, heads, tokens, dim) view does not exist",
                self.lengths
            )));
        }
        let (keys, values) = self.stored_rows_in_order();
        let shape = [self.batch, self.n_kv_heads, len, self.head_dim];
        Ok(Some((
            keys.into_tensor(&shape, &self.device)?,
            values.into_tensor(&shape, &self.device)?,
        )))
    }
}

/// Copies the `n` new rows of every head of `source` `(batch, heads, n, d)` (contiguous f32) after
/// each head's stored rows in `buffer`, rounded to its dtype.
fn copy_new_rows(
    source: &Tensor,
    buffer: &mut FlatRows,
    offsets: &[usize],
    lengths: &[usize],
    n: usize,
    d: usize,
) -> Result<()> {
    kvpress_kernels::f32_slice(source, |data, start, _| {
        for (head, (&offset, &len)) in offsets.iter().zip(lengths).enumerate() {
            let from = start + head * n * d;
            let at = (offset + len) * d;
            buffer.write_f32(at, &data[from..from + n * d]);
        }
    })
    .ok_or_else(|| Error::Unsupported("the flattened cache runs on the CPU".to_string()))
}

/// Refuses what the flattened caches (CPU and CUDA) do not store: pruned key channels (ThinK)
/// and replacement values (merging), like replacement keys.
pub(crate) fn refuse_refinements(selection: &Selection) -> Result<()> {
    if selection.key_channels().is_some() {
        return Err(Error::Unsupported(
            "pruned key channels (think) with a head-wise cache: the flattened per-head cache \
             stores every key channel, so think cannot be combined with head-wise presses \
             (adakv, critical_adakv)"
                .to_string(),
        ));
    }
    if selection.values().is_some() {
        return Err(Error::Unsupported(
            "replacement values (merging) with a head-wise cache: the flattened per-head cache \
             stores the cached values of the kept tokens, so merging cannot be combined with \
             head-wise presses (adakv, critical_adakv)"
                .to_string(),
        ));
    }
    Ok(())
}

impl LayerCache for FlatLayerCache {
    fn len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    fn head_lengths(&self) -> Option<Vec<usize>> {
        Some(self.lengths.clone())
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let (b, h, n, d) = self.check_new(keys, values)?;
        if self.lengths.is_empty() {
            self.batch = b;
            self.n_kv_heads = h;
            self.head_dim = d;
            self.device = keys.device().clone();
            self.lengths = vec![0; b * h];
            // The first allocation is exact: a prefilled context stores what it holds.
            self.relayout(vec![n; b * h]);
        }
        if self
            .lengths
            .iter()
            .zip(&self.capacities)
            .any(|(&len, &cap)| len + n > cap)
        {
            let slack = MIN_SLACK_TOKENS.max(self.len() / 4).max(n);
            let capacities = self.lengths.iter().map(|&len| len + slack).collect();
            self.relayout(capacities);
        }
        let keys = keys.to_dtype(DType::F32)?.contiguous()?;
        let values = values.to_dtype(DType::F32)?.contiguous()?;
        copy_new_rows(&keys, &mut self.keys, &self.offsets, &self.lengths, n, d)?;
        copy_new_rows(
            &values,
            &mut self.values,
            &self.offsets,
            &self.lengths,
            n,
            d,
        )?;
        self.lengths.iter_mut().for_each(|l| *l += n);
        Ok(())
    }

    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        let len = self.len();
        if len == 0 {
            return Err(Error::Shape("attend called on an empty cache".to_string()));
        }
        let n_new = queries.dim(2)?;
        let uniform = self.lengths.iter().all(|&l| l == len);
        // A long prefill over equal heads is a dense problem: use the dense kernel.
        if uniform && (want_weights || n_new > 16) {
            let (keys, values) = self.dense_tensors()?.expect("non-empty");
            let attended =
                kvpress_kernels::grouped_query_attention(queries, &keys, &values, want_weights)?;
            return Ok(AttentionOutput {
                output: attended.output,
                weights: attended.weights,
            });
        }
        if want_weights {
            return Err(Error::Unsupported(
                "attention weights over heads of different lengths".to_string(),
            ));
        }
        Ok(AttentionOutput {
            output: ragged_attention(&self.ragged(), queries)?,
            weights: None,
        })
    }

    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>> {
        self.dense_tensors()
    }

    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        self.check_new(keys, values)?;
        self.clear();
        self.append(keys, values)
    }

    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        if selection.heads().len() != self.n_heads_total() {
            return Err(Error::Shape(format!(
                "a selection of {} heads cannot compact a cache of {} heads",
                selection.heads().len(),
                self.n_heads_total()
            )));
        }
        if keys.is_some() {
            return Err(Error::Unsupported(
                "replacement keys (key re-rotation) with a head-wise cache".to_string(),
            ));
        }
        refuse_refinements(selection)?;
        let d = self.head_dim;
        let total: usize = selection.heads().iter().map(Vec::len).sum();
        let mut new_keys = self.keys.empty_like(total * d);
        let mut new_values = self.values.empty_like(total * d);
        let mut offsets = Vec::with_capacity(self.n_heads_total());
        let mut lengths = Vec::with_capacity(self.n_heads_total());
        for (head, kept) in selection.heads().iter().enumerate() {
            if let Some(&last) = kept.last() {
                if last as usize >= self.lengths[head] {
                    return Err(Error::InvalidArgument(format!(
                        "head {head} keeps token {last} but stores only {} tokens",
                        self.lengths[head]
                    )));
                }
            }
            offsets.push(new_keys.len() / d.max(1));
            let start = self.offsets[head] * d;
            for &t in kept {
                let row = start + t as usize * d..start + (t as usize + 1) * d;
                new_keys.extend_from(&self.keys, row.clone());
                new_values.extend_from(&self.values, row);
            }
            lengths.push(kept.len());
        }
        self.keys = new_keys;
        self.values = new_values;
        self.offsets = offsets;
        self.capacities = lengths.clone();
        self.lengths = lengths;
        Ok(())
    }

    /// In place: each head's kept rows move down over the dropped ones (only the rows after a
    /// head's first dropped row move); offsets and reserved capacities stay.
    fn evict(&mut self, selection: &Selection) -> Result<()> {
        if selection.heads().len() != self.n_heads_total() {
            return Err(Error::Shape(format!(
                "a selection of {} heads cannot evict from a cache of {} heads",
                selection.heads().len(),
                self.n_heads_total()
            )));
        }
        refuse_refinements(selection)?;
        let d = self.head_dim;
        for (head, kept) in selection.heads().iter().enumerate() {
            if kept
                .last()
                .is_some_and(|&t| t as usize >= self.lengths[head])
            {
                return Err(Error::InvalidArgument(format!(
                    "head {head} keeps a token beyond the {} it stores",
                    self.lengths[head]
                )));
            }
            // Rows before the first gap stay where they are.
            let settled = kept
                .iter()
                .enumerate()
                .take_while(|(i, &t)| *i == t as usize)
                .count();
            let start = self.offsets[head] * d;
            for (to, &from) in kept.iter().enumerate().skip(settled) {
                let from = start + from as usize * d;
                self.keys.copy_within(from..from + d, start + to * d);
                self.values.copy_within(from..from + d, start + to * d);
            }
            self.lengths[head] = kept.len();
        }
        Ok(())
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        let current = self.len();
        if len > current {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {current} tokens to {len} tokens"
            )));
        }
        let drop = current - len;
        if let Some(&shortest) = self.lengths.iter().min() {
            if shortest < drop {
                return Err(Error::InvalidArgument(format!(
                    "cannot drop {drop} tokens from a head that stores {shortest}"
                )));
            }
        }
        self.lengths.iter_mut().for_each(|l| *l -= drop);
        Ok(())
    }

    fn shrink_to_fit(&mut self) -> Result<()> {
        if self.capacities != self.lengths {
            self.relayout(self.lengths.clone());
        }
        Ok(())
    }

    fn bytes_used(&self) -> usize {
        2 * self.stored_rows() * self.head_dim * self.keys.element_bytes() + self.metadata_bytes()
    }

    fn bytes_reserved(&self) -> usize {
        (self.keys.len() + self.values.len()) * self.keys.element_bytes() + self.metadata_bytes()
    }

    fn clear(&mut self) {
        *self = Self {
            keys: self.keys.empty_like(0),
            values: self.values.empty_like(0),
            ..Self::new()
        };
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        let (d, rows) = (self.head_dim, self.stored_rows());
        let (keys, values) = self.stored_rows_in_order();
        Ok(LayerSnapshot::PerHead {
            keys: keys.into_tensor(&[rows, d], &self.device)?,
            values: values.into_tensor(&[rows, d], &self.device)?,
            head_lengths: self.lengths.clone(),
            batch: self.batch,
            n_kv_heads: self.n_kv_heads,
        })
    }
}
