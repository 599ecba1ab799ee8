//! Causal grouped-query attention for f32 on the CPU. Many query rows (prefill): per KV head and
//! block of query positions, one product for the scores, a masked softmax, one product for the
//! output; query heads of a group share the keys they read and each block reads only the keys
//! it can see. Few query rows (decode): the split-K kernel of `decode_attention`.

use candle_core::Tensor;
use rayon::prelude::*;

use super::decode_attention::{
    decode_attention, F32Rows, HeadProblem, HeadRows, MAX_ROWS as DECODE_MAX_ROWS,
};
use super::sgemm::{sgemm, GemmDims, MatMut, MatRef};
use super::softmax::masked_softmax;
use super::view::{f32_slice, with_cache_data, CacheData};
use candle_core::Result;

/// Upper bound on score elements of one block.
const MAX_BLOCK_SCORES: usize = 1 << 22;
/// Upper bound on query positions per block (smaller blocks skip more masked keys).
const MAX_BLOCK_POSITIONS: usize = 256;

/// Sizes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    n_heads: usize,
    n_kv_heads: usize,
    n_queries: usize,
    n_keys: usize,
    head_dim: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Cache position of the first query.
    fn first_position(&self) -> usize {
        self.n_keys - self.n_queries
    }

    /// Offset of `(b, head, position)` in a `(b, h, s, d)` query/output buffer.
    fn query_offset(&self, b: usize, head: usize, position: usize) -> usize {
        ((b * self.n_heads + head) * self.n_queries + position) * self.head_dim
    }
}

/// The storage of queries (contiguous) and of the key/value views.
struct Inputs<'a> {
    queries: &'a [f32],
    keys: CacheData<'a>,
    key_start: usize,
    key_strides: &'a [usize],
    values: CacheData<'a>,
    value_start: usize,
    value_strides: &'a [usize],
}

impl<'a> Inputs<'a> {
    fn key_rows(&self, b: usize, kv: usize) -> HeadRows<'a> {
        let s = self.key_strides;
        HeadRows {
            data: self.keys,
            start: self.key_start + b * s[0] + kv * s[1],
            row_stride: s[2],
        }
    }

    fn value_rows(&self, b: usize, kv: usize) -> HeadRows<'a> {
        let s = self.value_strides;
        HeadRows {
            data: self.values,
            start: self.value_start + b * s[0] + kv * s[1],
            row_stride: s[2],
        }
    }
}

/// Attention of f32 `queries` `(b, h, s, d)` over `keys`/`values` `(b, h_kv, t, d)` (f32, f16
/// or bf16 views whose last dimension is contiguous), the queries being the last `s` positions.
/// Returns `None` for other dtypes, devices or layouts, so the caller can use a generic path.
pub fn attention_f32(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    want_weights: bool,
) -> Result<Option<crate::AttentionResult>> {
    let (batch, n_heads, n_queries, head_dim) = queries.dims4()?;
    let (_, n_kv_heads, n_keys, _) = keys.dims4()?;
    let dims = Dims {
        batch,
        n_heads,
        n_kv_heads,
        n_queries,
        n_keys,
        head_dim,
    };
    let queries = queries.contiguous()?;
    let mut output = vec![0f32; batch * n_heads * n_queries * head_dim];
    let mut weights = if want_weights {
        vec![0f32; batch * n_heads * n_queries * n_keys]
    } else {
        Vec::new()
    };
    let done = f32_slice(&queries, |q, q_start, _| {
        with_cache_data(keys, |k, key_start, key_strides| {
            with_cache_data(values, |v, value_start, value_strides| {
                if key_strides[3] != 1 || value_strides[3] != 1 {
                    return Result::<bool>::Ok(false);
                }
                let inputs = Inputs {
                    queries: &q[q_start..],
                    keys: k,
                    key_start,
                    key_strides,
                    values: v,
                    value_start,
                    value_strides,
                };
                if !want_weights && dims.group() * n_queries <= DECODE_MAX_ROWS {
                    decode_into(&inputs, dims, &mut output)?;
                } else {
                    blocked_into(
                        &inputs,
                        dims,
                        &mut output,
                        want_weights.then_some(&mut weights),
                    );
                }
                Ok(true)
            })
        })
    });
    // `None` at any level: not CPU tensors of a supported dtype; `false`: strided rows.
    let handled = match done {
        Some(Some(Some(result))) => result?,
        _ => false,
    };
    if !handled {
        return Ok(None);
    }
    let device = queries.device();
    let output = Tensor::from_vec(output, (batch, n_heads, n_queries, head_dim), device)?;
    let weights = match want_weights {
        true => Some(Tensor::from_vec(
            weights,
            (batch, n_heads, n_queries, n_keys),
            device,
        )?),
        false => None,
    };
    Ok(Some(crate::AttentionResult { output, weights }))
}

/// Few query rows per KV head: one split-K problem per (batch, KV head).
fn decode_into(inputs: &Inputs<'_>, dims: Dims, output: &mut [f32]) -> Result<()> {
    let group = dims.group();
    let rows_per_head = dims.n_queries * dims.head_dim;
    let mut problems = Vec::with_capacity(dims.batch * dims.n_kv_heads);
    for b in 0..dims.batch {
        for kv in 0..dims.n_kv_heads {
            // The group's heads are adjacent: their queries are one contiguous run.
            let start = dims.query_offset(b, kv * group, 0);
            problems.push(HeadProblem {
                queries: inputs.queries[start..start + group * rows_per_head].to_vec(),
                positions: (0..group)
                    .flat_map(|_| (0..dims.n_queries).map(|r| dims.first_position() + r))
                    .collect(),
                keys: inputs.key_rows(b, kv),
                values: inputs.value_rows(b, kv),
                n_keys: dims.n_keys,
            });
        }
    }
    let scale = 1.0 / (dims.head_dim as f32).sqrt();
    for (index, result) in decode_attention(&problems, dims.head_dim, scale)?
        .iter()
        .enumerate()
    {
        let (b, kv) = (index / dims.n_kv_heads, index % dims.n_kv_heads);
        let start = dims.query_offset(b, kv * group, 0);
        output[start..start + result.len()].copy_from_slice(result);
    }
    Ok(())
}

/// Reusable buffers of the blocked kernel.
#[derive(Default)]
struct BlockBuffers {
    queries: Vec<f32>,
    scores: Vec<f32>,
    output: Vec<f32>,
}

/// Many query rows: blocks of positions per (batch, KV head).
fn blocked_into(
    inputs: &Inputs<'_>,
    dims: Dims,
    output: &mut [f32],
    mut weights: Option<&mut Vec<f32>>,
) {
    let block =
        (MAX_BLOCK_SCORES / (dims.group() * dims.n_keys).max(1)).clamp(1, MAX_BLOCK_POSITIONS);
    let mut buffers = BlockBuffers::default();
    let (mut key_buffer, mut value_buffer) = (Vec::new(), Vec::new());
    for b in 0..dims.batch {
        for kv in 0..dims.n_kv_heads {
            // A 16-bit cache is converted once per head, not once per block.
            let keys =
                inputs
                    .key_rows(b, kv)
                    .rows_f32(0, dims.n_keys, dims.head_dim, &mut key_buffer);
            let values =
                inputs
                    .value_rows(b, kv)
                    .rows_f32(0, dims.n_keys, dims.head_dim, &mut value_buffer);
            let mut first = 0;
            while first < dims.n_queries {
                let len = block.min(dims.n_queries - first);
                attend_block(
                    dims,
                    (b, kv),
                    first..first + len,
                    (&keys, &values),
                    inputs,
                    &mut buffers,
                );
                scatter_block(
                    dims,
                    (b, kv),
                    first,
                    len,
                    &buffers,
                    output,
                    weights.as_deref_mut(),
                );
                first += len;
            }
        }
    }
}

/// Scores, softmax and output of query positions `positions` of KV head `(b, kv)` into `buffers`
/// (rows ordered `(g, position)`).
fn attend_block(
    dims: Dims,
    (b, kv): (usize, usize),
    positions: std::ops::Range<usize>,
    (keys, values): (&F32Rows<'_>, &F32Rows<'_>),
    inputs: &Inputs<'_>,
    buffers: &mut BlockBuffers,
) {
    let (group, head_dim) = (dims.group(), dims.head_dim);
    let len = positions.len();
    let visible = dims.first_position() + positions.end;
    let rows = group * len;
    buffers.queries.clear();
    for g in 0..group {
        let start = dims.query_offset(b, kv * group + g, positions.start);
        buffers
            .queries
            .extend_from_slice(&inputs.queries[start..start + len * head_dim]);
    }
    buffers.scores.resize(rows * visible, 0.0);
    sgemm(
        GemmDims {
            m: rows,
            n: visible,
            k: head_dim,
        },
        1.0 / (head_dim as f32).sqrt(),
        MatRef {
            data: &buffers.queries,
            row_stride: head_dim,
            transposed: false,
        },
        MatRef {
            data: keys.data,
            row_stride: keys.row_stride,
            transposed: true,
        },
        0.0,
        MatMut {
            data: &mut buffers.scores,
            row_stride: visible,
        },
    );
    let first_row_position = dims.first_position() + positions.start;
    buffers
        .scores
        .par_chunks_mut(visible)
        .enumerate()
        .for_each(|(row, s)| {
            masked_softmax(s, first_row_position + row % len + 1);
        });
    buffers.output.resize(rows * head_dim, 0.0);
    sgemm(
        GemmDims {
            m: rows,
            n: head_dim,
            k: visible,
        },
        1.0,
        MatRef {
            data: &buffers.scores,
            row_stride: visible,
            transposed: false,
        },
        MatRef {
            data: values.data,
            row_stride: values.row_stride,
            transposed: false,
        },
        0.0,
        MatMut {
            data: &mut buffers.output,
            row_stride: head_dim,
        },
    );
}

/// Copies a block's outputs (and weights, when kept) to their `(b, h, s, ...)` places.
fn scatter_block(
    dims: Dims,
    (b, kv): (usize, usize),
    first: usize,
    len: usize,
    buffers: &BlockBuffers,
    output: &mut [f32],
    weights: Option<&mut Vec<f32>>,
) {
    let (group, head_dim) = (dims.group(), dims.head_dim);
    for g in 0..group {
        let start = dims.query_offset(b, kv * group + g, first);
        output[start..start + len * head_dim]
            .copy_from_slice(&buffers.output[g * len * head_dim..(g + 1) * len * head_dim]);
    }
    let Some(weights) = weights else {
        return;
    };
    let visible = dims.first_position() + first + len;
    for g in 0..group {
        for r in 0..len {
            let dst = dims.query_offset(b, kv * group + g, first + r) / head_dim * dims.n_keys;
            let src = (g * len + r) * visible;
            weights[dst..dst + visible].copy_from_slice(&buffers.scores[src..src + visible]);
        }
    }
}
