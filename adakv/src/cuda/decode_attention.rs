//! Decode attention over a flattened cache on the GPU: one query token, `G` query heads per KV
//! head, every KV head its own length, split-K over long heads (two passes: partial softmaxes
//! per split, then an exact merge), f32/f16/bf16 storage with f32 accumulation.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
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
pub(super) const HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];

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
        let passes = Passes {
            offsets: tensor_view::<u32>(&offsets, offsets_layout, "offsets")?,
            lengths: tensor_view::<u32>(&lengths, lengths_layout, "lengths")?,
            rows: kv_layout.dims()[1] as u32,
            partials: self.partials(&device)?,
            device,
        };
        let inputs = Inputs {
            queries,
            queries_layout,
            kv,
            kv_layout,
        };
        let storage = match queries.dtype() {
            candle_core::DType::F32 => self.launch::<f32>(&passes, &inputs, "f32")?,
            candle_core::DType::F16 => self.launch::<f16>(&passes, &inputs, "f16")?,
            candle_core::DType::BF16 => self.launch::<bf16>(&passes, &inputs, "bf16")?,
            other => candle_core::bail!("adakv-decode-attention: unsupported dtype {other:?}"),
        };
        Ok((storage, queries_layout.shape().clone()))
    }
}

/// Pass 1's output, pass 2's input: per (head, split, query head of the group) the max and sum
/// of a partial softmax and its `head_dim` accumulator values.
struct Partials {
    part_max: CudaSlice<f32>,
    part_sum: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
}

/// What the launches share whatever the dtype: the device, the metadata views, `kv`'s row
/// count and the partials buffers.
struct Passes<'a> {
    device: CudaDevice,
    offsets: CudaView<'a, u32>,
    lengths: CudaView<'a, u32>,
    rows: u32,
    partials: Partials,
}

/// The op's two input storages with their layouts.
struct Inputs<'a> {
    queries: &'a CudaStorage,
    queries_layout: &'a Layout,
    kv: &'a CudaStorage,
    kv_layout: &'a Layout,
}

impl DecodeAttention<'_> {
    /// The partials buffers, `heads * splits * group` partials each (`head_dim` values per
    /// partial in `part_acc`), left uninitialised.
    fn partials(&self, device: &CudaDevice) -> candle_core::Result<Partials> {
        let partials = (self.heads * self.splits * self.group) as usize;
        // SAFETY: the memory is left uninitialised. Pass 1's grid `(splits, heads,
        // ceil(group / 8))` has a block for every (head, split, group of 8 query heads), and
        // each block writes the max, sum and `head_dim` accumulator values of its query heads,
        // even when its share of keys is empty: every partial is written before pass 2, queued
        // after it on the same stream, reads it.
        let part_max = unsafe { device.alloc::<f32>(partials)? };
        // SAFETY: as for `part_max`.
        let part_sum = unsafe { device.alloc::<f32>(partials)? };
        // SAFETY: as for `part_max` (`head_dim` values per partial).
        let part_acc = unsafe { device.alloc::<f32>(partials * self.head_dim as usize)? };
        Ok(Partials {
            part_max,
            part_sum,
            part_acc,
        })
    }

    /// Pass 1's grid (`(splits, heads, ceil(group / 8))` blocks of 128 threads) and pass 2's
    /// (`(heads, group)` blocks of `min(head_dim, 1024)` threads).
    fn launch_configs(&self) -> (LaunchConfig, LaunchConfig) {
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
        (partial_cfg, combine_cfg)
    }

    /// Both passes for storage dtype `T` (kernel suffix `suffix`); returns the output storage.
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        passes: &Passes<'_>,
        inputs: &Inputs<'_>,
        suffix: &str,
    ) -> candle_core::Result<CudaStorage> {
        let device = &passes.device;
        let Partials {
            part_max,
            part_sum,
            part_acc,
        } = &passes.partials;
        let (partial_cfg, combine_cfg) = self.launch_configs();
        let partial = device.get_or_load_custom_func(
            &format!("adakv_decode_partial_{}_d{}", suffix, self.head_dim),
            kernels::DECODE_ATTENTION.name,
            kernels::DECODE_ATTENTION.ptx,
        )?;
        let combine = device.get_or_load_custom_func(
            &format!("adakv_decode_combine_{suffix}"),
            kernels::DECODE_ATTENTION.name,
            kernels::DECODE_ATTENTION.ptx,
        )?;
        let q = view::<T>(inputs.queries, inputs.queries_layout, "queries")?;
        let kv = view::<T>(inputs.kv, inputs.kv_layout, "kv")?;
        // SAFETY: the memory is left uninitialised; pass 2 (grid `(heads, group)`, its threads
        // striding over `head_dim`) writes all `heads * group * head_dim` elements, the
        // queries' element count, before the tensor is returned.
        let out = unsafe { device.alloc::<T>(inputs.queries_layout.shape().elem_count())? };
        let mut builder = partial.builder();
        builder.arg(&q);
        builder.arg(&kv);
        builder.arg(&passes.offsets);
        builder.arg(&passes.lengths);
        builder.arg(&passes.rows);
        builder.arg(&self.group);
        builder.arg(&self.scale);
        builder.arg(part_max);
        builder.arg(part_sum);
        builder.arg(part_acc);
        // SAFETY: the arguments are, in order, the parameters of
        // `adakv_decode_partial_<dtype>_d<head_dim>` with its types (`T` = the dtype of the
        // queries and of `kv`, checked equal in `decode_attention`, and `head_dim`, one of the
        // instantiated sizes, is `kv`'s last dimension). Blocks of 128 threads are the kernel's
        // 4 warps. Block `(split, h, z)` reads query rows `h * group + 8 * z + g` (inside the
        // contiguous `(heads * group, head_dim)` queries) and key/value rows
        // `offsets[h]..offsets[h] + lengths[h]` of `kv`, which stay inside its `rows` rows as
        // long as `offsets[h] + lengths[h] <= rows`: the flat-cache layout, which
        // `CudaFlatLayer` maintains and this launch does not check on the host. It writes only
        // its own partials, inside the three buffers of `heads * splits * group` partials
        // allocated by `partials` for this op and owned by `passes`.
        unsafe { builder.launch(partial_cfg) }.w()?;
        let mut builder = combine.builder();
        builder.arg(part_max);
        builder.arg(part_sum);
        builder.arg(part_acc);
        builder.arg(&self.splits);
        builder.arg(&self.group);
        builder.arg(&self.head_dim);
        builder.arg(&out);
        // SAFETY: the arguments are, in order, `adakv_decode_combine_<dtype>`'s parameters
        // with its types. Block `(h, g)` reads the `splits` partials of query head `h * group +
        // g`, all inside the buffers sized `heads * splits * group` (times `head_dim`) and
        // written by pass 1, queued before it on the same stream, and writes row `h * group +
        // g` of `out`, which holds `heads * group` rows of `head_dim` and is allocated above
        // and owned here.
        unsafe { builder.launch(combine_cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
    }
}
