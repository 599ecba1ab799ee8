//! KVCompose for kvpress-rs (kvpress 0.5.5's `KVComposePress`): after the prefill, the context
//! is fed once more right after itself, and each context token is scored in each KV head by the
//! attention the repeated context gives it ([`scoring`]); one global budget then decides how
//! many tokens each layer keeps ([`selection`]). Structured (the default), every head of a layer
//! keeps the same number of tokens (its own ones): the layers are dense caches of different
//! lengths, usable by any attention kernel. Unstructured, each head keeps its own count, stored
//! in the flattened per-head cache (kvpress masks; here the memory is freed).
//!
//! The second pass costs about one more prefill over twice the context (the runtime drives it:
//! `kvpress_hooks`' second pass, one layer's attention of one head at a time); the context and
//! its repetition must fit the model's positions. Unlike kvpress, whose unstructured variant
//! leaves the second pass's keys and values in the cache (the question then attends to the
//! context twice and reuses its positions), only the context's kept tokens stay.
//!
//! ```
//! use kvpress_core::press::{press_from_toml, CacheLayout};
//! use presses_kvcompose as _;
//! let press = press_from_toml("press = \"kvcompose\"\ncompression_ratio = 0.5\n").unwrap();
//! press.validate().unwrap();
//! assert!(press.reconstruction().is_some());
//! assert_eq!(press.describe().cache_layout, CacheLayout::Dense);
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

use scoring::Aggregation;

fn default_true() -> bool {
    true
}
fn default_max() -> Aggregation {
    Aggregation::Max
}
fn default_mean() -> Aggregation {
    Aggregation::Mean
}

/// KVCompose, with kvpress's parameters and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCompose {
    /// The same count for every head of a layer (dense layers of different lengths), or a count
    /// per head.
    #[serde(default = "default_true")]
    pub structured: bool,
    /// Fraction of all (layer, KV head, token) entries evicted, in `[0, 1)`.
    #[serde(default)]
    pub compression_ratio: f64,
    /// Over the repeated context's queries (`max` or `mean`).
    #[serde(default = "default_max")]
    pub agg_task: Aggregation,
    /// Over the query heads of a KV head.
    #[serde(default = "default_mean")]
    pub agg_group: Aggregation,
    /// Over the heads of a layer, for its composite score (structured).
    #[serde(default = "default_mean")]
    pub agg_head: Aggregation,
    /// Multiply each token's score by its value norm.
    #[serde(default)]
    pub add_v_norm: bool,
    /// Add the mean over a layer's heads to each head's scores.
    #[serde(default = "default_true")]
    pub add_mean_across_heads: bool,
    /// Tokens every layer (and head) keeps at least.
    #[serde(default)]
    pub keep_token_lower_bound: usize,
}

impl Default for KvCompose {
    /// kvpress's defaults (structured, ratio 0).
    fn default() -> Self {
        Self {
            structured: true,
            compression_ratio: 0.0,
            agg_task: Aggregation::Max,
            agg_group: Aggregation::Mean,
            agg_head: Aggregation::Mean,
            add_v_norm: false,
            add_mean_across_heads: true,
            keep_token_lower_bound: 0,
        }
    }
}

kvpress_core::register_press!(
    "kvcompose",
    "scores tokens by the attention of the context read again after itself; one budget across layers, the same count per head of a layer (or per head, unstructured) (KVCompose)",
    || Box::new(KvCompose::default())
);

#[typetag::serde(name = "kvcompose")]
impl Press for KvCompose {
    fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.compression_ratio) {
            return Err(Error::InvalidArgument(format!(
                "kvcompose: compression_ratio {} must be in [0, 1)",
                self.compression_ratio
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            cache_layout: match self.structured {
                true => CacheLayout::Dense,
                false => CacheLayout::PerHead,
            },
            compresses_prefill: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        match self.structured {
            true => None,
            false => Some(Box::new(FlatLayerCache::new())),
        }
    }

    fn reconstruction(&self) -> Option<&dyn ReconstructionScoring> {
        Some(self)
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "kvcompose scores the context by reading it again in a second forward pass and \
             chooses across every layer at once; it runs as the press of a context (run, \
             compress, eval, trace, inspect, fidelity, bench, serve), not layer by layer inside \
             another press"
                .to_string(),
        ))
    }
}

impl ReconstructionScoring for KvCompose {
    fn second_pass(&self) -> SecondPass {
        SecondPass::ContextAgain
    }

    fn score_chunk(&self, context: &LayerContext<'_>, chunk: Range<usize>) -> Result<Tensor> {
        let scores = scoring::layer_scores(
            context,
            scoring::Options {
                task: self.agg_task,
                group: self.agg_group,
                value_norm: self.add_v_norm,
            },
        )?;
        Ok(scores.narrow(2, chunk.start, chunk.len())?)
    }

    fn select(&self, scores: &[Tensor]) -> Result<Vec<Selection>> {
        selection::select(
            scores,
            selection::Budget {
                compression_ratio: self.compression_ratio,
                structured: self.structured,
                head: self.agg_head,
                add_mean_across_heads: self.add_mean_across_heads,
                keep_token_lower_bound: self.keep_token_lower_bound,
            },
        )
    }
}
