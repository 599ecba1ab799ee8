//! Compressed contexts saved to disk (`kvpress compress`) and loaded back (`kvpress run
//! --load`): compressing is the expensive part, so it is done once and kept.
//!
//! The file is safetensors: per layer `layer.N.keys` / `layer.N.values` (dense layers as
//! `(1, kv_heads, len, head_dim)` in the cache's dtype, f32/f16/bf16; per-head layers as
//! `(rows, head_dim)` in f32, with the head lengths in the header) and `last_logits` (f32,
//! `(vocab,)`). The metadata holds `format`, `version`, `header` (JSON, [`ContextHeader`]: the
//! model's identity, the press config, the context's token ids, the position the next token
//! takes, the head lengths, the KV dtype and, per tensor, its dtype, shape and SHA-256) and
//! `header_sha256`, the SHA-256 of the header text.
//!
//! What loading checks, in order, before anything is built (each failure is its own
//! [`ContextFileError`] variant):
//! 1. the safetensors layout parses and covers the file exactly, the format and version match
//!    (version 1 files are refused: compress again);
//! 2. the header's checksum, then every tensor's: the file holds exactly the tensors the
//!    header lists, each with the dtype and shape listed and bytes of the SHA-256 listed, and
//!    no NaN or infinity; so a flipped bit anywhere in the file is an error;
//! 3. the model: same weight bytes (SHA-256 of the GGUF file or the folder's weights) and shape
//!    ([`ModelIdentity`]; a renamed copy is accepted);
//! 4. the header against the model ([`checks`]): the press config parses and validates, every
//!    context id is in the vocabulary, one entry of `head_lengths` per layer, the tensors'
//!    shapes follow from the model's KV heads and head dim and the head lengths, `last_logits`
//!    has one entry per vocabulary entry, and `next_position` is the context's length (or, for
//!    presses that re-rotate keys, the compressed length) and at least the compressed length.
//!
//! Saving runs the same header checks and writes atomically ([`atomic`]): a temporary file in
//! the same folder, synced, renamed onto the path, the folder synced; the path never holds a
//! partial file, and concurrent writers leave one of their files whole.
//!
//! Keys and values are stored in the cache's dtype; a file loaded into a model whose KV-cache
//! dtype differs (`--kv-dtype`) is converted to that dtype (the header's `kv_dtype` says what
//! the file holds); head-wise layers are every head's rows back to back with the head lengths,
//! in any of the storages. A quantized cache (`q8`, `q4`) is
//! stored as its codes: per layer, keys and values are `u8` tensors `(rows, row bytes)` of
//! every head's packed rows in head order ([`kvpress_core::PackedLayer`]: each row its codes,
//! then each group's f16 step and minimum), with every layer's head lengths and, where keys
//! are grouped by magnitude, each head's key channel order (`layer.N.key_order`, optional per
//! layer: a layer without it holds its keys in channel order); loading it into a cache of the
//! same bits takes the codes as they are (no round trip through f32).
//!
//! A context compressed by a press that evicts by threshold while decoding (DMS with
//! `decoding = true`) also holds, per layer, the scores of its last tokens, which wait in the
//! press's sliding window (`layer.N.window_scores`): its answers evict them as the unsaved
//! context's would.

pub mod atomic;
pub mod checks;
mod decode;
mod dtype;
mod encode;
mod error;
mod identity;

use std::collections::BTreeMap;
use std::path::Path;

use kvpress_models::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::{ContextSession, Result};

pub use dtype::{StoredDtype, StoredKv};
pub use error::{ContextFileError, FilePart};
pub use identity::{weights_sha256, ModelIdentity};
pub use kvpress_models::sha256_hex;

/// Name written in every context file.
pub const FORMAT: &str = "kvpress-context";
/// Version of the layout; files of another version are refused.
pub const VERSION: u32 = 2;

/// Metadata key of the header JSON.
pub const HEADER_KEY: &str = "header";
/// Metadata key of the header JSON's SHA-256.
pub const HEADER_SHA256_KEY: &str = "header_sha256";

/// Name of the logits tensor.
pub const LAST_LOGITS: &str = "last_logits";

/// Name of a layer's keys tensor.
pub fn keys_name(layer_idx: usize) -> String {
    format!("layer.{layer_idx}.keys")
}

/// Name of a layer's values tensor.
pub fn values_name(layer_idx: usize) -> String {
    format!("layer.{layer_idx}.values")
}

/// Name of a quantized layer's key channel orders ([`kvpress_core::PackedLayer::key_orders`]):
/// `u8` `(heads, 2 * head_dim)`, each head's order as little-endian `u16`.
pub fn key_order_name(layer_idx: usize) -> String {
    format!("layer.{layer_idx}.key_order")
}

/// Name of a layer's window scores (`(1, kv_heads, m)` f32, the scores of the last `m` tokens,
/// which wait in the sliding window of a press that evicts by threshold while decoding): present
/// exactly when the file's press does ([`crate::decoding_eviction::WindowScores`]).
pub fn window_scores_name(layer_idx: usize) -> String {
    format!("layer.{layer_idx}.window_scores")
}

/// What the header says one tensor holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// Its stored dtype.
    pub dtype: StoredDtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// SHA-256 (hex) of its stored bytes.
    pub sha256: String,
}

/// Header of a context file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextHeader {
    /// The model it was computed with.
    pub model: ModelIdentity,
    /// The press config that compressed it (JSON).
    pub press: serde_json::Value,
    /// The context's token ids.
    pub context_ids: Vec<u32>,
    /// Position of the next token (tokens seen, or the compressed length after key re-rotation).
    pub next_position: usize,
    /// Per layer: `None` for dense float layers, else the length of every head (head-wise
    /// layers, and every quantized layer).
    pub head_lengths: Vec<Option<Vec<usize>>>,
    /// How keys and values are stored (the cache's storage when it was saved).
    pub kv_dtype: StoredKv,
    /// Every tensor of the file, by name.
    pub tensors: BTreeMap<String, TensorRecord>,
}

/// Writes `session` (a compressed context of `context_ids` made by `press`) to `path`
/// atomically; returns the file's size in bytes. Keys and values keep the cache's dtype.
pub fn save(
    path: &Path,
    model: &LoadedModel,
    session: &ContextSession,
    context_ids: &[u32],
    press: &dyn kvpress_core::Press,
) -> Result<u64> {
    let bytes = to_bytes(path, model, session, context_ids, press)?;
    atomic::write_atomically(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// The bytes [`save`] writes (for stores that are not files, such as a key-value server);
/// [`load_bytes`] reads them back. `name` only names the context in errors.
pub fn to_bytes(
    name: &Path,
    model: &LoadedModel,
    session: &ContextSession,
    context_ids: &[u32],
    press: &dyn kvpress_core::Press,
) -> Result<Vec<u8>> {
    let path = name;
    let (tensors, head_lengths, kv_dtype) = encode::encode_cache(session)?;
    let header = ContextHeader {
        model: ModelIdentity::of(model)?,
        press: serde_json::to_value(press).map_err(|e| encode::write_error(path, e))?,
        context_ids: context_ids.to_vec(),
        next_position: session.cache().seen_tokens(),
        head_lengths,
        kv_dtype,
        tensors: tensors
            .iter()
            .map(|t| (t.name.clone(), t.record()))
            .collect(),
    };
    // Never write a file that would not load.
    checks::check_header(path, &header, model)?;
    encode::serialize(path, &header, &tensors)
}

/// Reads a context file made for `model`; the session answers questions as if the context had
/// just been compressed. Returns the header too (press, context ids, the stored dtype).
///
/// The cache takes the model's KV-cache dtype (`Model::cache_dtype`): a file stored in another
/// dtype is converted (compare [`ContextHeader::kv_dtype`] with it to tell the user).
pub fn load(path: &Path, model: &LoadedModel) -> Result<(ContextSession, ContextHeader)> {
    let bytes = std::fs::read(path).map_err(|source| ContextFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(path, &bytes, model)
}

/// [`load`] of a file's bytes already in memory; `path` only names the file in errors.
pub fn load_bytes(
    path: &Path,
    bytes: &[u8],
    model: &LoadedModel,
) -> Result<(ContextSession, ContextHeader)> {
    let file = decode::verify(path, bytes)?;
    let identity = ModelIdentity::of(model)?;
    if !file.header.model.matches(&identity) {
        return Err(ContextFileError::OtherModel {
            path: path.to_path_buf(),
            made_with: Box::new(file.header.model.clone()),
            loaded: Box::new(identity),
        }
        .into());
    }
    let press = checks::check_header(path, &file.header, model)?;
    let session = decode::session(path, &file, press.as_ref(), model)?;
    Ok((session, file.header))
}
