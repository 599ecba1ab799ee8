//! Non-causal chunked attention (kvpress's `NonCausalAttnPress`, the attention half of
//! Compactor, [arXiv:2507.08143](https://arxiv.org/abs/2507.08143)).
//!
//! The prefill is cut into chunks of `chunk_size` tokens; inside each chunk every query attends
//! to every key of the chunk, before and after it (no causal mask, and, as in kvpress, no
//! `1/sqrt(d)` scaling). A key scores the attention its chunk's queries pay it (summed over the
//! queries, averaged over the query heads of its KV head), times the norm of its value, pooled
//! over 3 neighbours and z-normalised over all heads of the layer together.
//!
//! kvpress pads the last chunk with zero queries and keys and masks them its own way, which the
//! scores carry: padded query rows are set to 0 and padded key columns to `-1e-9` (not minus
//! infinity), so padded queries spread their attention evenly over the whole chunk and valid
//! queries give padded keys `exp(-1e-9 - max)`. Both are reproduced (without materialising the
//! padding, so a `chunk_size` longer than the context costs nothing extra).

use std::ops::Range;

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use kvpress_kernels::{exp, masked_softmax, sgemm, GemmDims, MatMut, MatRef};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::pre_rope::check_prefill;
use crate::zscore::z_normalise;

/// The non-causal chunked attention press (`non_causal_attn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NonCausalAttn {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Tokens per attention chunk (at least 1).
    pub chunk_size: usize,
}

impl Default for NonCausalAttn {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            chunk_size: 256,
        }
    }
}

impl NonCausalAttn {
    fn check_parameters(&self) -> Result<()> {
        check_chunk_size("non_causal_attn", self.chunk_size)
    }
}

/// Refuses chunks of no tokens.
pub(crate) fn check_chunk_size(press: &str, chunk_size: usize) -> Result<()> {
    if chunk_size == 0 {
        return Err(Error::InvalidArgument(format!(
            "{press}: chunk_size must be at least 1 (kvpress's default is 256)"
        )));
    }
    Ok(())
}

/// What kvpress writes into the padded key columns of the last chunk.
const PADDED_KEY_LOGIT: f32 = -1e-9;
/// Query rows whose logits are materialised at once.
const ROW_BLOCK: usize = 256;

/// Column sums of one chunk's non-causal attention for the `group` query heads of one KV head.
/// `queries` holds `group` blocks of `valid` rows (`d` wide), `keys` `valid` rows; the chunk is
/// padded to `chunk` rows as kvpress pads it, the padding accounted for without materialising
/// it. Returns `group` rows of `valid` column sums.
fn chunk_column_sums(
    queries: &[f32],
    keys: &[f32],
    [group, valid, chunk, d]: [usize; 4],
) -> Vec<f32> {
    let padding = chunk - valid;
    let rows = group * valid;
    let mut sums = vec![0f32; group * valid];
    let mut logits = vec![0f32; ROW_BLOCK.min(rows) * valid];
    for start in (0..rows).step_by(ROW_BLOCK) {
        let m = ROW_BLOCK.min(rows - start);
        let block = &mut logits[..m * valid];
        sgemm(
            GemmDims { m, n: valid, k: d },
            1.0,
            MatRef {
                data: &queries[start * d..(start + m) * d],
                row_stride: d,
                transposed: false,
            },
            MatRef {
                data: keys,
                row_stride: d,
                transposed: true,
            },
            0.0,
            MatMut {
                data: block,
                row_stride: valid,
            },
        );
        for (i, row) in block.chunks_exact_mut(valid).enumerate() {
            if padding == 0 {
                masked_softmax(row, valid);
            } else {
                softmax_with_padding(row, padding);
            }
            let head = (start + i) / valid;
            sums[head * valid..(head + 1) * valid]
                .iter_mut()
                .zip(row.iter())
                .for_each(|(s, p)| *s += p);
        }
    }
    if padding > 0 {
        // A padded query's logits are 0 over the valid keys and -1e-9 over the padded ones:
        // the same weight for every key.
        let weight = 1.0 / (valid as f32 + padding as f32 * exp(PADDED_KEY_LOGIT));
        sums.iter_mut().for_each(|s| *s += padding as f32 * weight);
    }
    sums
}

/// Softmax of `row` in place as if `padding` more logits equal to `-1e-9` (kvpress's padded
/// keys) followed it: `exp(l_j - m) / (Σ exp(l - m) + padding exp(-1e-9 - m))`, `m` the
/// maximum over all of them.
fn softmax_with_padding(row: &mut [f32], padding: usize) {
    let max = row.iter().copied().fold(PADDED_KEY_LOGIT, f32::max);
    let mut total = padding as f32 * exp(PADDED_KEY_LOGIT - max);
    for x in row.iter_mut() {
        *x = exp(*x - max);
        total += *x;
    }
    let inverse = 1.0 / total;
    row.iter_mut().for_each(|x| *x *= inverse);
}

/// kvpress's non-causal scorer on tokens `range` of a prefill (chunks start at `range.start`):
/// z-normalised, pooled `attention x ||v||`, `batch * n_kv_heads` rows of `range.len()` tokens,
/// in f32.
pub(crate) fn non_causal_z_scores(
    input: &PressInput<'_>,
    chunk_size: usize,
    range: Range<usize>,
) -> Result<Vec<f32>> {
    let (batch, n_kv_heads, _, d) = input.keys.dims4()?;
    let n = range.len();
    let group = input.shape.group_size();
    let read = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.narrow(2, range.start, n)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let queries = read(input.queries)?;
    let keys = read(input.keys)?;
    let values = read(input.values)?;
    let n_chunks = n.div_ceil(chunk_size);
    // One task per (batch, KV head, chunk): the group's column sums of that chunk.
    let sums: Vec<Vec<f32>> = (0..batch * n_kv_heads * n_chunks)
        .into_par_iter()
        .map(|task| {
            let (head, c) = (task / n_chunks, task % n_chunks);
            let start = c * chunk_size;
            let valid = chunk_size.min(n - start);
            let chunk_queries: Vec<f32> = (0..group)
                .flat_map(|g| {
                    let row0 = ((head * group + g) * n + start) * d;
                    queries[row0..row0 + valid * d].iter().copied()
                })
                .collect();
            let row0 = (head * n + start) * d;
            let chunk_keys = &keys[row0..row0 + valid * d];
            chunk_column_sums(&chunk_queries, chunk_keys, [group, valid, chunk_size, d])
        })
        .collect();
    let mut scores = Vec::with_capacity(batch * n_kv_heads * n);
    for (head, head_sums) in sums.chunks_exact(n_chunks).enumerate() {
        let head_values = &values[head * n * d..(head + 1) * n * d];
        scores.extend(pooled_head_scores(
            head_sums,
            head_values,
            [group, chunk_size, d],
        ));
    }
    Ok(z_normalise(&scores))
}

/// One KV head's scores before z-normalisation: the chunks' column sums `chunk_sums` (each
/// `group` rows) averaged over the query heads, times `||v||`, then kvpress's
/// `avg_pool1d(kernel_size=3, padding=1, stride=1)` (zero padding counted).
fn pooled_head_scores(
    chunk_sums: &[Vec<f32>],
    values: &[f32],
    [group, chunk_size, d]: [usize; 3],
) -> Vec<f64> {
    let n = values.len() / d;
    let mut attention = vec![0f32; n];
    for (c, chunk) in chunk_sums.iter().enumerate() {
        let valid = chunk.len() / group;
        for (t, a) in attention[c * chunk_size..c * chunk_size + valid]
            .iter_mut()
            .enumerate()
        {
            let total: f32 = (0..group).map(|g| chunk[g * valid + t]).sum();
            *a = total / group as f32;
        }
    }
    let weighted: Vec<f32> = attention
        .iter()
        .zip(values.chunks_exact(d))
        .map(|(a, v)| a * v.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    (0..n)
        .map(|t| {
            let window = &weighted[t.saturating_sub(1)..(t + 2).min(n)];
            f64::from(window.iter().sum::<f32>() / 3.0)
        })
        .collect()
}

impl Scorer for NonCausalAttn {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        check_prefill("non_causal_attn", input)?;
        let (batch, n_kv_heads, n, _) = input.keys.dims4()?;
        let z = non_causal_z_scores(input, self.chunk_size, 0..n)?;
        Ok(Tensor::from_vec(
            z,
            (batch, n_kv_heads, n),
            input.keys.device(),
        )?)
    }
}

kvpress_core::scorer_press!(NonCausalAttn, "non_causal_attn");
kvpress_core::register_press!(
    "non_causal_attn",
    "keeps the keys most attended within non-causal chunks, times their value norms (Compactor's attention score)",
    || Box::new(NonCausalAttn::default())
);
