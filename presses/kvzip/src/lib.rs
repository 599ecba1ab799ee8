//! KVzip for kvpress-rs (kvpress 0.5.5's `KVzipPress`): after the prefill, the model is asked
//! to repeat its context ("Repeat the previous context exactly.", chunk by chunk, on top of the
//! context's cache); a context token's score is the most attention any reconstruction query
//! gives it ([`scoring`]), and the tokens with the lowest scores across every layer and KV head
//! are evicted at once ([`selection`]: one global budget, so layers and heads keep different
//! shares). The heads are stored in the flattened per-head cache, so the memory is really freed
//! (kvpress masks the evicted keys and keeps them). KVzip+ (`kvzip_plus_normalization`) divides
//! each reconstruction query's attention by its hidden state's norm and multiplies each token's
//! by the norm of what its value writes into the residual stream (`‖v W_o‖`).
//!
//! The reconstruction costs about one more prefill (the runtime drives it:
//! `kvpress_hooks`' reconstruction pass); the first `n_sink` tokens are always kept; the
//! chat-template prefix (system prompt, user header) is never reconstructed, scores 0 and goes
//! first.
//!
//! ```
//! use kvpress_core::press::{press_from_toml, CacheLayout};
//! use presses_kvzip as _;
//! let press = press_from_toml("press = \"kvzip\"\ncompression_ratio = 0.5\n").unwrap();
//! press.validate().unwrap();
//! assert!(press.reconstruction().is_some());
//! assert_eq!(press.describe().cache_layout, CacheLayout::PerHead);
//! ```
#![warn(missing_docs)]

pub mod scoring;
pub mod selection;

use std::ops::Range;

use adakv::FlatLayerCache;
use candle_core::Tensor;
use kvpress_core::press::{
    CacheLayout, Compression, Press, PressDescription, PressInput, ReconstructionScoring,
    SecondPass, Selection,
};
use kvpress_core::{Error, LayerCache, LayerContext, Result};
use serde::{Deserialize, Serialize};

fn default_n_sink() -> usize {
    4
}

fn default_chunk_size() -> usize {
    2048
}

/// KVzip, with kvpress's parameters and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kvzip {
    /// Fraction of all (layer, KV head, token) entries evicted, in `[0, 1)`.
    #[serde(default)]
    pub compression_ratio: f64,
    /// Evict the same fraction in every layer instead of one budget across layers.
    #[serde(default)]
    pub layerwise: bool,
    /// First tokens always kept (attention sinks).
    #[serde(default = "default_n_sink")]
    pub n_sink: usize,
    /// KVzip+: scores normalised by the query's hidden-state norm and weighted by `‖v W_o‖`.
    #[serde(default)]
    pub kvzip_plus_normalization: bool,
    /// Context tokens reconstructed by each pass.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
}

impl Default for Kvzip {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            layerwise: false,
            n_sink: default_n_sink(),
            kvzip_plus_normalization: false,
            chunk_size: default_chunk_size(),
        }
    }
}

kvpress_core::register_press!(
    "kvzip",
    "scores tokens by how much the model attends to them while reconstructing the context; one budget across all layers and heads (KVzip, KVzip+)",
    || Box::new(Kvzip::default())
);

#[typetag::serde(name = "kvzip")]
impl Press for Kvzip {
    fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.compression_ratio) {
            return Err(Error::InvalidArgument(format!(
                "kvzip: compression_ratio {} must be in [0, 1)",
                self.compression_ratio
            )));
        }
        if self.chunk_size == 0 {
            return Err(Error::InvalidArgument(
                "kvzip: chunk_size must be at least 1 (context tokens per reconstruction pass)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            cache_layout: CacheLayout::PerHead,
            compresses_prefill: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FlatLayerCache::new()))
    }

    fn reconstruction(&self) -> Option<&dyn ReconstructionScoring> {
        Some(self)
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "kvzip scores the context by reconstructing it in a second forward pass and chooses \
             across every layer at once; it runs as the press of a context (run, compress, \
             trace, inspect, fidelity, bench, serve), not layer by layer inside another press"
                .to_string(),
        ))
    }
}

impl ReconstructionScoring for Kvzip {
    fn second_pass(&self) -> SecondPass {
        SecondPass::Reconstruct {
            chunk_size: self.chunk_size,
        }
    }

    fn score_chunk(&self, context: &LayerContext<'_>, chunk: Range<usize>) -> Result<Tensor> {
        scoring::chunk_scores(
            context,
            chunk,
            scoring::Options {
                n_sink: self.n_sink,
                plus_normalization: self.kvzip_plus_normalization,
            },
        )
    }

    fn select(&self, scores: &[Tensor]) -> Result<Vec<Selection>> {
        selection::select(
            scores,
            selection::Budget {
                compression_ratio: self.compression_ratio,
                layerwise: self.layerwise,
                n_sink: self.n_sink,
            },
        )
    }
}
