//! Reading parameters from a weight file and turning them into layers.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::linear::{Embedding, Linear, Weight};
use crate::param::Param;
use crate::{Error, Result};

/// How weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// Keep GGUF blocks quantized and run quantized matmuls (f32 activations).
    Quantized,
    /// Dequantize (or convert) every weight to this dtype; activations use it too.
    Dense(DType),
}

impl std::fmt::Display for WeightMode {
    /// `quantized`, `f32`, `f16` or `bf16`, as the command line spells them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quantized => f.write_str("quantized"),
            Self::Dense(dtype) => f.write_str(dtype.as_str()),
        }
    }
}

impl WeightMode {
    /// The dtype of activations and of the KV cache.
    pub fn activation_dtype(self) -> DType {
        match self {
            Self::Quantized => DType::F32,
            Self::Dense(dtype) => dtype,
        }
    }
}

/// Whether `dtype` is a block-quantized GGML type (not plain F32/F16/BF16 storage).
fn is_block_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// A weight file (GGUF or safetensors) seen as a map from [`Param`] to tensors.
pub(crate) trait TensorSource {
    /// A name for error messages (the file path).
    fn source_name(&self) -> String;
    /// The tensor's name in this file.
    fn tensor_name(&self, param: Param) -> String;
    /// Loads a parameter, `None` if the file does not have it.
    fn load(&mut self, param: Param) -> Result<Option<Weight>>;
}

/// Builds layers from a [`TensorSource`] in a given [`WeightMode`].
pub(crate) struct WeightLoader<'a> {
    source: &'a mut dyn TensorSource,
    mode: WeightMode,
    device: Device,
}

impl<'a> WeightLoader<'a> {
    pub fn new(source: &'a mut dyn TensorSource, mode: WeightMode, device: &Device) -> Self {
        Self {
            source,
            mode,
            device: device.clone(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.mode.activation_dtype()
    }

    pub fn mode(&self) -> WeightMode {
        self.mode
    }

    fn missing(&self, param: Param) -> Error {
        Error::MissingTensor {
            name: self.source.tensor_name(param),
            source_name: self.source.source_name(),
        }
    }

    /// A weight in the loader's mode, `None` if absent.
    pub fn optional_weight(&mut self, param: Param) -> Result<Option<Weight>> {
        let Some(weight) = self.source.load(param)? else {
            return Ok(None);
        };
        let keep_quantized = match (&self.mode, &weight) {
            (WeightMode::Quantized, Weight::Quantized(q)) => is_block_quantized(q.dtype()),
            _ => false,
        };
        Ok(Some(if keep_quantized {
            weight
        } else {
            Weight::Dense(weight.to_dense(self.dtype())?.to_device(&self.device)?)
        }))
    }

    /// A required weight with the expected shape.
    pub fn weight(&mut self, param: Param, dims: &[usize]) -> Result<Weight> {
        let weight = self
            .optional_weight(param)?
            .ok_or_else(|| self.missing(param))?;
        self.check_dims(param, &weight.dims(), dims)?;
        Ok(weight)
    }

    /// A required 1-D tensor (norm weight) in the activation dtype.
    pub fn vector(&mut self, param: Param, len: usize) -> Result<Tensor> {
        self.optional_vector(param, len)?
            .ok_or_else(|| self.missing(param))
    }

    /// An optional 1-D tensor (bias) in the activation dtype.
    pub fn optional_vector(&mut self, param: Param, len: usize) -> Result<Option<Tensor>> {
        let Some(weight) = self.source.load(param)? else {
            return Ok(None);
        };
        self.check_dims(param, &weight.dims(), &[len])?;
        Ok(Some(
            weight.to_dense(self.dtype())?.to_device(&self.device)?,
        ))
    }

    /// A linear layer `(out, in)` with an optional bias.
    pub fn linear(
        &mut self,
        weight: Param,
        bias: Option<Param>,
        dims: (usize, usize),
    ) -> Result<Linear> {
        let w = self.weight(weight, &[dims.0, dims.1])?;
        let b = match bias {
            Some(b) => Some(self.vector(b, dims.0)?),
            None => None,
        };
        Linear::new(w, b)
    }

    /// The embedding table `(vocab, hidden)`.
    pub fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<Embedding> {
        Ok(Embedding::new(
            self.weight(Param::Embedding, &[vocab, hidden])?,
        ))
    }

    fn check_dims(&self, param: Param, got: &[usize], want: &[usize]) -> Result<()> {
        if got != want {
            return Err(Error::InvalidModelFile {
                path: self.source.source_name().into(),
                message: format!(
                    "tensor `{}` has shape {got:?}, the config implies {want:?}",
                    self.source.tensor_name(param)
                ),
            });
        }
        Ok(())
    }
}
