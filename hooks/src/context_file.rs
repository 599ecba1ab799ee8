//! Compressed contexts saved to disk (`kvpress compress`) and loaded back (`kvpress run
//! --load`): compressing is the expensive part, so it is done once and kept.
//!
//! The file is safetensors: per layer `layer.N.keys` / `layer.N.values` (dense layers as
//! `(batch, kv_heads, len, head_dim)`, per-head layers as `(rows, head_dim)` with the head
//! lengths in the metadata) and `last_logits`; the metadata holds the format name and version,
//! the model's identity, the press config, the context's token ids and the position the next
//! token takes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ContextSession;
use candle_core::{Device, Tensor};
use kvpress_core::{LayerCache, LayerSnapshot, ModelCache};
use kvpress_models::LoadedModel;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What can go wrong with a context file; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write {}: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is no safetensors file with kvpress metadata.
    #[error("{} is not a kvpress context file{detail}", path.display())]
    NotAContextFile {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The file has another format version.
    #[error("{} is a version {found} context file; this kvpress reads version {VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: String,
    },
    /// The file is cut short or its content does not parse.
    #[error("{} is truncated or damaged: {message}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file was made with another model.
    #[error(
        "{} was made with model {} ({} bytes, layers/heads/kv heads/head dim/hidden/vocab {:?}), \
         not with {} ({} bytes, {:?}); compress the context again with this model",
        path.display(), made_with.name, made_with.bytes, made_with.shape,
        loaded.name, loaded.bytes, loaded.shape
    )]
    OtherModel {
        /// The file.
        path: PathBuf,
        /// The model it was made with.
        made_with: ModelIdentity,
        /// The model loaded now.
        loaded: ModelIdentity,
    },
    /// A layer of the cache to save holds nothing.
    #[error("layer {0} of the context is empty")]
    EmptyLayer(usize),
}

fn damaged(path: &Path, message: impl std::fmt::Display) -> Error {
    ContextFileError::Damaged {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
    .into()
}

/// Name written in every context file.
pub const FORMAT: &str = "kvpress-context";
/// Version of the layout; files of another version are refused.
pub const VERSION: u32 = 1;

/// What identifies the model a context was computed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// File or folder name of the model.
    pub name: String,
    /// Bytes of the model's weight files.
    pub bytes: u64,
    /// Layers, query heads, KV heads, head dim, hidden size, vocabulary size.
    pub shape: [usize; 6],
}

impl ModelIdentity {
    /// The identity of a loaded model.
    pub fn of(model: &LoadedModel) -> Result<Self> {
        let c = model.model.config();
        Ok(Self {
            name: model
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: weight_bytes(&model.path)?,
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
}

fn weight_bytes(path: &Path) -> Result<u64> {
    let read = |source| ContextFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path).map_err(read)? {
            let path = entry.map_err(read)?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                total += std::fs::metadata(&path).map_err(read)?.len();
            }
        }
        Ok(total)
    } else {
        Ok(std::fs::metadata(path).map_err(read)?.len())
    }
}

/// Header of a context file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextHeader {
    /// The model it was computed with.
    pub model: ModelIdentity,
    /// The press config that compressed it (JSON).
    pub press: serde_json::Value,
    /// The context's token ids.
    pub context_ids: Vec<u32>,
    /// Position of the next token (tokens seen, or the compressed length after key re-rotation).
    pub next_position: usize,
    /// Per layer: `None` for dense layers, else the length of every head.
    pub head_lengths: Vec<Option<Vec<usize>>>,
}

fn f32_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    Ok(tensor
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect())
}

/// Writes `session` (a compressed context of `context_ids` made by `press`) to `path`; returns
/// the file's size in bytes.
pub fn save(
    path: &Path,
    model: &LoadedModel,
    session: &ContextSession,
    context_ids: &[u32],
    press: &dyn kvpress_core::Press,
) -> Result<u64> {
    let cache = session.cache();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut head_lengths = Vec::with_capacity(cache.n_layers());
    for layer_idx in 0..cache.n_layers() {
        let layer = cache
            .layer(layer_idx)
            .ok_or(ContextFileError::EmptyLayer(layer_idx))?;
        let (keys, values, lengths) = match layer.snapshot()? {
            LayerSnapshot::Dense(Some((keys, values))) => (keys, values, None),
            LayerSnapshot::Dense(None) => {
                return Err(ContextFileError::EmptyLayer(layer_idx).into())
            }
            LayerSnapshot::PerHead {
                keys,
                values,
                head_lengths,
                ..
            } => (keys, values, Some(head_lengths)),
        };
        tensors.push((
            format!("layer.{layer_idx}.keys"),
            keys.dims().to_vec(),
            f32_bytes(&keys)?,
        ));
        tensors.push((
            format!("layer.{layer_idx}.values"),
            values.dims().to_vec(),
            f32_bytes(&values)?,
        ));
        head_lengths.push(lengths);
    }
    tensors.push((
        "last_logits".to_string(),
        session.last_logits.dims().to_vec(),
        f32_bytes(&session.last_logits)?,
    ));
    let write_error = |message: String| -> Error {
        ContextFileError::Write {
            path: path.to_path_buf(),
            message,
        }
        .into()
    };
    let header = ContextHeader {
        model: ModelIdentity::of(model)?,
        press: serde_json::to_value(press).map_err(|e| write_error(e.to_string()))?,
        context_ids: context_ids.to_vec(),
        next_position: cache.seen_tokens(),
        head_lengths,
    };
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        (
            "header".to_string(),
            serde_json::to_string(&header).map_err(|e| write_error(e.to_string()))?,
        ),
    ]);
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| write_error(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| write_error(e.to_string()))?;
    let size = std::fs::metadata(path).map_err(|e| write_error(e.to_string()))?;
    Ok(size.len())
}

fn tensor(path: &Path, file: &SafeTensors<'_>, name: &str) -> Result<Tensor> {
    let view = file
        .tensor(name)
        .map_err(|_| damaged(path, format!("the context file has no tensor `{name}`")))?;
    if view.dtype() != Dtype::F32 {
        return Err(damaged(path, format!("`{name}` is not f32")));
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Tensor::from_vec(data, view.shape(), &Device::Cpu)?)
}

/// Reads a context file made for `model`; the session answers questions as if the context had
/// just been compressed. Returns the header too (press, context ids).
pub fn load(path: &Path, model: &LoadedModel) -> Result<(ContextSession, ContextHeader)> {
    let bytes = std::fs::read(path).map_err(|source| ContextFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_a_context_file = |detail: String| ContextFileError::NotAContextFile {
        path: path.to_path_buf(),
        detail,
    };
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| not_a_context_file(format!(", or it is truncated: {e}")))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    if info.get("format").map(String::as_str) != Some(FORMAT) {
        let detail = format!(" (no `format: {FORMAT}` in its metadata)");
        return Err(not_a_context_file(detail).into());
    }
    let version = info.get("version").cloned().unwrap_or_default();
    if version != VERSION.to_string() {
        return Err(ContextFileError::Version {
            path: path.to_path_buf(),
            found: version,
        }
        .into());
    }
    let file = SafeTensors::deserialize(&bytes).map_err(|e| damaged(path, e))?;
    let header: ContextHeader = info
        .get("header")
        .ok_or_else(|| damaged(path, "the context file has no header"))
        .and_then(|text| serde_json::from_str(text).map_err(|e| damaged(path, e)))?;
    let identity = ModelIdentity::of(model)?;
    if header.model != identity {
        return Err(ContextFileError::OtherModel {
            path: path.to_path_buf(),
            made_with: header.model,
            loaded: identity,
        }
        .into());
    }
    let mut cache = ModelCache::from_layers(layers_of(path, &file, &header, identity.shape[2])?);
    cache.set_seen_tokens(header.next_position);
    let last_logits = tensor(path, &file, "last_logits")?;
    let mut session = ContextSession::from_cache(cache, last_logits);
    // Answers from the file run the press's decode-time schedule, as after `compress`.
    let press = kvpress_core::press::press_from_value(header.press.clone())
        .map_err(|e| damaged(path, format!("the press config in the header: {e}")))?;
    session.set_press(press.as_ref())?;
    Ok((session, header))
}

/// The layer caches stored in `file`: dense layers, or flattened ones with their head lengths.
fn layers_of(
    path: &Path,
    file: &SafeTensors<'_>,
    header: &ContextHeader,
    n_kv_heads: usize,
) -> Result<Vec<Box<dyn LayerCache>>> {
    let mut layers: Vec<Box<dyn LayerCache>> = Vec::with_capacity(header.head_lengths.len());
    for (layer_idx, lengths) in header.head_lengths.iter().enumerate() {
        let keys = tensor(path, file, &format!("layer.{layer_idx}.keys"))?;
        let values = tensor(path, file, &format!("layer.{layer_idx}.values"))?;
        let snapshot = match lengths {
            None => LayerSnapshot::Dense(Some((keys, values))),
            Some(lengths) => LayerSnapshot::PerHead {
                keys,
                values,
                head_lengths: lengths.clone(),
                batch: lengths.len() / n_kv_heads.max(1),
                n_kv_heads,
            },
        };
        let layer = crate::snapshot::layer_from_snapshot(&snapshot)?;
        layers.push(layer);
    }
    Ok(layers)
}
