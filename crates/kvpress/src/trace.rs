//! `kvpress trace`: what the model computes on a prompt, in the field names of the kvpress
//! reference fixtures, so that parity can be checked number by number.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::Tensor;
use hooks::{ContextSession, PromptSplit};
use models::{GenerationConfig, LoadedModel, Sampling};
use serde::{Deserialize, Serialize};

/// Layers whose first keys/values are recorded (first, middle, last of the default model).
pub const RECORDED_LAYERS: [usize; 3] = [0, 15, 29];
/// Number of context tokens whose keys/values are recorded.
pub const RECORDED_TOKENS: usize = 4;
/// Answer length of the fixtures.
pub const MAX_NEW_TOKENS: usize = 24;

/// A prompt file: `{"context": ..., "question": ...}` (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct PromptFile {
    /// Text that is prefilled (and, with a press, compressed).
    pub context: String,
    /// Question asked afterwards.
    pub question: String,
}

/// The full-cache part of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullTrace {
    /// Logits of the last context token.
    pub last_logits: Vec<f32>,
    /// Layer → `[kv_head][token][dim]` post-RoPE keys of the first context tokens.
    pub keys_first4: BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    /// Layer → `[kv_head][token][dim]` values of the first context tokens.
    pub values_first4: BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    /// Greedy answer ids.
    pub answer_ids: Vec<u32>,
    /// Greedy answer text.
    pub answer_text: String,
}

/// Output of `kvpress trace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    /// Context part of the chat-templated prompt.
    pub context_text: String,
    /// Question part.
    pub question_text: String,
    /// Context token ids.
    pub context_ids: Vec<u32>,
    /// Question token ids.
    pub question_ids: Vec<u32>,
    /// Full-cache results.
    pub full: FullTrace,
}

/// Traces `prompt` on `model`: split, prefill, record, answer greedily.
pub fn trace(model: &LoadedModel, prompt: &PromptFile) -> Result<Trace> {
    let split = PromptSplit::new(model, &prompt.context, &prompt.question)?;
    let mut session = ContextSession::prefill(&model.model, &split.context_ids, None)?;
    let mut keys_first4 = BTreeMap::new();
    let mut values_first4 = BTreeMap::new();
    for layer_idx in RECORDED_LAYERS
        .into_iter()
        .filter(|&l| l < model.model.config().n_layers)
    {
        let (keys, values) = session
            .cache()
            .layer(layer_idx)
            .and_then(|l| l.keys_values().transpose())
            .context("the context left an empty cache")??;
        let n = RECORDED_TOKENS.min(keys.dim(2)?);
        keys_first4.insert(layer_idx.to_string(), first_tokens(&keys, n)?);
        values_first4.insert(layer_idx.to_string(), first_tokens(&values, n)?);
    }
    let config = GenerationConfig {
        max_new_tokens: MAX_NEW_TOKENS,
        sampling: Sampling::Greedy,
    };
    let answer = session.answer(
        &model.model,
        &split.question_ids,
        model.tokenizer.eos_ids(),
        &config,
        &mut |_| Ok(()),
    )?;
    Ok(Trace {
        full: FullTrace {
            last_logits: session.last_logits.to_vec1()?,
            keys_first4,
            values_first4,
            answer_text: model.tokenizer.decode(&answer.tokens, true)?,
            answer_ids: answer.tokens,
        },
        context_text: split.context_text,
        question_text: split.question_text,
        context_ids: split.context_ids,
        question_ids: split.question_ids,
    })
}

/// `[kv_head][token][dim]` of the first `n` tokens of batch 0.
fn first_tokens(cached: &Tensor, n: usize) -> Result<Vec<Vec<Vec<f32>>>> {
    Ok(cached
        .get(0)?
        .narrow(1, 0, n)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec3()?)
}
