//! Compress once, answer many: a prefilled context and the questions asked of it.

use candle_core::Tensor;
use kvpress_core::{AttentionHook, ModelCache};
use models::{generate, GenerationConfig, GenerationOutput, Model};

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
}

impl ContextSession {
    /// Prefills `context_ids` in one forward, running `hook` in every layer.
    pub fn prefill(
        model: &Model,
        context_ids: &[u32],
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Self> {
        let mut cache = model.new_cache();
        let input = Tensor::new(context_ids, model.device())?.unsqueeze(0)?;
        let last_logits = model.forward(&input, &mut cache, hook)?.squeeze(0)?;
        Ok(Self {
            context_lengths: cache.lengths(),
            context_seen: cache.seen_tokens(),
            cache,
            last_logits,
        })
    }

    /// The cache holding the (possibly compressed) context.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Answers `question_ids`: they take positions after the original context, then tokens are
    /// generated; afterwards the cache is rewound to the context.
    pub fn answer(
        &mut self,
        model: &Model,
        question_ids: &[u32],
        eos_ids: &[u32],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(u32) -> models::Result<()>,
    ) -> Result<GenerationOutput> {
        let result = generate(
            model,
            &mut self.cache,
            question_ids,
            eos_ids,
            config,
            None,
            on_token,
        );
        self.cache
            .rewind(&self.context_lengths, self.context_seen)?;
        Ok(result?)
    }
}
