//! [`Cam`]: CaM's merge-then-evict compression while tokens are generated.

use kvpress_core::press::{
    n_kept, Compression, DecodingSchedule, DecodingTarget, Press, PressInput,
};
use kvpress_core::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::cam_merge::{merge_then_evict, MergeInput};
use crate::decoding::{
    check_inner, check_schedule, default_buffer_size, default_interval, default_target_size,
};

fn default_merge_budget() -> usize {
    32
}

/// Cache Merging ([CaM](https://openreview.net/forum?id=LCTmppB165)), kvpress 0.5.5's
/// `CAMPress` (`cam`): while tokens are generated, every `compression_interval` forwards each
/// layer goes back to `target_size` tokens ranked by `inner`'s scores averaged over the KV heads;
/// before the evicted tokens go, the best of them (as many as forwards ran since the last
/// compression: the question's, then one per generated token) may merge their value into the `merge_budget` kept tokens after them, each with
/// probability `clamp(A_m / mean(A_window), 0, 1)`, where `A` is the attention generated tokens
/// gave each token so far (the runtime tracks it: [`DecodingSchedule::tracks_attention`]).
///
/// The draws come from a generator seeded with `seed`, the layer and the cache length, so a run
/// is reproducible (kvpress draws from torch's global generator).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cam {
    /// The scoring press that ranks the tokens: a press whose per-token scores alone decide
    /// (kvpress: a `ScorerPress`), not a wrapper, with the dense cache (merged values cannot be
    /// stored in the per-head cache).
    pub inner: Box<dyn Press>,
    /// Forwards between compressions (the question's forward, then one per generated token).
    #[serde(default = "default_interval")]
    pub compression_interval: usize,
    /// Tokens each head keeps after a compression.
    #[serde(default = "default_target_size")]
    pub target_size: usize,
    /// Recent forwards whose tokens' queries and hidden states the scorer sees.
    #[serde(default = "default_buffer_size")]
    pub hidden_states_buffer_size: usize,
    /// Kept tokens after an evicted one that its value is spread over.
    #[serde(default = "default_merge_budget")]
    pub merge_budget: usize,
    /// Seed of the merge draws.
    #[serde(default)]
    pub seed: u64,
}

#[typetag::serde(name = "cam")]
impl Press for Cam {
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        check_inner("cam", self.inner.as_ref())?;
        check_schedule(
            "cam",
            self.compression_interval,
            self.hidden_states_buffer_size,
        )?;
        let inner = kvpress_core::press::press_name(self.inner.as_ref());
        let scores_alone = self.inner.scorer().is_some()
            && self.inner.new_layer_cache().is_none()
            && !kvpress_core::press::holds_presses(self.inner.as_ref());
        if !scores_alone {
            return Err(Error::InvalidArgument(format!(
                "cam: the inner press `{inner}` must be a scoring press whose scores alone decide \
                 for the dense cache (cam ranks tokens by their scores averaged over heads and \
                 stores merged values per token; a wrapper decides by more than its scores); use \
                 a scoring press such as knorm, snapkv or expected_attention"
            )));
        }
        if self.target_size == 0 || self.merge_budget == 0 {
            return Err(Error::InvalidArgument(
                "cam: target_size and merge_budget must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    fn decoding(&self) -> Option<DecodingSchedule<'_>> {
        Some(DecodingSchedule {
            press: self,
            compression_interval: self.compression_interval,
            target: DecodingTarget::Tokens(self.target_size),
            buffer_size: self.hidden_states_buffer_size,
            tracks_attention: true,
        })
    }

    /// At ratio 0 (the prefill) keeps everything; at the ratio the decoding schedule sets,
    /// merges then evicts.
    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        if ratio == 0.0 {
            return Compression::keep_all(input);
        }
        let scorer = self.inner.scorer().ok_or_else(|| {
            Error::InvalidArgument("cam: the inner press gives no scores".to_string())
        })?;
        let scores = scorer.score(input, ratio)?;
        let n_tokens = input.n_tokens()?;
        let history = input.attention_history;
        let merge = MergeInput {
            scores: &scores,
            values: input.values,
            attention: history.map(|h| h.sums),
            n_kept: n_kept(n_tokens, ratio),
            n_merge: history.map_or(0, |h| h.new_forwards),
            merge_budget: self.merge_budget,
        };
        let stream = ((input.layer_idx as u64) << 32) | n_tokens as u64;
        let mut rng = StdRng::seed_from_u64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let selection = merge_then_evict(&merge, &mut rng)?;
        Ok(Compression::select(selection, Some(scores)))
    }
}

kvpress_core::register_press!(
    "cam",
    "while decoding: evicts by the inner scores, merging the best evicted values into the kept tokens after them (CaM)",
    || Box::new(Cam {
        inner: Box::new(kvpress_core::NoPress::default()),
        compression_interval: default_interval(),
        target_size: default_target_size(),
        hidden_states_buffer_size: default_buffer_size(),
        merge_budget: default_merge_budget(),
        seed: 0,
    })
);
