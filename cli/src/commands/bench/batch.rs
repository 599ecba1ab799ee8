//! `kvpress bench --batch`: several compressed contexts answered one at a time and in a batch.

use std::time::Instant;

use anyhow::{ensure, Result};
use kvpress::core::Press;
use kvpress::hooks::ContextSession;
use kvpress::models::LoadedModel;
use serde::Serialize;

use super::latency::prompt_of_length;

/// Decoding throughput of several compressed contexts answered one at a time versus in one
/// batch ([`kvpress::hooks::batch::answer_batch`]).
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
    /// Tokens per second answering all contexts in one batch (one-row kernels: the same
    /// answers bit for bit).
    pub batched_tokens_per_second: f64,
    /// Tokens per second answering all contexts in one batch with kept f32 weights (every
    /// product an sgemm, as `kvpress eval` runs).
    pub batched_sgemm_tokens_per_second: f64,
    /// Answers of the sgemm batch equal to the one-at-a-time ones (they may differ at a rare
    /// near-tie: the sums are rounded in another order).
    pub sgemm_answers_equal: usize,
}

/// The question every context of a batch answers.
pub fn question_ids(model: &LoadedModel) -> Result<Vec<u32>> {
    let suffix = kvpress::hooks::PromptSplit::question_suffix(model)?;
    Ok(model
        .tokenizer
        .encode(&format!("Continue the text.{suffix}"), false)?)
}

/// Refuses a batch of `batch` contexts of `n_tokens`, `n_tokens - 64`, ... tokens that cannot be
/// built (each context is 64 tokens shorter than the one before) or whose uncompressed caches
/// (each context is prefilled whole before it is compressed, and the press may keep everything)
/// would not fit in the memory available now.
pub fn check_batch(model: &LoadedModel, n_tokens: usize, batch: usize) -> Result<()> {
    ensure!(batch > 0, "--batch must be at least 1");
    ensure!(
        n_tokens > 64 * batch,
        "--batch {batch} needs --context above {} (each context is 64 tokens shorter than the \
         one before); got --context {n_tokens}",
        64 * batch
    );
    let config = model.model.config();
    let bytes_per_token =
        config.n_layers * config.n_kv_heads * model.model.kv_storage().kv_bytes(1, config.head_dim);
    let tokens: usize = (0..batch).map(|i| n_tokens - 64 * i).sum();
    let needed = tokens * bytes_per_token;
    if let Some(available) = available_memory() {
        let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
        ensure!(
            needed < available,
            "--batch {batch} at --context {n_tokens} holds up to {:.1} GiB of KV cache (the \
             contexts uncompressed), more than the {:.1} GiB of memory available: use a \
             smaller --batch or --context",
            gib(needed),
            gib(available)
        );
    }
    Ok(())
}

/// Bytes of memory available to new allocations (Linux: `MemAvailable` of `/proc/meminfo`);
/// `None` where it cannot be read.
fn available_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Compresses `batch` filler contexts with `press`, then times answering them one at a time,
/// together, and together with kept f32 weights (`max_new_tokens` each, greedy, stopping at
/// end-of-sequence).
pub fn measure_batch(
    model: &LoadedModel,
    name: &str,
    press: &dyn Press,
    n_tokens: usize,
    batch: usize,
    max_new_tokens: usize,
) -> Result<BatchRow> {
    check_batch(model, n_tokens, batch)?;
    let question = question_ids(model)?;
    let mut sessions = Vec::with_capacity(batch);
    for i in 0..batch {
        let ids = prompt_of_length(model, n_tokens - 64 * i)?;
        sessions.push(ContextSession::compress(&model.model, &ids, press, &[])?.0);
    }
    let questions = vec![question; batch];
    let start = Instant::now();
    let mut one_at_a_time = Vec::with_capacity(batch);
    for (session, question) in sessions.iter_mut().zip(&questions) {
        let answer = kvpress::hooks::batch::answer_batch(
            model,
            std::slice::from_mut(session),
            std::slice::from_ref(question),
            max_new_tokens,
        )?;
        one_at_a_time.extend(answer);
    }
    let one_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let answers =
        kvpress::hooks::batch::answer_batch(model, &mut sessions, &questions, max_new_tokens)?;
    let batched_seconds = start.elapsed().as_secs_f64();
    let generated: usize = answers.iter().map(Vec::len).sum();
    ensure!(
        answers == one_at_a_time,
        "batched answers differ from one-at-a-time answers"
    );
    let mut with_copies = model.clone();
    with_copies.model.keep_dequantized_weights(usize::MAX)?;
    let start = Instant::now();
    let sgemm_answers = kvpress::hooks::batch::answer_batch(
        &with_copies,
        &mut sessions,
        &questions,
        max_new_tokens,
    )?;
    let sgemm_seconds = start.elapsed().as_secs_f64();
    let sgemm_generated: usize = sgemm_answers.iter().map(Vec::len).sum();
    Ok(BatchRow {
        press: name.to_string(),
        batch,
        context_tokens: n_tokens,
        generated_tokens: generated,
        one_at_a_time_tokens_per_second: generated as f64 / one_seconds,
        batched_tokens_per_second: generated as f64 / batched_seconds,
        batched_sgemm_tokens_per_second: sgemm_generated as f64 / sgemm_seconds,
        sgemm_answers_equal: sgemm_answers
            .iter()
            .zip(&one_at_a_time)
            .filter(|(a, b)| a == b)
            .count(),
    })
}

/// A Markdown table of batch rows.
pub fn batch_table(rows: &[BatchRow]) -> String {
    let mut out = String::from(
        "| press | contexts | longest context | tokens | one at a time tok/s | batched tok/s | \
         batched, kept f32 weights (sgemm) tok/s | sgemm answers equal |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {}/{} |\n",
            r.press,
            r.batch,
            r.context_tokens,
            r.generated_tokens,
            r.one_at_a_time_tokens_per_second,
            r.batched_tokens_per_second,
            r.batched_sgemm_tokens_per_second,
            r.sgemm_answers_equal,
            r.batch
        ));
    }
    out
}
