//! [`Composed`]: presses applied in sequence.

use kvpress_core::press::{
    CacheLayout, Compression, DecodingSchedule, Press, PressDescription, PressInput, RatioControl,
    Selection,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

/// Applies its presses one after another: each sees the cache as the previous one left it (the
/// hidden states and queries stay those of the forward). The ratio is `1 - Π(1 - r_i)`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Composed {
    /// The presses, in the order they run.
    pub presses: Vec<Box<dyn Press>>,
}

#[typetag::serde(name = "composed")]
impl Press for Composed {
    fn compression_ratio(&self) -> f64 {
        1.0 - self
            .presses
            .iter()
            .map(|p| 1.0 - p.compression_ratio())
            .product::<f64>()
    }

    fn validate(&self) -> Result<()> {
        if self.presses.is_empty() {
            return Err(Error::InvalidArgument(
                "composed: `presses` is empty; list at least one press".to_string(),
            ));
        }
        let decoding = self.presses.iter().filter(|p| p.decoding().is_some());
        if decoding.count() > 1 {
            return Err(Error::InvalidArgument(
                "composed: more than one press compresses while decoding; keep one decode-time \
                 press (decoding or compression_ratio_decoding), or combine them in one"
                    .to_string(),
            ));
        }
        let layouts: Vec<CacheLayout> = self
            .presses
            .iter()
            .map(|p| p.describe().cache_layout)
            .filter(|&layout| layout != CacheLayout::Dense)
            .collect();
        if layouts.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(Error::InvalidArgument(format!(
                "composed: its presses need different cache layouts ({layouts:?}): a head-wise \
                 press (adakv) and a channel-pruning press (think) cannot share one cache"
            )));
        }
        for (i, press) in self.presses.iter().enumerate() {
            press.validate()?;
            if i > 0 && press.describe().needs_attention_weights {
                return Err(Error::InvalidArgument(format!(
                    "composed: press {i} needs attention weights, which only the first press \
                     gets (they no longer match the cache after the first press)"
                )));
            }
        }
        Ok(())
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.presses.iter().find_map(|p| p.new_layer_cache())
    }

    /// The schedule of the one decode-time press inside, which runs while answers are
    /// generated (the others act on the prefill).
    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        self.presses.iter().find_map(|p| p.decoding())
    }

    fn describe(&self) -> PressDescription {
        let members: Vec<PressDescription> = self.presses.iter().map(|p| p.describe()).collect();
        PressDescription {
            needs_attention_weights: members.first().is_some_and(|d| d.needs_attention_weights),
            rerotates_keys: members.iter().any(|d| d.rerotates_keys),
            cache_layout: members
                .iter()
                .map(|d| d.cache_layout)
                .find(|&layout| layout != CacheLayout::Dense)
                .unwrap_or(CacheLayout::Dense),
            ratio: RatioControl::OwnedByPress,
            compresses_prefill: members.iter().any(|d| d.compresses_prefill),
            compresses_while_decoding: members.iter().any(|d| d.compresses_while_decoding),
            needs_question: members.iter().any(|d| d.needs_question),
        }
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        let mut selection =
            Selection::all(input.batch()?, input.shape.n_kv_heads, input.n_tokens()?);
        let mut keys = input.keys.clone();
        let mut values = input.values.clone();
        let mut replaced_keys = false;
        let mut notes = Vec::new();
        // The scores reported are the first press's (over the whole context), as kvpress's
        // fixtures record a composed press's scores.
        let mut scores = None;
        for (i, press) in self.presses.iter().enumerate() {
            let step = if i == 0 {
                press.compress(input)?
            } else {
                press.compress(&input.with_keys_values(&keys, &values))?
            };
            selection = selection.then(&step.selection)?;
            notes.extend(step.notes);
            if i == 0 {
                scores = step.scores;
            }
            values = step.selection.gather(&values)?;
            keys = match step.keys {
                Some(new_keys) => {
                    replaced_keys = true;
                    new_keys
                }
                None => step.selection.gather(&keys)?,
            };
        }
        Ok(Compression {
            selection,
            scores,
            keys: replaced_keys.then_some(keys),
            notes,
        })
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "a composed press has no single compression ratio to set; set the ratios of the \
             presses inside"
                .to_string(),
        ))
    }
}

kvpress_core::register_press!("composed", "applies its presses one after another", || {
    Box::new(Composed {
        presses: vec![Box::new(kvpress_core::NoPress::default())],
    })
});
