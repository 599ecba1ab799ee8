//! `kvpress bench` without a mode option: prefill throughput and decode latency on a model, at
//! given context lengths; also the prompts and the greedy decoding the other modes measure with.

use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::Tensor;
use kvpress::models::{argmax, LoadedModel};
use serde::Serialize;

/// Filler text tokenized and repeated to build prompts of exact lengths.
const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Weight mode label (e.g. `quantized`, `f32`).
    pub weights: String,
    /// KV-cache storage dtype.
    pub kv_dtype: String,
    /// Context tokens prefilled.
    pub context_tokens: usize,
    /// Seconds of the prefill forward.
    pub prefill_seconds: f64,
    /// Prefill tokens per second.
    pub prefill_tokens_per_second: f64,
    /// Mean milliseconds per decoded token at this context length.
    pub decode_ms_per_token: f64,
    /// KV-cache bytes after prefill.
    pub kv_cache_bytes: usize,
}

/// Prompt ids of exactly `n_tokens` tokens.
pub fn prompt_of_length(model: &LoadedModel, n_tokens: usize) -> Result<Vec<u32>> {
    let unit = model.tokenizer.encode(FILLER, false)?;
    ensure!(
        !unit.is_empty(),
        "the tokenizer produced no tokens for the filler text"
    );
    Ok(unit.iter().copied().cycle().take(n_tokens).collect())
}

/// Runs [`measure_once`] `repeats` times and keeps the fastest prefill and decode (the least
/// disturbed by other processes on the machine).
pub fn measure(
    model: &LoadedModel,
    n_tokens: usize,
    decode_tokens: usize,
    repeats: usize,
) -> Result<BenchRow> {
    ensure!(repeats > 0, "--repeats must be at least 1");
    let mut best = measure_once(model, n_tokens, decode_tokens)?;
    for _ in 1..repeats {
        let row = measure_once(model, n_tokens, decode_tokens)?;
        if row.prefill_seconds < best.prefill_seconds {
            best.prefill_seconds = row.prefill_seconds;
            best.prefill_tokens_per_second = row.prefill_tokens_per_second;
        }
        best.decode_ms_per_token = best.decode_ms_per_token.min(row.decode_ms_per_token);
    }
    Ok(best)
}

/// Prefills `n_tokens` and decodes `decode_tokens` greedily (without stopping at EOS).
pub fn measure_once(
    model: &LoadedModel,
    n_tokens: usize,
    decode_tokens: usize,
) -> Result<BenchRow> {
    let m = &model.model;
    let ids = prompt_of_length(model, n_tokens)?;
    let mut cache = m.new_cache();
    let input = Tensor::new(ids.as_slice(), m.device())?.unsqueeze(0)?;
    let start = Instant::now();
    let logits = m.forward(&input, &mut cache, None)?;
    // Storing the context is part of the prefill: a quantized cache quantizes it here (else the
    // first decode step would).
    cache.shrink_to_fit()?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let kv_cache_bytes = cache.bytes_used();
    let first = argmax(&logits.squeeze(0)?.to_vec1()?);
    let decode_ms_per_token = greedy_decode_ms(m, &mut cache, first, decode_tokens)?;
    Ok(BenchRow {
        weights: m.weight_mode().to_string(),
        kv_dtype: m.kv_storage().name().to_string(),
        context_tokens: n_tokens,
        prefill_seconds,
        prefill_tokens_per_second: n_tokens as f64 / prefill_seconds,
        decode_ms_per_token,
        kv_cache_bytes,
    })
}

/// Decodes `n` greedy tokens after `first` (without stopping at EOS); milliseconds per token,
/// 0 when `n` is 0.
pub fn greedy_decode_ms(
    model: &kvpress::models::Model,
    cache: &mut kvpress::core::ModelCache,
    first: u32,
    n: usize,
) -> Result<f64> {
    if n == 0 {
        return Ok(0.0);
    }
    let mut next = first;
    let start = Instant::now();
    for _ in 0..n {
        let input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
        let logits = model.forward(&input, cache, None)?;
        next = argmax(&logits.squeeze(0)?.to_vec1()?);
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / n as f64)
}

/// A Markdown table of rows.
pub fn markdown_table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| weights | KV dtype | context tokens | prefill s | prefill tok/s | decode ms/token | KV cache MiB |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} |\n",
            r.weights,
            r.kv_dtype,
            r.context_tokens,
            r.prefill_seconds,
            r.prefill_tokens_per_second,
            r.decode_ms_per_token,
            r.kv_cache_bytes as f64 / (1024.0 * 1024.0)
        ));
    }
    out
}
