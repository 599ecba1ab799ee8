//! [`CudaFlatLayer`]: one layer's flattened cache on the GPU, with per-head slack so that decoding
//! appends in place, built from the kernels of this module. Appending is in `cache_append.rs`,
//! attention and the [`kvpress_core::LayerCache`] implementation in `layer_cache.rs`.

use candle_core::{DType, Device, Tensor};
use kvpress_core::{Error, Result};

use super::compact::{compact, KeptRows};
use super::kernels::{check_cuda, dtype_suffix, to_u32};

/// One layer's keys and values on a CUDA device with a length per KV head: the layout of
/// [`crate::FlatLayerCache`] (head `h = batch_idx * n_kv_heads + kv_head` owns rows
/// `offsets[h]..offsets[h] + capacities[h]`, the first `lengths[h]` of them stored), keys and
/// values in one `(2, rows, head_dim)` buffer of the cache's dtype (f32, f16 or bf16).
///
/// The metadata lives on the device (what the kernels read) and on the host (so that appends
/// know when a head is full without a device round trip). Appending one token per head writes
/// into the slack with a kernel, several tokens per head (a prefill) with one copy per head; a
/// full head makes the layer laid out again with slack for every head proportional to its size,
/// so appends are amortized O(1). An empty layer ([`CudaFlatLayer::new`]) learns its batch, KV
/// heads and head dimension from its first append, which it stores exactly (no slack). No
/// device memory is allocated while no row is.
///
/// Not `Clone`: appends write into the buffer in place, so two handles on one buffer would
/// overwrite each other's new rows.
#[derive(Debug)]
pub struct CudaFlatLayer {
    /// The CUDA device of every buffer.
    pub(super) device: Device,
    /// Storage dtype.
    pub(super) dtype: DType,
    /// Head dimension (0 before the first append).
    pub(super) head_dim: usize,
    /// The buffer and its device metadata; `None` while no row is allocated.
    pub(super) storage: Option<DeviceStorage>,
    /// What [`CudaFlatLayer::kv`] returns while `storage` is `None`: an empty host tensor.
    pub(super) empty_kv: Tensor,
    /// First row of each head (exclusive sums of the capacities).
    pub(super) host_offsets: Vec<u32>,
    /// Rows stored by each head; empty before the first append.
    pub(super) host_lengths: Vec<u32>,
    /// Rows allocated to each head.
    pub(super) host_capacities: Vec<u32>,
    /// Batch size.
    pub(super) batch: usize,
    /// KV heads per sequence.
    pub(super) n_kv_heads: usize,
}

/// The device side of a [`CudaFlatLayer`] holding at least one row.
#[derive(Debug)]
pub(super) struct DeviceStorage {
    /// `(2, rows, head_dim)`: keys, then values.
    pub(super) kv: Tensor,
    /// u32 offsets, one per head.
    pub(super) offsets: Tensor,
    /// u32 lengths, one per head.
    pub(super) lengths: Tensor,
    /// u32 capacities, one per head.
    pub(super) capacities: Tensor,
}

impl CudaFlatLayer {
    /// An empty layer on the CUDA `device` storing `dtype` (f32, f16 or bf16); its batch, KV
    /// heads and head dimension are set by the first append.
    pub fn new(device: &Device, dtype: DType) -> Result<Self> {
        if !matches!(device, Device::Cuda(_)) {
            return Err(Error::Unsupported(format!(
                "a CudaFlatLayer lives on a CUDA device, not {device:?} (the CPU layout is \
                 FlatLayerCache)"
            )));
        }
        dtype_suffix(dtype, "the cache")?;
        Ok(Self {
            device: device.clone(),
            dtype,
            head_dim: 0,
            storage: None,
            empty_kv: Tensor::zeros((2, 0, 0), dtype, &Device::Cpu)?,
            host_offsets: Vec::new(),
            host_lengths: Vec::new(),
            host_capacities: Vec::new(),
            batch: 0,
            n_kv_heads: 0,
        })
    }

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
        let (rows, head_dim) =
            kvpress_core::check_per_head_rows(keys, values, head_lengths, (batch, n_kv_heads))?;
        if values.dtype() != keys.dtype() {
            return Err(Error::Shape(format!(
                "keys are {:?} but values {:?}: a layer stores one dtype",
                keys.dtype(),
                values.dtype()
            )));
        }
        let lengths = head_lengths
            .iter()
            .map(|&l| to_u32(l, "head length"))
            .collect::<Result<Vec<_>>>()?;
        let offsets = exclusive_sums(&lengths)?;
        let mut layer = Self::new(keys.device(), keys.dtype())?;
        (layer.batch, layer.n_kv_heads, layer.head_dim) = (batch, n_kv_heads, head_dim);
        let kv = match rows * head_dim {
            0 => None,
            _ => Some(Tensor::stack(&[keys, values], 0)?.contiguous()?),
        };
        layer.install(kv, offsets, lengths.clone(), lengths)?;
        if slack > 0 {
            layer.relayout(slack)?;
        }
        Ok(layer)
    }

    /// Tokens stored by each head (empty before the first append).
    pub fn head_lengths(&self) -> &[u32] {
        &self.host_lengths
    }

    /// The longest head.
    pub fn max_len(&self) -> usize {
        self.host_lengths.iter().copied().max().unwrap_or(0) as usize
    }

    /// The `(2, rows, head_dim)` key/value buffer on the device; while no row is allocated, an
    /// empty `(2, 0, 0)` host tensor (nothing is allocated on the device for no rows).
    pub fn kv(&self) -> &Tensor {
        self.storage.as_ref().map_or(&self.empty_kv, |s| &s.kv)
    }

    /// Bytes of stored keys and values (without slack) plus the per-head metadata.
    pub fn bytes_used(&self) -> usize {
        let rows: usize = self.host_lengths.iter().map(|&l| l as usize).sum();
        2 * rows * self.head_dim * self.dtype.size_in_bytes() + self.metadata_bytes()
    }

    /// Bytes allocated (stored rows and slack) plus the per-head metadata.
    pub fn bytes_reserved(&self) -> usize {
        let buffer = self.storage.as_ref().map_or(0, |s| s.kv.elem_count());
        buffer * self.dtype.size_in_bytes() + self.metadata_bytes()
    }

    /// Bytes of the offsets, lengths and capacities, u32 on the device and on the host.
    pub fn metadata_bytes(&self) -> usize {
        6 * self.host_lengths.len() * std::mem::size_of::<u32>()
    }

    /// Batch size and KV heads per sequence.
    pub fn heads(&self) -> (usize, usize) {
        (self.batch, self.n_kv_heads)
    }

    /// The buffer's dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device storage, or an error when no row is allocated.
    pub(super) fn storage(&self) -> Result<&DeviceStorage> {
        self.storage
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the CUDA layer stores no rows".to_string()))
    }

    /// Sets every head's stored length (at most its capacity), on the host and the device.
    pub(super) fn set_lengths(&mut self, lengths: Vec<u32>) -> Result<()> {
        if let Some(storage) = self.storage.as_mut() {
            storage.lengths = Tensor::new(lengths.as_slice(), &self.device)?;
        }
        self.host_lengths = lengths;
        Ok(())
    }

    /// Empties the layer and frees its storage; the next append sets a new layout.
    pub(super) fn reset(&mut self) {
        self.storage = None;
        self.host_offsets = Vec::new();
        self.host_lengths = Vec::new();
        self.host_capacities = Vec::new();
        (self.batch, self.n_kv_heads, self.head_dim) = (0, 0, 0);
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
        let selection = self.device_selection(&flat, &counts)?;
        let rows = selection.as_ref().map(|(kept, starts)| KeptRows {
            kept,
            kept_starts: starts,
            index_stride: 0,
        });
        self.gather(rows, counts, slack)
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
        let counts = starts
            .windows(2)
            .map(|w| w[1].checked_sub(w[0]))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                Error::InvalidArgument(format!("kept starts {starts:?} must be non-decreasing"))
            })?;
        let any_kept = counts.iter().any(|&c| c > 0);
        let rows = any_kept.then_some(KeptRows {
            kept,
            kept_starts,
            index_stride,
        });
        self.gather(rows, counts, slack)
    }

    /// Every head's stored rows back to back, `(2, stored_rows, head_dim)` on the device (an
    /// empty host tensor when no row is stored), and the head lengths: the layer without slack.
    pub fn packed(&self) -> Result<(Tensor, Vec<u32>)> {
        let (kv, _, _) = self.gather_all(0)?;
        let kv = match kv {
            Some(kv) => kv,
            None => Tensor::zeros((2, 0, self.head_dim), self.dtype, &Device::Cpu)?,
        };
        Ok((kv, self.host_lengths.clone()))
    }

    /// Lays the layer out again with `slack` free rows after every head, keeping every token.
    pub(super) fn relayout(&mut self, slack: usize) -> Result<()> {
        let (kv, offsets, capacities) = self.gather_all(slack)?;
        let counts = self.host_lengths.clone();
        self.install(kv, offsets, capacities, counts)
    }

    /// Every stored row in a new buffer with `slack` free rows per head: the buffer (`None`
    /// for no rows), its offsets and capacities.
    fn gather_all(&self, slack: usize) -> Result<Gathered> {
        let flat: Vec<u32> = self.host_lengths.iter().flat_map(|&l| 0..l).collect();
        let selection = self.device_selection(&flat, &self.host_lengths)?;
        let rows = selection.as_ref().map(|(kept, starts)| KeptRows {
            kept,
            kept_starts: starts,
            index_stride: 0,
        });
        self.gathered(rows, &self.host_lengths, slack)
    }

    /// `flat` kept indices and the starts of `counts` as device tensors; `None` when nothing
    /// is kept (no empty device tensor is made).
    fn device_selection(&self, flat: &[u32], counts: &[u32]) -> Result<Option<(Tensor, Tensor)>> {
        if flat.is_empty() {
            return Ok(None);
        }
        let kept = Tensor::new(flat, &self.device)?;
        Ok(Some((kept, inclusive_starts(counts, &self.device)?)))
    }

    /// Keeps only the selected rows (none when `kept` is `None`), with `slack` free rows per
    /// head.
    fn gather(&mut self, kept: Option<KeptRows<'_>>, counts: Vec<u32>, slack: usize) -> Result<()> {
        let (kv, offsets, capacities) = self.gathered(kept, &counts, slack)?;
        self.install(kv, offsets, capacities, counts)
    }

    /// The selected rows (`counts[h]` for head `h`) gathered into a new buffer with `slack`
    /// free rows per head (`None` for no rows; zeros when nothing is kept); `self` is
    /// unchanged.
    fn gathered(
        &self,
        kept: Option<KeptRows<'_>>,
        counts: &[u32],
        slack: usize,
    ) -> Result<Gathered> {
        let slack = to_u32(slack, "slack")?;
        let capacities = counts
            .iter()
            .map(|&c| to_u32(c as usize + slack as usize, "head capacity"))
            .collect::<Result<Vec<u32>>>()?;
        let offsets = exclusive_sums(&capacities)?;
        let rows = capacities.iter().map(|&c| c as usize).sum::<usize>();
        if rows * self.head_dim == 0 {
            return Ok((None, offsets, capacities));
        }
        let kv = match (kept, &self.storage) {
            (Some(kept), Some(storage)) => {
                let dst_offsets = Tensor::new(offsets.as_slice(), &self.device)?;
                compact(
                    &storage.kv,
                    &storage.offsets,
                    &storage.lengths,
                    kept,
                    &dst_offsets,
                    rows,
                )?
            }
            _ => Tensor::zeros((2, rows, self.head_dim), self.dtype, &self.device)?,
        };
        Ok((Some(kv), offsets, capacities))
    }

    /// Makes `kv` (`None`: no rows) with these offsets, capacities and lengths the layer's
    /// storage.
    pub(super) fn install(
        &mut self,
        kv: Option<Tensor>,
        offsets: Vec<u32>,
        capacities: Vec<u32>,
        lengths: Vec<u32>,
    ) -> Result<()> {
        let device = &self.device;
        self.storage = match kv {
            Some(kv) => Some(DeviceStorage {
                kv,
                offsets: Tensor::new(offsets.as_slice(), device)?,
                lengths: Tensor::new(lengths.as_slice(), device)?,
                capacities: Tensor::new(capacities.as_slice(), device)?,
            }),
            None => None,
        };
        self.host_offsets = offsets;
        self.host_lengths = lengths;
        self.host_capacities = capacities;
        Ok(())
    }
}

/// A new buffer (`None` for no rows), its offsets and its capacities.
type Gathered = (Option<Tensor>, Vec<u32>, Vec<u32>);

/// `[0, c0, c0 + c1, ...]` without the total, checked against u32 overflow.
pub(super) fn exclusive_sums(counts: &[u32]) -> Result<Vec<u32>> {
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
