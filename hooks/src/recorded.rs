//! A prefill recorded once and compressed by any number of presses afterwards: presses run after
//! each layer's prefill attention, so the prefill itself is the same for every press and ratio.

use std::time::Instant;

use candle_core::Tensor;
use kvpress_core::press::{CachedKeysValues, Compression, Press, PressInput};
use kvpress_core::{AttentionHook, AttentionShape, ForwardPhase, LayerContext, ModelCache};
use kvpress_models::Model;

use crate::press_hook::LayerRecord;
use crate::session::{continue_positions, new_cache_for, CompressionReport, ContextSession};
use crate::{Error, Result};

/// What one layer's prefill exposed to presses.
#[derive(Debug, Clone)]
struct RecordedLayer {
    shape: AttentionShape,
    hidden_states: Tensor,
    queries: Tensor,
    cached: CachedKeysValues,
}

/// Records every layer's press input during a prefill.
#[derive(Debug, Default)]
struct Recorder {
    layers: Vec<RecordedLayer>,
}

impl AttentionHook for Recorder {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if context.phase == ForwardPhase::Prefill {
            self.layers.push(RecordedLayer {
                shape: context.shape,
                hidden_states: context.hidden_states.clone(),
                queries: context.queries.clone(),
                cached: CachedKeysValues::of(context)?,
            });
        }
        Ok(())
    }
}

/// A context prefilled once, kept with everything a press sees in each layer (hidden states,
/// queries, keys, values: about `T * (hidden + 2 * kv_dim + q_dim) * 4` bytes per layer), so that
/// many presses compress it without running the model again.
#[derive(Debug)]
pub struct RecordedPrefill {
    layers: Vec<RecordedLayer>,
    last_logits: Tensor,
    n_tokens: usize,
    prefill_seconds: f64,
}

impl RecordedPrefill {
    /// Prefills `context_ids` and records every layer.
    pub fn record(model: &Model, context_ids: &[u32]) -> Result<Self> {
        let mut recorder = Recorder::default();
        let start = Instant::now();
        let session = ContextSession::prefill(model, context_ids, Some(&mut recorder))?;
        Ok(Self {
            layers: recorder.layers,
            last_logits: session.last_logits,
            n_tokens: context_ids.len(),
            prefill_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Seconds the recorded prefill took.
    pub fn prefill_seconds(&self) -> f64 {
        self.prefill_seconds
    }

    /// Compresses the recorded context with `press`, as [`ContextSession::compress`] would,
    /// without running the model. Presses that need attention weights are refused (the record
    /// does not keep them: use `ContextSession::compress`).
    pub fn compress(
        &self,
        model: &Model,
        press: &dyn Press,
        score_layers: &[usize],
    ) -> Result<(ContextSession, CompressionReport)> {
        let mut outputs = self.compress_with(model, press, 1, score_layers, |input| {
            Ok(vec![press.compress(input)?])
        })?;
        Ok(outputs.remove(0))
    }

    /// Compresses the recorded context with `press` at each of `compression_ratios` (the
    /// press's own ratio is ignored), one session per ratio, each as [`Self::compress`] would
    /// give for the press at that ratio. Scorers whose scores do not depend on the ratio score
    /// each layer once ([`Press::compress_at_ratios`]); each report counts an equal share of
    /// the shared compression time.
    pub fn compress_at_ratios(
        &self,
        model: &Model,
        press: &dyn Press,
        compression_ratios: &[f64],
        score_layers: &[usize],
    ) -> Result<Vec<(ContextSession, CompressionReport)>> {
        self.compress_with(
            model,
            press,
            compression_ratios.len(),
            score_layers,
            |input| Ok(press.compress_at_ratios(input, compression_ratios)?),
        )
    }

    /// Runs `decide` on every recorded layer, which gives `n_outputs` compressions per layer,
    /// and builds one compressed cache from each.
    fn compress_with(
        &self,
        model: &Model,
        press: &dyn Press,
        n_outputs: usize,
        score_layers: &[usize],
        decide: impl Fn(&PressInput<'_>) -> Result<Vec<Compression>>,
    ) -> Result<Vec<(ContextSession, CompressionReport)>> {
        press.validate()?;
        crate::calibration::calibrate(model, press)?;
        if press.describe().needs_attention_weights {
            return Err(Error::InvalidInput(
                "this press needs attention weights, which a recorded prefill does not keep"
                    .to_string(),
            ));
        }
        let mut caches = (0..n_outputs)
            .map(|_| new_cache_for(model, press))
            .collect::<Result<Vec<_>>>()?;
        let mut records: Vec<Vec<LayerRecord>> = vec![Vec::new(); n_outputs];
        for layer_idx in 0..self.layers.len() {
            let start = Instant::now();
            let compressions = decide(&self.press_input(model, layer_idx)?)?;
            if compressions.len() != n_outputs {
                return Err(Error::InvalidInput(format!(
                    "a press gave {} compressions for {n_outputs} ratios",
                    compressions.len()
                )));
            }
            let decided = start.elapsed().as_secs_f64() / n_outputs as f64;
            for ((compression, cache), records) in
                compressions.into_iter().zip(&mut caches).zip(&mut records)
            {
                let keep_scores = score_layers.contains(&layer_idx);
                let record = self.store(cache, layer_idx, compression, keep_scores)?;
                records.push(LayerRecord {
                    seconds: decided + record.seconds,
                    ..record
                });
            }
        }
        caches
            .into_iter()
            .zip(records)
            .map(|(cache, records)| self.session(press, cache, records))
            .collect()
    }

    /// What a press sees of recorded layer `layer_idx`.
    fn press_input<'a>(&'a self, model: &'a Model, layer_idx: usize) -> Result<PressInput<'a>> {
        let layer = &self.layers[layer_idx];
        let projections = model
            .attention_projections(layer_idx)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no layer {layer_idx}")))?;
        Ok(PressInput {
            layer_idx,
            n_layers: self.layers.len(),
            shape: layer.shape,
            hidden_states: &layer.hidden_states,
            queries: &layer.queries,
            query_position: 0,
            keys: &layer.cached.keys,
            values: &layer.cached.values,
            attention_weights: None,
            rotary: model.rotary(),
            projections,
            front_padding: None,
            question_tokens: 0,
            attention_history: None,
        })
    }

    /// Stores the tokens `compression` keeps of recorded layer `layer_idx` in `cache`.
    fn store(
        &self,
        cache: &mut ModelCache,
        layer_idx: usize,
        compression: Compression,
        keep_scores: bool,
    ) -> Result<LayerRecord> {
        let start = Instant::now();
        let layer = &self.layers[layer_idx];
        let layer_cache = cache
            .layer_mut(layer_idx)
            .ok_or_else(|| Error::InvalidInput("cache layers".to_string()))?;
        let bytes_before = layer_cache.store_selected(
            &layer.cached.keys,
            &layer.cached.values,
            &compression.selection,
            compression.keys.as_ref(),
        )?;
        Ok(LayerRecord {
            layer_idx,
            cache_len: layer_cache.len(),
            bytes_before,
            bytes_after: layer_cache.bytes_reserved(),
            scores: compression.scores.filter(|_| keep_scores),
            notes: crate::press_hook::kept_notes(compression.notes, keep_scores),
            selection: compression.selection.without_values(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The session over one compressed cache, with its report.
    fn session(
        &self,
        press: &dyn Press,
        mut cache: ModelCache,
        records: Vec<LayerRecord>,
    ) -> Result<(ContextSession, CompressionReport)> {
        continue_positions(press, &mut cache, self.n_tokens);
        let compression_seconds: f64 = records.iter().map(|r| r.seconds).sum();
        let report = CompressionReport::new(
            self.n_tokens,
            self.prefill_seconds + compression_seconds,
            records,
            &cache,
        );
        let mut session = ContextSession::from_cache(cache, self.last_logits.clone());
        session.set_press(press)?;
        Ok((session, report))
    }
}
