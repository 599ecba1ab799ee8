//! [`PressHook`]: runs a press on every layer after its prefill attention and records what it
//! kept.

use std::time::Instant;

use candle_core::DType;
use candle_core::Tensor;
use kvpress_core::press::{
    AttentionHistory, CachedKeysValues, LayerNote, NoteScope, Press, PressInput, Selection,
};

use crate::attention_history::AttentionSums;
use crate::decoding_eviction::WindowScores;
use kvpress_core::{AttentionHook, ForwardPhase, LayerCache, LayerContext, LayerSnapshot};

/// What a press did to one layer.
#[derive(Debug, Clone)]
pub struct LayerRecord {
    /// Index of the layer.
    pub layer_idx: usize,
    /// The kept tokens of each KV head (and kept key channels; replacement values are left to
    /// the cache that stores them).
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
    /// What the press reported about the layer ([`LayerNote`]), those of
    /// [`NoteScope::RecordedLayers`] only for the layers asked for.
    pub notes: Vec<LayerNote>,
}

/// Fraction of the `(layer, head, token)` entries the `layers` kept (1 when there are none).
pub fn kept_fraction(layers: &[LayerRecord]) -> f64 {
    let (kept, total) = layers.iter().fold((0, 0), |(k, t), layer| {
        let s = &layer.selection;
        (
            k + s.total_kept(),
            t + s.batch() * s.n_kv_heads() * s.n_tokens(),
        )
    });
    if total == 0 {
        1.0
    } else {
        kept as f64 / total as f64
    }
}

/// The notes of a compression a record keeps: all of them for a layer whose scores are recorded
/// (`recorded`), else those meant for every layer.
pub(crate) fn kept_notes(notes: Vec<LayerNote>, recorded: bool) -> Vec<LayerNote> {
    notes
        .into_iter()
        .filter(|note| recorded || note.scope == NoteScope::EveryLayer)
        .collect()
}

/// An [`AttentionHook`] that compresses each layer's cache with a press after the prefill, and,
/// for presses with a decode-time schedule ([`Press::decoding`]), every `compression_interval`
/// generated tokens. Other forwards (questions, decoding without a schedule) are left alone, as
/// in kvpress.
#[derive(Debug)]
pub struct PressHook<'p> {
    press: &'p dyn Press,
    /// The press's `describe().needs_attention_weights`, read once (asked every layer forward).
    needs_attention_weights: bool,
    /// Whether the press's decoding schedule tracks attention (then decoding forwards compute
    /// attention weights).
    tracks_attention: bool,
    score_layers: Vec<usize>,
    records: Vec<LayerRecord>,
    decoding: Vec<DecodingState>,
    decode_compressions: usize,
    peak_cache_len: usize,
    /// Tokens at the end of the prefill that are the question ([`PressInput::question_tokens`]).
    question_tokens: usize,
    /// For presses that evict by threshold while decoding: the scores of the tokens waiting in
    /// each layer's sliding window.
    window_scores: WindowScores,
}

/// Per-layer state of decode-time compression: forwards since the last compression and the
/// recent forwards' hidden states and queries (kept as they came; joined only when compressing,
/// so a decode step copies nothing). As in kvpress 0.5.5's `DecodingPress`, a forward counts once
/// however many tokens it feeds (the question's forward, then one per generated token), and the
/// buffer holds the last `hidden_states_buffer_size` forwards.
#[derive(Debug, Default)]
struct DecodingState {
    /// Forwards since the last compression.
    steps: usize,
    /// `(hidden_states (b, n, hidden), queries (b, heads, n, d), first position)` per forward.
    recent: std::collections::VecDeque<(Tensor, Tensor, usize)>,
    /// The attention generated tokens gave the cache, for schedules that track it; kept (for
    /// the tokens kept) across compressions.
    attention: AttentionSums,
}

impl DecodingState {
    /// Remembers one forward's tokens, forgetting the forwards beyond the last `buffer_size`.
    fn push(&mut self, hidden: &Tensor, queries: &Tensor, position: usize, buffer_size: usize) {
        self.recent
            .push_back((hidden.clone(), queries.clone(), position));
        while self.recent.len() > buffer_size {
            self.recent.pop_front();
        }
    }

    /// The buffered forwards' hidden states and queries, and the first token's position.
    fn window(&self) -> kvpress_core::Result<(Tensor, Tensor, usize)> {
        let hidden: Vec<&Tensor> = self.recent.iter().map(|(h, _, _)| h).collect();
        let queries: Vec<&Tensor> = self.recent.iter().map(|(_, q, _)| q).collect();
        let first = self.recent.front().map_or(0, |(_, _, p)| *p);
        Ok((Tensor::cat(&hidden, 1)?, Tensor::cat(&queries, 2)?, first))
    }
}

impl<'p> PressHook<'p> {
    /// A hook running `press`; it keeps the scores of the layers in `score_layers`.
    pub fn new(press: &'p dyn Press, score_layers: &[usize]) -> kvpress_core::Result<Self> {
        press.validate()?;
        Ok(Self {
            press,
            needs_attention_weights: press.describe().needs_attention_weights,
            tracks_attention: press.decoding().is_some_and(|s| s.tracks_attention),
            score_layers: score_layers.to_vec(),
            records: Vec::new(),
            decoding: Vec::new(),
            decode_compressions: 0,
            peak_cache_len: 0,
            question_tokens: 0,
            window_scores: WindowScores::default(),
        })
    }

    /// The same hook continuing from a context whose last tokens wait in a threshold-evicting
    /// press's sliding window with `scores` ([`Self::take_window_scores`] of the hook that
    /// compressed it).
    pub fn with_window_scores(mut self, scores: WindowScores) -> Self {
        self.window_scores = scores;
        self
    }

    /// The scores of the tokens waiting in each layer's sliding window, for presses that evict
    /// by threshold while decoding (empty for the others).
    pub fn take_window_scores(&mut self) -> WindowScores {
        std::mem::take(&mut self.window_scores)
    }

    /// The same hook telling the press that the prefill's last `n` tokens are the question
    /// asked of the context, for presses that compress for it
    /// ([`kvpress_core::press::PressDescription::needs_question`]).
    pub fn with_question_tokens(mut self, n: usize) -> Self {
        self.question_tokens = n;
        self
    }

    /// The longest any layer's cache has been when the hook ran (after each forward's tokens
    /// were appended, before compression).
    pub fn peak_cache_len(&self) -> usize {
        self.peak_cache_len
    }

    /// How many layer compressions decode-time compression made so far.
    pub fn decode_compressions(&self) -> usize {
        self.decode_compressions
    }

    /// Decode-time compression of one layer, when the press has a schedule or evicts by
    /// threshold.
    fn decode_step(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if let Some(eviction) = self.press.decoding_eviction() {
            if self.window_scores.step(context, &eviction)? {
                self.decode_compressions += 1;
            }
            return Ok(());
        }
        let Some(schedule) = self.press.decoding() else {
            return Ok(());
        };
        if self.decoding.len() <= context.layer_idx {
            self.decoding
                .resize_with(context.layer_idx + 1, DecodingState::default);
        }
        let state = &mut self.decoding[context.layer_idx];
        let n_new = context.hidden_states.dim(1)?;
        state.push(
            context.hidden_states,
            context.queries,
            context.position_offset,
            schedule.buffer_size,
        );
        state.steps += 1;
        if schedule.tracks_attention {
            state.attention.observe(context)?;
        }
        let len = context.cache.len();
        let target = schedule.target.tokens(context.position_offset + n_new);
        // kvpress also compresses after a forward of at least `target` tokens.
        let due = state.steps >= schedule.compression_interval || n_new >= target;
        if !due || len <= target {
            return Ok(());
        }
        let (hidden, queries, first_position) = state.window()?;
        // The ratio whose kept count floor(len * (1 - ratio)) is exactly the target.
        let ratio = 1.0 - (target as f64 + 0.5) / len as f64;
        let (cached, padding) = padded_keys_values(context.cache)?;
        let sums = match schedule.tracks_attention {
            true => Some(
                state
                    .attention
                    .tensor(cached.keys.dim(0)?, cached.keys.device())?,
            ),
            false => None,
        };
        let input = PressInput {
            hidden_states: &hidden,
            queries: &queries,
            query_position: first_position,
            attention_weights: None,
            front_padding: padding.as_deref(),
            attention_history: sums.as_ref().map(|sums| AttentionHistory {
                sums,
                new_forwards: state.steps,
            }),
            ..cached.input(context)
        };
        let compression = schedule.press.compress_at_ratio(&input, ratio)?;
        drop(cached);
        let selection = match &padding {
            Some(padding) => unpad(&compression.selection, padding, len)?,
            None => compression.selection,
        };
        context
            .cache
            .compact(&selection, compression.keys.as_ref())?;
        let mut attention = std::mem::take(&mut state.attention);
        if schedule.tracks_attention {
            attention.compact(&selection)?;
        }
        *state = DecodingState {
            attention,
            ..DecodingState::default()
        };
        self.decode_compressions += 1;
        Ok(())
    }

    /// What the press did so far, one record per layer in layer order.
    pub fn records(&self) -> &[LayerRecord] {
        &self.records
    }

    /// What the press did, one record per layer in layer order.
    pub fn into_records(self) -> Vec<LayerRecord> {
        self.records
    }
}

/// The cache's keys and values as f32 `(batch, kv_heads, len, head_dim)` tensors; a cache whose
/// heads have different lengths is padded at the front of the shorter heads (with zeros), and
/// the padding of each head is returned too.
fn padded_keys_values(
    cache: &dyn LayerCache,
) -> kvpress_core::Result<(CachedKeysValues, Option<Vec<usize>>)> {
    match cache.float_snapshot()? {
        LayerSnapshot::Dense(stored) => Ok((CachedKeysValues::from_stored(stored)?, None)),
        LayerSnapshot::Stored(_) => Err(kvpress_core::Error::Unsupported(
            "decode-time compression of a cache that gives no float view of its tokens \
             (`float_snapshot` returned the cache itself)"
                .to_string(),
        )),
        LayerSnapshot::PerHead {
            keys,
            values,
            head_lengths,
            batch,
            n_kv_heads,
        } => {
            let (_, d) = keys.dims2()?;
            let len = head_lengths.iter().copied().max().unwrap_or(0);
            let padding: Vec<usize> = head_lengths.iter().map(|&l| len - l).collect();
            let pad = |rows: &Tensor| -> kvpress_core::Result<Tensor> {
                let rows = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; head_lengths.len() * len * d];
                let mut from = 0;
                for (head, (&l, &p)) in head_lengths.iter().zip(&padding).enumerate() {
                    let at = (head * len + p) * d;
                    out[at..at + l * d].copy_from_slice(&rows[from..from + l * d]);
                    from += l * d;
                }
                Ok(Tensor::from_vec(
                    out,
                    (batch, n_kv_heads, len, d),
                    keys.device(),
                )?)
            };
            Ok((
                CachedKeysValues {
                    keys: pad(&keys)?,
                    values: pad(&values)?,
                },
                Some(padding),
            ))
        }
    }
}

/// A selection made over front-padded heads, in each head's own token indices.
fn unpad(selection: &Selection, padding: &[usize], len: usize) -> kvpress_core::Result<Selection> {
    let kept = selection
        .heads()
        .iter()
        .zip(padding)
        .map(|(kept, &pad)| {
            kept.iter()
                .map(|&i| {
                    (i as usize)
                        .checked_sub(pad)
                        .map(|i| i as u32)
                        .ok_or_else(|| {
                            kvpress_core::Error::InvalidArgument(
                                "a press kept a padding position".to_string(),
                            )
                        })
                })
                .collect::<kvpress_core::Result<Vec<u32>>>()
        })
        .collect::<kvpress_core::Result<Vec<_>>>()?;
    selection.refinements_onto(Selection::new(
        kept,
        selection.batch(),
        selection.n_kv_heads(),
        len,
    )?)
}

impl AttentionHook for PressHook<'_> {
    fn wants_attention_weights(&self, _layer_idx: usize, phase: ForwardPhase) -> bool {
        match phase {
            ForwardPhase::Prefill => self.needs_attention_weights,
            ForwardPhase::Decode => self.tracks_attention,
        }
    }

    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        self.peak_cache_len = self.peak_cache_len.max(context.cache.len());
        if context.phase != ForwardPhase::Prefill {
            return self.decode_step(context);
        }
        let start = Instant::now();
        let bytes_before = context.cache.bytes_settled();
        let cached = CachedKeysValues::of(context)?;
        let input = PressInput {
            question_tokens: self.question_tokens,
            ..cached.input(context)
        };
        let compression = self.press.compress(&input)?;
        drop(cached);
        if let Some(eviction) = self.press.decoding_eviction() {
            let scores = compression.scores.as_ref().ok_or_else(|| {
                kvpress_core::Error::InvalidArgument(
                    "a press evicting by threshold while decoding gave no prefill scores"
                        .to_string(),
                )
            })?;
            self.window_scores
                .keep_prefill(context.layer_idx, scores, eviction.window)?;
        }
        context
            .cache
            .compact(&compression.selection, compression.keys.as_ref())?;
        context.cache.shrink_to_fit()?;
        let keep_scores = self.score_layers.contains(&context.layer_idx);
        self.records.push(LayerRecord {
            layer_idx: context.layer_idx,
            selection: compression.selection.without_values(),
            scores: compression.scores.filter(|_| keep_scores),
            notes: kept_notes(compression.notes, keep_scores),
            cache_len: context.cache.len(),
            bytes_before,
            bytes_after: context.cache.bytes_reserved(),
            seconds: start.elapsed().as_secs_f64(),
        });
        Ok(())
    }
}
