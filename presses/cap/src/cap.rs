//! CAPKV ([arXiv:2604.25975](https://arxiv.org/abs/2604.25975)) as kvpress's `CapPress` computes
//! it. After the first `n_sink` tokens (always kept), every query head weighs token `t` by its
//! alignment with a historical-query anchor `mu` ([`crate::anchor`]), `w_t = exp(tau (cos(k_t,
//! mu) - max))` (keys and anchor L2-normalised, cosine clamped to `[-1, 1]`), and scores it
//! `w_t v_tᵀ A⁻¹ v_t` with the capacity matrix `A = I + Σ_t (w_t + epsilon) v_t v_tᵀ`
//! ([`crate::capacity`]). Scores are averaged over each KV head's query heads; the sinks get the
//! largest score plus one.

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use presses_ops as ops;
use serde::{Deserialize, Serialize};

use crate::anchor::query_anchor;
use crate::capacity::capacity_leverage;

/// The CAPKV press (`cap`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cap {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Temperature of the query-key alignment weights (finite).
    pub tau: f64,
    /// Future positions the anchor's RoPE rotation is averaged over (at least 1).
    pub n_future_positions: usize,
    /// First tokens always kept (attention sinks); the context must be longer.
    pub n_sink: usize,
    /// Added to the weights in the capacity matrix (finite, non-negative).
    pub epsilon: f64,
}

impl Default for Cap {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            tau: 5.0,
            n_future_positions: 512,
            n_sink: 4,
            epsilon: 1e-6,
        }
    }
}

impl Cap {
    fn check_parameters(&self) -> Result<()> {
        if !self.tau.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "cap: tau {} must be a finite number",
                self.tau
            )));
        }
        if self.n_future_positions == 0 {
            return Err(Error::InvalidArgument(
                "cap: n_future_positions must be at least 1".to_string(),
            ));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "cap: epsilon {} must be finite and non-negative",
                self.epsilon
            )));
        }
        Ok(())
    }

    /// `w_t` of every query head: `(batch * n_heads, n)`, from the anchors `(batch * n_heads,
    /// d)` and the keys after the sinks `(batch * n_kv_heads, n, d)`.
    fn weights(&self, anchors: &[f64], keys: &[f32], [n, d, group]: [usize; 3]) -> Vec<f64> {
        let unit = |x: &mut [f64]| {
            let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            x.iter_mut().for_each(|v| *v /= norm);
        };
        let mut unit_keys: Vec<f64> = keys.iter().map(|&k| f64::from(k)).collect();
        unit_keys.chunks_exact_mut(d).for_each(unit);
        let mut weights = Vec::with_capacity(anchors.len() / d * n);
        for (head, anchor) in anchors.chunks_exact(d).enumerate() {
            let mut mu = anchor.to_vec();
            unit(&mut mu);
            let head_keys = &unit_keys[head / group * n * d..(head / group + 1) * n * d];
            let logits: Vec<f64> = head_keys
                .chunks_exact(d)
                .map(|k| {
                    self.tau
                        * k.iter()
                            .zip(&mu)
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            .clamp(-1.0, 1.0)
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            weights.extend(logits.iter().map(|l| (l - max).exp()));
        }
        weights
    }
}

impl Scorer for Cap {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        let (batch, n_kv_heads, n_tokens, d) = input.keys.dims4()?;
        if n_tokens <= self.n_sink {
            return Err(Error::InvalidArgument(format!(
                "cap: the cache has {n_tokens} tokens, it must be longer than n_sink = {}",
                self.n_sink
            )));
        }
        let n = n_tokens - self.n_sink;
        let group = input.shape.group_size();
        let read = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.narrow(2, self.n_sink, n)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (keys, values) = (read(input.keys)?, read(input.values)?);
        let anchors = query_anchor(input, self.n_sink, self.n_future_positions)?;
        let weights = self.weights(&anchors, &keys, [n, d, group]);
        let mut scores = vec![0f32; batch * n_kv_heads * n];
        for (kv_head, row) in scores.chunks_exact_mut(n).enumerate() {
            let head_weights = &weights[kv_head * group * n..(kv_head + 1) * group * n];
            let head_values = &values[kv_head * n * d..(kv_head + 1) * n * d];
            let leverage =
                capacity_leverage(head_values, head_weights, [group, n, d], self.epsilon)?;
            for (t, score) in row.iter_mut().enumerate() {
                let total: f64 = (0..group)
                    .map(|g| head_weights[g * n + t] * leverage[g * n + t])
                    .sum();
                *score = (total / group as f64) as f32;
            }
        }
        let scores = Tensor::from_vec(scores, (batch, n_kv_heads, n), input.keys.device())?;
        ops::pad_with_max(&scores, self.n_sink, 0)
    }
}

kvpress_core::scorer_press!(Cap, "cap");
kvpress_core::register_press!(
    "cap",
    "keeps the tokens whose values add most capacity under query-aligned weights (CAPKV)",
    || Box::new(Cap::default())
);
