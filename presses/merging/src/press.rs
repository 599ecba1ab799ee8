//! [`Merging`]: kvpress's `MergingPress` around a scoring press.

use kvpress_core::press::{
    score_and_allocate_at_ratios, Compression, LayerNote, NoteScope, Press, PressDescription,
    PressInput, Scorer, UniformAllocator,
};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::merge::{merged_values, MergeGates};

fn default_merge_fraction() -> f64 {
    1.0
}

/// Merge-on-evict: the inner scoring press decides which tokens survive (its scores, a uniform
/// top-k of `floor(T (1 - ratio))` per head, as kvpress's `MergingPress` does whatever the inner
/// press's own allocation), then each evicted token's value is folded into the kept token whose
/// key is most cosine-similar ([`merged_values`]); keys are unchanged. The merged values reach
/// the cache through the selection ([`kvpress_core::press::Selection::with_values`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merging {
    /// The scoring press deciding which tokens survive; its ratio is this press's.
    pub inner: Box<dyn Press>,
    /// Minimum cosine similarity for a merge, in `[0, 1]`.
    #[serde(default)]
    pub similarity_threshold: f64,
    /// Fraction of the evicted tokens (the most similar ones) merged, in `(0, 1]`.
    #[serde(default = "default_merge_fraction")]
    pub merge_fraction: f64,
}

impl Merging {
    /// kvpress's defaults (`similarity_threshold` 0, `merge_fraction` 1) around `inner`.
    pub fn new(inner: Box<dyn Press>) -> Self {
        Self {
            inner,
            similarity_threshold: 0.0,
            merge_fraction: default_merge_fraction(),
        }
    }

    fn inner_scorer(&self) -> Result<&dyn Scorer> {
        self.inner.scorer().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "merging needs a scoring press as `inner` (knorm, snapkv, expected_attention, \
                 ...); `{}` does not score tokens",
                kvpress_core::press::press_name(self.inner.as_ref())
            ))
        })
    }

    /// `compression` with the merged values of its kept tokens (and their norms as a note).
    fn merge(&self, input: &PressInput<'_>, compression: Compression) -> Result<Compression> {
        let selection = &compression.selection;
        if selection.keeps_everything() {
            return Ok(compression);
        }
        let gates = MergeGates {
            similarity_threshold: self.similarity_threshold,
            merge_fraction: self.merge_fraction,
        };
        let values = merged_values(input.keys, input.values, selection, gates)?;
        let norms: Vec<Vec<f32>> = values.sqr()?.sum(3)?.sqrt()?.flatten_to(1)?.to_vec2()?;
        let Compression {
            selection,
            scores,
            keys,
            notes,
        } = compression;
        let mut merged = Compression::select(selection.with_values(values)?, scores);
        merged.keys = keys;
        merged.notes = notes;
        Ok(merged.with_note(LayerNote {
            name: "value_norms",
            scope: NoteScope::RecordedLayers,
            value: serde_json::to_value(norms).unwrap_or_default(),
        }))
    }
}

#[typetag::serde(name = "merging")]
impl Press for Merging {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        self.inner.validate()?;
        self.inner_scorer()?;
        if !(0.0..=1.0).contains(&self.similarity_threshold) {
            return Err(Error::InvalidArgument(format!(
                "merging: similarity_threshold {} is outside [0, 1]",
                self.similarity_threshold
            )));
        }
        if !(self.merge_fraction > 0.0 && self.merge_fraction <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "merging: merge_fraction {} is outside (0, 1]",
                self.merge_fraction
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self.inner.describe().needs_attention_weights,
            ..PressDescription::defaults_for(self)
        }
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        Ok(self.compress_at_ratios(input, &[ratio])?.remove(0))
    }

    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        for &ratio in ratios {
            kvpress_core::press::check_compression_ratio("merging", ratio)?;
        }
        let decided =
            score_and_allocate_at_ratios(self.inner_scorer()?, &UniformAllocator, input, ratios)?;
        decided
            .into_iter()
            .map(|compression| self.merge(input, compression))
            .collect()
    }
}

kvpress_core::register_press!(
    "merging",
    "evicts with a scoring press, then merges each evicted value into its most similar survivor \
     (kvpress's MergingPress)",
    || Box::new(Merging::new(Box::new(kvpress_core::NoPress::default())))
);
