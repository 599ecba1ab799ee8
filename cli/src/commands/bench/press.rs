//! `kvpress bench --press`: what compressing costs, as a share of the prefill it follows, and
//! decoding speed from the compressed cache.

use anyhow::{ensure, Result};
use kvpress::core::Press;
use kvpress::hooks::ContextSession;
use kvpress::models::{argmax, LoadedModel};
use serde::Serialize;

use super::latency::{greedy_decode_ms, prompt_of_length};

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

/// Tokens at the end of the filler context that play the question for a press that compresses
/// for its question (Finch): about a RULER question with its chat suffix.
pub const BENCH_QUESTION_TOKENS: usize = 24;

/// Compresses a filler context of `n_tokens` tokens with `press` `repeats` times; keeps the
/// fastest prefill and the fastest compression. For a press that compresses for its question,
/// the last [`BENCH_QUESTION_TOKENS`] tokens are the question.
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
        let (session, report) = if press.describe().needs_question {
            let question = BENCH_QUESTION_TOKENS.min(n_tokens.saturating_sub(1));
            ContextSession::compress_with_question(&model.model, &ids, question, press, &[])?
        } else {
            ContextSession::compress(&model.model, &ids, press, &[])?
        };
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
    let first = argmax(&session.last_logits.to_vec1()?);
    greedy_decode_ms(&model.model, &mut session.into_cache(), first, n)
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
