//! A Hugging Face `config.json`, as transformers 4 and 5 write it, read into a [`ModelConfig`].
//!
//! Entries absent from the file take the default of the transformers config class of the model
//! type (`LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`), which is what
//! transformers itself computes with. Every entry that changes the computation is either read
//! or, when set to something this crate does not implement, refused with
//! [`Error::UnsupportedConfig`]. Entries that do not change the computation (`dtype` /
//! `torch_dtype`, `use_cache`, `attention_dropout`, `initializer_range`, `pretraining_tp`, ...)
//! are ignored. The RoPE entries are read by [`crate::hf_rope`].

use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{Architecture, ModelConfig};
use crate::{Error, Result};

/// The `config.json` entries this crate reads.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None`: absent; `Some(None)`: `null`.
    #[serde(default, deserialize_with = "present")]
    pub num_key_value_heads: Option<Option<usize>>,
    #[serde(default, deserialize_with = "present")]
    pub head_dim: Option<Option<usize>>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub quantization_config: Option<Value>,
    /// transformers 4: the RoPE base at the top level.
    #[serde(default, deserialize_with = "present")]
    pub rope_theta: Option<Value>,
    /// transformers 4: the RoPE scaling, `null` when there is none.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers 5: `rope_theta`, `rope_type` and the scaling parameters.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

/// Tells an entry written as `null` (`Some(None)`) from an absent one (`None`, by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A token id or a list of them, as `config.json` writes `eos_token_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::InvalidModelFile {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json` (written by transformers 4 or 5) and checks it.
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        let hf: HfConfig = read_json(path)?.ok_or_else(|| Error::InvalidModelFile {
            path: path.to_path_buf(),
            message: "missing: a Hugging Face model folder needs config.json".into(),
        })?;
        hf.to_model_config()
    }
}

/// transformers' `rms_norm_eps` default, the same in all four config classes.
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// `MistralConfig.sliding_window`, `Qwen2Config.sliding_window`, `Qwen3Config.sliding_window`.
const DEFAULT_SLIDING_WINDOW: usize = 4096;
/// `Qwen2Config.max_window_layers`, `Qwen3Config.max_window_layers`.
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

impl HfConfig {
    /// The checked [`ModelConfig`].
    pub fn to_model_config(&self) -> Result<ModelConfig> {
        let architecture = Architecture::parse(&self.model_type)?;
        self.check_unsupported()?;
        let config = ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim()?,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
            rope_theta: crate::hf_rope::rope_theta(self)?,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            sliding_window: self.sliding_window()?,
        };
        config.validate()?;
        Ok(config)
    }

    fn is_qwen(&self) -> bool {
        matches!(self.model_type.as_str(), "qwen2" | "qwen3")
    }

    /// Refuses entries that ask for computations this crate does not implement.
    fn check_unsupported(&self) -> Result<()> {
        if let Some(act) = self.hidden_act.as_deref() {
            // transformers' ACT2FN maps both names to SiLU.
            if act != "silu" && act != "swish" {
                return Err(Error::unsupported(
                    "hidden_act",
                    format!("`{act}`"),
                    "`silu` (SwiGLU MLP)",
                ));
            }
        }
        // LlamaConfig and Qwen3Config put biases on q/k/v/o with `attention_bias`; Qwen2 always
        // has q/k/v biases (read from the weights) and Mistral has none, whatever the entry says.
        let biased = matches!(self.model_type.as_str(), "llama" | "qwen3");
        if biased && self.attention_bias == Some(true) {
            return Err(Error::unsupported(
                "attention_bias",
                true,
                format!("false ({} projections without biases)", self.model_type),
            ));
        }
        if self.model_type == "llama" && self.mlp_bias == Some(true) {
            return Err(Error::unsupported(
                "mlp_bias",
                true,
                "false (MLP projections without biases)",
            ));
        }
        if let Some(quantization) = self.quantization_config.as_ref().filter(|q| !q.is_null()) {
            let method = quantization
                .get("quant_method")
                .map_or_else(|| quantization.to_string(), Value::to_string);
            return Err(Error::unsupported(
                "quantization_config.quant_method",
                method,
                "unquantized safetensors (f32, f16, bf16); for quantized weights use a GGUF file",
            ));
        }
        Ok(())
    }

    /// `num_key_value_heads`: absent takes the class default (Qwen 32, Mistral 8, Llama the
    /// query heads); `null` means as many as the query heads.
    fn n_kv_heads(&self) -> usize {
        match (self.num_key_value_heads, self.model_type.as_str()) {
            (Some(Some(n)), _) => n,
            (None, "qwen2" | "qwen3") => 32,
            (None, "mistral") => 8,
            _ => self.num_attention_heads,
        }
    }

    /// `head_dim`: absent is 128 for Qwen3 (its class default) and `hidden / heads` otherwise;
    /// `null` is `hidden / heads` for Llama and Mistral and invalid for Qwen.
    fn head_dim(&self) -> Result<usize> {
        match (self.head_dim, self.model_type.as_str()) {
            (Some(Some(dim)), _) => return Ok(dim),
            (None, "qwen3") => return Ok(128),
            (Some(None), _) if self.is_qwen() => {
                return Err(Error::config(
                    "head_dim",
                    format!(
                        "null is not valid for {}: give the head dimension or leave the entry out",
                        self.model_type
                    ),
                ))
            }
            _ => {}
        }
        let heads = self.num_attention_heads.max(1);
        if !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::config(
                "head_dim",
                format!(
                    "not given, and hidden_size {} is not a multiple of num_attention_heads {heads}",
                    self.hidden_size
                ),
            ));
        }
        Ok(self.hidden_size / heads)
    }

    /// The attention window, if any layer has one (inputs are then limited to it).
    ///
    /// Qwen2/Qwen3 (as transformers): the window counts only with `use_sliding_window: true`
    /// (default false), on the layers `layer_types` marks `sliding_attention` (by default those
    /// from `max_window_layers` on). Mistral: `sliding_window` (default 4096) on every layer.
    /// Llama: `sliding_window` unless `use_sliding_window: false` (transformers ignores it for
    /// Llama; limiting the input to it is never wrong, only stricter).
    fn sliding_window(&self) -> Result<Option<usize>> {
        if self.sliding_window == Some(Some(0)) {
            return Err(Error::config(
                "sliding_window",
                "0 is not a window; give a positive number of tokens or null",
            ));
        }
        let window_or_default = self.sliding_window.unwrap_or(Some(DEFAULT_SLIDING_WINDOW));
        if !self.is_qwen() {
            return Ok(match self.model_type.as_str() {
                "mistral" => window_or_default,
                _ if self.use_sliding_window == Some(false) => None,
                _ => self.sliding_window.flatten(),
            });
        }
        let window = window_or_default.filter(|_| self.use_sliding_window.unwrap_or(false));
        let any_sliding = match &self.layer_types {
            Some(types) => self.check_layer_types(types)?,
            None => {
                window.is_some()
                    && self.num_hidden_layers
                        > self.max_window_layers.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS)
            }
        };
        Ok(window.filter(|_| any_sliding))
    }

    /// Checks `layer_types` (one known kind per layer); returns whether a layer slides.
    fn check_layer_types(&self, types: &[String]) -> Result<bool> {
        if types.len() != self.num_hidden_layers {
            return Err(Error::config(
                "layer_types",
                format!(
                    "{} entries for {} layers (num_hidden_layers)",
                    types.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if let Some((i, kind)) = types
            .iter()
            .enumerate()
            .find(|(_, t)| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
        {
            return Err(Error::unsupported(
                format!("layer_types[{i}]"),
                format!("`{kind}`"),
                "`full_attention`, `sliding_attention`",
            ));
        }
        Ok(types.iter().any(|t| t == "sliding_attention"))
    }
}

#[cfg(test)]
#[path = "hf_config_tests.rs"]
mod tests;
