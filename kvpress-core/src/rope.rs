//! Rotary position embeddings (RoPE) in the Hugging Face "rotate-half" layout.
//!
//! Tables are computed on demand for any positions below the model's maximum, so there is no
//! fixed cap on the context length and presses can rotate keys to arbitrary positions (key
//! re-rotation) or average over future positions (ExpectedAttention).

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Rotary tables of one model: `inv_freq[i] = theta^(-2i/head_dim)`, computed like transformers
/// (in f32) so that positions and keys match the reference stack.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
    head_dim: usize,
    max_positions: usize,
    device: Device,
}

impl RotaryEmbedding {
    /// Tables for `head_dim` (even), base `theta`, valid for positions `0..max_positions`.
    pub fn new(head_dim: usize, theta: f32, max_positions: usize, device: &Device) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "rotary head dimension must be even and positive, got {head_dim}"
            )));
        }
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Ok(Self {
            inv_freq,
            head_dim,
            max_positions,
            device: device.clone(),
        })
    }

    /// Head dimension the tables rotate.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of positions the model supports.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The inverse frequencies, one per pair of rotated dimensions.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `(cos, sin)` tables of shape `(positions.len(), head_dim / 2)` in `dtype`.
    pub fn tables(&self, positions: &[usize], dtype: DType) -> Result<(Tensor, Tensor)> {
        if let Some(&position) = positions.iter().find(|&&p| p >= self.max_positions) {
            return Err(Error::PositionOutOfRange {
                position,
                max_positions: self.max_positions,
            });
        }
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &position in positions {
            for &freq in &self.inv_freq {
                let angle = position as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        let cos = Tensor::from_vec(cos, shape, &self.device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, &self.device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Tables for the contiguous positions `start..start + len`.
    pub fn tables_for_range(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let positions: Vec<usize> = (start..start + len).collect();
        self.tables(&positions, dtype)
    }

    /// Rotates `xs` of shape `(batch, heads, seq, head_dim)` with tables from [`Self::tables`]
    /// (one row per sequence position).
    pub fn apply(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_norm_and_is_identity_at_position_zero() -> Result<()> {
        let rope = RotaryEmbedding::new(8, 10_000.0, 16, &Device::Cpu)?;
        let xs = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &Device::Cpu)?;
        let (cos, sin) = rope.tables(&[0, 0, 0], DType::F32)?;
        let same = RotaryEmbedding::apply(&xs, &cos, &sin)?;
        let diff = (same - &xs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-7, "position 0 must not rotate (diff {diff})");
        let (cos, sin) = rope.tables_for_range(5, 3, DType::F32)?;
        let rotated = RotaryEmbedding::apply(&xs, &cos, &sin)?;
        let norm_before = xs.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let norm_after = rotated.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!((norm_before - norm_after).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn rotate_half_layout_matches_the_formula() -> Result<()> {
        // x = e_0 (first dimension only); at position p, rotate-half gives
        // out[0] = cos(p * f0), out[d/2] = sin(p * f0).
        let rope = RotaryEmbedding::new(4, 100.0, 8, &Device::Cpu)?;
        let xs = Tensor::new(&[[[[1f32, 0.0, 0.0, 0.0]]]], &Device::Cpu)?;
        let (cos, sin) = rope.tables(&[3], DType::F32)?;
        let out = RotaryEmbedding::apply(&xs, &cos, &sin)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!((out[0] - 3f32.cos()).abs() < 1e-6);
        assert!((out[2] - 3f32.sin()).abs() < 1e-6);
        assert_eq!(out[1], 0.0);
        Ok(())
    }

    #[test]
    fn positions_past_the_maximum_are_an_error() -> Result<()> {
        let rope = RotaryEmbedding::new(4, 100.0, 8, &Device::Cpu)?;
        let err = rope.tables_for_range(6, 3, DType::F32).unwrap_err();
        assert!(matches!(
            err,
            Error::PositionOutOfRange {
                position: 8,
                max_positions: 8
            }
        ));
        assert!(RotaryEmbedding::new(3, 100.0, 8, &Device::Cpu).is_err());
        Ok(())
    }
}
