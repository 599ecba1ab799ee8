//! Saving: a session's layers and logits as stored tensors (the cache's dtype, checksummed,
//! finite), and the safetensors bytes of a header and its tensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use kvpress_core::LayerSnapshot;
use kvpress_models::QuantBits;
use safetensors::tensor::TensorView;

use super::dtype::{first_non_finite, raw_bytes, StoredDtype, StoredKv};
use super::{key_order_name, keys_name, sha256_hex, values_name, window_scores_name};
use super::{ContextFileError, ContextHeader, TensorRecord};
use super::{FORMAT, HEADER_KEY, HEADER_SHA256_KEY, LAST_LOGITS, VERSION};
use crate::{ContextSession, Error, Result};

/// One tensor as it is written.
pub(super) struct EncodedTensor {
    pub name: String,
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl EncodedTensor {
    /// `tensor` in its own dtype (one a cache holds); refused when a value is not finite.
    fn new(name: String, tensor: &Tensor) -> Result<Self> {
        let dtype = StoredDtype::of(tensor.dtype()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "`{name}` is {:?}; a context file stores f32, f16 or bf16",
                tensor.dtype()
            ))
        })?;
        let bytes = raw_bytes(tensor, dtype)?;
        if let Some(index) = first_non_finite(&bytes, dtype) {
            return Err(ContextFileError::NonFiniteCache {
                tensor: name,
                index,
            }
            .into());
        }
        Ok(Self {
            name,
            dtype,
            shape: tensor.dims().to_vec(),
            bytes,
        })
    }

    /// What the header records of it.
    pub fn record(&self) -> TensorRecord {
        TensorRecord {
            dtype: self.dtype,
            shape: self.shape.clone(),
            sha256: sha256_hex(&self.bytes),
        }
    }
}

pub(super) fn write_error(path: &Path, message: impl std::fmt::Display) -> Error {
    ContextFileError::Write {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
    .into()
}

/// Every layer's keys and values and the last logits, with each layer's head lengths (`None`
/// for dense layers) and the dtype all keys and values share.
pub(super) type EncodedCache = (Vec<EncodedTensor>, Vec<Option<Vec<usize>>>, StoredKv);

/// The tensors of `session`: per layer keys and values as the cache stores them, then the
/// logits (f32).
pub(super) fn encode_cache(session: &ContextSession) -> Result<EncodedCache> {
    let cache = session.cache();
    let mut tensors = Vec::with_capacity(2 * cache.n_layers() + 1);
    let mut head_lengths = Vec::with_capacity(cache.n_layers());
    let mut kv_dtype = None;
    for layer_idx in 0..cache.n_layers() {
        let layer = cache
            .layer(layer_idx)
            .ok_or(ContextFileError::EmptyLayer(layer_idx))?;
        if let Some(packed) = layer.packed()? {
            let stored = QuantBits::from_bits(packed.bits)
                .map(StoredKv::quantized)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "layer {layer_idx} stores {}-bit codes; a context file holds 8 or 4",
                        packed.bits
                    ))
                })?;
            check_one_kv(layer_idx, &mut kv_dtype, stored)?;
            let rows: usize = packed.head_lengths.iter().sum();
            for (name, bytes) in [
                (keys_name(layer_idx), packed.keys),
                (values_name(layer_idx), packed.values),
            ] {
                tensors.push(EncodedTensor {
                    name,
                    dtype: StoredDtype::U8,
                    shape: vec![rows, packed.row_bytes],
                    bytes,
                });
            }
            if let Some(orders) = packed.key_orders {
                let heads = packed.head_lengths.len();
                tensors.push(EncodedTensor {
                    name: key_order_name(layer_idx),
                    dtype: StoredDtype::U8,
                    shape: vec![heads, 2 * orders.len() / heads.max(1)],
                    bytes: orders.iter().flat_map(|c| c.to_le_bytes()).collect(),
                });
            }
            head_lengths.push(Some(packed.head_lengths));
            continue;
        }
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
            LayerSnapshot::Stored(_) => {
                return Err(Error::InvalidInput(format!(
                    "layer {layer_idx} stores its tokens in a layout a context file does not \
                     hold (neither floats nor packed quantized rows)"
                )))
            }
        };
        let keys = EncodedTensor::new(keys_name(layer_idx), &keys)?;
        let values = EncodedTensor::new(values_name(layer_idx), &values)?;
        for dtype in [keys.dtype, values.dtype] {
            check_one_kv(layer_idx, &mut kv_dtype, StoredKv::float(dtype))?;
        }
        tensors.extend([keys, values]);
        head_lengths.push(lengths);
    }
    if let Some(window) = session.window_scores().layers() {
        for (layer_idx, scores) in window.iter().enumerate() {
            tensors.push(EncodedTensor::new(window_scores_name(layer_idx), scores)?);
        }
    }
    let logits = session.last_logits.to_dtype(candle_core::DType::F32)?;
    tensors.push(EncodedTensor::new(LAST_LOGITS.to_string(), &logits)?);
    Ok((tensors, head_lengths, kv_dtype.unwrap_or(StoredKv::F32)))
}

/// Records layer `layer_idx`'s storage, refusing one that differs from earlier layers'.
fn check_one_kv(layer_idx: usize, seen: &mut Option<StoredKv>, stored: StoredKv) -> Result<()> {
    let first = *seen.get_or_insert(stored);
    if first != stored {
        return Err(Error::InvalidInput(format!(
            "layer {layer_idx} stores {stored} while earlier layers store {first}; a context \
             file holds one KV dtype"
        )));
    }
    Ok(())
}

/// The file's bytes: `tensors` with the metadata (format, version, header and its checksum).
pub(super) fn serialize(
    path: &Path,
    header: &ContextHeader,
    tensors: &[EncodedTensor],
) -> Result<Vec<u8>> {
    let header = serde_json::to_string(header).map_err(|e| write_error(path, e))?;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        (HEADER_SHA256_KEY.to_string(), sha256_hex(header.as_bytes())),
        (HEADER_KEY.to_string(), header),
    ]);
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype.safetensors(), t.shape.clone(), &t.bytes)
                .map(|view| (t.name.clone(), view))
                .map_err(|e| write_error(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| write_error(path, e))
}
