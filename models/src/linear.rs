//! Linear layers and embeddings whose weights are either quantized blocks or dense tensors.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::Result;

/// A weight as a file stores it: quantized GGML blocks or a dense tensor.
#[derive(Debug, Clone)]
pub enum Weight {
    /// GGML blocks of a quantized type (GGUF tensors stored as F32/F16/BF16 are loaded as
    /// `Dense`).
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
    bias: Option<Tensor>,
    /// The quantized weight dequantized to f32, when kept ([`Self::keep_dense_copy`]).
    dense_copy: Option<Tensor>,
}

impl Linear {
    /// A linear layer over `weight` `(out, in)` and an optional bias `(out,)`.
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight,
            bias,
            dense_copy: None,
        })
    }

    /// Keeps an f32 copy of a quantized weight, so that products over many rows (prefills)
    /// stop dequantizing it on every call; returns the bytes this adds (0 for dense weights or
    /// when the copy exists). The results are the same: those products dequantize anyway.
    pub fn keep_dense_copy(&mut self) -> Result<usize> {
        let bytes = self.dense_copy_bytes();
        if let (Weight::Quantized(q), None) = (&self.weight, &self.dense_copy) {
            self.dense_copy = Some(q.dequantize(&q.device())?.to_dtype(DType::F32)?);
        }
        Ok(bytes)
    }

    /// Bytes [`Self::keep_dense_copy`] would add.
    pub fn dense_copy_bytes(&self) -> usize {
        match (&self.weight, &self.dense_copy) {
            (Weight::Quantized(q), None) => q.shape().elem_count() * DType::F32.size_in_bytes(),
            _ => 0,
        }
    }

    /// The weight as a dense tensor of `dtype` (from the kept copy when there is one).
    pub fn dense_weight(&self, dtype: DType) -> Result<Tensor> {
        match &self.dense_copy {
            Some(dense) => Ok(dense.to_dtype(dtype)?),
            None => self.weight.to_dense(dtype),
        }
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
        self.forward_rows(x, RowMode::Batched)
    }

    /// Applies the layer to `x` of shape `(..., in)`, choosing kernels by `mode`.
    pub fn forward_rows(&self, x: &Tensor, mode: RowMode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (batch_dims, in_features) = dims.split_at(dims.len() - 1);
        let rows: usize = batch_dims.iter().product();
        let x2 = x.reshape((rows, in_features[0]))?;
        let y = match mode {
            RowMode::Batched => self.product(&x2)?,
            RowMode::Independent => self.product_row_by_row(&x2)?,
            RowMode::Sgemm => self.product_sgemm(&x2)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = batch_dims.to_vec();
        out_dims.push(self.out_features());
        Ok(y.reshape(out_dims)?)
    }

    /// `x (rows, in) @ W^T`, each row computed exactly as it would be alone: the row kernels
    /// for Q4_1/Q8_0 and f32 weights read the weight once for all rows; other weights fall back
    /// to [`Self::product`].
    fn product_row_by_row(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quantized(q) => kvpress_kernels::quantized::quantized_matvec(x, q, usize::MAX)?,
            Weight::Dense(w) => dense_matmul_f32(x, w, usize::MAX)?,
        };
        match y {
            Some(y) => Ok(y),
            None => self.product(x),
        }
    }

    /// `x (rows, in) @ W^T` through the sgemm over the dense f32 weight (the kept copy of a
    /// quantized one) for any number of rows; [`Self::product_row_by_row`] without one.
    fn product_sgemm(&self, x: &Tensor) -> Result<Tensor> {
        let dense = match (&self.weight, &self.dense_copy) {
            (_, Some(copy)) => Some(copy),
            (Weight::Dense(w), None) => Some(w),
            (Weight::Quantized(_), None) => None,
        };
        if let Some(w) = dense {
            if let Some(y) = dense_matmul_f32(x, w, 0)? {
                return Ok(y);
            }
        }
        self.product_row_by_row(x)
    }

    /// `x (rows, in) @ W^T` with the fastest kernel for `rows`.
    fn product(&self, x2: &Tensor) -> Result<Tensor> {
        let (rows, _) = x2.dims2()?;
        Ok(match &self.weight {
            Weight::Quantized(q) => match &self.dense_copy {
                Some(dense) if rows >= DEQUANTIZE_FROM_ROWS => {
                    match dense_matmul_f32(x2, dense, MATVEC_MAX_ROWS)? {
                        Some(y) => y,
                        None => quantized_matmul(x2, q)?,
                    }
                }
                _ => quantized_matmul(x2, q)?,
            },
            Weight::Dense(w) => match dense_matmul_f32(x2, w, MATVEC_MAX_ROWS)? {
                Some(y) => y,
                None => x2.matmul(&w.t()?)?,
            },
        })
    }
}

/// How a product over several input rows is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowMode {
    /// The fastest kernel for the number of rows (rows of one sequence: a prefill); results may
    /// differ in the last bits from one row at a time.
    #[default]
    Batched,
    /// Every row exactly as it would be computed alone (one decoded token of each of several
    /// independent sequences), reading the weight once for all rows.
    Independent,
    /// Every product through the sgemm over the dense f32 weights (kept copies of quantized
    /// ones), whatever the number of rows: many independent sequences decoded together, several
    /// times faster than the one-row kernels. The kernel does not change as sequences finish;
    /// results differ from the one-row kernels in rounding only. Weights without a dense f32
    /// form run as in `Independent`.
    Sgemm,
}

/// Rows of input from which a quantized weight is dequantized and multiplied in f32 (a prefill),
/// instead of running the quantized kernel row by row.
const DEQUANTIZE_FROM_ROWS: usize = 16;
/// Rows of input up to which dense products run as matrix-vector products.
const MATVEC_MAX_ROWS: usize = 8;

/// `x (m, in) @ W^T` for quantized `W`: fused f32 kernels for Q4_1/Q8_0 with few rows, a
/// dequantized f32 product for many rows, candle's quantized matmul otherwise.
fn quantized_matmul(x: &Tensor, q: &Arc<QTensor>) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    if rows >= DEQUANTIZE_FROM_ROWS && kvpress_kernels::is_cpu_f32(x) {
        let w = q.dequantize(&q.device())?;
        if let Some(y) = dense_matmul_f32(x, &w, MATVEC_MAX_ROWS)? {
            return Ok(y);
        }
    }
    if let Some(y) =
        kvpress_kernels::quantized::quantized_matvec(x, q, kvpress_kernels::quantized::MAX_ROWS)?
    {
        return Ok(y);
    }
    // Other GGML types (or devices): candle's kernels. Wrapping the shared tensor copies nothing.
    Ok(QMatMul::from_arc(q.clone())?.forward(x)?)
}

/// `x (m, in) @ W^T` with `W (out, in)`: matrix-vector products (each row alone) up to
/// `matvec_max_rows` rows, the CPU sgemm above; `None` unless both are f32 CPU tensors.
fn dense_matmul_f32(x: &Tensor, w: &Tensor, matvec_max_rows: usize) -> Result<Option<Tensor>> {
    use kvpress_kernels::{f32_slice, is_cpu_f32, matvec_f32, sgemm, GemmDims, MatMut, MatRef};
    if !is_cpu_f32(x) || !is_cpu_f32(w) {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (n, _) = w.dims2()?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let mut out = vec![0f32; m * n];
    let done = f32_slice(&x, |xs, x_start, _| {
        f32_slice(&w, |ws, w_start, _| {
            if m <= matvec_max_rows {
                // Decode steps are bound by reading W: stream it once, all rows at a time.
                matvec_f32(&ws[w_start..], n, k, &xs[x_start..], m, &mut out);
                return;
            }
            sgemm(
                GemmDims { m, n, k },
                1.0,
                MatRef {
                    data: &xs[x_start..],
                    row_stride: k,
                    transposed: false,
                },
                MatRef {
                    data: &ws[w_start..],
                    row_stride: k,
                    transposed: true,
                },
                0.0,
                MatMut {
                    data: &mut out,
                    row_stride: n,
                },
            );
        })
    });
    if done.flatten().is_none() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
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
