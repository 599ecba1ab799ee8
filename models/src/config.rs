//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::{Error, Result};

/// The decoder families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, Mistral (same block structure).
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on queries and keys per head, before RoPE.
    Qwen3,
}

impl Architecture {
    /// Parses a GGUF `general.architecture` or a Hugging Face `model_type`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// Whether the q/k/v projections carry a bias.
    pub fn has_qkv_bias(self) -> bool {
        self == Self::Qwen2
    }

    /// Whether queries and keys are RMS-normalised per head.
    pub fn has_qk_norm(self) -> bool {
        self == Self::Qwen3
    }
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Decoder family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f32,
    /// Maximum number of positions (context length).
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Attention window of sliding-window models (Mistral v0.1); inputs are limited to it, since
    /// windowed attention is not implemented.
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// Checks that the numbers are consistent, naming the first problem.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(key, "must be positive"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                format!("{} is odd; RoPE needs an even head dim", self.head_dim),
            ));
        }
        Ok(())
    }
}

/// The subset of a Hugging Face `config.json` this crate reads.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

fn default_rope_theta() -> f32 {
    10_000.0
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

impl HfConfig {
    pub fn to_model_config(&self) -> Result<ModelConfig> {
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("unknown");
            if kind != "default" {
                return Err(Error::config(
                    "rope_scaling",
                    format!("RoPE scaling `{kind}` is not supported yet (only plain RoPE is); results would be wrong"),
                ));
            }
        }
        // Qwen2 configs carry a window but disable it with `use_sliding_window: false`.
        let sliding_window = match self.use_sliding_window {
            Some(false) => None,
            _ => self.sliding_window,
        };
        let config = ModelConfig {
            architecture: Architecture::parse(&self.model_type)?,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_parse_and_unknown_ones_are_named() {
        assert_eq!(Architecture::parse("mistral").unwrap(), Architecture::Llama);
        assert_eq!(Architecture::parse("qwen3").unwrap(), Architecture::Qwen3);
        let err = Architecture::parse("gpt2").unwrap_err().to_string();
        assert!(err.contains("gpt2") && err.contains("qwen2"), "{err}");
    }

    #[test]
    fn inconsistent_heads_are_rejected() {
        let hf: HfConfig = serde_json::from_str(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":12,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,
                "rms_norm_eps":1e-5,"max_position_embeddings":64}"#,
        )
        .unwrap();
        let err = hf.to_model_config().unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    const BASE: &str = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
        "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,"max_position_embeddings":64"#;

    #[test]
    fn rope_scaling_is_refused_rather_than_ignored() {
        let hf: HfConfig = serde_json::from_str(&format!(
            r#"{{{BASE},"rope_scaling":{{"rope_type":"llama3","factor":8.0}}}}"#
        ))
        .unwrap();
        let err = hf.to_model_config().unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("llama3"),
            "{err}"
        );
        let plain: HfConfig =
            serde_json::from_str(&format!(r#"{{{BASE},"rope_scaling":null}}"#)).unwrap();
        assert!(plain.to_model_config().is_ok());
    }

    #[test]
    fn sliding_windows_are_read_unless_disabled() {
        let mistral: HfConfig =
            serde_json::from_str(&format!(r#"{{{BASE},"sliding_window":16}}"#)).unwrap();
        assert_eq!(mistral.to_model_config().unwrap().sliding_window, Some(16));
        let qwen: HfConfig = serde_json::from_str(&format!(
            r#"{{{BASE},"sliding_window":16,"use_sliding_window":false}}"#
        ))
        .unwrap();
        assert_eq!(qwen.to_model_config().unwrap().sliding_window, None);
    }
}
