//! The PTX of the adakv kernels (compiled by `build.rs` from `cuda/*.cu`) and what every launch
//! needs: argument checks with clear messages, kernel lookup, and device views of tensors.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Device, Layout, Storage, Tensor};
use kvpress_core::{Error, Result};

/// One PTX module: its name in the device's module cache and its text. Kernels are loaded once
/// per device with `CudaDevice::get_or_load_custom_func(kernel, module.name, module.ptx)`.
pub(crate) struct Module {
    pub(crate) name: &'static str,
    pub(crate) ptx: &'static str,
}

pub(crate) const APPEND: Module = Module {
    name: "adakv_append",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/append.ptx")),
};
pub(crate) const COMPACT: Module = Module {
    name: "adakv_compact",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/compact.ptx")),
};
pub(crate) const DECODE_ATTENTION: Module = Module {
    name: "adakv_decode_attention",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx")),
};
pub(crate) const TOP_K: Module = Module {
    name: "adakv_top_k",
    ptx: include_str!(concat!(env!("OUT_DIR"), "/top_k.ptx")),
};

/// Suffix of the kernel instance for `dtype` (`f32`, `f16`, `bf16`), or an error naming them.
pub(crate) fn dtype_suffix(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::Unsupported(format!(
            "{what} has dtype {other:?}; the CUDA kernels take f32, f16 or bf16"
        ))),
    }
}

/// Checks that `tensor` lives on a CUDA device (the same one as `like`, when given).
pub(crate) fn check_cuda(tensor: &Tensor, what: &str, like: Option<&Tensor>) -> Result<()> {
    if !matches!(tensor.device(), Device::Cuda(_)) {
        return Err(Error::Unsupported(format!(
            "{what} is on {:?}; the adakv CUDA kernels need CUDA tensors (the CPU path is \
             FlatLayerCache / ragged_attention)",
            tensor.device()
        )));
    }
    if let Some(like) = like {
        if !tensor.device().same_device(like.device()) {
            return Err(Error::InvalidArgument(format!(
                "{what} is on a different CUDA device than the cache"
            )));
        }
    }
    Ok(())
}

/// Checks that `tensor` is a contiguous u32 vector of `len` entries on `like`'s device.
pub(crate) fn check_u32_vector(
    tensor: &Tensor,
    what: &str,
    len: usize,
    like: &Tensor,
) -> Result<()> {
    check_cuda(tensor, what, Some(like))?;
    if tensor.dtype() != DType::U32 || tensor.dims() != [len] {
        return Err(Error::Shape(format!(
            "{what} must be a u32 vector of {len} entries, got {:?} {:?}",
            tensor.dtype(),
            tensor.dims()
        )));
    }
    Ok(())
}

/// The CUDA storage behind a read guard of a tensor's storage.
pub(crate) fn cuda_storage<'a>(
    storage: &'a Storage,
    what: &str,
) -> candle_core::Result<&'a CudaStorage> {
    match storage {
        Storage::Cuda(storage) => Ok(storage),
        _ => candle_core::bail!("{what} is not a CUDA tensor"),
    }
}

/// The elements of a contiguous tensor (from its storage and layout) as a device view.
pub(crate) fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// The elements of a contiguous CUDA tensor, given its storage and layout, as a device view.
pub(crate) fn tensor_view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    view(cuda_storage(storage, what)?, layout, what)
}

/// Converts a size to the u32 the kernels take, or an error naming the limit.
pub(crate) fn to_u32(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::InvalidArgument(format!("{what} = {value} exceeds the kernels' u32 range"))
    })
}
