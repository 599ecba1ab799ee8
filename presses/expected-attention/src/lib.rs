//! ExpectedAttention (kvpress's `ExpectedAttentionPress`), as kvpress computes it: the queries
//! of the context (after the first `n_sink` tokens) are summarised by their pre-RoPE mean and
//! covariance; both are rotated by the RoPE matrix averaged over the next `n_future_positions`
//! positions, and each token scores the attention a Gaussian future query would pay it,
//! `softmax_t(k_t·mu / sqrt(d) + k_tᵀ Σ k_t / 2d)`, averaged over each KV head's query heads and
//! rescaled by the value norm. The sink tokens are always kept.
//!
//! ```
//! use presses_expected_attention::ExpectedAttention;
//! let press = ExpectedAttention { compression_ratio: 0.5, ..ExpectedAttention::default() };
//! assert_eq!(press.n_future_positions, 512);
//! assert_eq!(press.n_sink, 4);
//! ```
#![warn(missing_docs)]

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result, RotaryEmbedding};
use kvpress_kernels::{dot, sgemm, GemmDims, MatMut, MatRef};
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// Upper bound on the elements of the per-chunk intermediate of the quadratic form.
const MAX_CHUNK_ELEMENTS: usize = 1 << 22;

/// The ExpectedAttention press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectedAttention {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Number of future positions the RoPE rotation is averaged over (at least 1).
    pub n_future_positions: usize,
    /// Number of first tokens left out of the statistics and always kept (attention sinks);
    /// the context must be longer.
    pub n_sink: usize,
    /// Whether the query covariance enters the expected attention (otherwise only the mean).
    pub use_covariance: bool,
    /// Whether scores are rescaled by the L2 norm of the values: `(score + epsilon) * ||v||`.
    pub use_vnorm: bool,
    /// Added to the scores before the value-norm rescaling (non-negative).
    pub epsilon: f64,
}

impl Default for ExpectedAttention {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            n_future_positions: 512,
            n_sink: 4,
            use_covariance: true,
            use_vnorm: true,
            epsilon: 0.0,
        }
    }
}

impl ExpectedAttention {
    fn check_parameters(&self) -> Result<()> {
        if self.n_future_positions == 0 {
            return Err(Error::InvalidArgument(
                "expected_attention: n_future_positions must be at least 1".to_string(),
            ));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "expected_attention: epsilon {} must be finite and non-negative",
                self.epsilon
            )));
        }
        Ok(())
    }

    /// Mean `(batch, n_heads, head_dim)` and, with `use_covariance`, biased covariance `(batch,
    /// n_heads, head_dim, head_dim)` of the pre-RoPE queries of the forward's tokens after the
    /// sinks. The post-RoPE queries are rotated back to position 0 with the model's tables
    /// (kvpress projects the hidden states again, which gives the same queries).
    pub fn query_statistics(&self, input: &PressInput<'_>) -> Result<(Tensor, Option<Tensor>)> {
        let (batch, n_heads, n_queries, head_dim) = input.queries.dims4()?;
        if n_queries <= self.n_sink {
            return Err(Error::InvalidArgument(format!(
                "expected_attention: the forward has {n_queries} query tokens, it needs more than \
                 n_sink = {} to estimate the query statistics",
                self.n_sink
            )));
        }
        if input.rotary.head_dim() != head_dim {
            return Err(Error::Unsupported(format!(
                "expected_attention: the rotary tables rotate {} dimensions but heads have \
                 {head_dim} (partial rotary embeddings are not supported)",
                input.rotary.head_dim()
            )));
        }
        let n = n_queries - self.n_sink;
        let queries = input
            .queries
            .narrow(2, self.n_sink, n)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (cos, sin) =
            input
                .rotary
                .tables_for_range(input.query_position + self.n_sink, n, DType::F32)?;
        let cos = cos.flatten_all()?.to_vec1::<f32>()?;
        let sin = sin.flatten_all()?.to_vec1::<f32>()?;

        let n_rows = batch * n_heads;
        let (transposed, mean) = derotated_queries(
            &queries,
            &cos,
            &sin,
            [n_rows, n, head_dim],
            self.use_covariance,
        );
        let device = input.queries.device();
        let mean = Tensor::from_vec(mean, (batch, n_heads, head_dim), device)?;
        let covariance = if self.use_covariance {
            let d = head_dim;
            Some(Tensor::from_vec(
                covariances(&transposed, n_rows, n, d),
                (batch, n_heads, d, d),
                device,
            )?)
        } else {
            None
        };
        Ok((mean, covariance))
    }
}

/// The pre-RoPE queries of `n_rows` heads of `n` tokens (`queries`: `(n_rows, n, head_dim)`,
/// post-RoPE, rotated back with the half-width tables `cos`, `sin` of the tokens' positions),
/// stored per head as `(head_dim, n)` so the covariance is X Xᵀ, and their means `(n_rows,
/// head_dim)`. With `center`, the mean is subtracted from the stored queries.
fn derotated_queries(
    queries: &[f32],
    cos: &[f32],
    sin: &[f32],
    [n_rows, n, head_dim]: [usize; 3],
    center: bool,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut transposed = vec![0f32; queries.len()];
    let mut mean = vec![0f32; n_rows * head_dim];
    let mut sums = vec![0f64; head_dim];
    for row in 0..n_rows {
        let x = &mut transposed[row * head_dim * n..(row + 1) * head_dim * n];
        sums.iter_mut().for_each(|s| *s = 0.0);
        for t in 0..n {
            let q = &queries[(row * n + t) * head_dim..(row * n + t + 1) * head_dim];
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for i in 0..half {
                // The inverse rotation: q * cos + rotate_half(q) * (-sin).
                let first = q[i] * c[i] + q[i + half] * s[i];
                let second = q[i + half] * c[i] - q[i] * s[i];
                x[i * n + t] = first;
                x[(i + half) * n + t] = second;
                sums[i] += f64::from(first);
                sums[i + half] += f64::from(second);
            }
        }
        let mu = &mut mean[row * head_dim..(row + 1) * head_dim];
        for (j, m) in mu.iter_mut().enumerate() {
            *m = (sums[j] / n as f64) as f32;
            if center {
                x[j * n..(j + 1) * n].iter_mut().for_each(|v| *v -= *m);
            }
        }
    }
    (transposed, mean)
}

/// Per head: cov = X Xᵀ / n with X the centered `(d, n)` queries of `transposed` (`n_rows`
/// heads); the covariances `(n_rows, d, d)`, flattened.
fn covariances(transposed: &[f32], n_rows: usize, n: usize, d: usize) -> Vec<f32> {
    let mut covariance = vec![0f32; n_rows * d * d];
    for (x, cov) in transposed
        .chunks_exact(d * n)
        .zip(covariance.chunks_exact_mut(d * d))
    {
        sgemm(
            GemmDims { m: d, n: d, k: n },
            1.0 / n as f32,
            MatRef {
                data: x,
                row_stride: n,
                transposed: false,
            },
            MatRef {
                data: x,
                row_stride: n,
                transposed: true,
            },
            0.0,
            MatMut {
                data: cov,
                row_stride: d,
            },
        );
    }
    covariance
}

/// Half-width `(cos, sin)` of the RoPE matrix averaged over positions `start..start + n`: the
/// averaged matrix is `diag(cat(c, c)) + P diag(cat(s, s))` with `P` the rotate-half matrix.
/// Computed from the inverse frequencies like [`RotaryEmbedding::tables`] (angle `p * f` in
/// f32), for any position: future positions may lie past the model's maximum, as in kvpress.
fn averaged_rotation(rotary: &RotaryEmbedding, start: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let half = rotary.inv_freq().len();
    let mut cos = vec![0f64; half];
    let mut sin = vec![0f64; half];
    for position in start..start + n {
        for (j, &freq) in rotary.inv_freq().iter().enumerate() {
            let angle = position as f32 * freq;
            cos[j] += f64::from(angle.cos());
            sin[j] += f64::from(angle.sin());
        }
    }
    let mean = |v: Vec<f64>| v.into_iter().map(|x| (x / n as f64) as f32).collect();
    (mean(cos), mean(sin))
}

/// `x <- R x` for the rotation with half-width tables `cos`, `sin` (rotate-half layout), on every
/// `head_dim`-long run of `x` whose elements are `stride` apart.
fn rotate_in_place(x: &mut [f32], offset: usize, stride: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = (offset + i * stride, offset + (i + half) * stride);
        let (xa, xb) = (x[a], x[b]);
        x[a] = cos[i] * xa - sin[i] * xb;
        x[b] = cos[i] * xb + sin[i] * xa;
    }
}

/// Applies the averaged rotation to flattened statistics: `mu <- R mu` (kvpress's `mu @ R.T`)
/// for every head's mean, `cov <- R cov Rᵀ` for every head's covariance.
fn rotate_statistics(mean: &mut [f32], covariance: Option<&mut [f32]>, cos: &[f32], sin: &[f32]) {
    let d = 2 * cos.len();
    for head in 0..mean.len() / d {
        rotate_in_place(mean, head * d, 1, cos, sin);
    }
    if let Some(cov) = covariance {
        for head in 0..cov.len() / (d * d) {
            let base = head * d * d;
            // cov Rᵀ: rotate every row; then R (cov Rᵀ): rotate every column.
            for row in 0..d {
                rotate_in_place(cov, base + row * d, 1, cos, sin);
            }
            for column in 0..d {
                rotate_in_place(cov, base + column, d, cos, sin);
            }
        }
    }
}

/// Expected attention logits `(b, H, n)`, flattened, of every query head over `keys` `(b, H_kv,
/// n, d)` (flattened): `k·mu / sqrt(d) + kᵀ cov k / d / 2`, from the rotated statistics.
fn expected_logits(
    keys: &[f32],
    [batch, n_heads, n_kv_heads, n, d]: [usize; 5],
    mean: &[f32],
    covariance: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let group = n_heads / n_kv_heads;
    let sqrt_d = (d as f32).sqrt();
    let chunk = (MAX_CHUNK_ELEMENTS / (group * d)).max(1);
    let mut logits = vec![0f32; batch * n_heads * n];
    for b in 0..batch {
        for g in 0..n_kv_heads {
            let heads = b * n_heads + g * group..b * n_heads + (g + 1) * group;
            let keys = &keys[(b * n_kv_heads + g) * n * d..(b * n_kv_heads + g + 1) * n * d];
            for h in heads.clone() {
                let mu = &mean[h * d..(h + 1) * d];
                for (logit, k) in logits[h * n..(h + 1) * n]
                    .iter_mut()
                    .zip(keys.chunks_exact(d))
                {
                    *logit = dot(k, mu) / sqrt_d;
                }
            }
            let Some(covariance) = covariance else {
                continue;
            };
            // (d, G*d): the group's covariances side by side, so that one product projects every
            // key on every head's covariance.
            let mut stacked = vec![0f32; d * group * d];
            for (i, h) in heads.clone().enumerate() {
                let cov = &covariance[h * d * d..(h + 1) * d * d];
                for (row, values) in cov.chunks_exact(d).enumerate() {
                    stacked[(row * group + i) * d..(row * group + i + 1) * d]
                        .copy_from_slice(values);
                }
            }
            let mut projected = vec![0f32; chunk.min(n) * group * d];
            for start in (0..n).step_by(chunk) {
                let len = chunk.min(n - start);
                let k = &keys[start * d..(start + len) * d];
                let projected = &mut projected[..len * group * d];
                sgemm(
                    GemmDims {
                        m: len,
                        n: group * d,
                        k: d,
                    },
                    1.0,
                    MatRef {
                        data: k,
                        row_stride: d,
                        transposed: false,
                    },
                    MatRef {
                        data: &stacked,
                        row_stride: group * d,
                        transposed: false,
                    },
                    0.0,
                    MatMut {
                        data: projected,
                        row_stride: group * d,
                    },
                );
                for (t, (k, projected)) in k
                    .chunks_exact(d)
                    .zip(projected.chunks_exact(group * d))
                    .enumerate()
                {
                    for (i, h) in heads.clone().enumerate() {
                        let quadratic = dot(&projected[i * d..(i + 1) * d], k);
                        logits[h * n + start + t] += quadratic / d as f32 / 2.0;
                    }
                }
            }
        }
    }
    Ok(logits)
}

/// Softmax of every `n`-long row, in place.
fn softmax_rows(rows: &mut [f32], n: usize) {
    for row in rows.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            total += f64::from(*x);
        }
        let total = total as f32;
        row.iter_mut().for_each(|x| *x /= total);
    }
}

impl ExpectedAttention {
    /// Refuses a context no longer than the sinks and query heads that do not group over the
    /// KV heads; returns `(batch, n_heads, n_kv_heads, n_tokens, head_dim)`.
    fn check_input(&self, input: &PressInput<'_>) -> Result<[usize; 5]> {
        let (batch, n_kv_heads, n_tokens, d) = input.keys.dims4()?;
        if n_tokens <= self.n_sink {
            return Err(Error::InvalidArgument(format!(
                "expected_attention: the context ({n_tokens} tokens) must be longer than \
                 n_sink = {}",
                self.n_sink
            )));
        }
        let n_heads = input.queries.dim(1)?;
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::Shape(format!(
                "expected_attention: {n_heads} query heads cannot be grouped over {n_kv_heads} KV \
                 heads"
            )));
        }
        if input.rotary.head_dim() != d {
            return Err(Error::Unsupported(format!(
                "expected_attention: the rotary tables rotate {} dimensions but heads have {d} \
                 (partial rotary embeddings are not supported)",
                input.rotary.head_dim()
            )));
        }
        Ok([batch, n_heads, n_kv_heads, n_tokens, d])
    }

    /// The scores of `input`'s cached tokens given pre-RoPE query statistics: `mean` `(batch,
    /// n_heads, head_dim)` and `covariance` `(batch, n_heads, head_dim, head_dim)` (read only
    /// with `use_covariance`), both flattened row-major. Both are rotated by the RoPE matrix
    /// averaged over the `n_future_positions` positions after the forward (kvpress's
    /// `apply_avg_rope`); then every token after the sinks gets the softmax of its expected
    /// logit, averaged over its KV head's query heads and rescaled by its value norm, and the
    /// sinks get the largest score plus one.
    ///
    /// [`Scorer::score`] calls this with the context's own statistics
    /// ([`Self::query_statistics`]); a press with statistics from elsewhere (kvpress's
    /// `ExpectedAttentionStatsPress`, which reads calibrated ones) calls it with those.
    pub fn score_from_statistics(
        &self,
        input: &PressInput<'_>,
        mut mean: Vec<f32>,
        mut covariance: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        let [batch, n_heads, n_kv_heads, n_tokens, d] = self.check_input(input)?;
        if mean.len() != batch * n_heads * d {
            return Err(Error::Shape(format!(
                "expected_attention: {} query means for {batch} x {n_heads} heads of dimension {d}",
                mean.len()
            )));
        }
        if !self.use_covariance {
            covariance = None;
        }
        if let Some(cov) = &covariance {
            if cov.len() != batch * n_heads * d * d {
                return Err(Error::Shape(format!(
                    "expected_attention: {} covariance entries for {batch} x {n_heads} heads of \
                     dimension {d} x {d}",
                    cov.len()
                )));
            }
        }
        let group = n_heads / n_kv_heads;
        let n = n_tokens - self.n_sink;
        let (cos, sin) = averaged_rotation(
            input.rotary,
            input.next_position()?,
            self.n_future_positions,
        );
        rotate_statistics(&mut mean, covariance.as_deref_mut(), &cos, &sin);

        let keys = input
            .keys
            .narrow(2, self.n_sink, n)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let shape = [batch, n_heads, n_kv_heads, n, d];
        let mut attention = expected_logits(&keys, shape, &mean, covariance.as_deref())?;
        if input.front_padding.is_some() {
            // Rows are (batch, query head): padding of that row's KV head gets no attention.
            for (r, row) in attention.chunks_exact_mut(n).enumerate() {
                let (b, h) = (r / n_heads, r % n_heads);
                let pad = input.padding_of(b * n_kv_heads + h / group);
                row[..pad.saturating_sub(self.n_sink).min(n)].fill(f32::NEG_INFINITY);
            }
        }
        softmax_rows(&mut attention, n);

        // Mean over each KV head's query heads, then the value norms.
        let mut scores = vec![0f32; batch * n_kv_heads * n];
        for (kv_head, row) in scores.chunks_exact_mut(n).enumerate() {
            for i in 0..group {
                let h = kv_head * group + i;
                for (s, a) in row.iter_mut().zip(&attention[h * n..(h + 1) * n]) {
                    *s += a;
                }
            }
            row.iter_mut().for_each(|s| *s /= group as f32);
        }
        if self.use_vnorm {
            let values = input
                .values
                .narrow(2, self.n_sink, n)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let epsilon = self.epsilon as f32;
            for (s, v) in scores.iter_mut().zip(values.chunks_exact(d)) {
                let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                *s = (*s + epsilon) * norm as f32;
            }
        }
        let scores = Tensor::from_vec(scores, (batch, n_kv_heads, n), input.keys.device())?;
        ops::pad_with_max(&scores, self.n_sink, 0)
    }
}

impl Scorer for ExpectedAttention {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        self.check_input(input)?;
        let (mean, covariance) = self.query_statistics(input)?;
        let mean = mean.flatten_all()?.to_vec1::<f32>()?;
        let covariance = covariance
            .map(|c| c.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        self.score_from_statistics(input, mean, covariance)
    }
}

kvpress_core::scorer_press!(ExpectedAttention, "expected_attention");
kvpress_core::register_press!(
    "expected_attention",
    "attention a Gaussian model of future queries (mean and covariance, averaged RoPE) pays each \
     token, times the value norm (ExpectedAttention)",
    || Box::new(ExpectedAttention::default())
);
