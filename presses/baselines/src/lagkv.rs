//! LagKV ([arXiv:2504.04704](https://arxiv.org/abs/2504.04704)) as kvpress's `LagKVPress`
//! computes it: after `n_sink` sink tokens, the context is cut into partitions of `lag_size`
//! tokens; each token of a partition is scored by how much its key and value stand out once
//! normalised by the channel-wise range of the *next* partition (the lag reference). Sinks and
//! the last partition (with the remainder) score 1 and are always kept.

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

use presses_ops::TorchTopK;

/// The LagKV press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagKv {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Initial tokens always kept (attention sinks).
    pub n_sink: usize,
    /// Tokens per partition (at least 2); each partition is scored against the next one.
    pub lag_size: usize,
    /// Keep the raw scores (softmax within a partition) instead of their ranks, so that tokens
    /// of different partitions compete (kvpress: experimental, meant for AdaKV).
    pub cross_scoring: bool,
}

impl Default for LagKv {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            n_sink: 4,
            lag_size: 128,
            cross_scoring: false,
        }
    }
}

impl LagKv {
    fn check_parameters(&self) -> Result<()> {
        if self.lag_size < 2 {
            return Err(Error::InvalidArgument(format!(
                "lagkv: lag_size {} must be at least 2 (a partition's channel range needs two \
                 tokens)",
                self.lag_size
            )));
        }
        Ok(())
    }
}

/// Per token of one partition `rows` (`lag` rows of `dim`): the standard deviation over channels
/// (unbiased, computed in f64 as PyTorch's Welford reduction) of the row normalised by the
/// channel range of the reference partition `reference`, then a softmax over the partition.
fn partition_scores(rows: &[f32], reference: &[f32], dim: usize) -> Vec<f32> {
    let mut min = vec![f32::INFINITY; dim];
    let mut max = vec![f32::NEG_INFINITY; dim];
    for row in reference.chunks_exact(dim) {
        for c in 0..dim {
            min[c] = min[c].min(row[c]);
            max[c] = max[c].max(row[c]);
        }
    }
    let stds: Vec<f32> = rows
        .chunks_exact(dim)
        .map(|row| {
            let x: Vec<f64> = (0..dim)
                .map(|c| ((row[c] - min[c]) / (max[c] - min[c])) as f64)
                .collect();
            let mean = x.iter().sum::<f64>() / dim as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (dim as f64 - 1.0);
            var.sqrt() as f32
        })
        .collect();
    softmax(&stds)
}

/// Softmax of `xs` in f64, rounded to f32.
fn softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = xs.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// Rank of every entry among `xs` (0 = smallest, NaN above everything, ties by position), as
/// `argsort(argsort(xs))`.
fn ranks(xs: &[f32]) -> Vec<usize> {
    let key = |v: f32| if v.is_nan() { f32::INFINITY } else { v };
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (xs[a], xs[b]);
        (x.is_nan().cmp(&y.is_nan()))
            .then(key(x).total_cmp(&key(y)))
            .then(a.cmp(&b))
    });
    let mut rank = vec![0; xs.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// LagKV scores of one head's keys and values (`n_tokens` rows of `dim`).
fn head_scores(press: &LagKv, keys: &[f32], values: &[f32], dim: usize) -> Vec<f32> {
    let n_tokens = keys.len() / dim;
    let (sink, lag) = (press.n_sink, press.lag_size);
    let mut scores = vec![1f32; n_tokens];
    if n_tokens < sink + 2 * lag {
        // Too short to partition: keep the sinks and the most recent tokens.
        if n_tokens > sink {
            let span = (n_tokens - sink) as f32;
            for (j, s) in scores[sink..].iter_mut().enumerate() {
                *s = j as f32 / span;
            }
        }
        return scores;
    }
    let n_partitions = (n_tokens - sink) / lag;
    let range = |p: usize| (sink + p * lag) * dim..(sink + (p + 1) * lag) * dim;
    for p in 0..n_partitions - 1 {
        let key_scores = partition_scores(&keys[range(p)], &keys[range(p + 1)], dim);
        let value_scores = partition_scores(&values[range(p)], &values[range(p + 1)], dim);
        let combined: Vec<f32> = key_scores
            .iter()
            .zip(&value_scores)
            .map(|(k, v)| (k + v) / 2.0)
            .collect();
        let out = &mut scores[sink + p * lag..sink + (p + 1) * lag];
        if press.cross_scoring {
            out.copy_from_slice(&combined);
        } else {
            for (s, r) in out.iter_mut().zip(ranks(&combined)) {
                *s = r as f32 / lag as f32;
            }
        }
    }
    scores
}

/// LagKV scores `(batch, n_kv_heads, n_tokens)`: sinks and the last partition (with the
/// remainder) score 1; every other partition's tokens score their rank within the partition
/// divided by `lag_size` (or, with `cross_scoring`, the softmax itself). A context shorter than
/// `n_sink + 2 lag_size` scores the tokens after the sinks by recency.
pub fn lagkv_scores(press: &LagKv, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let (batch, n_kv_heads, n_tokens, dim) = keys.dims4()?;
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (keys_data, values_data) = (flat(keys)?, flat(values)?);
    let head_len = n_tokens * dim;
    let mut scores = Vec::with_capacity(batch * n_kv_heads * n_tokens);
    for (k, v) in keys_data
        .chunks_exact(head_len.max(1))
        .zip(values_data.chunks_exact(head_len.max(1)))
    {
        scores.extend(head_scores(press, k, v, dim));
    }
    Ok(Tensor::from_vec(
        scores,
        (batch, n_kv_heads, n_tokens),
        keys.device(),
    )?)
}

impl Scorer for LagKv {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        lagkv_scores(self, input.keys, input.values)
    }
}

kvpress_core::scorer_press!(LagKv, "lagkv", |_this| TorchTopK);
kvpress_core::register_press!(
    "lagkv",
    "scores each partition's tokens against the channel range of the next partition (LagKV)",
    || Box::new(LagKv::default())
);
