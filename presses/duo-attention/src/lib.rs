//! DuoAttention for kvpress-rs (kvpress's `DuoAttentionPress` with `on_the_fly_scoring`): the
//! KV heads are split into retrieval heads, which keep every token, and streaming heads, which
//! keep only the first `sink_size` and the last `recent_size` tokens. Which heads stream is
//! decided once per model, from head scores computed on calibration texts
//! ([`head_scores`]: kvpress's on-the-fly method; the published DuoAttention patterns are a
//! download for six checkpoints and are not used): the `head_compression_ratio` share of all
//! `(layer, KV head)` pairs with the lowest scores. The heads are stored in the flattened
//! per-head cache, so the streaming heads' evicted tokens are really freed (kvpress masks them).
//!
//! Calibration texts: `calibration_texts` (a list), or `calibration_file` (a JSON array of
//! strings, or a text cut into `num_samples` pieces at spaces), else a bundled English text
//! ([`calibration_texts::DEFAULT_TEXT`]) cut into `num_samples` pieces; kvpress samples 50
//! BookSum chapters, a download. The runtime runs them through the model before the first
//! compression (`kvpress_hooks::calibrate`).
//!
//! ```
//! use kvpress_core::press::{press_from_toml, CacheLayout};
//! use presses_duo_attention as _;
//! let press = press_from_toml(
//!     "press = \"duo_attention\"\nhead_compression_ratio = 0.5\non_the_fly_scoring = true\n",
//! )
//! .unwrap();
//! press.validate().unwrap();
//! assert_eq!(press.describe().cache_layout, CacheLayout::PerHead);
//! assert!(press.calibration().is_some());
//! ```
#![warn(missing_docs)]

pub mod calibration_texts;
pub mod head_scores;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use adakv::FlatLayerCache;
use kvpress_core::press::{
    CalibrationSample, Compression, ModelCalibration, Press, PressInput, Selection,
};
use kvpress_core::rope::RotaryEmbedding;
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}
fn default_sink_size() -> usize {
    128
}
fn default_recent_size() -> usize {
    256
}
fn default_num_samples() -> usize {
    50
}
fn default_q_len() -> usize {
    500
}

/// DuoAttention with head scores computed on the fly from the model.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuoAttention {
    /// Share of all `(layer, KV head)` pairs made streaming heads (the lowest head scores),
    /// rounded to a count as Python rounds (ties to even).
    #[serde(default)]
    pub head_compression_ratio: f64,
    /// Compute the head scores from the model (kvpress's default, `false`, downloads
    /// DuoAttention's published patterns, which kvpress-rs does not: `false` is refused).
    #[serde(default = "default_true")]
    pub on_the_fly_scoring: bool,
    /// First tokens a streaming head keeps (kvpress: 128 with on-the-fly scoring).
    #[serde(default = "default_sink_size")]
    pub sink_size: usize,
    /// Last tokens a streaming head keeps (kvpress: 256 with on-the-fly scoring).
    #[serde(default = "default_recent_size")]
    pub recent_size: usize,
    /// The calibration texts, in the order they are summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_texts: Option<Vec<String>>,
    /// A file of calibration texts: a JSON array of strings, or one text cut into
    /// `num_samples` pieces at spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_file: Option<PathBuf>,
    /// Pieces a calibration text is cut into (kvpress: 50 samples).
    #[serde(default = "default_num_samples")]
    pub num_samples: usize,
    /// Positions of the synthetic attention the head scores are computed over (kvpress: 500).
    #[serde(default = "default_q_len")]
    pub q_len: usize,
    /// What the calibration found (not part of the config).
    #[serde(skip)]
    calibrated: OnceLock<Calibrated>,
}

/// The head scores and the texts they came from.
#[derive(Debug)]
struct Calibrated {
    /// `[layer][kv_head]`.
    head_scores: Vec<Vec<f32>>,
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
}

impl Default for DuoAttention {
    /// No streaming heads (kvpress's default ratio), on-the-fly scores, kvpress's sizes.
    fn default() -> Self {
        Self::new(0.0)
    }
}

impl DuoAttention {
    /// DuoAttention making `head_compression_ratio` of the heads streaming heads, with kvpress's
    /// on-the-fly sizes and the bundled calibration text.
    pub fn new(head_compression_ratio: f64) -> Self {
        Self {
            head_compression_ratio,
            on_the_fly_scoring: true,
            sink_size: default_sink_size(),
            recent_size: default_recent_size(),
            calibration_texts: None,
            calibration_file: None,
            num_samples: default_num_samples(),
            q_len: default_q_len(),
            calibrated: OnceLock::new(),
        }
    }

    /// The head scores `[layer][kv_head]`, once calibrated.
    pub fn head_scores(&self) -> Option<&[Vec<f32>]> {
        self.calibrated.get().map(|c| c.head_scores.as_slice())
    }

    /// The streaming `(layer, kv_head)` pairs at `ratio`: the `round(ratio * pairs)` lowest
    /// head scores (ordered by score, ties by position), sorted.
    pub fn streaming_heads(&self, ratio: f64) -> Result<Vec<(usize, usize)>> {
        let scores = self.head_scores().ok_or_else(not_calibrated)?;
        let mut pairs: Vec<(usize, usize)> = scores
            .iter()
            .enumerate()
            .flat_map(|(l, row)| (0..row.len()).map(move |h| (l, h)))
            .collect();
        let n_streaming = (ratio * pairs.len() as f64).round_ties_even() as usize;
        pairs.sort_by(|a, b| scores[a.0][a.1].total_cmp(&scores[b.0][b.1]));
        let mut streaming = pairs[..n_streaming.min(pairs.len())].to_vec();
        streaming.sort_unstable();
        Ok(streaming)
    }

    fn check_ratio(ratio: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::InvalidArgument(format!(
                "duo_attention: head_compression_ratio {ratio} must be within [0, 1] (the share \
                 of heads made streaming heads)"
            )));
        }
        Ok(())
    }
}

fn not_calibrated() -> Error {
    Error::InvalidArgument(
        "duo_attention: the head scores are not computed yet; the runtime calibrates the press \
         on the model before compressing (kvpress_hooks::calibrate)"
            .to_string(),
    )
}

#[typetag::serde(name = "duo_attention")]
impl Press for DuoAttention {
    /// The share of streaming heads (the share of the cache evicted is smaller: streaming
    /// heads keep their sinks and recent tokens).
    fn compression_ratio(&self) -> f64 {
        self.head_compression_ratio
    }

    fn ratio_field(&self) -> &'static str {
        "head_compression_ratio"
    }

    fn validate(&self) -> Result<()> {
        Self::check_ratio(self.head_compression_ratio)?;
        let invalid =
            |message: &str| Err(Error::InvalidArgument(format!("duo_attention: {message}")));
        if !self.on_the_fly_scoring {
            return invalid(
                "on_the_fly_scoring = false loads DuoAttention's published attention patterns \
                 (a download, for six 7-8B checkpoints), which kvpress-rs does not; set \
                 on_the_fly_scoring = true to compute the head scores from the model",
            );
        }
        if self.recent_size == 0 {
            return invalid("recent_size must be at least 1 (kvpress masks nothing with 0)");
        }
        if self.num_samples == 0 || self.q_len == 0 {
            return invalid("num_samples and q_len must be at least 1");
        }
        match (&self.calibration_texts, &self.calibration_file) {
            (Some(_), Some(_)) => invalid("give calibration_texts or calibration_file, not both"),
            (Some(texts), None) if texts.is_empty() => {
                invalid("calibration_texts is empty; give at least one text")
            }
            _ => Ok(()),
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FlatLayerCache::new()))
    }

    fn calibration(&self) -> Option<&dyn ModelCalibration> {
        Some(self)
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        Self::check_ratio(ratio)?;
        let scores = self.head_scores().ok_or_else(not_calibrated)?;
        let n_kv_heads = input.shape.n_kv_heads;
        if scores.len() != input.n_layers || scores.iter().any(|row| row.len() != n_kv_heads) {
            return Err(Error::InvalidArgument(format!(
                "duo_attention: calibrated for {} layers of {} KV heads, used on a model with {} \
                 of {n_kv_heads}",
                scores.len(),
                scores.first().map_or(0, Vec::len),
                input.n_layers
            )));
        }
        if input.front_padding.is_some() {
            return Err(Error::Unsupported(
                "duo_attention compresses a context's prefill, not a padded batch".to_string(),
            ));
        }
        let streaming: Vec<usize> = self
            .streaming_heads(ratio)?
            .into_iter()
            .filter(|&(l, _)| l == input.layer_idx)
            .map(|(_, h)| h)
            .collect();
        let (batch, n) = (input.batch()?, input.n_tokens()?);
        let all: Vec<u32> = (0..n as u32).collect();
        // kvpress masks keys[sink_size : -recent_size] of a streaming head.
        let evicted = self.sink_size..n.saturating_sub(self.recent_size).max(self.sink_size);
        let kept_streaming: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&t| !evicted.contains(&(t as usize)))
            .collect();
        let kept = (0..batch)
            .flat_map(|_| 0..n_kv_heads)
            .map(|h| match streaming.contains(&h) {
                true => kept_streaming.clone(),
                false => all.clone(),
            })
            .collect();
        Ok(Compression::select(
            Selection::new(kept, batch, n_kv_heads, n)?,
            None,
        ))
    }
}

impl ModelCalibration for DuoAttention {
    fn texts(&self) -> Result<Vec<String>> {
        self.validate()?;
        match (&self.calibration_texts, &self.calibration_file) {
            (Some(texts), _) => Ok(texts.clone()),
            (None, Some(path)) => calibration_texts::read_file(path, self.num_samples),
            (None, None) => {
                calibration_texts::cut_at_spaces(calibration_texts::DEFAULT_TEXT, self.num_samples)
            }
        }
    }

    fn is_calibrated(&self) -> bool {
        self.calibrated.get().is_some()
    }

    fn calibrate(&self, samples: &[CalibrationSample], rotary: &RotaryEmbedding) -> Result<()> {
        let head_scores = head_scores::head_scores(samples, rotary, self.q_len)?;
        // A press calibrated twice at once keeps the first result (both are the same).
        let _ = self.calibrated.set(Calibrated {
            head_scores,
            texts: samples.iter().map(|s| s.text.clone()).collect(),
            ids: samples.iter().map(|s| s.ids.clone()).collect(),
        });
        Ok(())
    }

    fn notes(&self) -> BTreeMap<String, serde_json::Value> {
        let Some(calibrated) = self.calibrated.get() else {
            return BTreeMap::new();
        };
        let streaming = self
            .streaming_heads(self.head_compression_ratio)
            .unwrap_or_default();
        let notes = [
            (
                "streaming_heads",
                serde_json::json!(streaming.iter().map(|&(l, h)| [l, h]).collect::<Vec<_>>()),
            ),
            ("head_scores", serde_json::json!(calibrated.head_scores)),
            ("sink_size", serde_json::json!(self.sink_size)),
            ("recent_size", serde_json::json!(self.recent_size)),
            (
                "calibration",
                serde_json::json!({
                    "texts": calibrated.texts,
                    "ids": calibrated.ids,
                    "q_len": self.q_len,
                }),
            ),
        ];
        notes.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

kvpress_core::register_press!(
    "duo_attention",
    "streaming heads (lowest head scores, computed on the fly from the model) keep sinks and recent tokens, retrieval heads everything (DuoAttention)",
    || Box::new(DuoAttention::default())
);
