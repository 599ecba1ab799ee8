//! Linear layers and embeddings whose weights are either quantized blocks or dense tensors.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::Result;

/// A weight as a file stores it: quantized GGML blocks or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    /// GGML blocks (any GGML type, including F32/F16 GGUF tensors).
    Quantized(Arc<QTensor>),
    /// A dense tensor in the model's dtype.
    Dense(Tensor),
}

impl Weight {
    /// The weight as a dense tensor of `dtype`.
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.dequantize(&q.device())?.to_dtype(dtype)?,
            Self::Dense(t) => t.to_dtype(dtype)?,
        })
    }

    /// Shape of the weight.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Self::Quantized(q) => q.shape().dims().to_vec(),
            Self::Dense(t) => t.dims().to_vec(),
        }
    }
}

/// `y = x W^T (+ b)` with `W` of shape `(out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    kernel: Kernel,
    bias: Option<Tensor>,
}

/// How the product is computed for each kind of weight.
#[derive(Debug, Clone)]
enum Kernel {
    Quantized(QMatMul),
    Dense(Tensor),
}

impl Linear {
    /// A linear layer; quantized weights run through candle's quantized matmul.
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Result<Self> {
        let kernel = match &weight {
            Weight::Quantized(q) => Kernel::Quantized(QMatMul::from_arc(q.clone())?),
            Weight::Dense(w) => Kernel::Dense(w.t()?),
        };
        Ok(Self { weight, kernel, bias })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The weight, as stored.
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Applies the layer to `x` of shape `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (batch_dims, in_features) = dims.split_at(dims.len() - 1);
        let rows: usize = batch_dims.iter().product();
        let x2 = x.reshape((rows, in_features[0]))?;
        let y = match &self.kernel {
            Kernel::Quantized(matmul) => matmul.forward(&x2)?,
            Kernel::Dense(w_t) => x2.matmul(w_t)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = batch_dims.to_vec();
        out_dims.push(self.out_features());
        Ok(y.reshape(out_dims)?)
    }
}

/// Token embedding table; quantized tables dequantize only the rows looked up.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Weight,
}

impl Embedding {
    /// An embedding over `table` `(vocab, hidden)`.
    pub fn new(table: Weight) -> Self {
        Self { table }
    }

    /// The table, as stored (shared with a tied output projection).
    pub fn table(&self) -> &Weight {
        &self.table
    }

    /// Rows of `ids` `(batch, seq)` → `(batch, seq, hidden)` in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match &self.table {
            Weight::Quantized(q) => q.embedding(ids)?.to_dtype(dtype)?,
            Weight::Dense(t) => {
                let (b, s) = ids.dims2()?;
                let hidden = t.dim(1)?;
                t.index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, s, hidden))?
                    .to_dtype(dtype)?
            }
        })
    }
}
