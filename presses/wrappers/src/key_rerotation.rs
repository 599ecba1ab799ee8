//! [`KeyRerotation`]: kept keys rotated to consecutive positions.

use candle_core::{DType, Tensor};
use kvpress_core::press::{Compression, Press, PressDescription, PressInput, Scorer, Selection};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

/// Runs `inner`, then rotates each kept key from its original position to its rank among the
/// kept tokens, so that the compressed cache looks like a contiguous sequence; later tokens then
/// continue from the compressed length (StreamingLLM's and transformers' `SinkCache` semantics).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRerotation {
    /// The press that chooses what to keep.
    pub inner: Box<dyn Press>,
}

#[typetag::serde(name = "key_rerotation")]
impl Press for KeyRerotation {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        self.inner.validate()?;
        if self.inner.describe().rerotates_keys {
            return Err(Error::InvalidArgument(format!(
                "key_rerotation: the inner press `{}` re-rotates keys already; re-rotating \
                 them again would move every kept key twice (use one key_rerotation)",
                kvpress_core::press::press_name(self.inner.as_ref())
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self.inner.describe().needs_attention_weights,
            rerotates_keys: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.inner.new_layer_cache()
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        self.inner.scorer()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        let mut compression = self.inner.compress_at_ratio(input, ratio)?;
        if compression.selection.keeps_everything() {
            return Ok(compression);
        }
        let kept_keys = match compression.keys.take() {
            Some(keys) => keys,
            None => compression.selection.gather(input.keys)?,
        };
        compression.keys = Some(rerotate_keys(
            &kept_keys,
            &compression.selection,
            input.rotary.inv_freq(),
        )?);
        Ok(compression)
    }
}

/// Rotates kept keys `(batch, n_kv_heads, n_kept, head_dim)` (rotate-half RoPE layout) from the
/// positions `selection` lists to positions `0..n_kept`: each key turns by `rank - position`.
pub fn rerotate_keys(
    kept_keys: &Tensor,
    selection: &Selection,
    inv_freq: &[f32],
) -> Result<Tensor> {
    let (batch, n_kv_heads, n_kept, head_dim) = kept_keys.dims4()?;
    let half = head_dim / 2;
    if inv_freq.len() != half || selection.heads().len() != batch * n_kv_heads {
        return Err(Error::Shape(format!(
            "cannot re-rotate keys {:?} with {} frequencies and a selection of {} heads",
            kept_keys.dims(),
            inv_freq.len(),
            selection.heads().len()
        )));
    }
    let mut data = kept_keys
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (head, positions) in selection.heads().iter().enumerate() {
        for (rank, &position) in positions.iter().enumerate() {
            let delta = rank as f32 - position as f32;
            let start = (head * n_kept + rank) * head_dim;
            let key = &mut data[start..start + head_dim];
            for (i, &freq) in inv_freq.iter().enumerate() {
                let (sin, cos) = (delta * freq).sin_cos();
                let (x1, x2) = (key[i], key[i + half]);
                key[i] = x1 * cos - x2 * sin;
                key[i + half] = x2 * cos + x1 * sin;
            }
        }
    }
    Ok(
        Tensor::from_vec(data, kept_keys.dims(), kept_keys.device())?
            .to_dtype(kept_keys.dtype())?,
    )
}

kvpress_core::register_press!(
    "key_rerotation",
    "re-rotates kept keys to consecutive positions; later tokens continue from the compressed length",
    || Box::new(KeyRerotation {
        inner: Box::new(kvpress_core::NoPress::default()),
    })
);
