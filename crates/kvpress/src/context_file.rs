//! Compressed contexts saved to disk (`kvpress compress`) and loaded back (`kvpress run
//! --load`): compressing is the expensive part, so it is done once and kept.
//!
//! The file is safetensors: per layer `layer.N.keys` / `layer.N.values` (dense layers as
//! `(batch, kv_heads, len, head_dim)`, per-head layers as `(rows, head_dim)` with the head
//! lengths in the metadata) and `last_logits`; the metadata holds the format name and version,
//! the model's identity, the press config, the context's token ids and the position the next
//! token takes.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use hooks::ContextSession;
use kvpress_core::{DenseLayerCache, LayerCache, LayerSnapshot, ModelCache};
use models::LoadedModel;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

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
    if path.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                total += std::fs::metadata(&path)?.len();
            }
        }
        Ok(total)
    } else {
        Ok(std::fs::metadata(path)?.len())
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
        let layer = cache.layer(layer_idx).context("a layer of the cache")?;
        let (keys, values, lengths) = match layer.snapshot()? {
            LayerSnapshot::Dense(Some((keys, values))) => (keys, values, None),
            LayerSnapshot::Dense(None) => bail!("layer {layer_idx} of the context is empty"),
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
    let header = ContextHeader {
        model: ModelIdentity::of(model)?,
        press: serde_json::to_value(press)?,
        context_ids: context_ids.to_vec(),
        next_position: cache.seen_tokens(),
        head_lengths,
    };
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        ("header".to_string(), serde_json::to_string(&header)?),
    ]);
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(std::fs::metadata(path)?.len())
}

fn tensor(file: &SafeTensors<'_>, name: &str) -> Result<Tensor> {
    let view = file
        .tensor(name)
        .with_context(|| format!("the context file has no tensor `{name}`"))?;
    ensure!(view.dtype() == Dtype::F32, "`{name}` is not f32");
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
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a kvpress context file, or it is truncated: {e}",
            path.display()
        )
    })?;
    let info = metadata.metadata().clone().unwrap_or_default();
    ensure!(
        info.get("format").map(String::as_str) == Some(FORMAT),
        "{} is not a kvpress context file (no `format: {FORMAT}` in its metadata)",
        path.display()
    );
    let version = info.get("version").cloned().unwrap_or_default();
    ensure!(
        version == VERSION.to_string(),
        "{} is a version {version} context file; this kvpress reads version {VERSION}",
        path.display()
    );
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is truncated or damaged: {e}", path.display()))?;
    let header: ContextHeader = serde_json::from_str(
        info.get("header")
            .context("the context file has no header")?,
    )?;
    let identity = ModelIdentity::of(model)?;
    ensure!(
        header.model == identity,
        "{} was made with model {} ({} bytes, layers/heads/kv heads/head dim/hidden/vocab {:?}), \
         not with {} ({} bytes, {:?}); compress the context again with this model",
        path.display(),
        header.model.name,
        header.model.bytes,
        header.model.shape,
        identity.name,
        identity.bytes,
        identity.shape
    );
    let n_kv_heads = identity.shape[2];
    let mut layers: Vec<Box<dyn LayerCache>> = Vec::with_capacity(header.head_lengths.len());
    for (layer_idx, lengths) in header.head_lengths.iter().enumerate() {
        let keys = tensor(&file, &format!("layer.{layer_idx}.keys"))?;
        let values = tensor(&file, &format!("layer.{layer_idx}.values"))?;
        let layer: Box<dyn LayerCache> = match lengths {
            None => {
                let mut cache = DenseLayerCache::new();
                cache.append(&keys, &values)?;
                Box::new(cache)
            }
            Some(lengths) => {
                let batch = lengths.len() / n_kv_heads.max(1);
                Box::new(adakv::FlatLayerCache::from_rows(
                    &keys, &values, lengths, batch, n_kv_heads,
                )?)
            }
        };
        layers.push(layer);
    }
    let mut cache = ModelCache::from_layers(layers);
    cache.set_seen_tokens(header.next_position);
    let last_logits = tensor(&file, "last_logits")?;
    Ok((ContextSession::from_cache(cache, last_logits), header))
}
