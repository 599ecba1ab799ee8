//! Borrowing the storage of a CPU tensor.

use candle_core::{DType, Storage, Tensor, WithDType};
use half::{bf16, f16};

use crate::kv_quant::QuantizedView;

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

/// Cache storage the attention kernels read: f32, or 16-bit floats or quantized codes converted
/// on the fly.
#[derive(Clone, Copy, Debug)]
pub enum CacheData<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// 8- or 4-bit codes with f16 group parameters ([`crate::kv_quant`]).
    Quantized(QuantizedView<'a>),
}

impl<'a> CacheData<'a> {
    /// Number of stored elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(data) => data.len(),
            Self::F16(data) => data.len(),
            Self::BF16(data) => data.len(),
            Self::Quantized(view) => view.len(),
        }
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` elements from `start` as f32: borrowed when stored as f32, else converted into
    /// `buffer`.
    pub fn f32_range<'b>(&self, start: usize, len: usize, buffer: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self {
            Self::F32(data) => &data[start..start + len],
            Self::F16(data) => {
                buffer.resize(len, 0.0);
                f16_to_f32(&data[start..start + len], buffer);
                buffer
            }
            Self::BF16(data) => {
                buffer.resize(len, 0.0);
                for (d, s) in buffer.iter_mut().zip(&data[start..start + len]) {
                    // bf16 is the upper half of an f32.
                    *d = f32::from_bits((s.to_bits() as u32) << 16);
                }
                buffer
            }
            Self::Quantized(view) => {
                buffer.resize(len, 0.0);
                view.dequantize(start, buffer);
                buffer
            }
        }
    }
}

/// Converts `src` into `dst` (equal lengths), eight values per instruction with F16C.
pub(crate) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
            // SAFETY: `f16c` and `avx`, the features `f16_to_f32_f16c` is compiled for, were
            // detected at run time just above; it has no other precondition.
            return unsafe { f16_to_f32_f16c(src, dst) };
        }
    }
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
}

/// [`f16_to_f32`] with F16C: converts `min(src.len(), dst.len())` values.
///
/// # Safety
/// The CPU must support AVX and F16C (check with `is_x86_feature_detected!`). The slices may
/// have any lengths: only their common prefix is read and written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n <= src.len()`, so the 16 bytes (eight f16) loaded unaligned from
        // `src[i..]` are inside `src`; AVX is enabled for this function.
        let halves = unsafe { _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i) };
        // SAFETY: `i + 8 <= n <= dst.len()`, so the eight f32 stored unaligned at `dst[i..]`
        // are inside `dst`, which is borrowed mutably; AVX and F16C are enabled here.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(halves)) };
        i += 8;
    }
    for j in i..n {
        dst[j] = src[j].to_f32();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_rows_convert_exactly() {
        let values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let brains: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut buffer = Vec::new();
        let got = CacheData::F16(&halves)
            .f32_range(3, 30, &mut buffer)
            .to_vec();
        assert_eq!(
            got,
            halves[3..33].iter().map(|h| h.to_f32()).collect::<Vec<_>>()
        );
        let got = CacheData::BF16(&brains)
            .f32_range(0, 37, &mut buffer)
            .to_vec();
        assert_eq!(got, brains.iter().map(|h| h.to_f32()).collect::<Vec<_>>());
        let floats = CacheData::F32(&values);
        assert_eq!(floats.f32_range(5, 2, &mut buffer), &values[5..7]);
    }
}
