//! Several linear layers over the same input (q/k/v, gate/up) fused into one product when their
//! weights allow it: one pass over the input and one parallel dispatch instead of several.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Tensor, D};
use std::sync::Arc;

use crate::linear::{Linear, RowMode, Weight};
use crate::Result;

/// Linear layers sharing an input, fused when possible. Only one copy of the weights is kept:
/// the fused layer, or the parts when they cannot be fused.
#[derive(Debug, Clone)]
pub(crate) enum ProjectionGroup {
    /// One layer whose output rows are the parts' rows stacked; `widths[i]` rows belong to part `i`.
    Fused { linear: Linear, widths: Vec<usize> },
    /// Parts of different types, run one by one.
    Separate(Vec<Linear>),
}

impl ProjectionGroup {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        Ok(match fuse(&parts)? {
            Some(linear) => Self::Fused {
                widths: parts.iter().map(Linear::out_features).collect(),
                linear,
            },
            None => Self::Separate(parts),
        })
    }

    /// First output row of part `index` and its number of rows.
    fn rows_of(widths: &[usize], index: usize) -> (usize, usize) {
        (widths[..index].iter().sum(), widths[index])
    }

    /// Part `index`'s weight `(out, in)` as a dense tensor of `dtype`.
    pub fn part_weight(&self, index: usize, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Fused { linear, widths } => {
                let (start, rows) = Self::rows_of(widths, index);
                Ok(linear.dense_weight(dtype)?.narrow(0, start, rows)?)
            }
            Self::Separate(parts) => parts[index].dense_weight(dtype),
        }
    }

    /// The linear layers that hold the weights.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Self::Fused { linear, .. } => vec![linear],
            Self::Separate(parts) => parts.iter_mut().collect(),
        }
    }

    /// Part `index`'s bias, if any.
    pub fn part_bias(&self, index: usize) -> Result<Option<Tensor>> {
        match self {
            Self::Fused { linear, widths } => {
                let (start, rows) = Self::rows_of(widths, index);
                Ok(linear
                    .bias()
                    .map(|b| b.narrow(0, start, rows))
                    .transpose()?)
            }
            Self::Separate(parts) => Ok(parts[index].bias().cloned()),
        }
    }

    /// Outputs of every part for `x (..., in)`, with kernels chosen by `mode`.
    pub fn forward(&self, x: &Tensor, mode: RowMode) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward_rows(x, mode)).collect(),
            Self::Fused { linear, widths } => {
                let y = linear.forward_rows(x, mode)?;
                let mut start = 0;
                let mut outputs = Vec::with_capacity(widths.len());
                for &width in widths {
                    outputs.push(y.narrow(D::Minus1, start, width)?);
                    start += width;
                }
                Ok(outputs)
            }
        }
    }
}

/// Stacks the rows of `parts` into one layer: quantized parts of one GGML type (raw blocks
/// concatenated), or dense parts of one dtype. `None` when the parts cannot be stacked.
fn fuse(parts: &[Linear]) -> Result<Option<Linear>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let in_features = first.weight().dims()[1];
    if parts.iter().any(|p| p.weight().dims()[1] != in_features) {
        return Ok(None);
    }
    let weight = match first.weight() {
        Weight::Quantized(q0) => {
            let mut bytes = Vec::new();
            let mut rows = 0;
            for part in parts {
                match part.weight() {
                    Weight::Quantized(q) if q.dtype() == q0.dtype() && q.device().is_cpu() => {
                        bytes.extend_from_slice(&q.data()?);
                        rows += q.shape().dims()[0];
                    }
                    _ => return Ok(None),
                }
            }
            Weight::Quantized(Arc::new(qtensor_from_ggml(
                q0.dtype(),
                &bytes,
                vec![rows, in_features],
                &q0.device(),
            )?))
        }
        Weight::Dense(t0) => {
            let mut tensors = Vec::with_capacity(parts.len());
            for part in parts {
                match part.weight() {
                    Weight::Dense(t) if t.dtype() == t0.dtype() => tensors.push(t.clone()),
                    _ => return Ok(None),
                }
            }
            Weight::Dense(Tensor::cat(&tensors, 0)?)
        }
    };
    // Parts without a bias get zeros of the dtype and device of one that has one.
    let bias = match parts.iter().find_map(|p| p.bias()) {
        Some(template) => {
            let biases = parts
                .iter()
                .map(|p| match p.bias() {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.out_features(), template.dtype(), template.device()),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        }
        None => None,
    };
    Ok(Some(Linear::new(weight, bias)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_outputs_equal_separate_layers() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &Device::Cpu)?;
        let shapes = [(48, 64), (16, 64), (16, 64)];
        for quantized in [false, true] {
            let parts: Vec<Linear> = shapes
                .iter()
                .enumerate()
                .map(|(i, &shape)| {
                    let w = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
                    let weight = if quantized {
                        Weight::Quantized(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?))
                    } else {
                        Weight::Dense(w)
                    };
                    let bias = (i == 0)
                        .then(|| Tensor::randn(0f32, 1.0, shape.0, &Device::Cpu))
                        .transpose()?;
                    Linear::new(weight, bias)
                })
                .collect::<Result<_>>()?;
            let group = ProjectionGroup::new(parts.clone())?;
            assert!(matches!(group, ProjectionGroup::Fused { .. }));
            for (i, (fused, part)) in group
                .forward(&x, RowMode::Batched)?
                .iter()
                .zip(&parts)
                .enumerate()
            {
                assert!(max_diff(fused, &part.forward(&x)?) < 1e-4);
                let weight = group.part_weight(i, DType::F32)?;
                assert_eq!(max_diff(&weight, &part.weight().to_dense(DType::F32)?), 0.0);
                match (group.part_bias(i)?, part.bias()) {
                    (Some(got), Some(want)) => assert_eq!(max_diff(&got, want), 0.0),
                    (Some(got), None) => assert_eq!(got.abs()?.max_all()?.to_scalar::<f32>()?, 0.0),
                    (None, want) => assert!(want.is_none()),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn mixed_types_stay_separate() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (32, 64), &Device::Cpu)?;
        let q4 = Linear::new(
            Weight::Quantized(Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1)?)),
            None,
        )?;
        let q8 = Linear::new(
            Weight::Quantized(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?)),
            None,
        )?;
        let group = ProjectionGroup::new(vec![q4, q8])?;
        assert!(matches!(group, ProjectionGroup::Separate(_)));
        assert_eq!(
            group
                .forward(
                    &Tensor::zeros((1, 64), candle_core::DType::F32, &Device::Cpu)?,
                    RowMode::Batched
                )?
                .len(),
            2
        );
        Ok(())
    }

    #[test]
    fn kept_dense_copies_change_no_output() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (32, 64), &Device::Cpu)?;
        let mut linear = Linear::new(
            Weight::Quantized(Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1)?)),
            None,
        )?;
        // Prefill-sized inputs (dequantized product) and decode-sized ones (quantized kernel).
        let inputs = [
            Tensor::randn(0f32, 1.0, (1, 40, 64), &Device::Cpu)?,
            Tensor::randn(0f32, 1.0, (1, 2, 64), &Device::Cpu)?,
        ];
        let before: Vec<Tensor> = inputs
            .iter()
            .map(|x| linear.forward(x))
            .collect::<Result<_>>()?;
        let dense_before = linear.dense_weight(DType::F32)?;
        assert_eq!(linear.dense_copy_bytes(), 32 * 64 * 4);
        assert_eq!(linear.keep_dense_copy()?, 32 * 64 * 4);
        assert_eq!(linear.dense_copy_bytes(), 0, "the copy is kept once");
        for (x, want) in inputs.iter().zip(&before) {
            assert_eq!(max_diff(&linear.forward(x)?, want), 0.0);
        }
        assert_eq!(
            max_diff(&linear.dense_weight(DType::F32)?, &dense_before),
            0.0
        );
        Ok(())
    }
}
