//! A Hugging Face folder made from a real GGUF file (the default model): its weights
//! dequantized to f32 under their Hugging Face names (llama's Q/K rows put back in the
//! Hugging Face order) and its tokenizer as `tokenizer.json`. The caller writes `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use kvpress_models::param::{LayerParam, Param};
use kvpress_models::{Architecture, GgufFile, TextTokenizer};

/// Every parameter a layer may have.
const LAYER_PARAMS: [LayerParam; 14] = [
    LayerParam::AttentionNorm,
    LayerParam::MlpNorm,
    LayerParam::QueryWeight,
    LayerParam::KeyWeight,
    LayerParam::ValueWeight,
    LayerParam::OutputWeight,
    LayerParam::QueryBias,
    LayerParam::KeyBias,
    LayerParam::ValueBias,
    LayerParam::QueryNorm,
    LayerParam::KeyNorm,
    LayerParam::GateWeight,
    LayerParam::UpWeight,
    LayerParam::DownWeight,
];

/// Inverse of [`super::permute_rows`]: GGUF row `2i` → HF row `i`, `2i + 1` → `i + head_dim/2`.
pub fn unpermute_rows(weight: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = weight.dims2().unwrap();
    let head_dim = rows / n_heads;
    weight
        .reshape((n_heads, head_dim / 2, 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes `model.safetensors` and `tokenizer.json` of the GGUF file `gguf` into `dir`.
pub fn write_hf_weights_from_gguf(gguf: &Path, dir: &Path) {
    let file = GgufFile::open(gguf).unwrap();
    let config = file.model_config().unwrap();
    TextTokenizer::from_gguf(&file)
        .unwrap()
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let mut reader = std::fs::File::open(gguf).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut params = vec![Param::Embedding, Param::FinalNorm, Param::LmHead];
    for layer in 0..config.n_layers {
        params.extend(LAYER_PARAMS.iter().map(|&p| Param::Layer(layer, p)));
    }
    let mut tensors = HashMap::new();
    for param in params {
        let name = param.gguf_name();
        if !content.tensor_infos.contains_key(&name) {
            continue;
        }
        let weight = content
            .tensor(&mut reader, &name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let weight = match param {
            Param::Layer(_, LayerParam::QueryWeight)
                if config.architecture == Architecture::Llama =>
            {
                unpermute_rows(&weight, config.n_heads)
            }
            Param::Layer(_, LayerParam::KeyWeight)
                if config.architecture == Architecture::Llama =>
            {
                unpermute_rows(&weight, config.n_kv_heads)
            }
            _ => weight,
        };
        tensors.insert(param.hf_name(), weight);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}
