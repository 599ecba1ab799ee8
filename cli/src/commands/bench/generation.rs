//! `kvpress bench --generate`: a long generation with or without decode-time compression.

use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::Tensor;
use kvpress::core::Press;
use kvpress::models::{argmax, LoadedModel};
use serde::Serialize;

use super::latency::prompt_of_length;

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

/// Tokens of the prompt a generation starts from.
pub const PROMPT_TOKENS: usize = 32;

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
    let prompt = prompt_of_length(model, PROMPT_TOKENS)?;
    kvpress::hooks::calibrate(m, press)?;
    let mut hook = kvpress::hooks::PressHook::new(press, &[])?;
    let mut cache = kvpress::hooks::new_cache_for(m, press)?;
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

/// A Markdown table of generation rows.
pub fn generation_table(rows: &[GenerationRow]) -> String {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut out = String::from(
        "| press | generated tokens | ms/token (last 1000) | peak KV MiB | final KV MiB |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.press,
            r.generated_tokens,
            r.ms_per_token_last_1000,
            mib(r.peak_cache_bytes),
            mib(r.final_cache_bytes)
        ));
    }
    out
}
