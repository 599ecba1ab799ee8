//! The header of a context file checked against itself and the model, on load and before a
//! save: each failure is [`ContextFileError::Inconsistent`] naming the field (or tensor) and
//! what was expected.

use std::collections::BTreeSet;
use std::path::Path;

use kvpress_core::Press;
use kvpress_models::{LoadedModel, ModelConfig, QuantBits, QuantizedRows};

use super::dtype::StoredDtype;
use super::{key_order_name, keys_name, values_name, window_scores_name};
use super::{ContextFileError, ContextHeader, TensorRecord, LAST_LOGITS};
use crate::front_end::{check_press, FrontEnd};
use crate::{Error, Result};

fn inconsistent(path: &Path, field: &str, message: String) -> Error {
    ContextFileError::Inconsistent {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
    .into()
}

/// Checks `header` against itself and `model` (see the [module docs](super)); returns the press
/// its config builds.
pub fn check_header(
    path: &Path,
    header: &ContextHeader,
    model: &LoadedModel,
) -> Result<Box<dyn Press>> {
    let config = model.model.config();
    let press = press_of(path, &header.press)?;
    check_context_ids(path, &header.context_ids, config.vocab_size)?;
    let compressed_len = check_layers(path, header, config, press.as_ref())?;
    check_logits(path, header, config.vocab_size)?;
    check_positions(path, header, press.as_ref(), compressed_len, config)?;
    Ok(press)
}

/// The press of the header's config, which must parse, validate and run where a saved context
/// is answered.
fn press_of(path: &Path, config: &serde_json::Value) -> Result<Box<dyn Press>> {
    let press = kvpress_core::press::press_from_value(config.clone())
        .map_err(|e| inconsistent(path, "press", format!("is not a valid press config: {e}")))?;
    check_press(FrontEnd::Compress, press.as_ref())
        .map_err(|e| inconsistent(path, "press", format!("cannot be answered from: {e}")))?;
    Ok(press)
}

fn check_context_ids(path: &Path, ids: &[u32], vocab_size: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(inconsistent(path, "context_ids", "is empty".to_string()));
    }
    if let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab_size)
    {
        let message = format!("holds {id} at index {i}; the model's ids are 0..{vocab_size}");
        return Err(inconsistent(path, "context_ids", message));
    }
    Ok(())
}

/// Checks the tensor list and every layer's records; returns the compressed length (the
/// longest layer).
fn check_layers(
    path: &Path,
    header: &ContextHeader,
    config: &ModelConfig,
    press: &dyn Press,
) -> Result<usize> {
    if header.head_lengths.len() != config.n_layers {
        let message = format!(
            "has {} entries; the model has {} layers (one entry each)",
            header.head_lengths.len(),
            config.n_layers
        );
        return Err(inconsistent(path, "head_lengths", message));
    }
    let window = press.decoding_eviction().map(|e| e.window);
    let expected: BTreeSet<String> = (0..config.n_layers)
        .flat_map(|i| [keys_name(i), values_name(i)])
        .chain(
            (0..config.n_layers)
                .filter(|_| window.is_some())
                .map(window_scores_name),
        )
        .chain([LAST_LOGITS.to_string()])
        .collect();
    // A quantized file may hold each layer's key channel orders.
    let optional: BTreeSet<String> = match header.kv_dtype.bits() {
        Some(_) => (0..config.n_layers).map(key_order_name).collect(),
        None => BTreeSet::new(),
    };
    let listed: BTreeSet<String> = header.tensors.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&listed).collect();
    let extra: Vec<_> = listed
        .difference(&expected)
        .filter(|name| !optional.contains(*name))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let message = format!("lacks {missing:?} and has extra {extra:?}");
        return Err(inconsistent(path, "tensors", message));
    }
    for (layer_idx, name) in (0..config.n_layers).map(|i| (i, key_order_name(i))) {
        if let Some(record) = header.tensors.get(&name) {
            let want = vec![config.n_kv_heads, 2 * config.head_dim];
            if record.dtype != StoredDtype::U8 || record.shape != want {
                let message = format!(
                    "is {} {:?}; expected U8 {want:?} (layer {layer_idx}'s key channel order: \
                     a little-endian u16 per channel of each of the model's {} KV heads)",
                    record.dtype, record.shape, config.n_kv_heads
                );
                return Err(inconsistent(path, &name, message));
            }
        }
    }
    let mut longest = 0;
    for (layer_idx, lengths) in header.head_lengths.iter().enumerate() {
        let len = check_layer(path, header, config, layer_idx, lengths.as_deref())?;
        longest = longest.max(len);
        if let Some(window) = window {
            let shortest = lengths
                .as_ref()
                .and_then(|l| l.iter().copied().min())
                .unwrap_or(len);
            check_window_scores(path, header, config, layer_idx, window.min(shortest))?;
        }
    }
    Ok(longest)
}

/// Checks layer `layer_idx`'s window scores: f32 `(1, kv_heads, m)` with `m` at most
/// `at_most` (the press's window, and the layer's shortest head).
fn check_window_scores(
    path: &Path,
    header: &ContextHeader,
    config: &ModelConfig,
    layer_idx: usize,
    at_most: usize,
) -> Result<()> {
    let name = window_scores_name(layer_idx);
    let record = &header.tensors[&name];
    let fits =
        matches!(record.shape.as_slice(), [1, h, m] if *h == config.n_kv_heads && *m <= at_most);
    if record.dtype != StoredDtype::F32 || !fits {
        let message = format!(
            "is {} {:?}; expected F32 [1, {}, m] with m at most {at_most} (the scores of the \
             layer's last tokens, in the press's sliding window)",
            record.dtype, record.shape, config.n_kv_heads
        );
        return Err(inconsistent(path, &name, message));
    }
    Ok(())
}

/// Checks one layer's keys and values records; returns its cache length.
fn check_layer(
    path: &Path,
    header: &ContextHeader,
    config: &ModelConfig,
    layer_idx: usize,
    head_lengths: Option<&[usize]>,
) -> Result<usize> {
    let (keys_field, values_field) = (keys_name(layer_idx), values_name(layer_idx));
    let (keys, values) = (&header.tensors[&keys_field], &header.tensors[&values_field]);
    let context_len = header.context_ids.len();
    let (kv, d) = (config.n_kv_heads, config.head_dim);
    let quantized_bits = header.kv_dtype.bits();
    let (len, expected_shape) = match head_lengths {
        None if quantized_bits.is_some() => {
            let message = format!(
                "is null, but `kv_dtype` {} stores every layer's rows per head (head lengths \
                 needed)",
                header.kv_dtype
            );
            return Err(inconsistent(
                path,
                &format!("head_lengths[{layer_idx}]"),
                message,
            ));
        }
        None => {
            let len = keys.shape.get(2).copied().unwrap_or(0);
            (len, vec![1, kv, len, d])
        }
        Some(lengths) => {
            let field = format!("head_lengths[{layer_idx}]");
            if lengths.len() != kv {
                let message = format!("has {} heads; the model has {kv} KV heads", lengths.len());
                return Err(inconsistent(path, &field, message));
            }
            let len = lengths.iter().copied().max().unwrap_or(0);
            // Float rows of `d` values, or packed quantized rows of `d` channels.
            let row = match quantized_bits.and_then(QuantBits::from_bits) {
                Some(bits) => QuantizedRows::packed_row_bytes(bits, d),
                None => d,
            };
            (len, vec![lengths.iter().sum(), row])
        }
    };
    let stored = header.kv_dtype.tensor_dtype();
    let expected = |record: &TensorRecord| record.shape == expected_shape && record.dtype == stored;
    for (field, record) in [(&keys_field, keys), (&values_field, values)] {
        if !expected(record) {
            let message = format!(
                "is {} {:?}; expected {stored} {expected_shape:?} (the model's {kv} KV heads of \
                 dim {d} and the layer's head lengths, stored as {})",
                record.dtype, record.shape, header.kv_dtype
            );
            return Err(inconsistent(path, field, message));
        }
    }
    if len == 0 || len > context_len {
        let message =
            format!("holds {len} tokens; expected 1..={context_len} (the context's length)");
        return Err(inconsistent(path, &keys_field, message));
    }
    Ok(len)
}

fn check_logits(path: &Path, header: &ContextHeader, vocab_size: usize) -> Result<()> {
    let record = &header.tensors[LAST_LOGITS];
    if record.shape != [vocab_size] || record.dtype != StoredDtype::F32 {
        let message = format!(
            "is {} {:?}; expected f32 [{vocab_size}] (one logit per vocabulary entry)",
            record.dtype, record.shape
        );
        return Err(inconsistent(path, LAST_LOGITS, message));
    }
    Ok(())
}

/// `next_position` is where the next token goes: after the original context, or after the
/// compressed one for presses that re-rotate keys (`ContextSession::compress`).
fn check_positions(
    path: &Path,
    header: &ContextHeader,
    press: &dyn Press,
    compressed_len: usize,
    config: &ModelConfig,
) -> Result<()> {
    let next = header.next_position;
    let (expected, why) = if press.describe().rerotates_keys {
        (
            compressed_len,
            "the compressed length: the press re-rotates keys",
        )
    } else {
        (header.context_ids.len(), "the number of context tokens")
    };
    if next != expected || next < compressed_len {
        let message =
            format!("is {next}; expected {expected}, {why} (compressed length {compressed_len})");
        return Err(inconsistent(path, "next_position", message));
    }
    if next > config.max_position_embeddings {
        let message = format!(
            "is {next}, past the model's {} positions",
            config.max_position_embeddings
        );
        return Err(inconsistent(path, "next_position", message));
    }
    Ok(())
}
