//! Attention for a few new tokens (decode steps): memory-bound, so each KV head's keys are split
//! into chunks processed in parallel (split-K), each chunk read once for all the query heads of
//! the group, and the partial softmax results are merged exactly.

use rayon::prelude::*;

use super::decode_block::{block_scores, block_values};
use super::softmax::exp_and_sum;
use super::view::CacheData;

/// Most query rows per KV head (group size x new tokens) handled here.
pub(super) const MAX_ROWS: usize = 16;
/// Fewest keys per parallel chunk.
const MIN_KEYS_PER_CHUNK: usize = 256;
/// Keys read per block.
const KEYS_PER_BLOCK: usize = 64;

/// One KV head's keys or values inside a cache's storage: row `j` is
/// `data[start + j * row_stride..][..head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct HeadRows<'a> {
    /// The storage.
    pub data: CacheData<'a>,
    /// Element offset of row 0.
    pub start: usize,
    /// Elements from one row to the next.
    pub row_stride: usize,
}

/// Rows of f32: `row j` is `data[j * row_stride..][..head_dim]`.
pub(super) struct F32Rows<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
}

impl F32Rows<'_> {
    /// Row `j`.
    #[inline(always)]
    pub(super) fn row(&self, j: usize, head_dim: usize) -> &[f32] {
        &self.data[j * self.row_stride..j * self.row_stride + head_dim]
    }
}

impl<'a> HeadRows<'a> {
    /// Rows `first..first + n_rows` as f32: borrowed from an f32 cache, converted into `buffer`
    /// (in one pass when the rows are adjacent) from a 16-bit one.
    pub(super) fn rows_f32<'b>(
        &self,
        first: usize,
        n_rows: usize,
        head_dim: usize,
        buffer: &'b mut Vec<f32>,
    ) -> F32Rows<'b>
    where
        'a: 'b,
    {
        let start = self.start + first * self.row_stride;
        if let CacheData::F32(data) = self.data {
            return F32Rows {
                data: &data[start..],
                row_stride: self.row_stride,
            };
        }
        if self.row_stride == head_dim {
            self.data.f32_range(start, n_rows * head_dim, buffer);
        } else {
            let mut row = Vec::with_capacity(head_dim);
            buffer.clear();
            for j in 0..n_rows {
                buffer.extend_from_slice(self.data.f32_range(
                    start + j * self.row_stride,
                    head_dim,
                    &mut row,
                ));
            }
        }
        F32Rows {
            data: buffer,
            row_stride: head_dim,
        }
    }
}

/// The problem of one KV head: its query rows, and its first `n_keys` keys and values.
pub struct HeadProblem<'a> {
    /// Query rows, `rows x head_dim`.
    pub queries: Vec<f32>,
    /// Row `i` sees keys `0..=positions[i]` (causal mask when several tokens are new).
    pub positions: Vec<usize>,
    /// The head's keys.
    pub keys: HeadRows<'a>,
    /// The head's values.
    pub values: HeadRows<'a>,
    /// Keys (and values) the head holds; heads may differ (a flattened cache).
    pub n_keys: usize,
}

/// Partial softmax state of one row over one chunk of keys.
struct Partial {
    max: f32,
    sum: f32,
    out: Vec<f32>,
}

/// Solves every head problem (attention of a few query rows per KV head, scaled by `scale`);
/// returns, per problem, `rows x head_dim` outputs. Each head's keys are split into up to
/// `2 x threads / problems` chunks of at least 256 keys, solved in parallel and merged exactly.
///
/// # Panics
/// If a problem's rows reach past its storage, or a query row sees no key.
pub fn decode_attention(
    problems: &[HeadProblem<'_>],
    head_dim: usize,
    scale: f32,
) -> Vec<Vec<f32>> {
    let threads = rayon::current_num_threads();
    let chunks_per_head = (threads * 2).div_ceil(problems.len().max(1));
    // (problem, first key, end key) of every task; a problem's tasks are adjacent.
    let mut tasks = Vec::new();
    let mut first_task = Vec::with_capacity(problems.len() + 1);
    for (p, problem) in problems.iter().enumerate() {
        first_task.push(tasks.len());
        let n_keys = problem.n_keys;
        let chunks = chunks_per_head
            .min(n_keys.div_ceil(MIN_KEYS_PER_CHUNK))
            .max(1);
        let chunk_len = n_keys.div_ceil(chunks);
        for c in 0..chunks {
            let start = c * chunk_len;
            tasks.push((p, start, (start + chunk_len).min(n_keys)));
        }
    }
    first_task.push(tasks.len());
    let partials: Vec<Vec<Partial>> = tasks
        .par_iter()
        .map(|&(p, start, end)| chunk_partials(&problems[p], start, end, head_dim, scale))
        .collect();
    problems
        .iter()
        .enumerate()
        .map(|(p, problem)| {
            let rows = problem.positions.len();
            let mut out = vec![0f32; rows * head_dim];
            let own = &partials[first_task[p]..first_task[p + 1]];
            for row in 0..rows {
                let parts = own.iter().map(|chunk| &chunk[row]);
                let max = parts
                    .clone()
                    .fold(f32::NEG_INFINITY, |m, part| m.max(part.max));
                let mut total = 0.0;
                let dst = &mut out[row * head_dim..(row + 1) * head_dim];
                for part in parts.filter(|part| part.sum > 0.0) {
                    let weight = (part.max - max).exp();
                    total += part.sum * weight;
                    dst.iter_mut()
                        .zip(&part.out)
                        .for_each(|(d, o)| *d += weight * o);
                }
                let inv = 1.0 / total;
                dst.iter_mut().for_each(|d| *d *= inv);
            }
            out
        })
        .collect()
}

/// Unnormalised softmax-weighted sums of the values `start..end` for every query row.
fn chunk_partials(
    problem: &HeadProblem<'_>,
    start: usize,
    end: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<Partial> {
    let rows = problem.positions.len();
    let len = end.saturating_sub(start);
    let mut scores = vec![0f32; rows * len];
    let mut buffer = Vec::new();
    // Keys and values are read in blocks, so that a 16-bit cache widened into a buffer (the
    // portable path) stays in the core's cache.
    for (block, block_len) in key_blocks(start, end) {
        let scores = &mut scores[block - start..];
        block_scores(
            &problem.queries,
            &problem.keys,
            block,
            block_len,
            head_dim,
            scale,
            scores,
            len,
            &mut buffer,
        );
    }
    let mut partials = Vec::with_capacity(rows);
    for (row_scores, &position) in scores.chunks_mut(len.max(1)).zip(&problem.positions) {
        // Keys after the row's own position (when several tokens are new) are masked.
        let (max, sum) = exp_and_sum(row_scores, (position + 1).saturating_sub(start));
        partials.push(Partial {
            max,
            sum,
            out: Vec::new(),
        });
    }
    let mut outputs = vec![0f32; rows * head_dim];
    for (block, block_len) in key_blocks(start, end) {
        let weights = &scores[block - start..];
        block_values(
            weights,
            len,
            &problem.values,
            block,
            block_len,
            head_dim,
            &mut outputs,
            &mut buffer,
        );
    }
    for (partial, out) in partials.iter_mut().zip(outputs.chunks_exact(head_dim)) {
        partial.out = out.to_vec();
    }
    partials
}

/// `(first key, number of keys)` of the blocks covering `start..end`.
fn key_blocks(start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> {
    (start..end)
        .step_by(KEYS_PER_BLOCK)
        .map(move |block| (block, KEYS_PER_BLOCK.min(end - block)))
}
