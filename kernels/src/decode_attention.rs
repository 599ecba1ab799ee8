//! Attention for a few new tokens (decode steps): memory-bound, so each KV head's keys are split
//! into chunks processed in parallel (split-K), each chunk read once for all the query heads of
//! the group, and the partial softmax results are merged exactly.

use rayon::prelude::*;

use candle_core::{Error, Result};

use super::decode_block::{block_scores, block_values};
use super::softmax::exp_and_sum;
use super::view::CacheData;

/// Most query rows per KV head (group size x new tokens) handled here.
pub const MAX_ROWS: usize = 16;
/// Fewest keys per parallel chunk.
const MIN_KEYS_PER_CHUNK: usize = 256;
/// Keys read per block: few enough that a 16-bit block widened into a buffer (the portable
/// path) stays in the core's cache.
const KEYS_PER_BLOCK: usize = 64;
/// Keys read per block of quantized rows, read as codes: nothing is widened into memory, and
/// each block's setup (queries put into the kernels' order and rounded, group parameters
/// converted) is spread over more keys.
const QUANTIZED_KEYS_PER_BLOCK: usize = 256;

/// The block size for keys stored as `data`.
fn keys_per_block(data: &CacheData<'_>) -> usize {
    match data {
        CacheData::Quantized(_) => QUANTIZED_KEYS_PER_BLOCK,
        _ => KEYS_PER_BLOCK,
    }
}

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
    /// Whether rows `first..first + n_rows` (of `head_dim` values) lie inside the storage.
    pub(super) fn holds(&self, first: usize, n_rows: usize, head_dim: usize) -> bool {
        let offset = self.start + first * self.row_stride;
        let end = match n_rows {
            0 => offset,
            n => offset + (n - 1) * self.row_stride + head_dim,
        };
        end <= self.data.len()
    }

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

/// Partial softmax state of every query row of a problem over one chunk of keys: per row the
/// chunk's maximum score and the sum of `exp(score - max)`, and the values weighted by those
/// exponentials (`rows x head_dim`, not normalised).
struct ChunkPartials {
    max_and_sum: Vec<(f32, f32)>,
    weighted: Vec<f32>,
}

/// Solves every head problem (attention of a few query rows per KV head, scaled by `scale`);
/// returns, per problem, `rows x head_dim` outputs. Each head's keys are split into up to
/// `2 x threads / problems` chunks of at least 256 keys, solved in parallel and merged exactly.
///
/// Errors (before any work) when a problem is inconsistent: queries that are not whole rows of
/// `head_dim`, one position per row, a row seeing no key or keys past `n_keys`, rows reaching
/// past the storage.
pub fn decode_attention(
    problems: &[HeadProblem<'_>],
    head_dim: usize,
    scale: f32,
) -> Result<Vec<Vec<f32>>> {
    Ok(decode_attention_parts(problems, head_dim, scale)?
        .into_iter()
        .map(|part| part.output)
        .collect())
}

/// The attention of a head problem's query rows over some of the keys they see, with what
/// merging it with the attention over the other keys needs ([`merge_attention_parts`]).
#[derive(Debug, Clone)]
pub struct AttentionPart {
    /// Normalised outputs, `rows x head_dim`.
    pub output: Vec<f32>,
    /// Per row, the log of the sum of `exp(score)` over the keys of this part.
    pub log_sum_exp: Vec<f32>,
}

/// [`decode_attention`], keeping each row's log-sum-exp: attention over keys held in two
/// storages (a quantized cache and its newest tokens in f32) is solved once per storage and
/// merged exactly with [`merge_attention_parts`].
pub fn decode_attention_parts(
    problems: &[HeadProblem<'_>],
    head_dim: usize,
    scale: f32,
) -> Result<Vec<AttentionPart>> {
    for (p, problem) in problems.iter().enumerate() {
        check_problem(problem, head_dim)
            .map_err(|e| Error::Msg(format!("decode attention, head problem {p}: {e}")))?;
    }
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
    let solve = |&(p, start, end): &(usize, usize, usize)| {
        chunk_partials(&problems[p], start, end, head_dim, scale)
    };
    // A few keys in all (the newest tokens of a quantized cache) are not worth waking threads.
    let total_keys: usize = problems.iter().map(|p| p.n_keys).sum();
    let partials: Vec<ChunkPartials> = if total_keys < MIN_KEYS_PER_CHUNK {
        tasks.iter().map(solve).collect()
    } else {
        tasks.par_iter().map(solve).collect()
    };
    Ok(problems
        .iter()
        .enumerate()
        .map(|(p, problem)| {
            let rows = problem.positions.len();
            let mut out = vec![0f32; rows * head_dim];
            let mut log_sum_exp = vec![0f32; rows];
            let own = &partials[first_task[p]..first_task[p + 1]];
            for row in 0..rows {
                let max = own
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, part| m.max(part.max_and_sum[row].0));
                let mut total = 0.0;
                let dst = &mut out[row * head_dim..(row + 1) * head_dim];
                for part in own.iter().filter(|part| part.max_and_sum[row].1 > 0.0) {
                    let (part_max, part_sum) = part.max_and_sum[row];
                    let weight = (part_max - max).exp();
                    total += part_sum * weight;
                    let weighted = &part.weighted[row * head_dim..(row + 1) * head_dim];
                    dst.iter_mut()
                        .zip(weighted)
                        .for_each(|(d, o)| *d += weight * o);
                }
                let inv = 1.0 / total;
                dst.iter_mut().for_each(|d| *d *= inv);
                log_sum_exp[row] = max + total.ln();
            }
            AttentionPart {
                output: out,
                log_sum_exp,
            }
        })
        .collect())
}

/// The attention over the keys of both parts (of the same query rows, `head_dim` wide), from
/// each part's normalised output weighted by its share of the softmax mass.
pub fn merge_attention_parts(a: &AttentionPart, b: &AttentionPart, head_dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; a.output.len()];
    for (row, dst) in out.chunks_exact_mut(head_dim).enumerate() {
        let (la, lb) = (a.log_sum_exp[row], b.log_sum_exp[row]);
        let max = la.max(lb);
        let (wa, wb) = ((la - max).exp(), (lb - max).exp());
        let inv = 1.0 / (wa + wb);
        let (oa, ob) = (
            &a.output[row * head_dim..(row + 1) * head_dim],
            &b.output[row * head_dim..(row + 1) * head_dim],
        );
        for ((d, x), y) in dst.iter_mut().zip(oa).zip(ob) {
            *d = (wa * x + wb * y) * inv;
        }
    }
    out
}

/// Why `problem` cannot be solved, if it cannot.
fn check_problem(problem: &HeadProblem<'_>, head_dim: usize) -> std::result::Result<(), String> {
    let rows = problem.positions.len();
    if head_dim == 0 || problem.queries.len() != rows * head_dim {
        return Err(format!(
            "{} query values are not {rows} rows of head dim {head_dim}",
            problem.queries.len()
        ));
    }
    if let Some(&position) = problem.positions.iter().max() {
        if position >= problem.n_keys {
            return Err(format!(
                "a query row at position {position} but only {} keys",
                problem.n_keys
            ));
        }
    }
    for (name, rows) in [("keys", &problem.keys), ("values", &problem.values)] {
        if rows.row_stride < head_dim || !rows.holds(0, problem.n_keys, head_dim) {
            return Err(format!(
                "{name}: {} rows from element {} with stride {} (head dim {head_dim}) reach \
                 past the {} stored elements",
                problem.n_keys,
                rows.start,
                rows.row_stride,
                rows.data.len()
            ));
        }
    }
    Ok(())
}

/// Unnormalised softmax-weighted sums of the values `start..end` for every query row.
fn chunk_partials(
    problem: &HeadProblem<'_>,
    start: usize,
    end: usize,
    head_dim: usize,
    scale: f32,
) -> ChunkPartials {
    let rows = problem.positions.len();
    let len = end.saturating_sub(start);
    let mut scores = vec![0f32; rows * len];
    let mut buffer = Vec::new();
    // Keys and values are read in blocks, so that a 16-bit cache widened into a buffer (the
    // portable path) stays in the core's cache.
    let keys_per_block = keys_per_block(&problem.keys.data);
    for (block, block_len) in key_blocks(start, end, keys_per_block) {
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
    // Keys after a row's own position (when several tokens are new) are masked.
    let max_and_sum = scores
        .chunks_mut(len.max(1))
        .zip(&problem.positions)
        .map(|(row_scores, &position)| {
            exp_and_sum(row_scores, (position + 1).saturating_sub(start))
        })
        .collect();
    let mut weighted = vec![0f32; rows * head_dim];
    for (block, block_len) in key_blocks(start, end, keys_per_block) {
        let weights = &scores[block - start..];
        block_values(
            weights,
            len,
            &problem.values,
            block,
            block_len,
            head_dim,
            &mut weighted,
            &mut buffer,
        );
    }
    ChunkPartials {
        max_and_sum,
        weighted,
    }
}

/// `(first key, number of keys)` of the blocks covering `start..end`.
fn key_blocks(
    start: usize,
    end: usize,
    keys_per_block: usize,
) -> impl Iterator<Item = (usize, usize)> {
    (start..end)
        .step_by(keys_per_block)
        .map(move |block| (block, keys_per_block.min(end - block)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention of one query row over `keys[..=position]` (rows of `d`), in f64.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], position: usize, d: usize) -> Vec<f64> {
        let scale = 1.0 / (d as f64).sqrt();
        let scores: Vec<f64> = (0..=position)
            .map(|j| {
                let key = &keys[j * d..(j + 1) * d];
                q.iter().zip(key).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|i| {
                weights
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * values[j * d + i] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    #[test]
    fn attention_split_over_two_storages_merges_exactly() {
        let d = 8;
        let stored: Vec<f32> = (0..900 * d).map(|i| (i as f32 * 0.029).cos()).collect();
        let rows = |start: usize| HeadRows {
            data: CacheData::F32(&stored),
            start,
            row_stride: d,
        };
        let queries: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.3).sin()).collect();
        let scale = 1.0 / (d as f32).sqrt();
        // 900 keys, the last two rows being the new tokens (causal between them); the first
        // 600 keys in one storage, the other 300 in another.
        let whole = HeadProblem {
            queries: queries.clone(),
            positions: vec![898, 899],
            keys: rows(0),
            values: rows(0),
            n_keys: 900,
        };
        let older = HeadProblem {
            queries: queries.clone(),
            positions: vec![599, 599],
            keys: rows(0),
            values: rows(0),
            n_keys: 600,
        };
        let newer = HeadProblem {
            queries,
            positions: vec![298, 299],
            keys: rows(600 * d),
            values: rows(600 * d),
            n_keys: 300,
        };
        let want = decode_attention(&[whole], d, scale).unwrap().remove(0);
        let parts = decode_attention_parts(&[older, newer], d, scale).unwrap();
        let got = merge_attention_parts(&parts[0], &parts[1], d);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn heads_of_different_lengths_match_naive_attention_and_bad_problems_are_errors() {
        let d = 16;
        let stored: Vec<f32> = (0..3000 * d).map(|i| (i as f32 * 0.013).sin()).collect();
        let rows = |start: usize| HeadRows {
            data: CacheData::F32(&stored),
            start,
            row_stride: d,
        };
        // Three heads: 1, 700 and 1300 keys (several chunks), two query rows each.
        let lengths = [1, 700, 1300];
        let problems: Vec<HeadProblem<'_>> = lengths
            .iter()
            .enumerate()
            .map(|(h, &n)| HeadProblem {
                queries: (0..2 * d).map(|i| ((i + h) as f32 * 0.7).cos()).collect(),
                positions: vec![n - 1, n / 2],
                keys: rows(h * 100 * d),
                values: rows(1500 * d),
                n_keys: n,
            })
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let outputs = decode_attention(&problems, d, scale).unwrap();
        for (problem, out) in problems.iter().zip(&outputs) {
            let keys = &stored[problem.keys.start..];
            let values = &stored[problem.values.start..];
            for (r, &position) in problem.positions.iter().enumerate() {
                let want = naive(
                    &problem.queries[r * d..(r + 1) * d],
                    keys,
                    values,
                    position,
                    d,
                );
                for (got, want) in out[r * d..(r + 1) * d].iter().zip(&want) {
                    assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
                }
            }
        }
        // Rows past the storage, a position past the keys, ragged queries: errors, no panic.
        let mut bad = HeadProblem {
            queries: vec![0.0; d],
            positions: vec![0],
            keys: rows(2999 * d),
            values: rows(0),
            n_keys: 2,
        };
        let error = decode_attention(std::slice::from_ref(&bad), d, scale).unwrap_err();
        assert!(error.to_string().contains("keys: 2 rows"), "{error}");
        bad.keys = rows(0);
        bad.positions = vec![2];
        let error = decode_attention(std::slice::from_ref(&bad), d, scale).unwrap_err();
        assert!(error.to_string().contains("position 2"), "{error}");
        bad.positions = vec![1];
        bad.queries.pop();
        let error = decode_attention(std::slice::from_ref(&bad), d, scale).unwrap_err();
        assert!(error.to_string().contains("not 1 rows"), "{error}");
    }
}
