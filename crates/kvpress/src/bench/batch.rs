//! `kvpress bench --batch`: several compressed contexts answered one at a time and in a batch.

use std::time::Instant;

use anyhow::{ensure, Result};
use hooks::ContextSession;
use kvpress_core::Press;
use models::LoadedModel;
use serde::Serialize;

use super::prompt_of_length;

/// Decoding throughput of several compressed contexts answered one at a time versus in one
/// batch ([`crate::batch::answer_batch`]).
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    /// Press name.
    pub press: String,
    /// Contexts answered.
    pub batch: usize,
    /// Tokens of the longest context (the others are 64, 128, ... shorter).
    pub context_tokens: usize,
    /// Answer tokens generated in all.
    pub generated_tokens: usize,
    /// Tokens per second answering one context after the other.
    pub one_at_a_time_tokens_per_second: f64,
    /// Tokens per second answering all contexts in one batch.
    pub batched_tokens_per_second: f64,
}

/// Compresses `batch` filler contexts with `press`, then times answering them one at a time and
/// together (`max_new_tokens` each, greedy, stopping at end-of-sequence).
pub fn measure_batch(
    model: &LoadedModel,
    name: &str,
    press: &dyn Press,
    n_tokens: usize,
    batch: usize,
    max_new_tokens: usize,
) -> Result<BatchRow> {
    ensure!(batch > 0, "--batch must be at least 1");
    ensure!(
        n_tokens > 64 * batch,
        "--context must exceed 64 tokens per context"
    );
    let suffix = hooks::PromptSplit::question_suffix(model)?;
    let question = model
        .tokenizer
        .encode(&format!("Continue the text.{suffix}"), false)?;
    let mut sessions = Vec::with_capacity(batch);
    for i in 0..batch {
        let ids = prompt_of_length(model, n_tokens - 64 * i)?;
        sessions.push(ContextSession::compress(&model.model, &ids, press, &[])?.0);
    }
    let questions = vec![question; batch];
    let start = Instant::now();
    let mut one_at_a_time = Vec::with_capacity(batch);
    for (session, question) in sessions.iter_mut().zip(&questions) {
        let answer = crate::batch::answer_batch(
            model,
            std::slice::from_mut(session),
            std::slice::from_ref(question),
            max_new_tokens,
        )?;
        one_at_a_time.extend(answer);
    }
    let one_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let answers = crate::batch::answer_batch(model, &mut sessions, &questions, max_new_tokens)?;
    let batched_seconds = start.elapsed().as_secs_f64();
    let generated: usize = answers.iter().map(Vec::len).sum();
    ensure!(
        answers == one_at_a_time,
        "batched answers differ from one-at-a-time answers"
    );
    Ok(BatchRow {
        press: name.to_string(),
        batch,
        context_tokens: n_tokens,
        generated_tokens: generated,
        one_at_a_time_tokens_per_second: generated as f64 / one_seconds,
        batched_tokens_per_second: generated as f64 / batched_seconds,
    })
}

/// A Markdown table of batch rows.
pub fn batch_table(rows: &[BatchRow]) -> String {
    let mut out = String::from(
        "| press | contexts | longest context | tokens | one at a time tok/s | batched tok/s |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} |\n",
            r.press,
            r.batch,
            r.context_tokens,
            r.generated_tokens,
            r.one_at_a_time_tokens_per_second,
            r.batched_tokens_per_second
        ));
    }
    out
}
