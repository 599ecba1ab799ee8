//! The dtypes a context file stores tensors in, their raw little-endian bytes, and the check
//! that every stored value is finite.

use candle_core::{DType, Tensor};
use kvpress_models::QuantBits;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The dtype of stored tensors: keys and values keep the cache's dtype, logits are f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Bytes: the packed rows of a quantized layer (codes, then f16 group parameters).
    U8,
}

impl StoredDtype {
    /// The stored dtype of a candle dtype; `None` for dtypes a cache does not hold.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Self::F32),
            DType::F16 => Some(Self::F16),
            DType::BF16 => Some(Self::Bf16),
            _ => None,
        }
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::U8 => DType::U8,
        }
    }

    /// The safetensors dtype the bytes are stored as.
    pub fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
            Self::U8 => Dtype::U8,
        }
    }

    /// The stored dtype of a safetensors dtype; `None` for any other.
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::F16 => Some(Self::F16),
            Dtype::BF16 => Some(Self::Bf16),
            Dtype::U8 => Some(Self::U8),
            _ => None,
        }
    }

    /// The dtype's name (`f32`, `f16`, `bf16`, `u8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::U8 => "u8",
        }
    }

    /// Bytes of one element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::U8 => 1,
        }
    }
}

impl std::fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a context file stores keys and values (the header's `kv_dtype`): floats of one dtype,
/// or quantized rows packed as bytes ([`kvpress_core::PackedLayer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKv {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit codes.
    Q8,
    /// 4-bit codes.
    Q4,
}

impl StoredKv {
    /// Floats of `dtype` (a float dtype).
    pub fn float(dtype: StoredDtype) -> Self {
        match dtype {
            StoredDtype::F16 => Self::F16,
            StoredDtype::Bf16 => Self::Bf16,
            StoredDtype::F32 | StoredDtype::U8 => Self::F32,
        }
    }

    /// Codes of `bits` bits.
    pub fn quantized(bits: QuantBits) -> Self {
        match bits {
            QuantBits::Eight => Self::Q8,
            QuantBits::Four => Self::Q4,
        }
    }

    /// The bits of each code when quantized.
    pub fn bits(self) -> Option<u32> {
        match self {
            Self::Q8 => Some(8),
            Self::Q4 => Some(4),
            Self::F32 | Self::F16 | Self::Bf16 => None,
        }
    }

    /// The dtype of the stored key and value tensors.
    pub fn tensor_dtype(self) -> StoredDtype {
        match self {
            Self::F32 => StoredDtype::F32,
            Self::F16 => StoredDtype::F16,
            Self::Bf16 => StoredDtype::Bf16,
            Self::Q8 | Self::Q4 => StoredDtype::U8,
        }
    }

    /// The name `--kv-dtype` takes (`f32`, `f16`, `bf16`, `q8`, `q4`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }
}

impl std::fmt::Display for StoredKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The little-endian bytes of `tensor` (of dtype `dtype`), row-major.
pub(super) fn raw_bytes(tensor: &Tensor, dtype: StoredDtype) -> Result<Vec<u8>> {
    let flat = tensor.flatten_all()?;
    Ok(match dtype {
        StoredDtype::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        StoredDtype::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        StoredDtype::Bf16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect(),
        StoredDtype::U8 => flat.to_vec1::<u8>()?,
    })
}

/// Index of the first NaN or infinite element of `bytes` (little-endian `dtype` values), if
/// any: the exponent bits are all ones exactly for those.
pub(super) fn first_non_finite(bytes: &[u8], dtype: StoredDtype) -> Option<usize> {
    match dtype {
        StoredDtype::F32 => bytes.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        StoredDtype::F16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        StoredDtype::Bf16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        // Packed quantized rows: their f16 parameters are checked when the rows are read
        // (`QuantizedRows::from_packed`).
        StoredDtype::U8 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found_in_every_dtype() {
        let cases: [(&[f32], Option<usize>); 4] = [
            (&[1.0, -2.5, 0.0, 3.0], None),
            (&[1.0, -2.5, 0.0, f32::NAN], Some(3)),
            (&[1.0, f32::INFINITY, 0.0, f32::NAN], Some(1)),
            (&[f32::NEG_INFINITY], Some(0)),
        ];
        for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::Bf16] {
            for (values, expected) in cases {
                let tensor = Tensor::new(values, &candle_core::Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype.dtype())
                    .unwrap();
                let bytes = raw_bytes(&tensor, dtype).unwrap();
                assert_eq!(bytes.len(), values.len() * dtype.size());
                assert_eq!(
                    first_non_finite(&bytes, dtype),
                    expected,
                    "{dtype} {values:?}"
                );
            }
        }
        // The largest finite values are finite.
        let max = [f32::MAX.to_le_bytes(), (-f32::MAX).to_le_bytes()].concat();
        assert_eq!(first_non_finite(&max, StoredDtype::F32), None);
        let max_f16 = half::f16::MAX.to_bits().to_le_bytes();
        assert_eq!(first_non_finite(&max_f16, StoredDtype::F16), None);
        let max_bf16 = half::bf16::MAX.to_bits().to_le_bytes();
        assert_eq!(first_non_finite(&max_bf16, StoredDtype::Bf16), None);
    }

    #[test]
    fn dtypes_round_trip_through_candle_and_safetensors() {
        for dtype in [StoredDtype::F32, StoredDtype::F16, StoredDtype::Bf16] {
            assert_eq!(StoredDtype::of(dtype.dtype()), Some(dtype));
            assert_eq!(
                StoredDtype::from_safetensors(dtype.safetensors()),
                Some(dtype)
            );
            assert_eq!(dtype.dtype().size_in_bytes(), dtype.size());
        }
        assert_eq!(StoredDtype::of(DType::U8), None);
        assert_eq!(StoredDtype::from_safetensors(Dtype::I32), None);
    }
}
