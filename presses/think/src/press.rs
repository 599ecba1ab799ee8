//! [`Think`]: the ThinK press (kvpress's `ThinKPress`).

use kvpress_core::press::{
    CacheLayout, Compression, KeyChannels, LayerNote, NoteScope, Press, PressDescription,
    PressInput, RatioControl, Selection,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

use crate::cache::ChannelPrunedCache;
use crate::channels::{channel_scores, lowest_channels, n_pruned, zero_channels};

/// ThinK: prunes the `key_channel_compression_ratio` share of key channels whose score (mean
/// `q²` of the last `window_size` queries times mean `k²` of the cached keys) is lowest, in every
/// KV head; keeps every token.
///
/// kvpress sets the pruned channels of the cached keys to zero and keeps their memory; here the
/// press brings its own layer cache ([`ChannelPrunedCache`]), which stores only the kept channels
/// of the compressed context (tokens appended later keep every channel, as in kvpress), and
/// attention computes what kvpress computes. In `composed`, ThinK runs on the keys the presses
/// before it kept. Its ratio (`key_channel_compression_ratio / 2`, the share of KV memory it
/// removes, as kvpress reports it) cannot be set from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Think {
    /// Fraction of key channels removed, in `[0, 1]`.
    pub key_channel_compression_ratio: f64,
    /// Number of last queries whose squared values weigh the channels (at least 1).
    pub window_size: usize,
}

impl Default for Think {
    fn default() -> Self {
        Self {
            key_channel_compression_ratio: 0.0,
            window_size: 32,
        }
    }
}

/// `[head]` → numbers, as a JSON list of lists.
fn per_head<T: Serialize>(rows: &[Vec<T>]) -> serde_json::Value {
    serde_json::to_value(rows).unwrap_or(serde_json::Value::Null)
}

impl Think {
    /// What one layer keeps: every token, and in every head the channels that score highest.
    fn prune(&self, input: &PressInput<'_>) -> Result<Compression> {
        let (batch, n_kv_heads, n_tokens, head_dim) = input.keys.dims4()?;
        let scores = channel_scores(input, self.window_size)?;
        let pruned = lowest_channels(
            &scores,
            n_pruned(head_dim, self.key_channel_compression_ratio),
        )?;
        let score_rows: Vec<Vec<f32>> = scores.flatten_to(1)?.to_vec2()?;
        let mut selection = Selection::all(batch, n_kv_heads, n_tokens);
        let mut keys = None;
        if pruned.iter().any(|p| !p.is_empty()) {
            let kept = KeyChannels::from_pruned(&pruned, head_dim)?;
            selection = selection.with_key_channels(kept)?;
            keys = Some(zero_channels(input.keys, &pruned)?);
        }
        let mut compression = Compression::select(selection, None)
            .with_note(LayerNote {
                name: "zeroed_channels",
                scope: NoteScope::EveryLayer,
                value: per_head(&pruned),
            })
            .with_note(LayerNote {
                name: "channel_scores",
                scope: NoteScope::RecordedLayers,
                value: per_head(&score_rows),
            });
        // Later presses of a `composed` see the zeroed keys, as in kvpress.
        compression.keys = keys;
        Ok(compression)
    }
}

#[typetag::serde(name = "think")]
impl Press for Think {
    fn compression_ratio(&self) -> f64 {
        self.key_channel_compression_ratio / 2.0
    }

    fn validate(&self) -> Result<()> {
        let ratio = self.key_channel_compression_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::InvalidArgument(format!(
                "think: key_channel_compression_ratio {ratio} is outside [0, 1]"
            )));
        }
        if self.window_size == 0 {
            return Err(Error::InvalidArgument(
                "think: window_size must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(ChannelPrunedCache::new()))
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            // Every head keeps every token, with only some key channels of the context.
            cache_layout: CacheLayout::ChannelPruned,
            ratio: RatioControl::OwnedByPress,
            ..PressDescription::defaults_for(self)
        }
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        if self.key_channel_compression_ratio == 0.0 {
            return Compression::keep_all(input);
        }
        self.prune(input)
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        if ratio == self.compression_ratio() {
            return self.compress(input);
        }
        Err(Error::Unsupported(format!(
            "think: its compression ratio is key_channel_compression_ratio / 2 ({}) and cannot \
             be set to {ratio} from outside; set key_channel_compression_ratio",
            self.compression_ratio()
        )))
    }
}

kvpress_core::register_press!(
    "think",
    "prunes the key channels of lowest query-key energy (ThinK); stores only the kept channels",
    || Box::new(Think::default())
);
