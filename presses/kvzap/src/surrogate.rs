//! The KVzap surrogates of one model, read from and written to a safetensors file: per layer, a
//! linear map and a two-layer MLP (`hidden -> mlp_hidden -> GELU -> n_kv_heads`, kvpress's
//! `KVzapModel`) from a token's attention input (normalised hidden state) to the log of its
//! KVzip+ score in each KV head.
//!
//! File: tensors `linear.weight` `(L, K, D)`, `linear.bias` `(L, K)`, `mlp.weight1` `(L, H, D)`,
//! `mlp.bias1` `(L, H)`, `mlp.weight2` `(L, K, H)`, `mlp.bias2` `(L, K)` (f32), and the JSON
//! header [`SurrogateHeader`] under the metadata key [`HEADER_KEY`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The metadata key of the JSON header.
pub const HEADER_KEY: &str = "kvpress_kvzap";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Which surrogate scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SurrogateKind {
    /// A linear map per layer (kvpress: ridge regression).
    Linear,
    /// A two-layer MLP per layer.
    Mlp,
}

/// What a surrogate file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurrogateHeader {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model's file or folder name.
    pub model_name: String,
    /// SHA-256 of the model's weights.
    pub model_sha256: String,
    /// Decoder layers.
    pub n_layers: usize,
    /// Hidden size (the surrogates' input).
    pub hidden_size: usize,
    /// KV heads (the surrogates' output).
    pub n_kv_heads: usize,
    /// The MLP's hidden width.
    pub mlp_hidden_dim: usize,
    /// How the surrogates were fitted and how well they predict held-out text.
    pub fit: serde_json::Value,
}

/// Both surrogates of one model.
#[derive(Debug, Clone)]
pub struct Surrogates {
    /// The header.
    pub header: SurrogateHeader,
    tensors: HashMap<String, Tensor>,
}

/// The tensor names and their shapes for `header`.
fn expected_shapes(h: &SurrogateHeader) -> [(&'static str, Vec<usize>); 6] {
    let (l, k, d, m) = (h.n_layers, h.n_kv_heads, h.hidden_size, h.mlp_hidden_dim);
    [
        ("linear.weight", vec![l, k, d]),
        ("linear.bias", vec![l, k]),
        ("mlp.weight1", vec![l, m, d]),
        ("mlp.bias1", vec![l, m]),
        ("mlp.weight2", vec![l, k, m]),
        ("mlp.bias2", vec![l, k]),
    ]
}

fn bad_file(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "kvzap: {} is not a usable surrogate file ({message}); make one with `kvpress train-kvzap`",
        path.display()
    ))
}

impl Surrogates {
    /// Surrogates from their tensors (named as in the file), checked against `header`.
    pub fn new(header: SurrogateHeader, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let surrogates = Self { header, tensors };
        surrogates.check(Path::new("(in memory)"))?;
        Ok(surrogates)
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.header.format_version != FORMAT_VERSION {
            return Err(bad_file(
                path,
                format!(
                    "format version {}, this build reads {FORMAT_VERSION}",
                    self.header.format_version
                ),
            ));
        }
        let expected = expected_shapes(&self.header);
        if self.tensors.len() != expected.len() {
            return Err(bad_file(
                path,
                "it holds other tensors than the surrogates'",
            ));
        }
        for (name, shape) in expected {
            let tensor = self
                .tensors
                .get(name)
                .ok_or_else(|| bad_file(path, format!("`{name}` is missing")))?;
            if tensor.dims() != shape.as_slice() || tensor.dtype() != DType::F32 {
                return Err(bad_file(
                    path,
                    format!(
                        "`{name}` is {:?} {:?}, expected F32 {shape:?}",
                        tensor.dtype(),
                        tensor.dims()
                    ),
                ));
            }
            let finite = tensor
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(bad_file(
                    path,
                    format!("`{name}` holds a NaN or an infinity"),
                ));
            }
        }
        Ok(())
    }

    /// Records how the surrogates were fitted and how well they predict held-out text.
    pub fn set_fit(&mut self, fit: serde_json::Value) {
        self.header.fit = fit;
    }

    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| bad_file(path, e))?;
        let (_, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad_file(path, e))?;
        let header = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .ok_or_else(|| bad_file(path, format!("no `{HEADER_KEY}` header")))?;
        let header: SurrogateHeader =
            serde_json::from_str(header).map_err(|e| bad_file(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad_file(path, e))?;
        let surrogates = Self { header, tensors };
        surrogates.check(path)?;
        Ok(surrogates)
    }

    /// Writes the surrogates to `path` (atomically: a temporary file renamed onto it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let header = serde_json::to_string(&self.header)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let metadata = HashMap::from([(HEADER_KEY.to_string(), header)]);
        let temporary = path.with_extension("safetensors.partial");
        let data = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes: Vec<u8> = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                Ok((name.clone(), t.dims().to_vec(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let views = data
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| bad_file(path, e))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, Some(metadata), &temporary)
            .map_err(|e| bad_file(path, e))?;
        std::fs::rename(&temporary, path).map_err(|e| bad_file(path, e))?;
        Ok(())
    }

    /// The tensor `name`.
    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::InvalidArgument(format!("kvzap: no `{name}`")))
    }

    /// Predicted log KVzip+ scores of layer `layer` for `hidden` `(batch, n, hidden_size)`:
    /// `(batch, n_kv_heads, n)`.
    pub fn predict(&self, kind: SurrogateKind, layer: usize, hidden: &Tensor) -> Result<Tensor> {
        let (batch, n, d) = hidden.dims3()?;
        let x = hidden.to_dtype(DType::F32)?.reshape((batch * n, d))?;
        let out = match kind {
            SurrogateKind::Linear => {
                let w = self.tensor("linear.weight")?.get(layer)?;
                let b = self.tensor("linear.bias")?.get(layer)?;
                x.matmul(&w.t()?)?.broadcast_add(&b)?
            }
            SurrogateKind::Mlp => {
                let w1 = self.tensor("mlp.weight1")?.get(layer)?;
                let b1 = self.tensor("mlp.bias1")?.get(layer)?;
                let w2 = self.tensor("mlp.weight2")?.get(layer)?;
                let b2 = self.tensor("mlp.bias2")?.get(layer)?;
                let h = x.matmul(&w1.t()?)?.broadcast_add(&b1)?.gelu_erf()?;
                h.matmul(&w2.t()?)?.broadcast_add(&b2)?
            }
        };
        let k = out.dim(D::Minus1)?;
        Ok(out.reshape((batch, n, k))?.transpose(1, 2)?.contiguous()?)
    }

    /// Every layer's prediction for the rows `x` `(rows, n_layers, hidden_size)`: `(rows,
    /// n_layers, n_kv_heads)`.
    pub fn predict_rows(&self, kind: SurrogateKind, x: &Tensor) -> Result<Tensor> {
        let layers = (0..self.header.n_layers)
            .map(|l| {
                let rows = x.narrow(1, l, 1)?.transpose(0, 1)?.contiguous()?;
                Ok(self.predict(kind, l, &rows)?.squeeze(0)?.t()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&layers, 1)?)
    }
}
