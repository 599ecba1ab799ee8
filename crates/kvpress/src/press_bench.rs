//! `kvpress bench --press`: what compressing costs, as a share of the prefill it follows.

use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::Tensor;
use hooks::ContextSession;
use kvpress_core::Press;
use models::{argmax, LoadedModel};
use serde::Serialize;

use crate::bench::prompt_of_length;

/// The compression cost of one press at one context length.
#[derive(Debug, Clone, Serialize)]
pub struct PressBenchRow {
    /// Press name (its config file name).
    pub press: String,
    /// Context tokens prefilled.
    pub context_tokens: usize,
    /// Seconds of the prefill forward without the compression.
    pub prefill_seconds: f64,
    /// Seconds of compression: reading the cache, scoring, selecting and compacting, all layers.
    pub compression_seconds: f64,
    /// `compression_seconds / prefill_seconds`, in percent.
    pub overhead_percent: f64,
    /// Fraction of the cache kept.
    pub kept_fraction: f64,
    /// KV-cache bytes allocated after compression.
    pub kv_bytes: usize,
    /// Milliseconds per greedy token decoded from the compressed cache (0 when not measured).
    pub decode_ms_per_token: f64,
}

/// Compresses a filler context of `n_tokens` tokens with `press` `repeats` times; keeps the
/// fastest prefill and the fastest compression.
pub fn measure_press(
    model: &LoadedModel,
    name: &str,
    press: &dyn Press,
    n_tokens: usize,
    decode_tokens: usize,
    repeats: usize,
) -> Result<PressBenchRow> {
    ensure!(repeats > 0, "--repeats must be at least 1");
    let ids = prompt_of_length(model, n_tokens)?;
    let mut best: Option<PressBenchRow> = None;
    for _ in 0..repeats {
        let (session, report) = ContextSession::compress(&model.model, &ids, press, &[])?;
        let decode_ms_per_token = decode(model, session, decode_tokens)?;
        let prefill_seconds = report.prefill_seconds - report.compression_seconds;
        let row = PressBenchRow {
            press: name.to_string(),
            context_tokens: n_tokens,
            prefill_seconds,
            compression_seconds: report.compression_seconds,
            overhead_percent: 0.0,
            kept_fraction: report.kept_fraction(),
            kv_bytes: report.kv_bytes,
            decode_ms_per_token,
        };
        best = Some(match best {
            None => row,
            Some(b) => PressBenchRow {
                prefill_seconds: b.prefill_seconds.min(row.prefill_seconds),
                compression_seconds: b.compression_seconds.min(row.compression_seconds),
                decode_ms_per_token: b.decode_ms_per_token.min(row.decode_ms_per_token),
                ..b
            },
        });
    }
    let mut row = best.expect("at least one repeat");
    row.overhead_percent = 100.0 * row.compression_seconds / row.prefill_seconds.max(1e-9);
    Ok(row)
}

/// Decodes `n` greedy tokens from the session's compressed context (without stopping at EOS);
/// milliseconds per token, 0 when `n` is 0.
fn decode(model: &LoadedModel, session: ContextSession, n: usize) -> Result<f64> {
    if n == 0 {
        return Ok(0.0);
    }
    let mut next = argmax(&session.last_logits.to_vec1()?);
    let mut cache = session.into_cache();
    let m = &model.model;
    let start = Instant::now();
    for _ in 0..n {
        let input = Tensor::new(&[next], m.device())?.unsqueeze(0)?;
        let logits = m.forward(&input, &mut cache, None)?;
        next = argmax(&logits.squeeze(0)?.to_vec1()?);
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / n as f64)
}

/// A Markdown table of press rows.
pub fn press_table(rows: &[PressBenchRow]) -> String {
    let mut out = String::from(
        "| press | context tokens | prefill s | compression s | overhead % | kept % | KV MiB | decode ms/token |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.press,
            r.context_tokens,
            r.prefill_seconds,
            r.compression_seconds,
            r.overhead_percent,
            100.0 * r.kept_fraction,
            r.kv_bytes as f64 / (1024.0 * 1024.0),
            r.decode_ms_per_token
        ));
    }
    out
}

/// Cost of appending one decoded token to every layer-shaped cache holding about `cached`
/// tokens per head: the mean over `n_appends` single-token appends, growth included. For the
/// flattened cache the heads keep ragged lengths (`cached / 2`, `cached`, `3 cached / 2`), as
/// after AdaKV.
#[derive(Debug, Clone, Serialize)]
pub struct AppendCost {
    /// Tokens per head before the appends (the middle head's).
    pub cached_tokens: usize,
    /// Nanoseconds per appended token, dense cache.
    pub dense_ns: f64,
    /// Nanoseconds per appended token, flattened cache.
    pub flat_ns: f64,
}

/// Measures [`AppendCost`] for the default model's layer shape (3 KV heads, head dim 64).
pub fn append_cost(cached: usize, n_appends: usize) -> Result<AppendCost> {
    use kvpress_core::press::Selection;
    use kvpress_core::{DenseLayerCache, LayerCache};
    ensure!(
        cached > 0 && n_appends > 0,
        "need cached tokens and appends"
    );
    let device = candle_core::Device::Cpu;
    let (heads, dim) = (3, 64);
    let longest = cached * 3 / 2;
    let context = Tensor::randn(0f32, 1.0, (1, heads, longest, dim), &device)?;
    let token = Tensor::randn(0f32, 1.0, (1, heads, 1, dim), &device)?;
    let time_appends = |cache: &mut dyn LayerCache| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..n_appends {
            cache.append(&token, &token)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e9 / n_appends as f64)
    };
    let mut dense = DenseLayerCache::new();
    dense.append(
        &context.narrow(2, 0, cached)?,
        &context.narrow(2, 0, cached)?,
    )?;
    let dense_ns = time_appends(&mut dense)?;
    let mut flat = adakv::FlatLayerCache::new();
    flat.append(&context, &context)?;
    let kept = [cached / 2, cached, longest]
        .iter()
        .map(|&n| (0..n as u32).collect())
        .collect();
    flat.compact(&Selection::new(kept, 1, heads, longest)?, None)?;
    let flat_ns = time_appends(&mut flat)?;
    Ok(AppendCost {
        cached_tokens: cached,
        dense_ns,
        flat_ns,
    })
}

/// A long generation with or without decode-time compression.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationRow {
    /// Press name.
    pub press: String,
    /// Tokens generated after the prompt.
    pub generated_tokens: usize,
    /// Milliseconds per token over the last 1000 tokens (or all of them when fewer).
    pub ms_per_token_last_1000: f64,
    /// The largest KV-cache allocation seen after any step, bytes.
    pub peak_cache_bytes: usize,
    /// KV-cache allocation at the end, bytes.
    pub final_cache_bytes: usize,
}

/// Generates `n_tokens` greedy tokens (EOS ignored) after a short prompt, with `press`'s hook
/// running in every forward (decode-time compression when it has a schedule).
pub fn measure_generation(
    model: &LoadedModel,
    name: &str,
    press: &dyn Press,
    n_tokens: usize,
) -> Result<GenerationRow> {
    ensure!(n_tokens > 0, "generate at least one token");
    let m = &model.model;
    let prompt = prompt_of_length(model, 32)?;
    let mut hook = hooks::PressHook::new(press, &[])?;
    let mut cache = hooks::new_cache_for(m, press)?;
    let input = Tensor::new(prompt.as_slice(), m.device())?.unsqueeze(0)?;
    let logits = m.forward(&input, &mut cache, Some(&mut hook))?;
    let mut next = argmax(&logits.squeeze(0)?.to_vec1()?);
    let mut peak = cache.bytes_reserved();
    let timed_from = n_tokens.saturating_sub(1000);
    let mut start = Instant::now();
    for step in 0..n_tokens {
        if step == timed_from {
            start = Instant::now();
        }
        let input = Tensor::new(&[next], m.device())?.unsqueeze(0)?;
        let logits = m.forward(&input, &mut cache, Some(&mut hook))?;
        next = argmax(&logits.squeeze(0)?.to_vec1()?);
        peak = peak.max(cache.bytes_reserved());
    }
    Ok(GenerationRow {
        press: name.to_string(),
        generated_tokens: n_tokens,
        ms_per_token_last_1000: start.elapsed().as_secs_f64() * 1e3
            / (n_tokens - timed_from) as f64,
        peak_cache_bytes: peak,
        final_cache_bytes: cache.bytes_reserved(),
    })
}

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
    let question = hooks::PromptSplit::new(model, "context", "Continue the text.")?.question_ids;
    let mut sessions = Vec::with_capacity(batch);
    for i in 0..batch {
        let ids = prompt_of_length(model, n_tokens - 64 * i)?;
        sessions.push(ContextSession::compress(&model.model, &ids, press, &[])?.0);
    }
    let questions = vec![question; batch];
    let start = Instant::now();
    let mut one_at_a_time = 0;
    for (session, question) in sessions.iter_mut().zip(&questions) {
        let answer = crate::batch::answer_batch(
            model,
            std::slice::from_mut(session),
            std::slice::from_ref(question),
            max_new_tokens,
        )?;
        one_at_a_time += answer[0].len();
    }
    let one_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let answers = crate::batch::answer_batch(model, &mut sessions, &questions, max_new_tokens)?;
    let batched_seconds = start.elapsed().as_secs_f64();
    let generated: usize = answers.iter().map(Vec::len).sum();
    ensure!(
        generated == one_at_a_time,
        "batched answers differ in length"
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
