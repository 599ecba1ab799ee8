//! Loading: the checks that a file is whole (layout, format, version, the header's and every
//! tensor's checksum, finite values), and the session rebuilt from a checked file.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::Tensor;
use kvpress_core::{LayerCache, LayerSnapshot, ModelCache, PackedLayer, Press};
use kvpress_models::{KvStorage, LoadedModel, QuantizedLayerCache};
use safetensors::tensor::SafeTensors;

use super::dtype::{first_non_finite, StoredDtype};
use super::{key_order_name, keys_name, sha256_hex, values_name, window_scores_name};
use super::{ContextFileError, ContextHeader, FilePart};
use super::{FORMAT, HEADER_KEY, HEADER_SHA256_KEY, LAST_LOGITS, VERSION};
use crate::decoding_eviction::WindowScores;
use crate::{ContextSession, Error, Result};

/// A file whose layout, header checksum and tensor checksums all hold.
pub(super) struct Verified<'a> {
    pub header: ContextHeader,
    file: SafeTensors<'a>,
}

fn damaged(path: &Path, message: impl std::fmt::Display) -> Error {
    ContextFileError::Damaged {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
    .into()
}

fn inconsistent(path: &Path, field: &str, message: String) -> Error {
    ContextFileError::Inconsistent {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
    .into()
}

/// The header of `bytes`, once the layout, format, version and header checksum hold.
fn header(path: &Path, bytes: &[u8]) -> Result<ContextHeader> {
    let not_a_context_file = |detail: String| ContextFileError::NotAContextFile {
        path: path.to_path_buf(),
        detail,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| not_a_context_file(format!(", or it is truncated or damaged: {e}")))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    if info.get("format").map(String::as_str) != Some(FORMAT) {
        let detail = format!(" (no `format: {FORMAT}` in its metadata)");
        return Err(not_a_context_file(detail).into());
    }
    let Some(version) = info.get("version").cloned() else {
        let detail = " (its metadata has no `version`: damaged, or not written by kvpress)";
        return Err(not_a_context_file(detail.to_string()).into());
    };
    if version != VERSION.to_string() {
        return Err(ContextFileError::Version {
            path: path.to_path_buf(),
            found: version,
        }
        .into());
    }
    let expected_keys = ["format", "version", HEADER_KEY, HEADER_SHA256_KEY];
    if info.len() != expected_keys.len() || expected_keys.iter().any(|k| !info.contains_key(*k)) {
        let mut found: Vec<&String> = info.keys().collect();
        found.sort();
        let message = format!("holds the keys {found:?}; expected {expected_keys:?}");
        return Err(inconsistent(path, "__metadata__", message));
    }
    let text = &info[HEADER_KEY];
    if sha256_hex(text.as_bytes()) != info[HEADER_SHA256_KEY] {
        return Err(ContextFileError::ChecksumMismatch {
            path: path.to_path_buf(),
            part: FilePart::Header,
        }
        .into());
    }
    serde_json::from_str(text).map_err(|e| damaged(path, format!("the header does not parse: {e}")))
}

/// Checks `bytes` as a context file: layout, format, version, the header's checksum, that the
/// file holds exactly the tensors the header lists with their dtypes, shapes and checksums,
/// and that every value is finite.
pub(super) fn verify<'a>(path: &Path, bytes: &'a [u8]) -> Result<Verified<'a>> {
    let header = header(path, bytes)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| damaged(path, e))?;
    let stored: BTreeSet<&str> = file.names().into_iter().collect();
    let listed: BTreeSet<&str> = header.tensors.keys().map(String::as_str).collect();
    if stored != listed || stored.len() != file.len() {
        let message = format!(
            "the file holds the tensors {stored:?} ({} entries) but the header lists {listed:?}",
            file.len()
        );
        return Err(inconsistent(path, "tensors", message));
    }
    for (name, record) in &header.tensors {
        let view = file.tensor(name).map_err(|e| damaged(path, e))?;
        if StoredDtype::from_safetensors(view.dtype()) != Some(record.dtype) {
            let message = format!(
                "is stored as {:?} but the header says {}",
                view.dtype(),
                record.dtype
            );
            return Err(inconsistent(path, name, message));
        }
        if view.shape() != record.shape.as_slice() {
            let message = format!(
                "has shape {:?} but the header says {:?}",
                view.shape(),
                record.shape
            );
            return Err(inconsistent(path, name, message));
        }
        if sha256_hex(view.data()) != record.sha256 {
            return Err(ContextFileError::ChecksumMismatch {
                path: path.to_path_buf(),
                part: FilePart::Tensor(name.clone()),
            }
            .into());
        }
        if let Some(index) = first_non_finite(view.data(), record.dtype) {
            return Err(ContextFileError::NonFinite {
                path: path.to_path_buf(),
                tensor: name.clone(),
                index,
            }
            .into());
        }
    }
    Ok(Verified { header, file })
}

impl Verified<'_> {
    /// The stored bytes of tensor `name`.
    fn bytes(&self, name: &str) -> Result<&[u8]> {
        self.file
            .tensor(name)
            .map(|view| view.data())
            .map_err(|e| Error::InvalidInput(format!("checked file lost `{name}`: {e}")))
    }

    /// Layer `layer_idx`'s packed quantized rows (a file whose `kv_dtype` is q8 or q4).
    fn packed_layer(
        &self,
        layer_idx: usize,
        bits: u32,
        head_lengths: &[usize],
    ) -> Result<PackedLayer> {
        let keys = self.bytes(&keys_name(layer_idx))?;
        let values = self.bytes(&values_name(layer_idx))?;
        let rows: usize = head_lengths.iter().sum();
        let order_name = key_order_name(layer_idx);
        let key_orders = match self.header.tensors.contains_key(&order_name) {
            true => Some(
                self.bytes(&order_name)?
                    .chunks_exact(2)
                    .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
                    .collect(),
            ),
            false => None,
        };
        Ok(PackedLayer {
            bits,
            row_bytes: keys.len() / rows.max(1),
            head_lengths: head_lengths.to_vec(),
            keys: keys.to_vec(),
            values: values.to_vec(),
            key_orders,
        })
    }

    /// The tensor `name` as stored, on `device`.
    fn tensor(&self, name: &str, device: &candle_core::Device) -> Result<Tensor> {
        let view = self
            .file
            .tensor(name)
            .map_err(|e| Error::InvalidInput(format!("checked file lost `{name}`: {e}")))?;
        let dtype = StoredDtype::from_safetensors(view.dtype())
            .map_or(candle_core::DType::F32, StoredDtype::dtype);
        Ok(Tensor::from_raw_buffer(
            view.data(),
            dtype,
            view.shape(),
            device,
        )?)
    }
}

/// A layer of the file's keys and values in the storage `target`: dense `(1, n_kv_heads, len,
/// head_dim)` tensors (`head_lengths` `None`), or every head's rows back to back with their
/// lengths (head-wise layers).
fn layer_in(
    target: KvStorage,
    (keys, values): (Tensor, Tensor),
    head_lengths: Option<&[usize]>,
    n_kv_heads: usize,
) -> Result<Box<dyn LayerCache>> {
    let snapshot = match (head_lengths, target) {
        (None, KvStorage::Float(dtype)) => {
            LayerSnapshot::Dense(Some((keys.to_dtype(dtype)?, values.to_dtype(dtype)?)))
        }
        (None, KvStorage::Quantized(bits)) => {
            // Quantized as the cache quantizes a prefill it keeps.
            let mut cache = QuantizedLayerCache::new(bits);
            cache.replace(&keys, &values)?;
            return Ok(Box::new(cache));
        }
        (Some(lengths), KvStorage::Quantized(bits)) => {
            return Ok(Box::new(QuantizedLayerCache::from_head_rows(
                bits,
                (&keys, &values),
                lengths,
                (1, n_kv_heads),
            )?))
        }
        (Some(lengths), KvStorage::Float(dtype)) => LayerSnapshot::PerHead {
            keys: keys.to_dtype(dtype)?,
            values: values.to_dtype(dtype)?,
            head_lengths: lengths.to_vec(),
            batch: 1,
            n_kv_heads,
        },
    };
    crate::snapshot::layer_from_snapshot(&snapshot)
}

/// Keys and values as [`layer_in`] takes them, with the head lengths of a head-wise layer.
type LayerRows = ((Tensor, Tensor), Option<Vec<usize>>);

/// A quantized layer's tokens dequantized to f32 ([`LayerCache::float_snapshot`]), as
/// [`layer_in`] takes them: dense when its heads hold the same tokens, else rows with their
/// head lengths.
fn dequantized(stored: &QuantizedLayerCache) -> Result<LayerRows> {
    Ok(match stored.float_snapshot()? {
        LayerSnapshot::Dense(Some(rows)) => (rows, None),
        LayerSnapshot::PerHead {
            keys,
            values,
            head_lengths,
            ..
        } => ((keys, values), Some(head_lengths)),
        LayerSnapshot::Dense(None) | LayerSnapshot::Stored(_) => {
            return Err(Error::InvalidInput(
                "a saved quantized layer gave no dequantized tokens".to_string(),
            ))
        }
    })
}

/// The session over a checked file's cache, in the model's KV-cache dtype, told `press` so that
/// a decode-time press runs while answering. A quantized file loaded into a cache of the same
/// bits keeps its codes as they are.
pub(super) fn session(
    path: &Path,
    file: &Verified<'_>,
    press: &dyn Press,
    model: &LoadedModel,
) -> Result<ContextSession> {
    let header = &file.header;
    let device = model.model.device();
    let target = model.model.kv_storage();
    let config = model.model.config();
    let n_kv_heads = config.n_kv_heads;
    let mut layers: Vec<Box<dyn LayerCache>> = Vec::with_capacity(header.head_lengths.len());
    for (layer_idx, lengths) in header.head_lengths.iter().enumerate() {
        let layer = match (header.kv_dtype.bits(), lengths) {
            (Some(bits), Some(lengths)) => {
                let packed = file.packed_layer(layer_idx, bits, lengths)?;
                let stored =
                    QuantizedLayerCache::from_packed(&packed, (1, n_kv_heads), config.head_dim)
                        .map_err(|e| damaged(path, format!("layer {layer_idx}: {e}")))?;
                if target == KvStorage::Quantized(stored.bits()) {
                    Box::new(stored)
                } else {
                    let (rows, lengths) = dequantized(&stored)?;
                    layer_in(target, rows, lengths.as_deref(), n_kv_heads)?
                }
            }
            _ => {
                let keys = file.tensor(&keys_name(layer_idx), device)?;
                let values = file.tensor(&values_name(layer_idx), device)?;
                layer_in(target, (keys, values), lengths.as_deref(), n_kv_heads)?
            }
        };
        layers.push(layer);
    }
    let mut cache = ModelCache::from_layers(layers);
    cache.set_seen_tokens(header.next_position);
    let last_logits = file.tensor(LAST_LOGITS, device)?;
    let mut session = ContextSession::from_cache(cache, last_logits);
    session.set_press(press)?;
    if press.decoding_eviction().is_some() {
        let window = (0..config.n_layers)
            .map(|layer_idx| file.tensor(&window_scores_name(layer_idx), device))
            .collect::<Result<Vec<_>>>()?;
        session.set_window_scores(WindowScores::from_layers(window));
    }
    Ok(session)
}
