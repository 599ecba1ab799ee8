//! Borrowing the storage of a CPU tensor.

use candle_core::{DType, Storage, Tensor, WithDType};
use half::{bf16, f16};

/// Whether `t` is an f32 tensor on the CPU.
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Calls `f` with the tensor's whole storage as `&[T]`, its start offset and strides (in
/// elements). Returns `None` when the tensor is not a CPU tensor of `T`.
pub fn cpu_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T], usize, &[usize]) -> R,
) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != T::DTYPE {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = T::cpu_storage_as_slice(cpu).ok()?;
            Some(f(data, layout.start_offset(), layout.stride()))
        }
        _ => None,
    }
}

/// [`cpu_slice`] for f32.
pub fn f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32], usize, &[usize]) -> R) -> Option<R> {
    cpu_slice::<f32, R>(t, f)
}

/// Cache storage the attention kernels read: f32, or 16-bit floats converted on the fly.
#[derive(Clone, Copy, Debug)]
pub enum CacheData<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
}

impl<'a> CacheData<'a> {
    /// `len` elements from `start` as f32: borrowed when stored as f32, else converted into
    /// `buffer`.
    pub fn f32_range<'b>(&self, start: usize, len: usize, buffer: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        use half::slice::HalfFloatSliceExt;
        match self {
            Self::F32(data) => &data[start..start + len],
            Self::F16(data) => {
                buffer.resize(len, 0.0);
                data[start..start + len].convert_to_f32_slice(buffer);
                buffer
            }
            Self::BF16(data) => {
                buffer.resize(len, 0.0);
                data[start..start + len].convert_to_f32_slice(buffer);
                buffer
            }
        }
    }
}

/// Calls `f` with a CPU tensor's storage as [`CacheData`], its start offset and strides; `None`
/// for other dtypes or devices.
pub fn with_cache_data<R>(
    t: &Tensor,
    f: impl FnOnce(CacheData<'_>, usize, &[usize]) -> R,
) -> Option<R> {
    match t.dtype() {
        DType::F32 => cpu_slice::<f32, R>(t, |d, s, st| f(CacheData::F32(d), s, st)),
        DType::F16 => cpu_slice::<f16, R>(t, |d, s, st| f(CacheData::F16(d), s, st)),
        DType::BF16 => cpu_slice::<bf16, R>(t, |d, s, st| f(CacheData::BF16(d), s, st)),
        _ => None,
    }
}
