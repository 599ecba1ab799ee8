//! [`CudaFlatLayer`]: one layer's flattened cache on the GPU, with per-head slack so that decoding
//! appends in place, built from the kernels of this module.

use candle_core::{DType, Device, Tensor};
use kvpress_core::{Error, Result};

use super::append::append_token;
use super::compact::{compact, KeptRows};
use super::decode_attention::decode_attention;
use super::kernels::{check_cuda, dtype_suffix, to_u32};

/// Minimum rows of slack per head when the layer is laid out again (as the CPU cache).
const MIN_SLACK_TOKENS: usize = 64;

/// One layer's keys and values on a CUDA device with a length per KV head: the layout of
/// [`crate::FlatLayerCache`] (head `h = batch_idx * n_kv_heads + kv_head` owns rows
/// `offsets[h]..offsets[h] + capacities[h]`, the first `lengths[h]` of them stored), keys and
/// values in one `(2, rows, head_dim)` buffer of the model's dtype.
///
/// The metadata lives on the device (what the kernels read) and on the host (so that appends
/// know when a head is full without a device round trip). Appending one token per head writes
/// into the slack; a full head makes the layer laid out again with slack for every head
/// proportional to its size, so appends are amortized O(1).
///
/// Not `Clone`: appends write into the buffer in place, so two handles on one buffer would
/// overwrite each other's new rows.
#[derive(Debug)]
pub struct CudaFlatLayer {
    kv: Tensor,
    offsets: Tensor,
    lengths: Tensor,
    capacities: Tensor,
    host_offsets: Vec<u32>,
    host_lengths: Vec<u32>,
    host_capacities: Vec<u32>,
    batch: usize,
    n_kv_heads: usize,
}

impl CudaFlatLayer {
    /// A layer holding `head_lengths[h]` rows per head, taken from `keys`/`values` `(rows,
    /// head_dim)` in head order (a [`kvpress_core::LayerSnapshot::PerHead`] layout) on a CUDA
    /// device, with `slack` free rows after every head.
    pub fn from_rows(
        keys: &Tensor,
        values: &Tensor,
        head_lengths: &[usize],
        batch: usize,
        n_kv_heads: usize,
        slack: usize,
    ) -> Result<Self> {
        check_cuda(keys, "keys", None)?;
        check_cuda(values, "values", Some(keys))?;
        dtype_suffix(keys.dtype(), "keys")?;
        let (rows, _) = keys.dims2()?;
        if values.dims() != keys.dims()
            || values.dtype() != keys.dtype()
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
        let lengths = head_lengths
            .iter()
            .map(|&l| to_u32(l, "head length"))
            .collect::<Result<Vec<_>>>()?;
        let offsets = exclusive_sums(&lengths)?;
        let device = keys.device();
        let mut layer = Self {
            kv: Tensor::stack(&[keys, values], 0)?.contiguous()?,
            offsets: Tensor::new(offsets.as_slice(), device)?,
            lengths: Tensor::new(lengths.as_slice(), device)?,
            capacities: Tensor::new(lengths.as_slice(), device)?,
            host_offsets: offsets,
            host_capacities: lengths.clone(),
            host_lengths: lengths,
            batch,
            n_kv_heads,
        };
        if slack > 0 {
            layer.relayout(slack)?;
        }
        Ok(layer)
    }

    /// Tokens stored by each head.
    pub fn head_lengths(&self) -> &[u32] {
        &self.host_lengths
    }

    /// The longest head.
    pub fn max_len(&self) -> usize {
        self.host_lengths.iter().copied().max().unwrap_or(0) as usize
    }

    /// The `(2, rows, head_dim)` key/value buffer.
    pub fn kv(&self) -> &Tensor {
        &self.kv
    }

    /// Bytes of stored keys and values (without slack).
    pub fn bytes_used(&self) -> usize {
        let rows: usize = self.host_lengths.iter().map(|&l| l as usize).sum();
        2 * rows * self.kv.dim(2).unwrap_or(0) * self.kv.dtype().size_in_bytes()
    }

    /// Appends one token per head: `keys`/`values` `(batch, n_kv_heads, 1, head_dim)` (or
    /// `(heads, head_dim)`), converted to the cache's dtype.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let heads = self.host_lengths.len();
        let head_dim = self.kv.dim(2)?;
        if keys.elem_count() != heads * head_dim || values.dims() != keys.dims() {
            return Err(Error::Shape(format!(
                "cannot append keys {:?} / values {:?} (one token for each of {heads} heads of \
                 dim {head_dim}) to this layer",
                keys.dims(),
                values.dims()
            )));
        }
        if self
            .host_lengths
            .iter()
            .zip(&self.host_capacities)
            .any(|(l, c)| l >= c)
        {
            self.relayout(MIN_SLACK_TOKENS.max(self.max_len() / 4))?;
        }
        let dtype = self.kv.dtype();
        let keys = keys.reshape((heads, head_dim))?.to_dtype(dtype)?;
        let values = values.reshape((heads, head_dim))?.to_dtype(dtype)?;
        append_token(
            &self.kv,
            &keys,
            &values,
            &self.offsets,
            &self.lengths,
            &self.capacities,
        )?;
        self.host_lengths.iter_mut().for_each(|l| *l += 1);
        Ok(())
    }

    /// Attention of one token's queries `(batch, n_heads, 1, head_dim)` over every head's
    /// stored tokens ([`decode_attention`]).
    pub fn attend(&self, queries: &Tensor) -> Result<Tensor> {
        decode_attention(
            queries,
            &self.kv,
            &self.offsets,
            &self.lengths,
            self.max_len(),
        )
    }

    /// Keeps, for every head, the tokens `kept[h]` (ascending indices below its length),
    /// leaving `slack` free rows after each head.
    pub fn compact_heads(&mut self, kept: &[Vec<u32>], slack: usize) -> Result<()> {
        if kept.len() != self.host_lengths.len() {
            return Err(Error::Shape(format!(
                "a selection of {} heads cannot compact a layer of {} heads",
                kept.len(),
                self.host_lengths.len()
            )));
        }
        for (head, (indices, &len)) in kept.iter().zip(&self.host_lengths).enumerate() {
            if let Some(&bad) = indices.iter().find(|&&t| t >= len) {
                return Err(Error::InvalidArgument(format!(
                    "head {head} keeps token {bad} but stores only {len} tokens"
                )));
            }
        }
        let counts: Vec<u32> = kept
            .iter()
            .map(|k| to_u32(k.len(), "kept tokens"))
            .collect::<Result<_>>()?;
        let flat: Vec<u32> = kept.iter().flatten().copied().collect();
        let device = self.kv.device().clone();
        let kept = Tensor::new(flat.as_slice(), &device)?;
        let starts = inclusive_starts(&counts, &device)?;
        self.gather(&kept, &starts, 0, counts, slack)
    }

    /// Keeps the tokens of a layer-wide selection already on the device: `kept` ascending
    /// global indices into a `(heads, index_stride)` grid (a [`super::top_k`] over the layer's
    /// flattened scores) with their per-head `kept_starts` ([`super::segment_starts`]).
    /// Indices must lie below their head's length (they do when `index_stride` is the common
    /// length of a freshly prefilled layer).
    pub fn compact_segments(
        &mut self,
        kept: &Tensor,
        kept_starts: &Tensor,
        index_stride: usize,
        slack: usize,
    ) -> Result<()> {
        let starts = kept_starts.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
        if starts.len() != self.host_lengths.len() + 1 {
            return Err(Error::Shape(format!(
                "{} kept starts for a layer of {} heads (need heads + 1)",
                starts.len(),
                self.host_lengths.len()
            )));
        }
        let counts = starts.windows(2).map(|w| w[1] - w[0]).collect();
        self.gather(kept, kept_starts, index_stride, counts, slack)
    }

    /// Every head's stored rows back to back, `(2, stored_rows, head_dim)` on the device, and
    /// the head lengths: the layer without slack.
    pub fn packed(&self) -> Result<(Tensor, Vec<u32>)> {
        let (kv, _, _) = self.gather_all(0)?;
        Ok((kv, self.host_lengths.clone()))
    }

    /// Lays the layer out again with `slack` free rows after every head, keeping every token.
    fn relayout(&mut self, slack: usize) -> Result<()> {
        let (kv, offsets, capacities) = self.gather_all(slack)?;
        let counts = self.host_lengths.clone();
        self.install(kv, offsets, capacities, counts)
    }

    /// Every stored row in a new buffer with `slack` free rows per head: the buffer, its
    /// offsets and capacities.
    fn gather_all(&self, slack: usize) -> Result<(Tensor, Vec<u32>, Vec<u32>)> {
        let flat: Vec<u32> = self.host_lengths.iter().flat_map(|&l| 0..l).collect();
        let device = self.kv.device().clone();
        let kept = Tensor::new(flat.as_slice(), &device)?;
        let starts = inclusive_starts(&self.host_lengths, &device)?;
        self.gathered(&kept, &starts, 0, &self.host_lengths, slack)
    }

    /// Keeps only the selected rows, with `slack` free rows per head.
    fn gather(
        &mut self,
        kept: &Tensor,
        kept_starts: &Tensor,
        index_stride: usize,
        counts: Vec<u32>,
        slack: usize,
    ) -> Result<()> {
        let (kv, offsets, capacities) =
            self.gathered(kept, kept_starts, index_stride, &counts, slack)?;
        self.install(kv, offsets, capacities, counts)
    }

    /// The selected rows (`counts[h]` for head `h`) gathered into a new buffer with `slack`
    /// free rows per head; `self` is unchanged.
    fn gathered(
        &self,
        kept: &Tensor,
        kept_starts: &Tensor,
        index_stride: usize,
        counts: &[u32],
        slack: usize,
    ) -> Result<(Tensor, Vec<u32>, Vec<u32>)> {
        let slack = to_u32(slack, "slack")?;
        let capacities: Vec<u32> = counts.iter().map(|&c| c + slack).collect();
        let offsets = exclusive_sums(&capacities)?;
        let rows = capacities.iter().map(|&c| c as usize).sum::<usize>();
        let dst_offsets = Tensor::new(offsets.as_slice(), self.kv.device())?;
        let kv = compact(
            &self.kv,
            &self.offsets,
            &self.lengths,
            KeptRows {
                kept,
                kept_starts,
                index_stride,
            },
            &dst_offsets,
            rows,
        )?;
        Ok((kv, offsets, capacities))
    }

    /// Makes `kv` with these offsets, capacities and lengths the layer's storage.
    fn install(
        &mut self,
        kv: Tensor,
        offsets: Vec<u32>,
        capacities: Vec<u32>,
        lengths: Vec<u32>,
    ) -> Result<()> {
        let device = kv.device().clone();
        self.kv = kv;
        self.offsets = Tensor::new(offsets.as_slice(), &device)?;
        self.lengths = Tensor::new(lengths.as_slice(), &device)?;
        self.capacities = Tensor::new(capacities.as_slice(), &device)?;
        self.host_offsets = offsets;
        self.host_lengths = lengths;
        self.host_capacities = capacities;
        Ok(())
    }

    /// Batch size and KV heads per sequence.
    pub fn heads(&self) -> (usize, usize) {
        (self.batch, self.n_kv_heads)
    }

    /// The buffer's dtype.
    pub fn dtype(&self) -> DType {
        self.kv.dtype()
    }
}

/// `[0, c0, c0 + c1, ...]` without the total, checked against u32 overflow.
fn exclusive_sums(counts: &[u32]) -> Result<Vec<u32>> {
    let mut sums = Vec::with_capacity(counts.len());
    let mut total = 0u64;
    for &c in counts {
        sums.push(to_u32(total as usize, "cache rows")?);
        total += u64::from(c);
    }
    to_u32(total as usize, "cache rows")?;
    Ok(sums)
}

/// `heads + 1` cumulative starts of `counts` as a device tensor.
fn inclusive_starts(counts: &[u32], device: &Device) -> Result<Tensor> {
    let mut starts = exclusive_sums(counts)?;
    starts.push(counts.iter().sum());
    Ok(Tensor::new(starts.as_slice(), device)?)
}
