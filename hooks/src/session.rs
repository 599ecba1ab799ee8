//! Compress once, answer many: a prefilled (and possibly compressed) context and the questions
//! asked of it.

use std::time::Instant;

use candle_core::{DType, Tensor};
use kvpress_core::press::{CacheLayout, Press};
use kvpress_core::{AttentionHook, ModelCache};
use kvpress_models::{generate_until, GenerationConfig, GenerationOutput, KvStorage, Model};

use crate::decoding_eviction::WindowScores;
use crate::press_hook::{LayerRecord, PressHook};
use crate::Result;

/// A context prefilled into a cache (and compressed by whatever hook ran during prefill).
/// Each answer appends to the cache and is then rewound, so every question sees the same context.
#[derive(Debug)]
pub struct ContextSession {
    cache: ModelCache,
    context_lengths: Vec<usize>,
    context_seen: usize,
    /// f32 logits of the last context token, `(vocab,)`.
    pub last_logits: Tensor,
    /// The press that compresses while answers are generated, when the session's press does
    /// ([`kvpress_core::PressDescription::compresses_while_decoding`]).
    decoding_press: Option<Box<dyn Press>>,
    /// Decode-time compressions (layer by layer) during the last answer.
    last_answer_compressions: usize,
    /// For a press that evicts by threshold while decoding (DMS): the scores of the context's
    /// last tokens, which wait in its sliding window.
    window_scores: WindowScores,
}

/// What compressing a context did.
#[derive(Debug, Clone)]
pub struct CompressionReport {
    /// Tokens of the context.
    pub context_tokens: usize,
    /// One record per layer.
    pub layers: Vec<LayerRecord>,
    /// Seconds of the whole prefill forward, compression included.
    pub prefill_seconds: f64,
    /// Seconds spent compressing (reading the cache, scoring, selecting, compacting).
    pub compression_seconds: f64,
    /// Bytes the uncompressed context cache allocated (K and V, all layers).
    pub kv_bytes_full: usize,
    /// Bytes the compressed context cache allocates (K and V, all layers).
    pub kv_bytes: usize,
}

impl CompressionReport {
    /// The report of a context of `context_tokens` tokens whose layers were compressed as
    /// `layers` records, into `cache`; `prefill_seconds` includes the compression.
    pub fn new(
        context_tokens: usize,
        prefill_seconds: f64,
        layers: Vec<LayerRecord>,
        cache: &ModelCache,
    ) -> Self {
        Self {
            context_tokens,
            prefill_seconds,
            compression_seconds: layers.iter().map(|l| l.seconds).sum(),
            kv_bytes_full: layers.iter().map(|l| l.bytes_before).sum(),
            kv_bytes: cache.bytes_reserved(),
            layers,
        }
    }

    /// Fraction of `(layer, head, token)` entries kept.
    pub fn kept_fraction(&self) -> f64 {
        crate::press_hook::kept_fraction(&self.layers)
    }

    /// Cache length of every layer after compression.
    pub fn cache_lengths(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.cache_len).collect()
    }
}

/// An empty cache with the layout `press` needs ([`Press::new_layer_cache`], e.g. the flattened
/// per-head cache of head-wise presses), else the model's dense cache. Head-wise presses store
/// their heads in the model's KV-cache storage: the flattened cache in f32, f16 or bf16, and a
/// quantized KV cache (`--kv-dtype q8|q4`), which stores ragged heads itself, as it is.
pub fn new_cache_for(model: &Model, press: &dyn Press) -> Result<ModelCache> {
    if press.new_layer_cache().is_none() {
        return Ok(model.new_cache());
    }
    let storage = model.kv_storage();
    let layout = press.describe().cache_layout;
    let n_layers = model.config().n_layers;
    match (storage, layout) {
        (KvStorage::Float(DType::F32), _) => {}
        (KvStorage::Float(dtype), CacheLayout::PerHead) => {
            let layers = (0..n_layers)
                .map(|_| {
                    let layer = adakv::FlatLayerCache::with_dtype(dtype)?;
                    Ok(Box::new(layer) as Box<dyn kvpress_core::LayerCache>)
                })
                .collect::<Result<_>>()?;
            return Ok(ModelCache::from_layers(layers));
        }
        (KvStorage::Quantized(_), CacheLayout::PerHead) => return Ok(model.new_cache()),
        _ => {
            return Err(crate::Error::InvalidInput(format!(
                "this press keeps only some key channels per head (think), in its own f32 \
                 cache; a {storage} KV cache (--kv-dtype) is not supported with it: use \
                 --kv-dtype f32, or a press that keeps every key channel"
            )))
        }
    }
    let layers = (0..n_layers)
        .filter_map(|_| press.new_layer_cache())
        .collect();
    Ok(ModelCache::from_layers(layers))
}

/// Sets where tokens after a compressed context of `context_tokens` tokens go: at the original
/// positions, or right after the compressed length for presses that re-rotate keys.
pub(crate) fn continue_positions(press: &dyn Press, cache: &mut ModelCache, context_tokens: usize) {
    let next = if press.describe().rerotates_keys {
        cache.lengths().into_iter().max().unwrap_or(0)
    } else {
        context_tokens
    };
    cache.set_seen_tokens(next);
}

impl ContextSession {
    /// Prefills `context_ids` in one forward, running `hook` in every layer; the cache is then
    /// shrunk to what it stores.
    pub fn prefill(
        model: &Model,
        context_ids: &[u32],
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Self> {
        Self::prefill_into(model, model.new_cache(), context_ids, hook)
    }

    /// [`Self::prefill`] into a given (empty) cache, e.g. one of another layout.
    pub fn prefill_into(
        model: &Model,
        mut cache: ModelCache,
        context_ids: &[u32],
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Self> {
        let input = Tensor::new(context_ids, model.device())?.unsqueeze(0)?;
        let last_logits = model.forward(&input, &mut cache, hook)?.squeeze(0)?;
        for layer_idx in 0..cache.n_layers() {
            if let Some(layer) = cache.layer_mut(layer_idx) {
                layer.shrink_to_fit()?;
            }
        }
        Ok(Self::from_cache(cache, last_logits))
    }

    /// Prefills `context_ids` and compresses every layer with `press`, keeping the press's
    /// scores of the layers in `score_layers` in the report. The cache has the layout the press
    /// asks for ([`Press::new_layer_cache`]: the flattened per-head cache for head-wise presses),
    /// else the model's dense cache. With a press that re-rotates keys, later tokens continue
    /// from the compressed length instead of the original one.
    pub fn compress(
        model: &Model,
        context_ids: &[u32],
        press: &dyn Press,
        score_layers: &[usize],
    ) -> Result<(Self, CompressionReport)> {
        Self::compress_prefill(model, context_ids, 0, press, score_layers)
    }

    /// [`Self::compress`] for a press that compresses the context for the question asked of it
    /// ([`kvpress_core::press::PressDescription::needs_question`], Finch): `prefill_ids` is the
    /// context followed by the question's `question_tokens` tokens, prefilled together; the
    /// session's context is then what the press kept of both, and only the rest of the prompt
    /// (the chat template's end of turn and assistant header) should be answered from it.
    pub fn compress_with_question(
        model: &Model,
        prefill_ids: &[u32],
        question_tokens: usize,
        press: &dyn Press,
        score_layers: &[usize],
    ) -> Result<(Self, CompressionReport)> {
        if question_tokens == 0 || question_tokens >= prefill_ids.len() {
            return Err(crate::Error::InvalidInput(format!(
                "the question ({question_tokens} tokens) must be at least one token and shorter \
                 than the prefill with the context ({} tokens)",
                prefill_ids.len()
            )));
        }
        Self::compress_prefill(model, prefill_ids, question_tokens, press, score_layers)
    }

    fn compress_prefill(
        model: &Model,
        prefill_ids: &[u32],
        question_tokens: usize,
        press: &dyn Press,
        score_layers: &[usize],
    ) -> Result<(Self, CompressionReport)> {
        if let Some(scoring) = press.reconstruction() {
            if question_tokens > 0 {
                return Err(crate::Error::InvalidInput(
                    "a press that reconstructs the context scores it without a question"
                        .to_string(),
                ));
            }
            return Self::compress_by_reconstruction(
                model,
                prefill_ids,
                press,
                scoring,
                score_layers,
            );
        }
        crate::calibration::calibrate(model, press)?;
        let mut hook = PressHook::new(press, score_layers)?.with_question_tokens(question_tokens);
        let start = Instant::now();
        let cache = new_cache_for(model, press)?;
        let mut session = Self::prefill_into(model, cache, prefill_ids, Some(&mut hook))?;
        let prefill_seconds = start.elapsed().as_secs_f64();
        continue_positions(press, &mut session.cache, prefill_ids.len());
        session.context_seen = session.cache.seen_tokens();
        session.set_press(press)?;
        session.window_scores = hook.take_window_scores();
        let report = CompressionReport::new(
            prefill_ids.len(),
            prefill_seconds,
            hook.into_records(),
            &session.cache,
        );
        Ok((session, report))
    }

    /// [`Self::compress`] for a press that scores by reconstructing the context (KVzip): the
    /// context is prefilled whole into the model's own cache, the reconstruction pass scores it
    /// there ([`crate::reconstruction`]), then the layers move into the press's layout (the
    /// flattened per-head cache, for float storage) and are compacted. The report's prefill
    /// time includes the pass.
    fn compress_by_reconstruction(
        model: &Model,
        context_ids: &[u32],
        press: &dyn Press,
        scoring: &dyn kvpress_core::press::ReconstructionScoring,
        score_layers: &[usize],
    ) -> Result<(Self, CompressionReport)> {
        press.validate()?;
        // Made (and a context too long to be reconstructed refused) before the prefill.
        let chunks =
            crate::reconstruction::second_pass_chunks(model, context_ids, scoring.second_pass())?;
        let start = Instant::now();
        let mut cache = model.new_cache();
        let input = Tensor::new(context_ids, model.device())?.unsqueeze(0)?;
        let last_logits = model.forward(&input, &mut cache, None)?.squeeze(0)?;
        let pass_start = Instant::now();
        let scores =
            crate::reconstruction::score(model, &mut cache, context_ids.len(), &chunks, scoring)?;
        let selections = scoring.select(&scores)?;
        let mut cache = match model.kv_storage() {
            // A quantized cache stores ragged heads itself.
            KvStorage::Quantized(_) => cache,
            KvStorage::Float(_) => {
                crate::reconstruction::move_layers(cache, new_cache_for(model, press)?)?
            }
        };
        let shared = pass_start.elapsed().as_secs_f64() / cache.n_layers().max(1) as f64;
        let records =
            crate::reconstruction::compact(&mut cache, selections, scores, score_layers, shared)?;
        let prefill_seconds = start.elapsed().as_secs_f64();
        continue_positions(press, &mut cache, context_ids.len());
        let mut session = Self::from_cache(cache, last_logits);
        session.set_press(press)?;
        let report =
            CompressionReport::new(context_ids.len(), prefill_seconds, records, &session.cache);
        Ok((session, report))
    }

    /// A session over a cache that already holds a context (e.g. loaded from a file); answers
    /// rewind to it.
    pub fn from_cache(cache: ModelCache, last_logits: Tensor) -> Self {
        Self {
            context_lengths: cache.lengths(),
            context_seen: cache.seen_tokens(),
            cache,
            last_logits,
            decoding_press: None,
            last_answer_compressions: 0,
            window_scores: WindowScores::default(),
        }
    }

    /// A copy of this session (its cache copied layer by layer), to answer from the same
    /// context concurrently.
    pub fn try_clone(&self) -> Result<Self> {
        let snapshots = crate::snapshot::snapshot_layers(&self.cache)?;
        let cache = crate::snapshot::cache_from_snapshots(&snapshots, self.cache.seen_tokens())?;
        Ok(Self {
            cache,
            context_lengths: self.context_lengths.clone(),
            context_seen: self.context_seen,
            last_logits: self.last_logits.clone(),
            decoding_press: self
                .decoding_press
                .as_deref()
                .map(kvpress_core::press::press_clone)
                .transpose()?,
            last_answer_compressions: 0,
            window_scores: self.window_scores.clone(),
        })
    }

    /// Tells the session which press made its context: if that press compresses while tokens
    /// are generated, every answer runs its schedule (and the context is restored afterwards).
    pub fn set_press(&mut self, press: &dyn Press) -> Result<()> {
        self.decoding_press = if press.describe().compresses_while_decoding {
            Some(kvpress_core::press::press_clone(press)?)
        } else {
            None
        };
        Ok(())
    }

    /// The press that compresses while this session's answers are generated, if any.
    pub fn decoding_press(&self) -> Option<&dyn Press> {
        self.decoding_press.as_deref()
    }

    /// How many times (layers × compression steps) decode-time compression ran during the last
    /// answer: 0 when the answer was shorter than the press's `compression_interval`, or when
    /// the press does not compress while decoding.
    pub fn last_answer_compressions(&self) -> usize {
        self.last_answer_compressions
    }

    /// The scores of the context's last tokens waiting in the sliding window of a press that
    /// evicts by threshold while decoding (DMS with `decoding = true`); empty otherwise.
    pub fn window_scores(&self) -> &WindowScores {
        &self.window_scores
    }

    /// Sets the window scores (a saved context's, when it is loaded).
    pub fn set_window_scores(&mut self, scores: WindowScores) {
        self.window_scores = scores;
    }

    /// The cache holding the (possibly compressed) context.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// The cache, mutably (a question forward on it must be followed by [`Self::rewind`]).
    pub fn cache_mut(&mut self) -> &mut ModelCache {
        &mut self.cache
    }

    /// Returns the cache to the context alone (drops questions and answers).
    pub fn rewind(&mut self) -> Result<()> {
        Ok(self
            .cache
            .rewind(&self.context_lengths, self.context_seen)?)
    }

    /// The cache, to continue from the context directly (e.g. decoding without a question).
    pub fn into_cache(self) -> ModelCache {
        self.cache
    }

    /// Answers `question_ids`: they take positions after the original context (or after the
    /// compressed one, for presses that re-rotate keys), then tokens are generated; afterwards
    /// the cache is rewound to the context.
    pub fn answer(
        &mut self,
        model: &Model,
        question_ids: &[u32],
        eos_ids: &[u32],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(u32) -> kvpress_models::Result<()>,
    ) -> Result<GenerationOutput> {
        self.answer_until(model, question_ids, eos_ids, config, on_token, &mut |_| {
            false
        })
    }

    /// [`Self::answer`], also stopping as soon as `stop` holds for the answer so far
    /// ([`kvpress_models::generate_until`]).
    pub fn answer_until(
        &mut self,
        model: &Model,
        question_ids: &[u32],
        eos_ids: &[u32],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(u32) -> kvpress_models::Result<()>,
        stop: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<GenerationOutput> {
        // Decode-time compression evicts context tokens too: keep the context to restore it.
        let mut hook = match self.decoding_press.as_deref() {
            Some(press) => Some((
                PressHook::new(press, &[])?.with_window_scores(self.window_scores.clone()),
                crate::snapshot::snapshot_layers(&self.cache)?,
            )),
            None => None,
        };
        let result = generate_until(
            model,
            &mut self.cache,
            question_ids,
            eos_ids,
            config,
            hook.as_mut().map(|(h, _)| h as &mut dyn AttentionHook),
            on_token,
            stop,
        );
        self.last_answer_compressions = hook.as_ref().map_or(0, |(h, _)| h.decode_compressions());
        match hook {
            Some((_, context)) if self.last_answer_compressions > 0 => {
                self.cache = crate::snapshot::cache_from_snapshots(&context, self.context_seen)?;
            }
            _ => self.rewind()?,
        }
        Ok(result?)
    }
}
