//! [`LayerCache`] for [`ChannelPrunedCache`].
//!
//! Differences from the dense cache's contract, and why: `keys_values` returns copies (the
//! pruned keys are widened with zeros, as kvpress caches them), not views; a cache whose context
//! had channels pruned refuses a second compaction (a decode-time press, or head-wise presses
//! after ThinK) and a layout-independent `snapshot` (a saved context file stores full-width
//! keys: `kvpress compress --out` refuses ThinK contexts rather than store zeros), and heads of
//! different lengths are refused as in the dense cache.

use candle_core::{Device, Tensor};
use kvpress_core::attention::AttentionOutput;
use kvpress_core::press::Selection;
use kvpress_core::{Error, LayerCache, LayerSnapshot, Result};

use crate::attention::pruned_attention;
use crate::cache::ChannelPrunedCache;

/// Queries above which a cache with nothing pruned uses the dense prefill kernel.
const DENSE_KERNEL_MIN_QUERIES: usize = 16;

impl ChannelPrunedCache {
    /// Keys (pruned channels as zeros) and values `(batch, n_kv_heads, len, head_dim)`.
    fn dense_tensors(&self) -> Result<Option<(Tensor, Tensor)>> {
        let len = self.stored_len();
        if len == 0 {
            return Ok(None);
        }
        let (keys, values) = self.full_rows();
        let shape = (self.batch, self.n_kv_heads, len, self.head_dim);
        Ok(Some((
            Tensor::from_vec(keys, shape, &Device::Cpu)?,
            Tensor::from_vec(values, shape, &Device::Cpu)?,
        )))
    }

    /// Whether `selection` leaves the cache as it is.
    fn changes_nothing(selection: &Selection, keys: Option<&Tensor>) -> bool {
        selection.keeps_everything() && keys.is_none() && selection.stores_as_cached()
    }

    fn check_selection(&self, selection: &Selection) -> Result<()> {
        if selection.heads().len() != self.heads() || selection.n_tokens() != self.stored_len() {
            return Err(Error::Shape(format!(
                "a selection of {} heads over {} tokens cannot compact a cache of {} heads \
                 holding {} tokens",
                selection.heads().len(),
                selection.n_tokens(),
                self.heads(),
                self.stored_len()
            )));
        }
        if selection.uniform_len().is_none() {
            return Err(Error::Unsupported(
                "heads keeping different numbers of tokens (head-wise presses: adakv, \
                 critical_adakv) with key-channel pruning: the pruned cache stores the same \
                 tokens count for every head, so think cannot be combined with head-wise presses"
                    .to_string(),
            ));
        }
        if self.pruned_len() > 0 {
            return Err(Error::Unsupported(
                "compressing a context whose key channels were already pruned (a decode-time \
                 press, or a second compression after think) is not supported"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

impl LayerCache for ChannelPrunedCache {
    fn len(&self) -> usize {
        self.stored_len()
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let n = self.check_new(keys, values)?;
        self.push_tail(keys, values, n)
    }

    fn attend(&self, queries: &Tensor, want_weights: bool) -> Result<AttentionOutput> {
        let n_new = queries.dim(2)?;
        if self.pruned_len() == 0 && (want_weights || n_new > DENSE_KERNEL_MIN_QUERIES) {
            let (keys, values) = self
                .dense_tensors()?
                .ok_or_else(|| Error::Shape("attend called on an empty cache".to_string()))?;
            let attended =
                kvpress_kernels::grouped_query_attention(queries, &keys, &values, want_weights)?;
            return Ok(AttentionOutput {
                output: attended.output,
                weights: attended.weights,
            });
        }
        let (output, weights) = pruned_attention(self, queries, want_weights)?;
        Ok(AttentionOutput { output, weights })
    }

    fn keys_values(&self) -> Result<Option<(Tensor, Tensor)>> {
        self.dense_tensors()
    }

    fn replace(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let mut fresh = Self::new();
        let n = fresh.check_new(keys, values)?;
        fresh.push_tail(keys, values, n)?;
        *self = fresh;
        Ok(())
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        let current = self.stored_len();
        if len > current {
            return Err(Error::InvalidArgument(format!(
                "cannot truncate a cache of {current} tokens to {len} tokens"
            )));
        }
        if len >= self.prefix_len {
            self.tail_len = len - self.prefix_len;
        } else {
            self.rebuild(len, 0, 0);
        }
        Ok(())
    }

    fn compact(&mut self, selection: &Selection, keys: Option<&Tensor>) -> Result<()> {
        if Self::changes_nothing(selection, keys) && selection.n_tokens() == self.stored_len() {
            return Ok(());
        }
        self.check_selection(selection)?;
        self.keep(selection, keys)
    }

    fn shrink_to_fit(&mut self) -> Result<()> {
        if self.tail_capacity != self.tail_len {
            self.rebuild(self.prefix_len, self.tail_len, self.tail_len);
        }
        Ok(())
    }

    fn bytes_used(&self) -> usize {
        let (heads, d) = (self.heads(), self.head_dim);
        let rows = heads * (self.prefix_len * self.kept + self.tail_len * d)
            + heads * self.stored_len() * d;
        rows * std::mem::size_of::<f32>() + self.channel_bytes()
    }

    fn bytes_reserved(&self) -> usize {
        let elements = self.prefix_keys.len() + self.tail_keys.len() + self.values.len();
        elements * std::mem::size_of::<f32>() + self.channel_bytes()
    }

    fn clear(&mut self) {
        *self = Self::new();
    }

    fn snapshot(&self) -> Result<LayerSnapshot> {
        if self.pruned_len() > 0 {
            return Err(Error::Unsupported(
                "this layer's context stores only the key channels think kept, which a \
                 layout-independent snapshot (a saved context file, `kvpress compress --out`, or \
                 the restore after decode-time compression) cannot hold; think contexts cannot \
                 be saved: compress and answer in one run (`kvpress run`)"
                    .to_string(),
            ));
        }
        Ok(LayerSnapshot::Dense(self.dense_tensors()?))
    }
}
