//! `kvpress bench --append-cost`: appending a decoded token to a layer's cache, dense and
//! flattened, at several cache sizes.

use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::Serialize;

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
    use kvpress::core::press::Selection;
    use kvpress::core::LayerCache;
    use kvpress::models::DenseLayerCache;
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
    let mut flat = kvpress::presses::adakv::FlatLayerCache::new();
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

/// A Markdown table of append costs.
pub fn append_table(rows: &[AppendCost]) -> String {
    let mut out = String::from(
        "| cached tokens per head | dense ns/token | flattened ns/token |\n|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            r.cached_tokens, r.dense_ns, r.flat_ns
        ));
    }
    out
}
