//! Several compressed contexts answered together: each context keeps its own (compressed) cache
//! and question; every decoding step runs all unfinished answers through the model at once
//! ([`models::Model::forward_sequences`]), so the weights are read once per step instead of once
//! per answer. Each answer is exactly the one-at-a-time greedy answer.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use candle_core::Tensor;
use hooks::ContextSession;
use kvpress_core::ModelCache;
use models::{argmax, LoadedModel, StopReason};

/// One answer of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswer {
    /// Generated token ids (ending with the EOS id when the model stopped by itself).
    pub tokens: Vec<u32>,
    /// Why this answer ended.
    pub stop_reason: StopReason,
}

/// The answers of a batch, in the order of the sessions, and the time of its two phases.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswers {
    /// One answer per session.
    pub answers: Vec<BatchAnswer>,
    /// Time of the question forwards.
    pub question_time: Duration,
    /// Time of all decoding steps.
    pub decode_time: Duration,
}

/// Answers `question_ids[i]` from `sessions[i]` greedily (at most `max_new_tokens` tokens,
/// stopping at end-of-sequence), decoding all sequences in one batch; returns the answers.
/// The sessions are rewound afterwards, so they can answer again.
pub fn answer_batch(
    model: &LoadedModel,
    sessions: &mut [ContextSession],
    question_ids: &[Vec<u32>],
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut sessions: Vec<&mut ContextSession> = sessions.iter_mut().collect();
    let batch = answer_batch_until(
        model,
        &mut sessions,
        question_ids,
        max_new_tokens,
        &mut |_, _| false,
    )?;
    Ok(batch.answers.into_iter().map(|a| a.tokens).collect())
}

/// [`answer_batch`], also ending answer `i` as soon as `stop(i, tokens so far)` holds (checked
/// after end-of-sequence and the token limit, like [`models::generate_until`]). Finished answers
/// leave the batch. Each answer equals, token for token, what
/// [`ContextSession::answer_until`] gives for that session alone with greedy sampling, unless
/// the model keeps dequantized weights: then every product is an sgemm over all answers (and
/// questions of one length run together), the same numbers up to rounding (see
/// [`models::Model::forward_sequences`]).
pub fn answer_batch_until(
    model: &LoadedModel,
    sessions: &mut [&mut ContextSession],
    question_ids: &[Vec<u32>],
    max_new_tokens: usize,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<BatchAnswers> {
    ensure!(
        sessions.len() == question_ids.len() && !sessions.is_empty(),
        "one question per context is needed ({} contexts, {} questions)",
        sessions.len(),
        question_ids.len()
    );
    let result = answer_and_decode(model, sessions, question_ids, max_new_tokens, stop);
    for session in sessions.iter_mut() {
        session.rewind()?;
    }
    result
}

/// The questions, then the answers in batched decoding steps. With kept dequantized weights,
/// questions of one length run through the model together (one sgemm per weight for all of
/// them); otherwise one session at a time, exactly as alone.
fn answer_and_decode(
    model: &LoadedModel,
    sessions: &mut [&mut ContextSession],
    question_ids: &[Vec<u32>],
    max_new_tokens: usize,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<BatchAnswers> {
    let m = &model.model;
    let eos = model.tokenizer.eos_ids();
    ensure!(
        question_ids.iter().all(|q| !q.is_empty()),
        "an empty question"
    );
    let question_start = Instant::now();
    let mut next = Vec::with_capacity(sessions.len());
    let same_length = question_ids
        .iter()
        .all(|q| q.len() == question_ids[0].len());
    if m.keeps_dequantized_weights() && same_length {
        let tokens: Vec<&[u32]> = question_ids.iter().map(Vec::as_slice).collect();
        let mut caches: Vec<&mut ModelCache> = sessions.iter_mut().map(|s| s.cache_mut()).collect();
        for row in m
            .forward_sequences(&tokens, &mut caches)?
            .to_vec2::<f32>()?
        {
            next.push(argmax(&row));
        }
    } else {
        for (session, question) in sessions.iter_mut().zip(question_ids) {
            let input = Tensor::new(question.as_slice(), m.device())?.unsqueeze(0)?;
            let logits = m.forward(&input, session.cache_mut(), None)?;
            next.push(argmax(&logits.squeeze(0)?.to_vec1()?));
        }
    }
    let question_time = question_start.elapsed();
    let mut answers: Vec<BatchAnswer> = (0..sessions.len())
        .map(|_| BatchAnswer {
            tokens: Vec::new(),
            stop_reason: StopReason::MaxNewTokens,
        })
        .collect();
    let decode_start = Instant::now();
    let mut active = vec![max_new_tokens > 0; sessions.len()];
    loop {
        for (i, answer) in answers.iter_mut().enumerate() {
            if !active[i] {
                continue;
            }
            answer.tokens.push(next[i]);
            let ended = if eos.contains(&next[i]) {
                Some(StopReason::Eos)
            } else if answer.tokens.len() >= max_new_tokens {
                Some(StopReason::MaxNewTokens)
            } else if stop(i, &answer.tokens) {
                Some(StopReason::Stopped)
            } else if sessions[i].cache().seen_tokens() >= m.config().max_position_embeddings {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            if let Some(reason) = ended {
                answer.stop_reason = reason;
                active[i] = false;
            }
        }
        let tokens: Vec<u32> = (0..next.len())
            .filter(|&i| active[i])
            .map(|i| next[i])
            .collect();
        if tokens.is_empty() {
            break;
        }
        let mut caches: Vec<&mut ModelCache> = sessions
            .iter_mut()
            .zip(&active)
            .filter(|(_, &a)| a)
            .map(|(s, _)| s.cache_mut())
            .collect();
        let tokens: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
        let logits: Vec<Vec<f32>> = m.forward_sequences(&tokens, &mut caches)?.to_vec2()?;
        let active_rows = (0..next.len()).filter(|&i| active[i]);
        for (i, row) in active_rows.zip(&logits) {
            next[i] = argmax(row);
        }
    }
    Ok(BatchAnswers {
        answers,
        question_time,
        decode_time: decode_start.elapsed(),
    })
}
