//! [`FlatRows`]: the element buffer of a flattened cache, in f32, f16 or bf16.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use kvpress_core::{Error, Result};
use kvpress_kernels::CacheData;

/// The storage dtypes a flattened cache holds.
pub const FLAT_DTYPES: &str = "f32, f16 or bf16";

/// Rows of keys or values, back to back, in one storage dtype. Rows come in as f32 (what the
/// model computes) and are rounded once, on the way in; the attention kernels read the stored
/// elements directly ([`CacheData`]).
#[derive(Debug, Clone)]
pub enum FlatRows {
    /// Single precision.
    F32(Vec<f32>),
    /// IEEE half precision.
    F16(Vec<f16>),
    /// bfloat16.
    BF16(Vec<bf16>),
}

/// The error for a dtype a flattened cache does not store.
fn unsupported(dtype: DType) -> Error {
    Error::Unsupported(format!(
        "a flattened per-head cache stores {FLAT_DTYPES}, not {dtype:?}"
    ))
}

/// `$body` with `$v` bound to the buffer of `$rows`, whatever its element type.
macro_rules! with_buffer {
    ($rows:expr, $v:ident => $body:expr) => {
        match $rows {
            FlatRows::F32($v) => $body,
            FlatRows::F16($v) => $body,
            FlatRows::BF16($v) => $body,
        }
    };
}

/// `$body` with `$a` and `$b` bound to the buffers of two rows of the same element type; a
/// caller bug (a panic) otherwise, since a cache's key and value buffers never change dtype.
macro_rules! with_same_buffers {
    ($x:expr, $y:expr, $a:ident, $b:ident => $body:expr) => {
        match ($x, $y) {
            (FlatRows::F32($a), FlatRows::F32($b)) => $body,
            (FlatRows::F16($a), FlatRows::F16($b)) => $body,
            (FlatRows::BF16($a), FlatRows::BF16($b)) => $body,
            _ => unreachable!("flattened rows of different dtypes"),
        }
    };
}

impl FlatRows {
    /// `n` zero elements of `dtype`, or an error naming the dtypes a flattened cache stores.
    pub fn zeros(dtype: DType, n: usize) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => Self::F32(vec![0.0; n]),
            DType::F16 => Self::F16(vec![f16::ZERO; n]),
            DType::BF16 => Self::BF16(vec![bf16::ZERO; n]),
            other => return Err(unsupported(other)),
        })
    }

    /// The elements of `tensor` (any shape, converted to `dtype`), in row-major order.
    pub fn from_tensor(tensor: &Tensor, dtype: DType) -> Result<Self> {
        let flat = tensor.to_dtype(dtype)?.flatten_all()?;
        Ok(match dtype {
            DType::F32 => Self::F32(flat.to_vec1()?),
            DType::F16 => Self::F16(flat.to_vec1()?),
            DType::BF16 => Self::BF16(flat.to_vec1()?),
            other => return Err(unsupported(other)),
        })
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F16(_) => DType::F16,
            Self::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_buffer!(self, v => v.len())
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of one element.
    pub fn element_bytes(&self) -> usize {
        self.dtype().size_in_bytes()
    }

    /// The elements as the attention kernels read them.
    pub fn data(&self) -> CacheData<'_> {
        match self {
            Self::F32(v) => CacheData::F32(v),
            Self::F16(v) => CacheData::F16(v),
            Self::BF16(v) => CacheData::BF16(v),
        }
    }

    /// `n` zero elements of the same dtype.
    pub fn zeros_like(&self, n: usize) -> Self {
        match self {
            Self::F32(_) => Self::F32(vec![0.0; n]),
            Self::F16(_) => Self::F16(vec![f16::ZERO; n]),
            Self::BF16(_) => Self::BF16(vec![bf16::ZERO; n]),
        }
    }

    /// An empty buffer of the same dtype with room for `capacity` elements.
    pub fn empty_like(&self, capacity: usize) -> Self {
        match self {
            Self::F32(_) => Self::F32(Vec::with_capacity(capacity)),
            Self::F16(_) => Self::F16(Vec::with_capacity(capacity)),
            Self::BF16(_) => Self::BF16(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `source[range]` (same dtype) after the stored elements.
    pub fn extend_from(&mut self, source: &FlatRows, range: std::ops::Range<usize>) {
        with_same_buffers!(self, source, dst, src => dst.extend_from_slice(&src[range]))
    }

    /// Copies `n` elements of `source` (same dtype) from `from` to `at`.
    pub fn copy_from(&mut self, at: usize, source: &FlatRows, from: usize, n: usize) {
        with_same_buffers!(self, source, dst, src => {
            dst[at..at + n].copy_from_slice(&src[from..from + n])
        })
    }

    /// Copies the elements `from` to `at`, within these rows (the ranges may overlap).
    pub fn copy_within(&mut self, from: std::ops::Range<usize>, at: usize) {
        with_buffer!(self, v => v.copy_within(from, at))
    }

    /// Writes `values` from element `at` on, rounded to the storage dtype.
    pub fn write_f32(&mut self, at: usize, values: &[f32]) {
        let n = values.len();
        match self {
            Self::F32(v) => v[at..at + n].copy_from_slice(values),
            Self::F16(v) => v[at..at + n]
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = f16::from_f32(s)),
            Self::BF16(v) => v[at..at + n]
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = bf16::from_f32(s)),
        }
    }

    /// The elements as a tensor of `shape` in the storage dtype.
    pub fn into_tensor(self, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(with_buffer!(self, v => Tensor::from_vec(v, shape, device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_once_and_move_exactly() -> Result<()> {
        let values = [1.0f32, 0.1, -3.3, 65_000.0];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut rows = FlatRows::zeros(dtype, 4)?;
            rows.write_f32(0, &values);
            let mut copy = rows.empty_like(8);
            copy.extend_from(&rows, 1..3);
            copy.extend_from(&rows, 0..4);
            let stored = rows.clone().into_tensor(&[4], &Device::Cpu)?;
            assert_eq!(stored.dtype(), dtype);
            let want = Tensor::new(&values, &Device::Cpu)?.to_dtype(dtype)?;
            let got = stored.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            assert_eq!(
                got,
                want.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                "{dtype:?}"
            );
            let mut buffer = Vec::new();
            let copied = copy.data().f32_range(0, 6, &mut buffer).to_vec();
            assert_eq!(copied[..2], got[1..3]);
            assert_eq!(copied[2..], got[..]);
        }
        Ok(())
    }

    #[test]
    fn other_dtypes_are_refused_by_name() {
        let err = FlatRows::zeros(DType::U8, 1).unwrap_err().to_string();
        assert!(
            err.contains("f32, f16 or bf16") && err.contains("U8"),
            "{err}"
        );
    }
}
