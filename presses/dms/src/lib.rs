//! DMS for kvpress-rs (kvpress's `DMSPress`, the dense-prefill version of Dynamic Memory
//! Sparsification, without the paper's trained evictors): around any scoring press, every KV
//! head evicts the tokens older than a sliding window whose score is below a threshold. How much
//! is kept depends on the content, not on a ratio, and differs per head: the heads are stored in
//! the flattened per-head cache ([`adakv::FlatLayerCache`]), so the memory is really freed
//! (kvpress masks the evicted keys and keeps them).
//!
//! ```
//! use kvpress_core::press::{press_from_toml, CacheLayout};
//! use presses_baselines as _; // links `knorm`
//! use presses_dms as _;
//! let press = press_from_toml(
//!     "press = \"dms\"\nthreshold = -18.75\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.0\n",
//! )
//! .unwrap();
//! press.validate().unwrap();
//! assert_eq!(press.describe().cache_layout, CacheLayout::PerHead);
//! ```
#![warn(missing_docs)]

use adakv::FlatLayerCache;
use candle_core::{DType, Tensor};
use kvpress_core::press::{
    below_threshold, inner_scorer, Compression, DecodingEviction, Press, PressDescription,
    PressInput, RatioControl, Scorer, Selection,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

fn default_window() -> usize {
    128
}

/// DMS: per KV head, the tokens before the last `sliding_window_size` whose score (from the
/// inner press) is below `threshold` are evicted; the window and every token scoring at least
/// the threshold are kept. With `decoding = true`, the same goes on while tokens are generated
/// ([`DecodingEviction`]); kvpress's default is the prefill only.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dms {
    /// The scoring press (its ratio is not used).
    pub inner: Box<dyn Press>,
    /// Tokens scoring below it are evicted (the scale is the inner press's: KnormPress scores
    /// are `-‖k‖`).
    pub threshold: f64,
    /// The most recent tokens, never evicted.
    #[serde(default = "default_window")]
    pub sliding_window_size: usize,
    /// Also evict while generating (kvpress's `decoding`): each generated (and question) token
    /// is scored when it is fed, and evicted below the threshold once it leaves the window.
    #[serde(default)]
    pub decoding: bool,
}

impl Dms {
    /// DMS around `inner` at `threshold`, with kvpress's window of 128 tokens, prefill only.
    pub fn new(inner: Box<dyn Press>, threshold: f64) -> Self {
        Self {
            inner,
            threshold,
            sliding_window_size: default_window(),
            decoding: false,
        }
    }

    /// The inner press's scorer, or an error naming what is needed.
    fn scorer(&self) -> Result<&dyn Scorer> {
        inner_scorer("dms", self.inner.as_ref())
    }
}

impl Default for Dms {
    /// A template: no scorer inside yet (configs name one) and threshold 0.
    fn default() -> Self {
        Self::new(Box::new(kvpress_core::NoPress::default()), 0.0)
    }
}

#[typetag::serde(name = "dms")]
impl Press for Dms {
    /// The nominal ratio is 0: what DMS removes depends on the scores.
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        self.inner.validate()?;
        self.scorer()?;
        if !self.threshold.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "dms: threshold {} must be a finite number (tokens scoring below it are evicted)",
                self.threshold
            )));
        }
        if self.decoding && self.inner.describe().needs_attention_weights {
            return Err(Error::InvalidArgument(format!(
                "dms: decoding = true scores every generated token with the inner press, and \
                 `{}` needs attention weights, which decoding steps do not compute; use a \
                 press that scores from keys, values or hidden states (e.g. knorm)",
                kvpress_core::press::press_name(self.inner.as_ref())
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self.inner.describe().needs_attention_weights,
            ratio: RatioControl::OwnedByPress,
            compresses_prefill: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn decoding_eviction(&self) -> Option<DecodingEviction<'_>> {
        match self.decoding {
            true => Some(DecodingEviction {
                scorer: self.scorer().ok()?,
                scorer_ratio: self.inner.compression_ratio(),
                threshold: self.threshold,
                window: self.sliding_window_size,
            }),
            false => None,
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FlatLayerCache::new()))
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        let scores = self
            .scorer()?
            .score(input, self.inner.compression_ratio())?;
        let scores = input.mask_padding(scores)?.to_dtype(DType::F32)?;
        let selection = kept_outside_window(&scores, self.threshold, self.sliding_window_size)?;
        Ok(Compression::select(selection, Some(scores)))
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "dms keeps what scores at least its threshold (and the sliding window); it cannot \
             run at a given compression ratio"
                .to_string(),
        ))
    }
}

/// Per head of `scores` `(batch, n_kv_heads, n)`: the last `window` tokens, and the older ones
/// whose score is not below `threshold` (a NaN score is not below it, as in kvpress).
fn kept_outside_window(scores: &Tensor, threshold: f64, window: usize) -> Result<Selection> {
    let (batch, n_kv_heads, n) = scores.dims3()?;
    let evictable = n.saturating_sub(window);
    let threshold = threshold as f32;
    let kept = scores
        .reshape((batch * n_kv_heads, n))?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|row| {
            (0..n as u32)
                .filter(|&t| {
                    t as usize >= evictable || !below_threshold(row[t as usize], threshold)
                })
                .collect()
        })
        .collect();
    Selection::new(kept, batch, n_kv_heads, n)
}

kvpress_core::register_press!(
    "dms",
    "per head, evicts tokens older than a sliding window that score below a threshold (DMS, dense prefill)",
    || Box::new(Dms::default())
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_window_and_scores_at_the_threshold_stay() -> Result<()> {
        // One sequence, two heads, 6 tokens; window 2: tokens 4 and 5 always stay.
        let scores = Tensor::new(
            &[[
                [-5.0f32, -1.0, -3.0, f32::NAN, -9.0, -9.0],
                [-1.0, -2.0, -2.5, -0.5, -9.0, 0.0],
            ]],
            &Device::Cpu,
        )?;
        let selection = kept_outside_window(&scores, -2.0, 2)?;
        assert_eq!(selection.heads(), &[vec![1, 3, 4, 5], vec![0, 1, 3, 4, 5]]);
        // A window longer than the prompt keeps everything.
        let all = kept_outside_window(&scores, 10.0, 6)?;
        assert!(all.heads().iter().all(|h| h.len() == 6));
        Ok(())
    }
}
