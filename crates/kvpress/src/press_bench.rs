//! `kvpress bench --press`: what compressing costs, as a share of the prefill it follows.

use anyhow::{ensure, Result};
use hooks::ContextSession;
use kvpress_core::Press;
use models::LoadedModel;
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
}

/// Compresses a filler context of `n_tokens` tokens with `press` `repeats` times; keeps the
/// fastest prefill and the fastest compression.
pub fn measure_press(
    model: &LoadedModel,
    name: &str,
    press: &dyn Press,
    n_tokens: usize,
    repeats: usize,
) -> Result<PressBenchRow> {
    ensure!(repeats > 0, "--repeats must be at least 1");
    let ids = prompt_of_length(model, n_tokens)?;
    let mut best: Option<PressBenchRow> = None;
    for _ in 0..repeats {
        let (_, report) = ContextSession::compress(&model.model, &ids, press, &[])?;
        let prefill_seconds = report.prefill_seconds - report.compression_seconds;
        let row = PressBenchRow {
            press: name.to_string(),
            context_tokens: n_tokens,
            prefill_seconds,
            compression_seconds: report.compression_seconds,
            overhead_percent: 0.0,
            kept_fraction: report.kept_fraction(),
        };
        best = Some(match best {
            None => row,
            Some(b) => PressBenchRow {
                prefill_seconds: b.prefill_seconds.min(row.prefill_seconds),
                compression_seconds: b.compression_seconds.min(row.compression_seconds),
                ..b
            },
        });
    }
    let mut row = best.expect("at least one repeat");
    row.overhead_percent = 100.0 * row.compression_seconds / row.prefill_seconds.max(1e-9);
    Ok(row)
}

/// A Markdown table of press rows.
pub fn press_table(rows: &[PressBenchRow]) -> String {
    let mut out = String::from(
        "| press | context tokens | prefill s | compression s | overhead % | kept % |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.3} | {:.1} | {:.1} |\n",
            r.press,
            r.context_tokens,
            r.prefill_seconds,
            r.compression_seconds,
            r.overhead_percent,
            100.0 * r.kept_fraction
        ));
    }
    out
}
