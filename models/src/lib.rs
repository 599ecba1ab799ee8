//! Llama-family decoders on candle with kvpress hook points.
//!
//! Loads GGUF files (weights kept quantized or dequantized) and Hugging Face folders
//! (safetensors, f32/f16/bf16), builds the tokenizer and chat template from the model's own
//! files, and generates text. Every attention layer calls an optional
//! [`kvpress_core::AttentionHook`] after attention, which is where presses compress the cache.
//!
//! ```no_run
//! use candle_core::Device;
//! use kvpress_models::{generate, load_model, ChatMessage, GenerationConfig};
//!
//! let loaded = load_model("model.gguf".as_ref(), None, &Device::Cpu)?;
//! let prompt = loaded.chat_template.as_ref().unwrap().render(&[ChatMessage::user("Hi")], true)?;
//! let ids = loaded.tokenizer.encode(&prompt, false)?;
//! let mut cache = loaded.model.new_cache();
//! let out = generate(&loaded.model, &mut cache, &ids, loaded.tokenizer.eos_ids(),
//!                    &GenerationConfig::default(), None, &mut |_| Ok(()))?;
//! println!("{}", loaded.tokenizer.decode(&out.tokens, true)?);
//! # Ok::<(), kvpress_models::Error>(())
//! ```
#![warn(missing_docs)]

mod attention;
pub mod chat;
pub mod config;
pub mod content_hash;
pub mod default_model;
pub mod dense_cache;
pub mod error;
mod forward;
pub mod generate;
pub mod gguf;
mod hf_chat_template;
mod hf_config;
mod hf_rope;
pub mod kv_storage;
mod layer;
pub mod linear;
pub mod loader;
pub mod model;
pub mod param;
mod projection_group;
pub mod quantized_cache;
pub mod reconstruction_prompt;
mod safetensors;
pub mod tokenizer;
mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Architecture, ModelConfig};
pub use content_hash::{file_sha256, model_sha256, sha256_hex};
pub use dense_cache::{dense_model_cache, DenseLayerCache};
pub use error::{Error, Result};
pub use generate::{
    argmax, check_finite, generate, generate_until, GenerationConfig, GenerationOutput, Sampler,
    Sampling, StopReason, StopRule,
};
pub use gguf::GgufFile;
pub use kv_storage::KvStorage;
pub use kvpress_kernels::kv_quant::{QuantBits, QuantizedRows};
pub use loader::{load_gguf, load_model, LoadedModel};
pub use model::{LogitsFor, Model};
pub use quantized_cache::QuantizedLayerCache;
pub use reconstruction_prompt::ReconstructionPrompt;
pub use tokenizer::{print_tokens, StreamDecoder, TextTokenizer};
pub use weights::WeightMode;
