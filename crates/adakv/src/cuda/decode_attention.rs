//! Decode attention over a flattened cache on the GPU: one query token, `G` query heads per KV
//! head, every KV head its own length, split-K over long heads (two passes: partial softmaxes
//! per split, then an exact merge), f32/f16/bf16 storage with f32 accumulation.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};
use half::{bf16, f16};
use kvpress_core::{Error, Result};

use super::kernels::{self, check_cuda, check_u32_vector, dtype_suffix, tensor_view, view};

/// Keys per split the launch aims for: long heads are cut into shares of about this size, so a
/// layer's few KV heads still spread over every multiprocessor.
const KEYS_PER_SPLIT: usize = 256;
/// Most splits per head (the merge pass reads every split).
const MAX_SPLITS: usize = 256;
/// Query heads one block handles (`MAX_GROUP` in the kernel); larger groups take more blocks.
const GROUP_PER_BLOCK: usize = 8;
/// Head dimensions with a kernel instance (`_d<head_dim>`).
const HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];

/// Attention of one new token's queries `(batch, n_heads, 1, head_dim)` over a flattened cache:
/// query head `q` of sequence `b` attends with KV head `b * n_kv_heads + q / G` (`G` = query
/// heads per KV head), whose tokens are rows `offsets[h]..offsets[h] + lengths[h]` of `kv[0]`
/// (keys) and `kv[1]` (values), `kv` being `(2, rows, head_dim)` of the queries' dtype; the
/// scale is `1/sqrt(head_dim)`, as in [`crate::ragged_attention`]. Returns `(batch, n_heads, 1,
/// head_dim)` in the queries' dtype. A head of length 0 yields zeros.
///
/// `max_len` is a hint (the longest head) that sizes the split-K grid; any value gives the
/// same result. `head_dim` must be 32, 64, 128 or 256.
pub fn decode_attention(
    queries: &Tensor,
    kv: &Tensor,
    offsets: &Tensor,
    lengths: &Tensor,
    max_len: usize,
) -> Result<Tensor> {
    let (batch, n_heads, n_new, head_dim) = queries.dims4().map_err(|_| {
        Error::Shape(format!(
            "queries {:?} must be (batch, n_heads, 1, head_dim)",
            queries.dims()
        ))
    })?;
    check_cuda(queries, "queries", None)?;
    check_cuda(kv, "kv", Some(queries))?;
    dtype_suffix(queries.dtype(), "queries")?;
    let heads = offsets.dims1().unwrap_or(0);
    if n_new != 1 {
        return Err(Error::Unsupported(format!(
            "the CUDA decode kernel attends one new token, got {n_new}"
        )));
    }
    if kv.dims() != [2, kv.dim(1).unwrap_or(0), head_dim] || kv.dtype() != queries.dtype() {
        return Err(Error::Shape(format!(
            "kv {:?} {:?} must be (2, rows, {head_dim}) {:?} like the queries",
            kv.dims(),
            kv.dtype(),
            queries.dtype()
        )));
    }
    if heads == 0
        || batch == 0
        || !(batch * n_heads).is_multiple_of(heads)
        || !heads.is_multiple_of(batch)
    {
        return Err(Error::Shape(format!(
            "queries {:?} cannot attend over a flattened cache of {heads} heads (batch times KV \
             heads)",
            queries.dims()
        )));
    }
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(Error::Unsupported(format!(
            "head_dim {head_dim}: the CUDA decode kernel takes head_dim {HEAD_DIMS:?}"
        )));
    }
    check_u32_vector(offsets, "offsets", heads, queries)?;
    check_u32_vector(lengths, "lengths", heads, queries)?;
    let group = batch * n_heads / heads;
    let splits = max_len.div_ceil(KEYS_PER_SPLIT).clamp(1, MAX_SPLITS);
    let op = DecodeAttention {
        offsets,
        lengths,
        heads: heads as u32,
        group: group as u32,
        head_dim: head_dim as u32,
        splits: splits as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    Ok(queries
        .contiguous()?
        .apply_op2_no_bwd(&kv.contiguous()?, &op)?)
}

struct DecodeAttention<'a> {
    offsets: &'a Tensor,
    lengths: &'a Tensor,
    heads: u32,
    group: u32,
    head_dim: u32,
    splits: u32,
    scale: f32,
}

impl CustomOp2 for DecodeAttention<'_> {
    fn name(&self) -> &'static str {
        "adakv-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("adakv-decode-attention runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        queries: &CudaStorage,
        queries_layout: &Layout,
        kv: &CudaStorage,
        kv_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let device = queries.device().clone();
        let (offsets, offsets_layout) = self.offsets.storage_and_layout();
        let (lengths, lengths_layout) = self.lengths.storage_and_layout();
        let offsets = tensor_view::<u32>(&offsets, offsets_layout, "offsets")?;
        let lengths = tensor_view::<u32>(&lengths, lengths_layout, "lengths")?;
        let rows = kv_layout.dims()[1] as u32;
        let partials = (self.heads * self.splits * self.group) as usize;
        // SAFETY (three allocations): pass 1 writes every partial before pass 2 reads it (every
        // block writes its own, even when its share of keys is empty).
        let part_max = unsafe { device.alloc::<f32>(partials)? };
        let part_sum = unsafe { device.alloc::<f32>(partials)? };
        let part_acc = unsafe { device.alloc::<f32>(partials * self.head_dim as usize)? };
        let group_blocks = self.group.div_ceil(GROUP_PER_BLOCK as u32);
        let partial_cfg = LaunchConfig {
            grid_dim: (self.splits, self.heads, group_blocks),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let combine_cfg = LaunchConfig {
            grid_dim: (self.heads, self.group, 1),
            block_dim: (self.head_dim.min(1024), 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! launch {
            ($t:ty, $suffix:literal) => {{
                let partial = device.get_or_load_custom_func(
                    &format!("adakv_decode_partial_{}_d{}", $suffix, self.head_dim),
                    kernels::DECODE_ATTENTION.name,
                    kernels::DECODE_ATTENTION.ptx,
                )?;
                let combine = device.get_or_load_custom_func(
                    concat!("adakv_decode_combine_", $suffix),
                    kernels::DECODE_ATTENTION.name,
                    kernels::DECODE_ATTENTION.ptx,
                )?;
                let q = view::<$t>(queries, queries_layout, "queries")?;
                let kv = view::<$t>(kv, kv_layout, "kv")?;
                // SAFETY: pass 2 writes every output element.
                let out = unsafe { device.alloc::<$t>(queries_layout.shape().elem_count())? };
                let mut builder = partial.builder();
                builder.arg(&q);
                builder.arg(&kv);
                builder.arg(&offsets);
                builder.arg(&lengths);
                builder.arg(&rows);
                builder.arg(&self.group);
                builder.arg(&self.scale);
                builder.arg(&part_max);
                builder.arg(&part_sum);
                builder.arg(&part_acc);
                // SAFETY: the arguments match the kernel's parameters; it reads rows
                // offsets[h]..offsets[h] + lengths[h] of kv and writes one partial per block.
                unsafe { builder.launch(partial_cfg) }.w()?;
                let mut builder = combine.builder();
                builder.arg(&part_max);
                builder.arg(&part_sum);
                builder.arg(&part_acc);
                builder.arg(&self.splits);
                builder.arg(&self.group);
                builder.arg(&self.head_dim);
                builder.arg(&out);
                // SAFETY: one block per query head, reading its `splits` partials.
                unsafe { builder.launch(combine_cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let storage = match queries.dtype() {
            candle_core::DType::F32 => launch!(f32, "f32"),
            candle_core::DType::F16 => launch!(f16, "f16"),
            candle_core::DType::BF16 => launch!(bf16, "bf16"),
            other => candle_core::bail!("adakv-decode-attention: unsupported dtype {other:?}"),
        };
        Ok((storage, queries_layout.shape().clone()))
    }
}
