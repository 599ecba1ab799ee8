//! [`PressHook`]: runs a press on every layer after its prefill attention and records what it
//! kept.

use std::time::Instant;

use candle_core::Tensor;
use kvpress_core::press::{CachedKeysValues, Press, Selection};
use kvpress_core::{AttentionHook, ForwardPhase, LayerContext};

/// What a press did to one layer.
#[derive(Debug, Clone)]
pub struct LayerRecord {
    /// Index of the layer.
    pub layer_idx: usize,
    /// The kept tokens of each KV head.
    pub selection: Selection,
    /// The press's scores `(batch, n_kv_heads, n_tokens)`, for the layers asked for.
    pub scores: Option<Tensor>,
    /// Cache length after compression.
    pub cache_len: usize,
    /// Bytes the layer's cache allocated before compression.
    pub bytes_before: usize,
    /// Bytes the layer's cache allocates after compression.
    pub bytes_after: usize,
    /// Seconds spent reading the cache, scoring, selecting and compacting.
    pub seconds: f64,
}

/// An [`AttentionHook`] that compresses each layer's cache with a press during the prefill
/// (later forwards — questions, decoding — are left alone, as in kvpress).
#[derive(Debug)]
pub struct PressHook<'p> {
    press: &'p dyn Press,
    score_layers: Vec<usize>,
    records: Vec<LayerRecord>,
}

impl<'p> PressHook<'p> {
    /// A hook running `press`; it keeps the scores of the layers in `score_layers`.
    pub fn new(press: &'p dyn Press, score_layers: &[usize]) -> kvpress_core::Result<Self> {
        press.validate()?;
        Ok(Self {
            press,
            score_layers: score_layers.to_vec(),
            records: Vec::new(),
        })
    }

    /// What the press did, one record per layer in layer order.
    pub fn into_records(self) -> Vec<LayerRecord> {
        self.records
    }
}

impl AttentionHook for PressHook<'_> {
    fn wants_attention_weights(&self, _layer_idx: usize, phase: ForwardPhase) -> bool {
        phase == ForwardPhase::Prefill && self.press.needs_attention_weights()
    }

    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if context.phase != ForwardPhase::Prefill {
            return Ok(());
        }
        let start = Instant::now();
        let bytes_before = context.cache.bytes_reserved();
        let cached = CachedKeysValues::of(context)?;
        let compression = self.press.compress(&cached.input(context))?;
        drop(cached);
        context
            .cache
            .compact(&compression.selection, compression.keys.as_ref())?;
        context.cache.shrink_to_fit()?;
        let keep_scores = self.score_layers.contains(&context.layer_idx);
        self.records.push(LayerRecord {
            layer_idx: context.layer_idx,
            selection: compression.selection,
            scores: compression.scores.filter(|_| keep_scores),
            cache_len: context.cache.len(),
            bytes_before,
            bytes_after: context.cache.bytes_reserved(),
            seconds: start.elapsed().as_secs_f64(),
        });
        Ok(())
    }
}
