//! Top-k per row on the GPU for rows of any length (candle's CUDA sort stops at 8192 columns),
//! so scoring and allocation of long contexts stay on the device.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::{bf16, f16};
use kvpress_core::{Error, Result};

use super::kernels::{self, check_cuda, dtype_suffix, view};

/// Threads per row (one block per row).
const THREADS: u32 = 1024;

/// The `k` largest entries of every row of `scores` `(rows, n)` (f32/f16/bf16): `(rows, k)` u32
/// column indices in ascending order, ties going to the earlier index and NaN counting as
/// `-inf`, exactly as [`kvpress_core::press::top_k_indices`]. `k` is clamped to `n`.
///
/// A radix select on the scores' bits (four histogram passes) and a stable compaction; rows of
/// any length (a layer-wide AdaKV selection is `heads * T` long).
pub fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, n) = scores.dims2().map_err(|_| {
        Error::Shape(format!(
            "scores {:?} must be (rows, columns)",
            scores.dims()
        ))
    })?;
    check_cuda(scores, "scores", None)?;
    dtype_suffix(scores.dtype(), "scores")?;
    let k = k.min(n);
    if k == 0 || rows == 0 {
        return Ok(Tensor::zeros((rows, k), DType::U32, scores.device())?);
    }
    let op = TopK {
        n: kernels::to_u32(n, "columns")?,
        k: k as u32,
    };
    Ok(scores.contiguous()?.apply_op1_no_bwd(&op)?)
}

struct TopK {
    n: u32,
    k: u32,
}

impl CustomOp1 for TopK {
    fn name(&self) -> &'static str {
        "adakv-top-k"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("adakv-top-k runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        scores: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let device = scores.device().clone();
        let rows = (layout.shape().elem_count() / self.n as usize) as u32;
        // SAFETY: the memory is left uninitialised; the kernel launched below writes exactly
        // `k` indices in each of the `rows` rows (`1 <= k <= n`, ensured by `top_k`) before
        // the tensor is returned, so every element is written before anything reads it.
        let out = unsafe { device.alloc::<u32>(rows as usize * self.k as usize)? };
        let cfg = LaunchConfig {
            grid_dim: (rows, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! launch {
            ($t:ty, $suffix:literal) => {{
                let func = device.get_or_load_custom_func(
                    concat!("adakv_top_k_", $suffix),
                    kernels::TOP_K.name,
                    kernels::TOP_K.ptx,
                )?;
                let scores = view::<$t>(scores, layout, "scores")?;
                let mut builder = func.builder();
                builder.arg(&scores);
                builder.arg(&self.n);
                builder.arg(&self.k);
                builder.arg(&out);
                // SAFETY: the arguments are, in order, `adakv_top_k_<dtype>`'s parameters with
                // its types (`T` = the dtype of `scores`, u32 n and k, u32 out). One block of
                // 1024 threads (a multiple of 32, as the kernel needs) per row: it reads the
                // row's `n` scores, inside the contiguous `(rows, n)` view, and writes only
                // positions below `k` of its row of `out`, which holds `rows * k` indices and
                // is allocated above and owned here.
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match scores.dtype() {
            DType::F32 => launch!(f32, "f32"),
            DType::F16 => launch!(f16, "f16"),
            DType::BF16 => launch!(bf16, "bf16"),
            other => candle_core::bail!("adakv-top-k: unsupported dtype {other:?}"),
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((rows as usize, self.k as usize)),
        ))
    }
}
