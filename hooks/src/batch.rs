//! Several compressed contexts answered together: each context keeps its own (compressed) cache
//! and question; every decoding step runs all unfinished answers through the model at once
//! ([`kvpress_models::Model::forward_sequences`]), so the weights are read once per step instead of once
//! per answer. Without kept dequantized weights each answer is exactly the one-at-a-time greedy
//! answer; with them (`Model::keep_dequantized_weights`) the products are sgemms and answers
//! differ from one-at-a-time answers in rounding only. Contexts whose press compresses while
//! decoding are refused (batched steps run no press).

use std::time::{Duration, Instant};

use crate::{ContextSession, Error, Result};
use candle_core::Tensor;
use kvpress_core::ModelCache;
use kvpress_models::{argmax, check_finite, LoadedModel, StopReason, StopRule};

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
/// after end-of-sequence and the token limit, like [`kvpress_models::generate_until`]). Finished answers
/// leave the batch. Each answer equals, token for token, what
/// [`ContextSession::answer_until`] gives for that session alone with greedy sampling, unless
/// the model keeps dequantized weights: then every product is an sgemm over all answers (and
/// questions of one length run together), the same numbers up to rounding (see
/// [`kvpress_models::Model::forward_sequences`]).
pub fn answer_batch_until(
    model: &LoadedModel,
    sessions: &mut [&mut ContextSession],
    question_ids: &[Vec<u32>],
    max_new_tokens: usize,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<BatchAnswers> {
    if sessions.len() != question_ids.len() || sessions.is_empty() {
        return Err(Error::InvalidInput(format!(
            "one question per context is needed ({} contexts, {} questions)",
            sessions.len(),
            question_ids.len()
        )));
    }
    if let Some(press) = sessions.iter().find_map(|s| s.decoding_press()) {
        return Err(Error::PressNotSupported {
            press: kvpress_core::press::press_name(press),
            front_end: "batch",
            reason: "it compresses while tokens are generated, and batched answers decode \
                     without presses; answer its contexts one at a time (ContextSession::answer)"
                .to_string(),
        });
    }
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
    if question_ids.iter().any(|q| q.is_empty()) {
        return Err(Error::InvalidInput("an empty question".to_string()));
    }
    let question_start = Instant::now();
    let mut next = first_tokens(model, sessions, question_ids)?;
    let question_time = question_start.elapsed();
    let mut answers: Vec<BatchAnswer> = (0..sessions.len())
        .map(|_| BatchAnswer {
            tokens: Vec::new(),
            stop_reason: StopReason::MaxNewTokens,
        })
        .collect();
    let decode_start = Instant::now();
    let rule = StopRule {
        eos_ids: model.tokenizer.eos_ids(),
        max_new_tokens,
        max_positions: model.model.config().max_position_embeddings,
    };
    let mut active = vec![max_new_tokens > 0; sessions.len()];
    loop {
        for (i, answer) in answers.iter_mut().enumerate() {
            if !active[i] {
                continue;
            }
            answer.tokens.push(next[i]);
            let seen = sessions[i].cache().seen_tokens();
            if let Some(reason) = rule.check(&answer.tokens, seen, &mut |t| stop(i, t)) {
                answer.stop_reason = reason;
                active[i] = false;
            }
        }
        if !active.contains(&true) {
            break;
        }
        decode_step(model, sessions, &active, &mut next)?;
    }
    Ok(BatchAnswers {
        answers,
        question_time,
        decode_time: decode_start.elapsed(),
    })
}

/// The first answer token of every session after its question. With kept dequantized weights,
/// questions of one length run through the model together; otherwise one at a time.
fn first_tokens(
    model: &LoadedModel,
    sessions: &mut [&mut ContextSession],
    question_ids: &[Vec<u32>],
) -> Result<Vec<u32>> {
    let m = &model.model;
    let same_length = question_ids
        .iter()
        .all(|q| q.len() == question_ids[0].len());
    if m.keeps_dequantized_weights() && same_length {
        let tokens: Vec<&[u32]> = question_ids.iter().map(Vec::as_slice).collect();
        let mut caches: Vec<&mut ModelCache> = sessions.iter_mut().map(|s| s.cache_mut()).collect();
        let rows = m
            .forward_sequences(&tokens, &mut caches)?
            .to_vec2::<f32>()?;
        return rows
            .iter()
            .map(|row| {
                check_finite(row)?;
                Ok(argmax(row))
            })
            .collect();
    }
    let mut next = Vec::with_capacity(sessions.len());
    for (session, question) in sessions.iter_mut().zip(question_ids) {
        let input = Tensor::new(question.as_slice(), m.device())?.unsqueeze(0)?;
        let logits = m.forward(&input, session.cache_mut(), None)?;
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        check_finite(&row)?;
        next.push(argmax(&row));
    }
    Ok(next)
}

/// One decoding step of every active answer, in one forward; `next` gets their next tokens.
fn decode_step(
    model: &LoadedModel,
    sessions: &mut [&mut ContextSession],
    active: &[bool],
    next: &mut [u32],
) -> Result<()> {
    let tokens: Vec<u32> = (0..next.len())
        .filter(|&i| active[i])
        .map(|i| next[i])
        .collect();
    let mut caches: Vec<&mut ModelCache> = sessions
        .iter_mut()
        .zip(active)
        .filter(|(_, &a)| a)
        .map(|(s, _)| s.cache_mut())
        .collect();
    let tokens: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
    let logits: Vec<Vec<f32>> = model
        .model
        .forward_sequences(&tokens, &mut caches)?
        .to_vec2()?;
    let active_rows = (0..next.len()).filter(|&i| active[i]);
    for (i, row) in active_rows.zip(&logits) {
        check_finite(row)?;
        next[i] = argmax(row);
    }
    Ok(())
}
