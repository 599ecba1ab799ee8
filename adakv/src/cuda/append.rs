//! Appending one decoded token per KV head into a flattened cache on the GPU, in place: each
//! head's new row goes into its own slack, no other row moves (the AdaKV reference re-copies the
//! whole layer for every token).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, InplaceOp2, InplaceOp3, Layout, Tensor};
use half::{bf16, f16};
use kvpress_core::{Error, Result};

use super::kernels::{self, check_cuda, check_u32_vector, dtype_suffix, tensor_view, view};

/// Writes `new_keys[h]` and `new_values[h]` (`(heads, head_dim)`, one token per head) at row
/// `offsets[h] + lengths[h]` of `kv[0]` and `kv[1]`, then adds 1 to `lengths[h]`.
///
/// `kv` is `(2, rows, head_dim)` (keys then values, f32/f16/bf16, the new rows of the same
/// dtype); `offsets`, `lengths` and `capacities` are u32 vectors of `heads` entries on the same
/// device. A head whose length already equals its capacity is left unchanged (its length does
/// not grow): make room first ([`super::CudaFlatLayer`] does).
pub fn append_token(
    kv: &Tensor,
    new_keys: &Tensor,
    new_values: &Tensor,
    offsets: &Tensor,
    lengths: &Tensor,
    capacities: &Tensor,
) -> Result<()> {
    let (two, rows, head_dim) = kv
        .dims3()
        .map_err(|_| Error::Shape(format!("kv {:?} must be (2, rows, head_dim)", kv.dims())))?;
    check_cuda(kv, "kv", None)?;
    dtype_suffix(kv.dtype(), "kv")?;
    if two != 2 || !kv.is_contiguous() {
        return Err(Error::Shape(format!(
            "kv {:?} must be a contiguous (2, rows, head_dim) buffer",
            kv.dims()
        )));
    }
    let heads = offsets.dims1().unwrap_or(0);
    for (tensor, what) in [(new_keys, "new keys"), (new_values, "new values")] {
        check_cuda(tensor, what, Some(kv))?;
        if tensor.dims() != [heads, head_dim] || tensor.dtype() != kv.dtype() {
            return Err(Error::Shape(format!(
                "{what} must be ({heads}, {head_dim}) {:?} (one token per KV head), got {:?} {:?}",
                kv.dtype(),
                tensor.dims(),
                tensor.dtype()
            )));
        }
    }
    for (tensor, what) in [
        (offsets, "offsets"),
        (lengths, "lengths"),
        (capacities, "capacities"),
    ] {
        check_u32_vector(tensor, what, heads, kv)?;
    }
    if heads == 0 {
        return Ok(());
    }
    let new_keys = new_keys.contiguous()?;
    let new_values = new_values.contiguous()?;
    kv.inplace_op3(
        &new_keys,
        &new_values,
        &AppendRows {
            offsets,
            lengths,
            capacities,
            rows: kernels::to_u32(rows, "cache rows")?,
            head_dim: kernels::to_u32(head_dim, "head_dim")?,
        },
    )?;
    // An in-place op with the capacities as its source: candle refuses aliased storages.
    lengths.inplace_op2(capacities, &IncrementLengths)?;
    Ok(())
}

/// The append kernel as an in-place op on `kv`, with the new key and value rows as sources.
struct AppendRows<'a> {
    offsets: &'a Tensor,
    lengths: &'a Tensor,
    capacities: &'a Tensor,
    rows: u32,
    head_dim: u32,
}

impl InplaceOp3 for AppendRows<'_> {
    fn name(&self) -> &'static str {
        "adakv-append-token"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("adakv-append-token runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        dst: &mut CudaStorage,
        dst_layout: &Layout,
        keys: &CudaStorage,
        keys_layout: &Layout,
        values: &CudaStorage,
        values_layout: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        let device = dst.device().clone();
        let (offsets, offsets_layout) = self.offsets.storage_and_layout();
        let (lengths, lengths_layout) = self.lengths.storage_and_layout();
        let (capacities, capacities_layout) = self.capacities.storage_and_layout();
        let offsets = tensor_view::<u32>(&offsets, offsets_layout, "offsets")?;
        let lengths = tensor_view::<u32>(&lengths, lengths_layout, "lengths")?;
        let capacities = tensor_view::<u32>(&capacities, capacities_layout, "capacities")?;
        let heads = offsets.len() as u32;
        let cfg = LaunchConfig {
            grid_dim: (heads, 2, 1),
            block_dim: (self.head_dim.clamp(32, 1024), 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! launch {
            ($t:ty, $suffix:literal) => {{
                let func = device.get_or_load_custom_func(
                    concat!("adakv_append_", $suffix),
                    kernels::APPEND.name,
                    kernels::APPEND.ptx,
                )?;
                let (start, end) = dst_layout
                    .contiguous_offsets()
                    .ok_or_else(|| candle_core::Error::Msg("kv must be contiguous".into()))?;
                let mut kv = dst.as_cuda_slice_mut::<$t>()?.slice_mut(start..end);
                let keys = view::<$t>(keys, keys_layout, "new keys")?;
                let values = view::<$t>(values, values_layout, "new values")?;
                let mut builder = func.builder();
                builder.arg(&mut kv);
                builder.arg(&keys);
                builder.arg(&values);
                builder.arg(&offsets);
                builder.arg(&lengths);
                builder.arg(&capacities);
                builder.arg(&self.rows);
                builder.arg(&self.head_dim);
                // SAFETY: the arguments are, in order, `adakv_append_<dtype>`'s parameters with
                // its types (`T` = the dtype of `kv` and of the new rows, checked equal in
                // `append_token`; the three u32 vectors hold `heads` entries, checked there
                // too). Grid `(heads, 2)`: block `(h, half)` reads row `h` of the contiguous
                // `(heads, head_dim)` new keys or values and, only when `lengths[h] <
                // capacities[h]`, writes row `offsets[h] + lengths[h]` of that half of `kv`,
                // which is inside `kv` as long as `offsets[h] + capacities[h] <= rows`: the
                // flat-cache layout (`CudaFlatLayer` makes offsets the exclusive sums of the
                // capacities and `rows` their total), which this launch does not check on the
                // host. `kv` is the in-place op's destination, borrowed mutably.
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match dst.dtype() {
            candle_core::DType::F32 => launch!(f32, "f32"),
            candle_core::DType::F16 => launch!(f16, "f16"),
            candle_core::DType::BF16 => launch!(bf16, "bf16"),
            other => candle_core::bail!("adakv-append-token: unsupported dtype {other:?}"),
        }
        Ok(())
    }
}

/// `lengths[h] += 1` where the head had room, in place on the lengths, reading the capacities.
struct IncrementLengths;

impl InplaceOp2 for IncrementLengths {
    fn name(&self) -> &'static str {
        "adakv-increment-lengths"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("adakv-increment-lengths runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        lengths: &mut CudaStorage,
        layout: &Layout,
        capacities: &CudaStorage,
        capacities_layout: &Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        let device = lengths.device().clone();
        let capacities = view::<u32>(capacities, capacities_layout, "capacities")?;
        let heads = capacities.len() as u32;
        let func = device.get_or_load_custom_func(
            "adakv_increment_lengths",
            kernels::APPEND.name,
            kernels::APPEND.ptx,
        )?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("lengths must be contiguous".into()))?;
        let mut lengths = lengths.as_cuda_slice_mut::<u32>()?.slice_mut(start..end);
        let mut builder = func.builder();
        builder.arg(&mut lengths);
        builder.arg(&capacities);
        builder.arg(&heads);
        // SAFETY: the arguments are, in order, `adakv_increment_lengths`'s parameters (u32
        // lengths, u32 capacities, u32 heads), `heads` being the length of both vectors
        // (checked in `append_token`); each thread `h < heads` reads `capacities[h]` and
        // updates `lengths[h]`, the others do nothing. `lengths` is the in-place op's
        // destination, borrowed mutably.
        unsafe { builder.launch(LaunchConfig::for_num_elems(heads)) }.w()?;
        Ok(())
    }
}
