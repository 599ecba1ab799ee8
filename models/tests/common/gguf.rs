//! Tiny models written as GGUF bytes in memory, editable before they are read back.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use kvpress_models::param::{LayerParam, Param};
use kvpress_models::{GgufFile, LoadedModel, WeightMode};

use super::{tokenizer_metadata, Arch, TinyModel, CHATML};

impl TinyModel {
    /// GGUF writer pre-filled with metadata and tensors; weights (≥ 2-D) in `dtype`, 1-D
    /// tensors always F32 (like llama.cpp).
    pub fn gguf(&self, dtype: GgmlDType) -> GgufBuilder {
        self.gguf_with(dtype, self.spec.arch == Arch::Llama)
    }

    /// Like [`Self::gguf`], choosing whether llama's Q/K row permutation is applied.
    pub fn gguf_with(&self, dtype: GgmlDType, permute_qk: bool) -> GgufBuilder {
        let s = &self.spec;
        let arch = s.arch.name();
        let k = |key: &str| format!("{arch}.{key}");
        let mut metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String(format!("tiny-{arch}"))),
            (k("context_length"), Value::U32(s.context_length as u32)),
            (k("embedding_length"), Value::U32(s.hidden as u32)),
            (k("block_count"), Value::U32(s.n_layers as u32)),
            (k("feed_forward_length"), Value::U32(s.intermediate as u32)),
            (k("attention.head_count"), Value::U32(s.n_heads as u32)),
            (
                k("attention.head_count_kv"),
                Value::U32(s.n_kv_heads as u32),
            ),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(s.rms_norm_eps as f32),
            ),
            (k("rope.freq_base"), Value::F32(s.rope_theta)),
        ];
        if s.head_dim != s.hidden / s.n_heads {
            metadata.push((k("attention.key_length"), Value::U32(s.head_dim as u32)));
            metadata.push((k("attention.value_length"), Value::U32(s.head_dim as u32)));
        }
        metadata.extend(tokenizer_metadata());
        metadata.push((
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ));

        let tensors = self
            .weights
            .iter()
            .map(|(param, tensor)| {
                let tensor = match param {
                    Param::Layer(_, LayerParam::QueryWeight) if permute_qk => {
                        permute_rows(tensor, s.n_heads)
                    }
                    Param::Layer(_, LayerParam::KeyWeight) if permute_qk => {
                        permute_rows(tensor, s.n_kv_heads)
                    }
                    _ => tensor.clone(),
                };
                let dtype = if tensor.rank() == 1 {
                    GgmlDType::F32
                } else {
                    dtype
                };
                let q = QTensor::quantize(&tensor, dtype).expect("quantize");
                (param.gguf_name(), q)
            })
            .collect();
        GgufBuilder { metadata, tensors }
    }
}

/// llama.cpp's converter row order for a Q/K weight: per head, rows `(2, head_dim/2)` →
/// `(head_dim/2, 2)`, i.e. GGUF row `2i` = HF row `i`, GGUF row `2i+1` = HF row `i + head_dim/2`.
pub fn permute_rows(weight: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = weight.dims2().unwrap();
    let head_dim = rows / n_heads;
    weight
        .reshape((n_heads, 2, head_dim / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Metadata and tensors of a GGUF file, editable before writing.
pub struct GgufBuilder {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

impl GgufBuilder {
    /// Sets (or replaces) a metadata entry.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Removes a metadata entry.
    pub fn remove_key(mut self, key: &str) -> Self {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_ne!(before, self.metadata.len(), "no metadata key {key}");
        self
    }

    /// Removes a tensor.
    pub fn remove_tensor(mut self, name: &str) -> Self {
        let before = self.tensors.len();
        self.tensors.retain(|(n, _)| n != name);
        assert_ne!(before, self.tensors.len(), "no tensor {name}");
        self
    }

    /// The GGUF file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut cursor = Cursor::new(Vec::new());
        gguf_file::write(&mut cursor, &metadata, &tensors).expect("write gguf");
        cursor.into_inner()
    }

    /// Parses the bytes as an in-memory GGUF file.
    pub fn open(&self) -> kvpress_models::Result<GgufFile> {
        open_gguf_bytes(self.bytes())
    }

    /// Loads the model from the bytes.
    pub fn load(&self, mode: WeightMode) -> kvpress_models::Result<LoadedModel> {
        load_gguf_bytes(self.bytes(), mode)
    }
}

/// Parses GGUF bytes held in memory.
pub fn open_gguf_bytes(bytes: Vec<u8>) -> kvpress_models::Result<GgufFile> {
    GgufFile::from_reader("mem.gguf".into(), Box::new(Cursor::new(bytes)))
}

/// Loads a model from GGUF bytes held in memory.
pub fn load_gguf_bytes(bytes: Vec<u8>, mode: WeightMode) -> kvpress_models::Result<LoadedModel> {
    let mut file = open_gguf_bytes(bytes)?;
    kvpress_models::load_gguf(&mut file, mode, &Device::Cpu, Path::new("mem.gguf"))
}

/// Dense f32 weights.
pub const F32: WeightMode = WeightMode::Dense(DType::F32);
