//! How a KV cache stores keys and values: a float dtype, or 8-/4-bit group-wise quantization.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use kvpress_kernels::kv_quant::{QuantBits, QuantizedRows};

/// The storage types of a KV cache (`--kv-dtype`): `f32`, `f16`, `bf16`, `q8`, `q4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvStorage {
    /// Floats of this dtype (f32, f16 or bf16).
    Float(DType),
    /// Group-wise asymmetric quantization ([`kvpress_kernels::kv_quant`]): keys and values per
    /// token, groups of 32 channels, an f16 step and minimum per group.
    Quantized(QuantBits),
}

impl KvStorage {
    /// Every storage type's name, as `--kv-dtype` takes them.
    pub const VALID: &'static str = "f32, f16, bf16, q8, q4";

    /// The name `--kv-dtype` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Float(DType::F16) => "f16",
            Self::Float(DType::BF16) => "bf16",
            Self::Float(_) => "f32",
            Self::Quantized(QuantBits::Eight) => "q8",
            Self::Quantized(QuantBits::Four) => "q4",
        }
    }

    /// Bytes of keys and values that `tokens` tokens take, per KV head, with rows of
    /// `head_dim` channels (quantization parameters included).
    pub fn kv_bytes(&self, tokens: usize, head_dim: usize) -> usize {
        match self {
            Self::Float(dtype) => 2 * tokens * head_dim * dtype.size_in_bytes(),
            Self::Quantized(bits) => 2 * QuantizedRows::bytes_for(*bits, head_dim, tokens),
        }
    }
}

impl fmt::Display for KvStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvStorage {
    type Err = String;

    /// Parses `f32`, `f16`, `bf16`, `q8` or `q4`; anything else is an error naming them.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "f32" => Self::Float(DType::F32),
            "f16" => Self::Float(DType::F16),
            "bf16" => Self::Float(DType::BF16),
            "q8" => Self::Quantized(QuantBits::Eight),
            "q4" => Self::Quantized(QuantBits::Four),
            other => {
                return Err(format!(
                    "unknown KV-cache dtype `{other}`: valid are {}",
                    Self::VALID
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for name in ["f32", "f16", "bf16", "q8", "q4"] {
            assert_eq!(name.parse::<KvStorage>().unwrap().name(), name);
        }
        let error = "q2".parse::<KvStorage>().unwrap_err();
        assert!(error.contains("f32, f16, bf16, q8, q4"), "{error}");
    }

    #[test]
    fn four_bit_storage_is_under_a_sixth_of_f32() {
        let f32_bytes = KvStorage::Float(DType::F32).kv_bytes(4096, 64);
        let q4_bytes = KvStorage::Quantized(QuantBits::Four).kv_bytes(4096, 64);
        assert_eq!(q4_bytes * 256, f32_bytes * 40);
    }
}
