//! Text generation: prefill in one forward, then one token per step, greedy or sampled.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use kvpress_core::{AttentionHook, ModelCache};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::Model;
use crate::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, like `torch.argmax`).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens whose
    /// probability reaches `top_p` (nucleus sampling), with a seeded generator.
    TopP {
        /// Positive temperature.
        temperature: f64,
        /// Nucleus mass in `(0, 1]`.
        top_p: f64,
        /// Seed of the random generator.
        seed: u64,
    },
}

/// Settings of one generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens (the EOS token included).
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::Greedy,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-sequence token (the last of `tokens`).
    Eos,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The next token would need a position beyond the model's maximum.
    ContextFull,
    /// The caller's stop condition held ([`generate_until`]).
    Stopped,
}

/// When an answer ends: the one rule [`generate_until`] and batched answering share. After
/// each chosen token, in this order: the end-of-sequence token, the token budget, the caller's
/// stop condition, the model's last position.
#[derive(Debug, Clone, Copy)]
pub struct StopRule<'a> {
    /// Tokens that end the answer (the model's EOS ids).
    pub eos_ids: &'a [u32],
    /// The most tokens an answer may have.
    pub max_new_tokens: usize,
    /// The model's positions (`max_position_embeddings`).
    pub max_positions: usize,
}

impl StopRule<'_> {
    /// Why an answer whose tokens so far are `tokens` (its cache at `seen_tokens` positions)
    /// ends after its last token; `None` while it goes on (or before it has a token).
    pub fn check(
        &self,
        tokens: &[u32],
        seen_tokens: usize,
        stop: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Option<StopReason> {
        let last = tokens.last()?;
        if self.eos_ids.contains(last) {
            Some(StopReason::Eos)
        } else if tokens.len() >= self.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else if stop(tokens) {
            Some(StopReason::Stopped)
        } else if seen_tokens >= self.max_positions {
            Some(StopReason::ContextFull)
        } else {
            None
        }
    }
}

/// What a generation produced, with timings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated token ids (ending with the EOS id when the model stopped by itself).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Tokens of the prompt forward.
    pub n_prompt_tokens: usize,
    /// Time of the prompt forward (prefill).
    pub prefill_time: Duration,
    /// Time of all one-token forwards.
    pub decode_time: Duration,
}

impl GenerationOutput {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.n_prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Milliseconds per decoded token (forwards after the prompt).
    pub fn decode_ms_per_token(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1).max(1);
        self.decode_time.as_secs_f64() * 1e3 / steps as f64
    }
}

/// Chooses tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; invalid temperatures or `top_p` are errors.
    pub fn new(sampling: Sampling) -> Result<Self> {
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::TopP {
                temperature,
                top_p,
                seed,
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(Error::InvalidInput(format!(
                        "temperature must be positive, got {temperature}"
                    )));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(Error::InvalidInput(format!(
                        "top_p must be in (0, 1], got {top_p}"
                    )));
                }
                seed
            }
        };
        Ok(Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next token from `logits` of shape `(vocab,)`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        if logits.is_empty() {
            return Err(Error::InvalidInput("empty logits".into()));
        }
        check_finite(&logits)?;
        match self.sampling {
            Sampling::Greedy => Ok(argmax(&logits)),
            Sampling::TopP {
                temperature, top_p, ..
            } => Ok(self.sample_top_p(&logits, temperature, top_p)),
        }
    }

    fn sample_top_p(&mut self, logits: &[f32], temperature: f64, top_p: f64) -> u32 {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = 0;
        let mut mass = 0.0;
        for (_, p) in &probs {
            kept += 1;
            mass += p / total;
            if mass >= top_p {
                break;
            }
        }
        let kept = &probs[..kept];
        let kept_total: f64 = kept.iter().map(|p| p.1).sum();
        let mut target = self.rng.random::<f64>() * kept_total;
        for &(id, p) in kept {
            if target < p {
                return id;
            }
            target -= p;
        }
        kept[kept.len() - 1].0
    }
}

/// Refuses logits holding NaN or infinity ([`Error::NonFiniteLogits`]): a token chosen from
/// them would be an answer made of noise.
pub fn check_finite(logits: &[f32]) -> Result<()> {
    let non_finite = logits.iter().filter(|l| !l.is_finite()).count();
    if non_finite > 0 {
        return Err(Error::NonFiniteLogits {
            non_finite,
            vocab: logits.len(),
        });
    }
    Ok(())
}

/// Index of the largest value, the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates after `prompt_ids`, which are appended to `cache` at positions
/// `cache.seen_tokens()..` in one forward (so a cache holding a context answers a question).
/// `on_token` sees each new token as it is chosen; `hook` runs in every forward. Generation
/// stops at EOS, after `max_new_tokens`, or when the model's positions are used up (the last
/// chosen token is returned but not fed back), as [`GenerationOutput::stop_reason`] says.
pub fn generate(
    model: &Model,
    cache: &mut ModelCache,
    prompt_ids: &[u32],
    eos_ids: &[u32],
    config: &GenerationConfig,
    hook: Option<&mut (dyn AttentionHook + '_)>,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<GenerationOutput> {
    generate_until(
        model,
        cache,
        prompt_ids,
        eos_ids,
        config,
        hook,
        on_token,
        &mut |_| false,
    )
}

/// [`generate`], also stopping (with [`StopReason::Stopped`]) as soon as `stop` holds for the
/// tokens generated so far, e.g. once an answer says everything a metric looks for.
#[allow(clippy::too_many_arguments)]
pub fn generate_until(
    model: &Model,
    cache: &mut ModelCache,
    prompt_ids: &[u32],
    eos_ids: &[u32],
    config: &GenerationConfig,
    mut hook: Option<&mut (dyn AttentionHook + '_)>,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
    stop: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<GenerationOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::InvalidInput(
            "empty prompt: at least one token is needed".into(),
        ));
    }
    let mut sampler = Sampler::new(config.sampling)?;
    let device = model.device();
    let start = Instant::now();
    let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
    let logits = model.forward(&input, cache, hook.as_deref_mut())?;
    let prefill_time = start.elapsed();
    let mut output = GenerationOutput {
        tokens: Vec::new(),
        stop_reason: StopReason::MaxNewTokens,
        n_prompt_tokens: prompt_ids.len(),
        prefill_time,
        decode_time: Duration::ZERO,
    };
    if config.max_new_tokens == 0 {
        return Ok(output);
    }
    let rule = StopRule {
        eos_ids,
        max_new_tokens: config.max_new_tokens,
        max_positions: model.config().max_position_embeddings,
    };
    let mut next = sampler.sample(&logits.squeeze(0)?)?;
    let decode_start = Instant::now();
    loop {
        output.tokens.push(next);
        on_token(next)?;
        if let Some(reason) = rule.check(&output.tokens, cache.seen_tokens(), stop) {
            output.stop_reason = reason;
            break;
        }
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        let logits = model.forward(&input, cache, hook.as_deref_mut())?;
        next = sampler.sample(&logits.squeeze(0)?)?;
    }
    output.decode_time = decode_start.elapsed();
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_rule_checks_eos_budget_caller_and_positions_in_that_order() {
        let rule = StopRule {
            eos_ids: &[2],
            max_new_tokens: 3,
            max_positions: 100,
        };
        let never = &mut |_: &[u32]| false;
        assert_eq!(rule.check(&[], 0, never), None);
        assert_eq!(rule.check(&[5], 10, never), None);
        assert_eq!(
            rule.check(&[5, 6, 2], 10, &mut |_| true),
            Some(StopReason::Eos)
        );
        assert_eq!(
            rule.check(&[5, 6, 7], 100, &mut |_| true),
            Some(StopReason::MaxNewTokens)
        );
        assert_eq!(
            rule.check(&[5], 100, &mut |_| true),
            Some(StopReason::Stopped)
        );
        assert_eq!(rule.check(&[5], 100, never), Some(StopReason::ContextFull));
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_p() -> Result<()> {
        let logits = Tensor::new(&[0.0f32, 5.0, 4.9, -10.0], &candle_core::Device::Cpu)?;
        let sampling = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let draw = |n: usize| -> Result<Vec<u32>> {
            let mut s = Sampler::new(sampling)?;
            (0..n).map(|_| s.sample(&logits)).collect()
        };
        let first = draw(200)?;
        assert_eq!(first, draw(200)?);
        // Tokens 1 and 2 hold ~99% of the mass; top_p = 0.9 keeps only them.
        assert!(first.iter().all(|&t| t == 1 || t == 2));
        assert!(first.contains(&1) && first.contains(&2));
        Ok(())
    }

    #[test]
    fn invalid_sampling_settings_are_errors() {
        let bad = |temperature, top_p| {
            Sampler::new(Sampling::TopP {
                temperature,
                top_p,
                seed: 0,
            })
            .is_err()
        };
        assert!(bad(0.0, 0.5));
        assert!(bad(1.0, 0.0));
        assert!(bad(1.0, 1.5));
        assert!(!bad(0.7, 1.0));
    }
}
