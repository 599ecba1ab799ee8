//! [`ChannelPrunedCache`]: one layer's keys and values, where the compressed context stores only
//! the key channels each head kept; its buffers and how they change. The [`LayerCache`]
//! implementation is in `layer_cache.rs`, attention in `attention.rs`.
//!
//! [`LayerCache`]: kvpress_core::LayerCache

use candle_core::{DType, Tensor};
use kvpress_core::press::{KeyChannels, Selection};
use kvpress_core::{Error, Result};

/// Minimum slack, in tokens, reserved when the buffers of appended tokens grow.
const MIN_SLACK_TOKENS: usize = 256;

/// A layer cache for key-channel pruning (ThinK): the tokens of the compressed context (the
/// *prefix*) store only the key channels their head kept, tokens appended afterwards (the
/// *tail*: question, answer) store every channel, and values are stored whole for every token.
///
/// Attention over a prefix token uses the query's kept channels only, which is exactly what
/// kvpress computes with the other channels of the cached key set to zero; a tail token uses
/// every channel. Every head stores the same number of tokens. Until a selection prunes channels
/// the cache is a plain dense cache (everything in the tail).
///
/// Buffers are f32 on the CPU, heads numbered `batch_idx * n_kv_heads + kv_head`:
/// `prefix_keys` `(heads, prefix_len, kept)`, `tail_keys` `(heads, tail_capacity, head_dim)` of
/// which the first `tail_len` rows are stored, `values` `(heads, prefix_len + tail_capacity,
/// head_dim)`. The first allocation is exact; the tail grows geometrically, so decoding copies
/// each token once.
#[derive(Debug, Clone, Default)]
pub struct ChannelPrunedCache {
    pub(crate) batch: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Kept channels of every head, `(heads, kept)`; empty while nothing is pruned.
    pub(crate) channels: Vec<u32>,
    /// Channels every prefix key keeps.
    pub(crate) kept: usize,
    pub(crate) prefix_len: usize,
    pub(crate) prefix_keys: Vec<f32>,
    pub(crate) tail_len: usize,
    pub(crate) tail_capacity: usize,
    pub(crate) tail_keys: Vec<f32>,
    pub(crate) values: Vec<f32>,
}

/// The f32 data of `tensor`, contiguous, in row-major order.
pub(crate) fn f32_data(tensor: &Tensor) -> Result<Vec<f32>> {
    Ok(tensor
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl ChannelPrunedCache {
    /// An empty cache; its layout is set by the first append.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens stored per head.
    pub fn stored_len(&self) -> usize {
        self.prefix_len + self.tail_len
    }

    /// Tokens of the compressed context whose keys store only the kept channels.
    pub fn pruned_len(&self) -> usize {
        self.prefix_len
    }

    /// The key channels every head keeps for the pruned tokens (`None` while nothing is
    /// pruned).
    pub fn key_channels(&self) -> Option<KeyChannels> {
        if self.prefix_len == 0 || self.channels.is_empty() {
            return None;
        }
        let heads = (0..self.heads())
            .map(|head| self.channels[head * self.kept..(head + 1) * self.kept].to_vec())
            .collect();
        KeyChannels::new(heads, self.head_dim).ok()
    }

    pub(crate) fn heads(&self) -> usize {
        self.batch * self.n_kv_heads
    }

    /// Rows of values per head (stored tokens and tail slack).
    pub(crate) fn value_stride(&self) -> usize {
        self.prefix_len + self.tail_capacity
    }

    /// Bytes of the kept-channel lists.
    pub(crate) fn channel_bytes(&self) -> usize {
        self.channels.len() * std::mem::size_of::<u32>()
    }

    /// Lays the buffers out again holding the first `prefix_len` prefix tokens and the first
    /// `tail_len` tail tokens with room for `tail_capacity`: `prefix_len` and `tail_len` are at
    /// most what is stored, and `tail_len` is 0 when the prefix shrinks (truncation).
    pub(crate) fn rebuild(&mut self, prefix_len: usize, tail_len: usize, tail_capacity: usize) {
        debug_assert!(prefix_len <= self.prefix_len && tail_len <= self.tail_len);
        debug_assert!(prefix_len == self.prefix_len || tail_len == 0);
        let (heads, d, kept) = (self.heads(), self.head_dim, self.kept);
        let old_stride = self.value_stride();
        let mut prefix_keys = vec![0f32; heads * prefix_len * kept];
        let mut tail_keys = vec![0f32; heads * tail_capacity * d];
        let mut values = vec![0f32; heads * (prefix_len + tail_capacity) * d];
        for head in 0..heads {
            let from = head * self.prefix_len * kept;
            prefix_keys[head * prefix_len * kept..(head + 1) * prefix_len * kept]
                .copy_from_slice(&self.prefix_keys[from..from + prefix_len * kept]);
            let from = head * self.tail_capacity * d;
            tail_keys[head * tail_capacity * d..][..tail_len * d]
                .copy_from_slice(&self.tail_keys[from..from + tail_len * d]);
            let new_stride = prefix_len + tail_capacity;
            let (from, to) = (head * old_stride * d, head * new_stride * d);
            values[to..to + prefix_len * d]
                .copy_from_slice(&self.values[from..from + prefix_len * d]);
            let (from, to) = (from + self.prefix_len * d, to + prefix_len * d);
            values[to..to + tail_len * d].copy_from_slice(&self.values[from..from + tail_len * d]);
        }
        if prefix_len == 0 {
            self.channels.clear();
            self.kept = 0;
        }
        (self.prefix_len, self.tail_len, self.tail_capacity) =
            (prefix_len, tail_len, tail_capacity);
        (self.prefix_keys, self.tail_keys, self.values) = (prefix_keys, tail_keys, values);
    }

    /// Checks new keys and values against the layout (setting it on the first append); returns
    /// the number of new tokens.
    pub(crate) fn check_new(&mut self, keys: &Tensor, values: &Tensor) -> Result<usize> {
        let (b, h, n, d) = keys.dims4().map_err(|_| {
            Error::Shape(format!(
                "keys {:?} must be (batch, n_kv_heads, tokens, head_dim)",
                keys.dims()
            ))
        })?;
        if values.dims() != keys.dims() {
            return Err(Error::Shape(format!(
                "keys {:?} and values {:?} differ in shape",
                keys.dims(),
                values.dims()
            )));
        }
        if self.stored_len() == 0 && self.tail_capacity == 0 {
            (self.batch, self.n_kv_heads, self.head_dim) = (b, h, d);
        } else if (b, h, d) != (self.batch, self.n_kv_heads, self.head_dim) {
            return Err(Error::Shape(format!(
                "cannot append {:?} to a cache of batch {}, {} KV heads, head dim {}",
                keys.dims(),
                self.batch,
                self.n_kv_heads,
                self.head_dim
            )));
        }
        Ok(n)
    }

    /// Appends `n` new tokens' keys and values `(batch, n_kv_heads, n, head_dim)` to the tail.
    pub(crate) fn push_tail(&mut self, keys: &Tensor, values: &Tensor, n: usize) -> Result<()> {
        if self.tail_len + n > self.tail_capacity {
            let capacity = if self.value_stride() == 0 {
                n
            } else {
                (self.tail_len + n)
                    .max(self.tail_capacity + (self.value_stride() / 4).max(MIN_SLACK_TOKENS))
            };
            self.rebuild(self.prefix_len, self.tail_len, capacity);
        }
        let (keys, values) = (f32_data(keys)?, f32_data(values)?);
        let (d, stride) = (self.head_dim, self.value_stride());
        for head in 0..self.heads() {
            let source = head * n * d..(head + 1) * n * d;
            let at = (head * self.tail_capacity + self.tail_len) * d;
            self.tail_keys[at..at + n * d].copy_from_slice(&keys[source.clone()]);
            let at = (head * stride + self.prefix_len + self.tail_len) * d;
            self.values[at..at + n * d].copy_from_slice(&values[source]);
        }
        self.tail_len += n;
        Ok(())
    }

    /// Every stored key with every channel (pruned ones zero) and every value, each
    /// `(heads, len, head_dim)` row-major.
    pub(crate) fn full_rows(&self) -> (Vec<f32>, Vec<f32>) {
        let (heads, d, len) = (self.heads(), self.head_dim, self.stored_len());
        let mut keys = vec![0f32; heads * len * d];
        let mut values = Vec::with_capacity(heads * len * d);
        for head in 0..heads {
            let channels = &self.channels[head * self.kept..(head + 1) * self.kept];
            for t in 0..self.prefix_len {
                let row = &self.prefix_keys[(head * self.prefix_len + t) * self.kept..];
                let out = &mut keys[(head * len + t) * d..(head * len + t + 1) * d];
                channels
                    .iter()
                    .zip(row)
                    .for_each(|(&c, &k)| out[c as usize] = k);
            }
            let tail = &self.tail_keys[head * self.tail_capacity * d..][..self.tail_len * d];
            keys[(head * len + self.prefix_len) * d..(head + 1) * len * d].copy_from_slice(tail);
            values.extend_from_slice(&self.values[head * self.value_stride() * d..][..len * d]);
        }
        (keys, values)
    }

    /// Keeps the tokens `selection` lists out of a cache holding no pruned tokens, with `keys`
    /// (full width) instead of the cached ones when given, the selection's values when it has
    /// them, and, when it says so, only its key channels: the kept tokens become the prefix.
    pub(crate) fn keep(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        let (heads, d) = (self.heads(), self.head_dim);
        let n_kept = selection.uniform_len().unwrap_or(0);
        let shape = [self.batch, self.n_kv_heads, n_kept, d];
        let kept_keys = match keys {
            Some(keys) => replacement("keys", keys, &shape)?,
            None => self.gather(&self.tail_keys, self.tail_capacity, 0, selection),
        };
        let kept_values = match selection.values() {
            Some(values) => replacement("values", values, &shape)?,
            None => self.gather(
                &self.values,
                self.value_stride(),
                self.prefix_len,
                selection,
            ),
        };
        match selection.key_channels() {
            Some(channels) => {
                let kept = check_channels(channels, heads, d)?;
                self.channels = channels.heads().concat();
                self.kept = kept;
                self.prefix_keys = Vec::with_capacity(heads * n_kept * kept);
                for (index, row) in kept_keys.chunks_exact(d.max(1)).enumerate() {
                    let head = index / n_kept.max(1);
                    let channels = &self.channels[head * kept..(head + 1) * kept];
                    self.prefix_keys
                        .extend(channels.iter().map(|&c| row[c as usize]));
                }
                (self.prefix_len, self.tail_len, self.tail_capacity) = (n_kept, 0, 0);
                self.tail_keys = Vec::new();
            }
            None => {
                (self.prefix_len, self.tail_len, self.tail_capacity) = (0, n_kept, n_kept);
                self.tail_keys = kept_keys;
            }
        }
        self.values = kept_values;
        Ok(())
    }

    /// The kept rows of a `(heads, stride, head_dim)` buffer whose tokens start at row `first`.
    fn gather(
        &self,
        buffer: &[f32],
        stride: usize,
        first: usize,
        selection: &Selection,
    ) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = Vec::with_capacity(selection.total_kept() * d);
        for (head, kept) in selection.heads().iter().enumerate() {
            for &t in kept {
                let at = (head * stride + first + t as usize) * d;
                out.extend_from_slice(&buffer[at..at + d]);
            }
        }
        out
    }
}

/// Replacement keys or values given for the kept tokens, checked against `shape`.
fn replacement(what: &str, given: &Tensor, shape: &[usize; 4]) -> Result<Vec<f32>> {
    if given.dims() != shape {
        return Err(Error::Shape(format!(
            "replacement {what} {:?} do not match the kept tokens {shape:?}",
            given.dims()
        )));
    }
    f32_data(given)
}

/// The number of channels every head keeps; heads keeping different numbers are refused.
fn check_channels(channels: &KeyChannels, heads: usize, head_dim: usize) -> Result<usize> {
    if channels.heads().len() != heads || channels.head_dim() != head_dim {
        return Err(Error::Shape(format!(
            "key channels of {} heads of dimension {} for a cache of {heads} heads of dimension \
             {head_dim}",
            channels.heads().len(),
            channels.head_dim()
        )));
    }
    channels.uniform_len().ok_or_else(|| {
        Error::Unsupported(
            "heads keeping different numbers of key channels (the pruned cache stores one \
             number for every head)"
                .to_string(),
        )
    })
}
