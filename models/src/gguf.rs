//! GGUF files: metadata → [`ModelConfig`], tensors → weights (with llama's Q/K row order undone).

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, gguf_file, QTensor};
use candle_core::Device;

use crate::config::{Architecture, ModelConfig};
use crate::linear::Weight;
use crate::param::{LayerParam, Param};
use crate::weights::TensorSource;
use crate::{Error, Result};

/// Anything a GGUF file can be read from (a file, or bytes in memory in tests).
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// An opened GGUF file: parsed header and a reader for tensor data.
pub struct GgufFile {
    name: String,
    content: gguf_file::Content,
    reader: Box<dyn ReadSeek>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens and parses the header of a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(
            path.display().to_string(),
            Box::new(std::io::BufReader::new(file)),
        )
    }

    /// Parses a GGUF header from any reader; `name` is used in error messages.
    pub fn from_reader(name: String, mut reader: Box<dyn ReadSeek>) -> Result<Self> {
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| Error::InvalidModelFile {
                path: name.clone().into(),
                message: format!(
                    "not a readable GGUF file ({})",
                    kvpress_core::error::without_backtrace(e)
                ),
            })?;
        Ok(Self {
            name,
            content,
            reader,
        })
    }

    /// The header's metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    /// A metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    /// A metadata string, if present.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(gguf_file::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A metadata unsigned integer of any width.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = integer_value(value)
            .ok_or_else(|| Error::config(key, format!("expected an integer, found {value:?}")))?;
        usize::try_from(n)
            .map(Some)
            .map_err(|_| Error::config(key, format!("expected a non-negative integer, found {n}")))
    }

    fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(gguf_file::Value::F32(v)) => Ok(Some(*v as f64)),
            Some(gguf_file::Value::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(Error::config(
                key,
                format!("expected a float, found {other:?}"),
            )),
        }
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?.ok_or_else(|| {
            Error::config(
                key,
                format!("absent from the GGUF metadata of {}", self.name),
            )
        })
    }

    /// The decoder hyper-parameters from `{arch}.*` metadata.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch_name = self
            .get_str("general.architecture")
            .ok_or_else(|| {
                Error::config("general.architecture", format!("absent from {}", self.name))
            })?
            .to_string();
        let architecture = Architecture::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = self.require_usize(&key("embedding_length"))?;
        let n_heads = self.require_usize(&key("attention.head_count"))?;
        let n_kv_heads = self
            .get_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_heads);
        let head_dim = match self.get_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden_size / n_heads.max(1),
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => {
                return Err(Error::MissingTensor {
                    name: "token_embd.weight".into(),
                    source_name: self.name.clone(),
                })
            }
        };
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.require_usize(&key("feed_forward_length"))?,
            n_layers: self.require_usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: self
                .get_f64(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| Error::config(&key("attention.layer_norm_rms_epsilon"), "absent"))?,
            rope_theta: self.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
            max_position_embeddings: self.require_usize(&key("context_length"))?,
            // GGUF files of tied models simply have no `output.weight`.
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            sliding_window: self.get_usize(&key("attention.sliding_window"))?,
        };
        let scaling = self.get_str(&key("rope.scaling.type")).unwrap_or("none");
        if scaling != "none" || self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(Error::config(
                &key("rope.scaling.type"),
                format!("RoPE scaling (`{scaling}`, or per-frequency factors) is not supported yet; results would be wrong"),
            ));
        }
        config.validate()?;
        Ok(config)
    }

    /// A [`TensorSource`] over this file's tensors for a model of `config`.
    pub(crate) fn tensor_source<'a>(
        &'a mut self,
        config: &ModelConfig,
        device: &Device,
    ) -> GgufTensors<'a> {
        GgufTensors {
            file: self,
            // llama.cpp's converter interleaves the two rotary halves of each Q/K head for llama
            // models; Qwen GGUFs keep the Hugging Face order.
            undo_rope_permutation: config.architecture == Architecture::Llama,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            device: device.clone(),
        }
    }
}

/// A GGUF integer of any width and signedness.
pub(crate) fn integer_value(value: &gguf_file::Value) -> Option<i128> {
    use gguf_file::Value::*;
    Some(match value {
        U8(v) => *v as i128,
        I8(v) => *v as i128,
        U16(v) => *v as i128,
        I16(v) => *v as i128,
        U32(v) => *v as i128,
        I32(v) => *v as i128,
        U64(v) => *v as i128,
        I64(v) => *v as i128,
        _ => return None,
    })
}

/// Tensors of one GGUF file for one model.
pub(crate) struct GgufTensors<'a> {
    file: &'a mut GgufFile,
    undo_rope_permutation: bool,
    n_heads: usize,
    n_kv_heads: usize,
    device: Device,
}

impl TensorSource for GgufTensors<'_> {
    fn source_name(&self) -> String {
        self.file.name.clone()
    }

    fn tensor_name(&self, param: Param) -> String {
        param.gguf_name()
    }

    fn load(&mut self, param: Param) -> Result<Option<Weight>> {
        let name = param.gguf_name();
        if !self.file.content.tensor_infos.contains_key(&name) {
            return Ok(None);
        }
        let tensor = self
            .file
            .content
            .tensor(&mut self.file.reader, &name, &self.device)
            .map_err(|e| Error::InvalidModelFile {
                path: self.file.name.clone().into(),
                message: format!(
                    "cannot read tensor `{name}` (truncated or corrupt file?): {}",
                    kvpress_core::error::without_backtrace(e)
                ),
            })?;
        let n_heads = match param {
            Param::Layer(_, LayerParam::QueryWeight) => Some(self.n_heads),
            Param::Layer(_, LayerParam::KeyWeight) => Some(self.n_kv_heads),
            _ => None,
        };
        let tensor = match n_heads {
            Some(n) if self.undo_rope_permutation => {
                undo_rope_row_permutation(&tensor, n, &self.device).map_err(|e| {
                    Error::InvalidModelFile {
                        path: self.file.name.clone().into(),
                        message: format!("tensor `{name}`: {e}"),
                    }
                })?
            }
            _ => tensor,
        };
        Ok(Some(Weight::Quantized(Arc::new(tensor))))
    }
}

/// Reorders the rows of a llama GGUF Q/K weight `(n_heads * head_dim, in)` back to the
/// Hugging Face layout: within a head, GGUF row `2i` is HF row `i` and row `2i + 1` is HF row
/// `i + head_dim / 2`. Works on raw blocks, so quantized weights stay quantized.
pub(crate) fn undo_rope_row_permutation(
    tensor: &QTensor,
    n_heads: usize,
    device: &Device,
) -> Result<QTensor> {
    let (rows, cols) = tensor.shape().dims2()?;
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(Error::InvalidInput(format!(
            "cannot split {rows} rows into {n_heads} heads of even size"
        )));
    }
    let data = tensor.data()?;
    let row_bytes = data.len() / rows;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..n_heads {
        for hf_row in 0..head_dim {
            let gguf_row = if hf_row < half {
                2 * hf_row
            } else {
                2 * (hf_row - half) + 1
            };
            let src = (head * head_dim + gguf_row) * row_bytes;
            out.extend_from_slice(&data[src..src + row_bytes]);
        }
    }
    Ok(qtensor_from_ggml(
        tensor.dtype(),
        &out,
        vec![rows, cols],
        device,
    )?)
}
