//! The [`Press`] trait: what runs at a layer's hook point and decides what the cache keeps.

use candle_core::Tensor;

use crate::cache::LayerCache;
use crate::press::{PressInput, Scorer, Selection};
use crate::Result;

/// What a press decided for one layer.
#[derive(Debug, Clone)]
pub struct Compression {
    /// The tokens each KV head keeps.
    pub selection: Selection,
    /// The scores behind the selection, `(batch, n_kv_heads, n_tokens)`, for recorders (`None`
    /// when the press did not score, e.g. at ratio 0).
    pub scores: Option<Tensor>,
    /// Keys to store for the kept tokens instead of the cached ones (key re-rotation), one
    /// tensor `(batch, n_kv_heads, n_kept, head_dim)` when every head keeps the same number.
    pub keys: Option<Tensor>,
    /// What the press reports about this layer beside its selection, for traces.
    pub notes: Vec<LayerNote>,
}

/// Which layers' values of a [`LayerNote`] a trace keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteScope {
    /// Every layer's: `kvpress trace` writes a list with one value per layer.
    EveryLayer,
    /// Only those of the layers whose scores are recorded (large values): `kvpress trace` writes
    /// an object keyed by layer index, as it does scores.
    RecordedLayers,
}

/// A fact a press reports about one layer beside its selection (ThinK's pruned channels,
/// SimLayerKV's lazy-layer verdict, ...). `kvpress trace` writes it under `name`, the field name
/// of the kvpress reference fixtures, so that it can be compared with kvpress.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNote {
    /// The field name (`zeroed_channels`, `lazy_scores`, ...).
    pub name: &'static str,
    /// Which layers' values a trace keeps.
    pub scope: NoteScope,
    /// The value for this layer.
    pub value: serde_json::Value,
}

impl Compression {
    /// A compression that keeps `selection` with the cached keys.
    pub fn select(selection: Selection, scores: Option<Tensor>) -> Self {
        Self {
            selection,
            scores,
            keys: None,
            notes: Vec::new(),
        }
    }

    /// This compression with `note` added.
    pub fn with_note(mut self, note: LayerNote) -> Self {
        self.notes.push(note);
        self
    }

    /// Keep everything (ratio 0).
    pub fn keep_all(input: &PressInput<'_>) -> Result<Self> {
        Ok(Self::select(
            Selection::all(input.batch()?, input.shape.n_kv_heads, input.n_tokens()?),
            None,
        ))
    }
}

/// How many tokens a decode-time compression keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecodingTarget {
    /// A fixed number of tokens per head.
    Tokens(usize),
    /// A fraction of the tokens seen so far: `max(1, floor(seen * (1 - ratio)))`.
    CompressionRatio(f64),
}

impl DecodingTarget {
    /// Tokens to keep after `seen` tokens.
    pub fn tokens(&self, seen: usize) -> usize {
        match *self {
            Self::Tokens(n) => n,
            Self::CompressionRatio(r) => ((seen as f64 * (1.0 - r)) as usize).max(1),
        }
    }
}

/// When and how a press compresses while tokens are generated (kvpress's `DecodingPress`):
/// every `compression_interval` forwards (the question's, then one per generated token), each
/// layer's cache is compressed back to the target by `press`, scoring with the queries and
/// hidden states of the last `buffer_size` forwards.
#[derive(Debug, Clone, Copy)]
pub struct DecodingSchedule<'a> {
    /// The press that chooses what to keep (its ratio is set to reach the target).
    pub press: &'a dyn Press,
    /// Forwards between compressions (the question's forward, then one per generated token).
    pub compression_interval: usize,
    /// What to keep.
    pub target: DecodingTarget,
    /// Recent forwards whose tokens' queries and hidden states the scorer sees.
    pub buffer_size: usize,
    /// The runtime accumulates, per layer, the attention each forward's last query gives every
    /// cached token, and hands it to `press` ([`PressInput::attention_history`]); CaM merges by
    /// it. Costs one pass over the cache per layer and generated token.
    pub tracks_attention: bool,
}

/// Eviction by a score threshold while tokens are generated (kvpress's `DMSPress` with
/// `decoding = true`): every forward's new tokens are scored by `scorer` from their own hidden
/// states, queries, keys and values, and wait in a sliding window of the last `window` tokens;
/// a token leaving the window is evicted from each KV head that scored it below `threshold`.
/// The prefill's last `window` tokens wait with the scores the prefill gave them.
#[derive(Debug, Clone, Copy)]
pub struct DecodingEviction<'a> {
    /// Scores the new tokens.
    pub scorer: &'a dyn Scorer,
    /// The ratio handed to the scorer (scorers whose scores do not depend on it ignore it).
    pub scorer_ratio: f64,
    /// Tokens scoring below it are evicted when they leave the window.
    pub threshold: f64,
    /// The most recent tokens, never evicted.
    pub window: usize,
}

/// Whether a token scoring `score` is evicted by a threshold eviction at `threshold` (DMS): it is
/// below it; a NaN score is not (kvpress's `scores < threshold`).
pub fn below_threshold(score: f32, threshold: f32) -> bool {
    score.partial_cmp(&threshold) == Some(std::cmp::Ordering::Less)
}

/// The cache layout a press stores its kept tokens in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLayout {
    /// Every KV head keeps the same number of tokens (the model's dense cache).
    Dense,
    /// Heads keep different numbers of tokens (the flattened per-head cache the press brings
    /// through [`Press::new_layer_cache`]).
    PerHead,
    /// Every head keeps every token, but the context's keys keep only some channels of each
    /// head (ThinK's cache, brought through [`Press::new_layer_cache`]). It has no
    /// layout-independent snapshot: it cannot be saved to a context file or restored after a
    /// decode-time compression.
    ChannelPruned,
}

/// Who sets the compression ratio a press runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatioControl {
    /// The runtime may run the press at any ratio ([`Press::compress_at_ratio`],
    /// [`Press::compress_at_ratios`]): evaluation grids do.
    Settable,
    /// The press owns its ratios (one per layer, or one per press inside): it only runs at its
    /// own configuration ([`Press::compress`]).
    OwnedByPress,
}

/// What a press needs from the runtime and what it does, read by the runtime so that every
/// front end (`run`, `compress`, `eval`, `fidelity`, `generate`, ...) either runs the press
/// fully or refuses it up front, naming the press and what that front end cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressDescription {
    /// The model must compute attention weights in the prefill.
    pub needs_attention_weights: bool,
    /// Tokens after the compressed context continue at the compressed length.
    pub rerotates_keys: bool,
    /// The layout of the compressed cache.
    pub cache_layout: CacheLayout,
    /// Whether the runtime may set the ratio.
    pub ratio: RatioControl,
    /// The press removes tokens after the prefill.
    pub compresses_prefill: bool,
    /// The press compresses while tokens are generated ([`Press::decoding`],
    /// [`Press::decoding_eviction`]).
    pub compresses_while_decoding: bool,
    /// The press compresses the context for one question (Finch): the front end prefills the
    /// context and the question together, tells the press how many of the last tokens are the
    /// question ([`PressInput::question_tokens`]), and then feeds only the rest of the prompt
    /// (the chat template's end of turn and assistant header). The compressed context answers
    /// that question; another question needs another compression.
    pub needs_question: bool,
}

impl PressDescription {
    /// The description of a press that overrides nothing: no attention weights, no key
    /// re-rotation, the layout of [`Press::new_layer_cache`], a settable ratio, compressing the
    /// prefill when its ratio is above 0 and while decoding when it has a [`Press::decoding`]
    /// schedule. Presses that override [`Press::describe`] start from it
    /// (`PressDescription { needs_attention_weights: true, ..PressDescription::defaults_for(self) }`).
    pub fn defaults_for<P: Press + ?Sized>(press: &P) -> Self {
        Self {
            needs_attention_weights: false,
            rerotates_keys: false,
            cache_layout: match press.new_layer_cache() {
                Some(_) => CacheLayout::PerHead,
                None => CacheLayout::Dense,
            },
            ratio: RatioControl::Settable,
            compresses_prefill: press.compression_ratio() > 0.0,
            compresses_while_decoding: press.decoding().is_some()
                || press.decoding_eviction().is_some(),
            needs_question: false,
        }
    }
}

/// A KV-cache compression method, run on each layer after its prefill attention.
///
/// The common press is a [`Scorer`] plus a [`crate::BudgetAllocator`]; wrappers (composed,
/// per-layer ratios, key re-rotation, chunked, head-wise allocation) are presses around other
/// presses. Presses are (de)serializable by name through `typetag` (the tag is `"press"`) and
/// list themselves in the registry ([`crate::press::registry`]).
#[typetag::serde(tag = "press")]
pub trait Press: std::fmt::Debug + Send + Sync {
    /// The fraction of tokens this press removes (nominal; head-wise and per-layer presses
    /// report their average).
    fn compression_ratio(&self) -> f64;

    /// Checks the parameters, naming the invalid one and what is valid.
    fn validate(&self) -> Result<()>;

    /// The config field holding the ratio that evaluation grids set: `compression_ratio` (the
    /// default) for every press whose ratio is a share of the tokens; presses whose ratio counts
    /// something else name their own (DuoAttention: `head_compression_ratio`).
    fn ratio_field(&self) -> &'static str {
        "compression_ratio"
    }

    /// Decode-time compression, for presses that compress while generating.
    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        None
    }

    /// Threshold eviction while generating, for presses that evict each token by its own
    /// score when it leaves a sliding window (DMS with `decoding = true`).
    fn decoding_eviction(&self) -> Option<DecodingEviction<'_>> {
        None
    }

    /// The cache layout this press needs, when it is not the dense one: head-wise presses give
    /// heads different budgets and return a layer cache that stores ragged heads. The runtime
    /// calls it once per layer before the prefill.
    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        None
    }

    /// The scorer inside, for wrappers that need scores rather than a selection (CriticalKV,
    /// AdaKV); `None` for presses that do not score tokens.
    fn scorer(&self) -> Option<&dyn Scorer> {
        None
    }

    /// For presses that score by reconstructing the context in a second forward pass and
    /// choose across layers (KVzip): how. The runtime then runs that pass instead of calling
    /// [`Self::compress`] per layer; `None` (the default) for every other press.
    fn reconstruction(&self) -> Option<&dyn super::ReconstructionScoring> {
        None
    }

    /// For presses that need statistics of the model computed on calibration texts before they
    /// compress (DuoAttention on the fly): the runtime runs the texts through the model first
    /// ([`super::ModelCalibration`]); `None` (the default) for every other press.
    fn calibration(&self) -> Option<&dyn super::ModelCalibration> {
        None
    }

    /// What this press needs and does ([`PressDescription`]), the one place the runtime reads
    /// it from. The default is [`PressDescription::defaults_for`]; presses that need attention
    /// weights, re-rotate keys or own their ratios override it.
    fn describe(&self) -> PressDescription {
        PressDescription::defaults_for(self)
    }

    /// Decides what one layer keeps at this press's own ratio.
    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        self.compress_at_ratio(input, self.compression_ratio())
    }

    /// Decides what one layer keeps at `compression_ratio` (per-layer ratios and decode-time
    /// compression set the ratio from outside).
    fn compress_at_ratio(
        &self,
        input: &PressInput<'_>,
        compression_ratio: f64,
    ) -> Result<Compression>;

    /// Decides what one layer keeps at each of `compression_ratios`, as
    /// [`Self::compress_at_ratio`] would one by one (evaluation grids compress one prefill at
    /// several ratios). Presses whose scores do not depend on the ratio score once.
    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        compression_ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        compression_ratios
            .iter()
            .map(|&ratio| self.compress_at_ratio(input, ratio))
            .collect()
    }
}
