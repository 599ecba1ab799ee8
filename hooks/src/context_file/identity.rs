//! The identity of the model a context was computed with: the SHA-256 of its files
//! ([`kvpress_models::model_sha256`]) and its shape, so that a byte-identical copy under another
//! name is accepted and another model of the same name and size is refused.

use std::path::Path;

use kvpress_models::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::Result;

/// What identifies the model a context was computed with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIdentity {
    /// File or folder name of the model, for messages only (not compared).
    pub name: String,
    /// SHA-256 (hex) of the model ([`kvpress_models::model_sha256`]).
    pub sha256: String,
    /// Layers, query heads, KV heads, head dim, hidden size, vocabulary size.
    pub shape: [usize; 6],
}

impl ModelIdentity {
    /// The identity of a loaded model (its weight files are hashed once per process).
    pub fn of(model: &LoadedModel) -> Result<Self> {
        let c = model.model.config();
        Ok(Self {
            name: model
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: weights_sha256(&model.path)?,
            shape: [
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.hidden_size,
                c.vocab_size,
            ],
        })
    }

    /// Whether `other` is the same model: same weight bytes and same shape (names may differ).
    pub fn matches(&self, other: &Self) -> bool {
        self.sha256 == other.sha256 && self.shape == other.shape
    }
}

/// SHA-256 (hex) of the model at `path` ([`kvpress_models::model_sha256`]: a GGUF file's own
/// hash, or a Hugging Face folder's weights, config and tokenizer files), hashed once per process.
pub fn weights_sha256(path: &Path) -> Result<String> {
    Ok(kvpress_models::model_sha256(path)?)
}
