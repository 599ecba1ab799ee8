//! Attention over a flattened (ragged) cache: every KV head attends with its own length.

use candle_core::{DType, Tensor};
use candle_core::{Error, Result};

use crate::{decode_attention, dot, masked_softmax, CacheData, HeadProblem, HeadRows};
use rayon::prelude::*;

/// Borrowed view of a flattened layer: heads `batch_idx * n_kv_heads + kv_head`, head `i`'s rows
/// at `offsets[i]..offsets[i] + lengths[i]` of `keys`/`values` (row-major, `head_dim` wide),
/// stored in any of the cache storages ([`CacheData`]: f32, f16, bf16 or quantized rows whose
/// groups start with each row).
#[derive(Debug, Clone, Copy)]
pub struct RaggedHeads<'a> {
    /// Key rows of every head.
    pub keys: CacheData<'a>,
    /// Value rows of every head.
    pub values: CacheData<'a>,
    /// First row of each head.
    pub offsets: &'a [usize],
    /// Rows of each head.
    pub lengths: &'a [usize],
    /// Batch size.
    pub batch: usize,
    /// KV heads per sequence.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Causal attention of `queries` `(batch, n_heads, n_new, head_dim)` — the queries of the last
/// `n_new` tokens appended to every head — over each KV head's own tokens: query head `h` attends
/// with KV head `h / (n_heads / n_kv_heads)`, and query row `i` sees that head's first
/// `len - n_new + i + 1` tokens. K/V are never repeated; each KV head's keys and values are read
/// once for its whole query group. KV heads run in parallel.
pub fn ragged_attention(heads: &RaggedHeads<'_>, queries: &Tensor) -> Result<Tensor> {
    let (batch, n_heads, n_new, head_dim) = queries.dims4()?;
    let n_kv_heads = heads.n_kv_heads;
    if batch != heads.batch
        || head_dim != heads.head_dim
        || n_kv_heads == 0
        || n_heads % n_kv_heads != 0
    {
        return Err(Error::Msg(format!(
            "queries {:?} cannot attend over a flattened cache of batch {}, {} KV heads, head \
             dim {}",
            queries.dims(),
            heads.batch,
            n_kv_heads,
            heads.head_dim
        )));
    }
    if let Some(&shortest) = heads.lengths.iter().min() {
        if shortest < n_new {
            return Err(Error::Msg(format!(
                "{n_new} new queries but a head stores only {shortest} tokens"
            )));
        }
    }
    let group = n_heads / n_kv_heads;
    let queries = queries
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Query rows of one KV head's group are contiguous: (group, n_new, head_dim).
    let group_rows = group * n_new * head_dim;
    let mut output = vec![0f32; queries.len()];
    if n_new == 1 {
        decode_split_k(heads, &queries, &mut output, group, scale)?;
    } else {
        output
            .par_chunks_mut(group_rows)
            .zip(queries.par_chunks(group_rows))
            .enumerate()
            .for_each(|(kv_head, (out, q))| {
                attend_one_kv_head(heads, kv_head, q, out, group, n_new, scale);
            });
    }
    Tensor::from_vec(
        output,
        (batch, n_heads, n_new, head_dim),
        &candle_core::Device::Cpu,
    )
}

/// Attention of one KV head's query group; `q` and `out` are `(group, n_new, head_dim)`.
fn attend_one_kv_head(
    heads: &RaggedHeads<'_>,
    kv_head: usize,
    q: &[f32],
    out: &mut [f32],
    group: usize,
    n_new: usize,
    scale: f32,
) {
    let d = heads.head_dim;
    let len = heads.lengths[kv_head];
    let start = heads.offsets[kv_head] * d;
    // Longer forwards read every row once per query token: convert the head's rows once.
    let (mut key_buffer, mut value_buffer) = (Vec::new(), Vec::new());
    let keys = heads.keys.f32_range(start, len * d, &mut key_buffer);
    let values = heads.values.f32_range(start, len * d, &mut value_buffer);
    let mut scores = vec![0f32; group * len];
    for i in 0..n_new {
        let visible = len - n_new + i + 1;
        // Scores of every query head of the group, reading each key row once.
        for (t, key) in keys.chunks_exact(d).take(visible).enumerate() {
            for j in 0..group {
                let query = &q[(j * n_new + i) * d..(j * n_new + i + 1) * d];
                scores[j * len + t] = dot(query, key) * scale;
            }
        }
        for j in 0..group {
            masked_softmax(&mut scores[j * len..j * len + visible], visible);
        }
        for j in 0..group {
            out[(j * n_new + i) * d..(j * n_new + i + 1) * d].fill(0.0);
        }
        for (t, value) in values.chunks_exact(d).take(visible).enumerate() {
            for j in 0..group {
                let p = scores[j * len + t];
                let row = &mut out[(j * n_new + i) * d..(j * n_new + i + 1) * d];
                row.iter_mut().zip(value).for_each(|(o, &v)| *o += p * v);
            }
        }
    }
}

/// One query token (decoding): each KV head is a problem of the split-K decode kernel of
/// [`decode_attention`] with its own number of keys.
fn decode_split_k(
    heads: &RaggedHeads<'_>,
    queries: &[f32],
    output: &mut [f32],
    group: usize,
    scale: f32,
) -> Result<()> {
    let d = heads.head_dim;
    let rows = |data, head: usize| HeadRows {
        data,
        start: heads.offsets[head] * d,
        row_stride: d,
    };
    let problems: Vec<HeadProblem<'_>> = heads
        .lengths
        .iter()
        .enumerate()
        .map(|(head, &len)| HeadProblem {
            queries: queries[head * group * d..(head + 1) * group * d].to_vec(),
            positions: vec![len - 1; group],
            keys: rows(heads.keys, head),
            values: rows(heads.values, head),
            n_keys: len,
        })
        .collect();
    for (head, out) in decode_attention(&problems, d, scale)?.iter().enumerate() {
        output[head * group * d..(head + 1) * group * d].copy_from_slice(out);
    }
    Ok(())
}
