//! Compaction of a per-head selection on the GPU: the kept rows of every head, gathered into a
//! new flattened buffer. Also lays a cache out again with more slack (keep every row).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};
use half::{bf16, f16};
use kvpress_core::{Error, Result};

use super::kernels::{self, check_cuda, check_u32_vector, dtype_suffix, tensor_view, view};

/// Where the kept rows of a compaction come from and go to.
#[derive(Debug, Clone, Copy)]
pub struct KeptRows<'a> {
    /// Kept token indices of every head back to back (u32): head `h`'s are
    /// `kept[kept_starts[h]..kept_starts[h + 1]]`, in the order they are stored.
    pub kept: &'a Tensor,
    /// `heads + 1` cumulative starts into `kept` (u32).
    pub kept_starts: &'a Tensor,
    /// 0 when indices are per head; `T` when they are global indices into a `(heads, T)` grid
    /// (what [`super::top_k`] over a layer's flattened scores returns): token = index - h * T.
    pub index_stride: usize,
}

/// A new `(2, dst_rows, head_dim)` buffer holding, from row `dst_offsets[h]`, head `h`'s kept
/// rows of `kv` (head `h` stored at `offsets[h]`, `lengths[h]` rows). Indices not below
/// `lengths[h]` are skipped (their destination rows stay zero): validate selections first.
/// Rows past each head's kept rows are zero (slack for later appends).
pub fn compact(
    kv: &Tensor,
    offsets: &Tensor,
    lengths: &Tensor,
    selection: KeptRows<'_>,
    dst_offsets: &Tensor,
    dst_rows: usize,
) -> Result<Tensor> {
    let (two, _, head_dim) = kv
        .dims3()
        .map_err(|_| Error::Shape(format!("kv {:?} must be (2, rows, head_dim)", kv.dims())))?;
    check_cuda(kv, "kv", None)?;
    dtype_suffix(kv.dtype(), "kv")?;
    if two != 2 {
        return Err(Error::Shape(format!(
            "kv {:?} must be (2, rows, head_dim)",
            kv.dims()
        )));
    }
    let heads = offsets.dims1().unwrap_or(0);
    check_u32_vector(offsets, "offsets", heads, kv)?;
    check_u32_vector(lengths, "lengths", heads, kv)?;
    check_u32_vector(dst_offsets, "destination offsets", heads, kv)?;
    check_u32_vector(selection.kept_starts, "kept starts", heads + 1, kv)?;
    let total_kept = selection.kept.dims1().unwrap_or(0);
    check_u32_vector(selection.kept, "kept indices", total_kept, kv)?;
    let kv = kv.contiguous()?;
    let op = Compact {
        offsets,
        lengths,
        selection,
        dst_offsets,
        dst_rows: kernels::to_u32(dst_rows, "destination rows")?,
        head_dim: kernels::to_u32(head_dim, "head_dim")?,
        index_stride: kernels::to_u32(selection.index_stride, "index stride")?,
        blocks_per_head: (total_kept / heads.max(1)).clamp(1, 512) as u32,
    };
    Ok(kv.apply_op1_no_bwd(&op)?)
}

/// `heads + 1` u32 starts of each head's segment in `sorted`, ascending global indices into a
/// `(heads, index_stride)` grid (a layer-wide [`super::top_k`]): `starts[h]` is the first
/// position whose index is at least `h * index_stride`. With `sorted` these are the
/// [`KeptRows`] of a layer-wide selection.
pub fn segment_starts(sorted: &Tensor, index_stride: usize, heads: usize) -> Result<Tensor> {
    let n = sorted.dims1().unwrap_or(0);
    check_u32_vector(sorted, "sorted indices", n, sorted)?;
    let op = SegmentStarts {
        index_stride: kernels::to_u32(index_stride, "index stride")?,
        heads: kernels::to_u32(heads, "heads")?,
    };
    Ok(sorted.contiguous()?.apply_op1_no_bwd(&op)?)
}

struct Compact<'a> {
    offsets: &'a Tensor,
    lengths: &'a Tensor,
    selection: KeptRows<'a>,
    dst_offsets: &'a Tensor,
    dst_rows: u32,
    head_dim: u32,
    index_stride: u32,
    blocks_per_head: u32,
}

impl CustomOp1 for Compact<'_> {
    fn name(&self) -> &'static str {
        "adakv-compact"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("adakv-compact runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let device = kv.device().clone();
        let (offsets, offsets_layout) = self.offsets.storage_and_layout();
        let (lengths, lengths_layout) = self.lengths.storage_and_layout();
        let (kept, kept_layout) = self.selection.kept.storage_and_layout();
        let (starts, starts_layout) = self.selection.kept_starts.storage_and_layout();
        let (dst_offsets, dst_offsets_layout) = self.dst_offsets.storage_and_layout();
        let offsets = tensor_view::<u32>(&offsets, offsets_layout, "offsets")?;
        let lengths = tensor_view::<u32>(&lengths, lengths_layout, "lengths")?;
        let kept = tensor_view::<u32>(&kept, kept_layout, "kept")?;
        let starts = tensor_view::<u32>(&starts, starts_layout, "kept starts")?;
        let dst_offsets =
            tensor_view::<u32>(&dst_offsets, dst_offsets_layout, "destination offsets")?;
        let heads = offsets.len() as u32;
        let src_rows =
            (kv_layout.shape().elem_count() / (2 * self.head_dim.max(1) as usize)) as u32;
        let shape = Shape::from((2, self.dst_rows as usize, self.head_dim as usize));
        let cfg = LaunchConfig {
            grid_dim: (self.blocks_per_head, heads.max(1), 2),
            block_dim: (self.head_dim.clamp(32, 1024), 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! launch {
            ($t:ty, $suffix:literal) => {{
                let func = device.get_or_load_custom_func(
                    concat!("adakv_compact_", $suffix),
                    kernels::COMPACT.name,
                    kernels::COMPACT.ptx,
                )?;
                let src = view::<$t>(kv, kv_layout, "kv")?;
                let dst = device.alloc_zeros::<$t>(shape.elem_count())?;
                if heads > 0 {
                    let mut builder = func.builder();
                    builder.arg(&src);
                    builder.arg(&dst);
                    builder.arg(&offsets);
                    builder.arg(&lengths);
                    builder.arg(&kept);
                    builder.arg(&starts);
                    builder.arg(&dst_offsets);
                    builder.arg(&src_rows);
                    builder.arg(&self.dst_rows);
                    builder.arg(&self.head_dim);
                    builder.arg(&self.index_stride);
                    // SAFETY: the arguments are, in order, `adakv_compact_<dtype>`'s
                    // parameters with its types (`T` = the dtype of `kv`; the u32 vectors
                    // checked in `compact`: `heads` offsets, lengths and destination offsets,
                    // `heads + 1` kept starts). Block `(_, h, half)` copies, for `j <
                    // kept_starts[h + 1] - kept_starts[h]`, source row `offsets[h] + token`
                    // (`token = kept[kept_starts[h] + j] - h * index_stride`, skipped unless
                    // below `lengths[h]`) to destination row `dst_offsets[h] + j`. These stay
                    // inside `kv` (`src_rows` rows), `kept` and `dst` (`dst_rows` rows) as
                    // long as the metadata describes the layouts: `offsets[h] + lengths[h] <=
                    // src_rows`, non-decreasing kept starts ending at most at `kept.len()`,
                    // and `dst_offsets[h]` plus head `h`'s kept count at most `dst_rows`.
                    // `CudaFlatLayer` ensures this for its layouts; the selection comes from
                    // the caller of `compact`; neither the kernel nor this launch checks it.
                    // The kernel writes only `dst`, allocated just above and owned here.
                    unsafe { builder.launch(cfg) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(dst, device.clone())
            }};
        }
        let storage = match kv.dtype() {
            candle_core::DType::F32 => launch!(f32, "f32"),
            candle_core::DType::F16 => launch!(f16, "f16"),
            candle_core::DType::BF16 => launch!(bf16, "bf16"),
            other => candle_core::bail!("adakv-compact: unsupported dtype {other:?}"),
        };
        Ok((storage, shape))
    }
}

struct SegmentStarts {
    index_stride: u32,
    heads: u32,
}

impl CustomOp1 for SegmentStarts {
    fn name(&self) -> &'static str {
        "adakv-segment-starts"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("adakv-segment-starts runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        sorted: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let device = sorted.device().clone();
        let sorted = view::<u32>(sorted, layout, "sorted indices")?;
        let n = sorted.len() as u32;
        let starts = device.alloc_zeros::<u32>(self.heads as usize + 1)?;
        let func = device.get_or_load_custom_func(
            "adakv_segment_starts",
            kernels::COMPACT.name,
            kernels::COMPACT.ptx,
        )?;
        let mut builder = func.builder();
        builder.arg(&sorted);
        builder.arg(&n);
        builder.arg(&self.index_stride);
        builder.arg(&self.heads);
        builder.arg(&starts);
        // SAFETY: the arguments are, in order, `adakv_segment_starts`'s parameters (u32
        // sorted, u32 n, u32 index_stride, u32 heads, u32 starts), `n` being the length of
        // the contiguous `sorted` view; thread `h <= heads` binary-searches `sorted[..n]` and
        // writes `starts[h]`, inside the `heads + 1` entries allocated just above (and owned
        // here); the other threads of the grid do nothing.
        unsafe { builder.launch(LaunchConfig::for_num_elems(self.heads + 1)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(starts, device),
            Shape::from(self.heads as usize + 1),
        ))
    }
}
