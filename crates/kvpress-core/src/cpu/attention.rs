//! Causal grouped-query attention for f32 on the CPU: per KV head and block of query positions,
//! one product for the scores, a masked softmax, one product for the output. Query heads of a
//! group share the keys they read; each block reads only the keys it can see.

use candle_core::Tensor;
use rayon::prelude::*;

use super::decode_attention::{
    decode_attention, HeadProblem, HeadRows, MAX_ROWS as DECODE_MAX_ROWS,
};
use super::sgemm::{sgemm, GemmDims, MatMut, MatRef};
use super::softmax::masked_softmax;
use super::view::f32_slice;
use crate::attention::AttentionOutput;
use crate::Result;

/// Upper bound on score elements of one block.
const MAX_BLOCK_SCORES: usize = 1 << 22;
/// Upper bound on query positions per block (smaller blocks skip more masked keys).
const MAX_BLOCK_POSITIONS: usize = 256;

/// Attention of `queries` `(b, h, s, d)` over `keys`/`values` `(b, h_kv, t, d)` (views whose last
/// dimension is contiguous), the queries being the last `s` positions. Returns `None` when the
/// tensors are not f32 CPU tensors with that layout, so the caller can use a generic path.
pub fn attention_f32(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    want_weights: bool,
) -> Result<Option<AttentionOutput>> {
    let (batch, n_heads, n_queries, head_dim) = queries.dims4()?;
    let (_, n_kv_heads, n_keys, _) = keys.dims4()?;
    let queries = queries.contiguous()?;
    let group = n_heads / n_kv_heads;
    let first_position = n_keys - n_queries;
    let block = (MAX_BLOCK_SCORES / (group * n_keys).max(1)).clamp(1, MAX_BLOCK_POSITIONS);
    let scale = 1.0 / (head_dim as f32).sqrt();

    let mut output = vec![0f32; batch * n_heads * n_queries * head_dim];
    let mut weights = if want_weights {
        vec![0f32; batch * n_heads * n_queries * n_keys]
    } else {
        Vec::new()
    };
    let done = f32_slice(&queries, |q, q_start, _| {
        f32_slice(keys, |k, k_start, k_stride| {
            f32_slice(values, |v, v_start, v_stride| {
                if k_stride[3] != 1 || v_stride[3] != 1 {
                    return false;
                }
                let q = &q[q_start..];
                let k_head = |b: usize, kv: usize| HeadRows {
                    data: k,
                    start: k_start + b * k_stride[0] + kv * k_stride[1],
                    row_stride: k_stride[2],
                };
                let v_head = |b: usize, kv: usize| HeadRows {
                    data: v,
                    start: v_start + b * v_stride[0] + kv * v_stride[1],
                    row_stride: v_stride[2],
                };
                if !want_weights && group * n_queries <= DECODE_MAX_ROWS {
                    let mut problems = Vec::with_capacity(batch * n_kv_heads);
                    for b in 0..batch {
                        for kv in 0..n_kv_heads {
                            let mut queries = Vec::with_capacity(group * n_queries * head_dim);
                            let mut positions = Vec::with_capacity(group * n_queries);
                            for g in 0..group {
                                let base = (b * n_heads + kv * group + g) * n_queries * head_dim;
                                queries.extend_from_slice(&q[base..base + n_queries * head_dim]);
                                positions.extend((0..n_queries).map(|r| first_position + r));
                            }
                            problems.push(HeadProblem {
                                queries,
                                positions,
                                keys: k_head(b, kv),
                                values: v_head(b, kv),
                            });
                        }
                    }
                    let results = decode_attention(&problems, n_keys, head_dim, scale);
                    for (index, result) in results.iter().enumerate() {
                        let (b, kv) = (index / n_kv_heads, index % n_kv_heads);
                        let base = (b * n_heads + kv * group) * n_queries * head_dim;
                        output[base..base + result.len()].copy_from_slice(result);
                    }
                    return true;
                }
                let mut scores = Vec::new();
                let mut gathered = Vec::new();
                let mut block_out = Vec::new();
                for b in 0..batch {
                    for kv in 0..n_kv_heads {
                        let (k_rows, v_rows) = (k_head(b, kv), v_head(b, kv));
                        let mut p0 = 0;
                        while p0 < n_queries {
                            let len = block.min(n_queries - p0);
                            let visible = first_position + p0 + len;
                            let rows = group * len;
                            // Gather the group's queries for this block: row (g, r) = q[b, kv*G+g, p0+r].
                            gathered.clear();
                            for g in 0..group {
                                let head = kv * group + g;
                                let base = ((b * n_heads + head) * n_queries + p0) * head_dim;
                                gathered.extend_from_slice(&q[base..base + len * head_dim]);
                            }
                            scores.resize(rows * visible, 0.0);
                            sgemm(
                                GemmDims {
                                    m: rows,
                                    n: visible,
                                    k: head_dim,
                                },
                                scale,
                                MatRef {
                                    data: &gathered,
                                    row_stride: head_dim,
                                    transposed: false,
                                },
                                MatRef {
                                    data: &k[k_rows.start..],
                                    row_stride: k_rows.row_stride,
                                    transposed: true,
                                },
                                0.0,
                                MatMut {
                                    data: &mut scores,
                                    row_stride: visible,
                                },
                            );
                            scores
                                .par_chunks_mut(visible)
                                .enumerate()
                                .for_each(|(row, s)| {
                                    let position = first_position + p0 + row % len;
                                    masked_softmax(s, position + 1);
                                });
                            block_out.resize(rows * head_dim, 0.0);
                            sgemm(
                                GemmDims {
                                    m: rows,
                                    n: head_dim,
                                    k: visible,
                                },
                                1.0,
                                MatRef {
                                    data: &scores,
                                    row_stride: visible,
                                    transposed: false,
                                },
                                MatRef {
                                    data: &v[v_rows.start..],
                                    row_stride: v_rows.row_stride,
                                    transposed: false,
                                },
                                0.0,
                                MatMut {
                                    data: &mut block_out,
                                    row_stride: head_dim,
                                },
                            );
                            for g in 0..group {
                                let head = kv * group + g;
                                let base = ((b * n_heads + head) * n_queries + p0) * head_dim;
                                output[base..base + len * head_dim].copy_from_slice(
                                    &block_out[g * len * head_dim..(g + 1) * len * head_dim],
                                );
                                if want_weights {
                                    for r in 0..len {
                                        let dst =
                                            ((b * n_heads + head) * n_queries + p0 + r) * n_keys;
                                        let src = (g * len + r) * visible;
                                        weights[dst..dst + visible]
                                            .copy_from_slice(&scores[src..src + visible]);
                                    }
                                }
                            }
                            p0 += len;
                        }
                    }
                }
                true
            })
        })
    });
    if done != Some(Some(Some(true))) {
        return Ok(None);
    }
    let device = queries.device();
    let output = Tensor::from_vec(output, (batch, n_heads, n_queries, head_dim), device)?;
    let weights = if want_weights {
        Some(Tensor::from_vec(
            weights,
            (batch, n_heads, n_queries, n_keys),
            device,
        )?)
    } else {
        None
    };
    Ok(Some(AttentionOutput { output, weights }))
}
