//! A chunk's scores in one layer: the attention of the reconstruction prompt's queries over
//! the attention sinks, the chunk being reconstructed and the prompt itself (causal), softmaxed
//! over those keys only; a token's score is its largest weight over the query heads of its KV
//! head and over the prompt's queries (kvpress's `score_kvzip`).

use std::ops::Range;

use candle_core::{DType, Tensor, D};
use kvpress_core::{Error, LayerContext, Result};
use kvpress_kernels::softmax::masked_softmax;
use rayon::prelude::*;

/// How the scores are made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Attention sinks among the keys (the first tokens, while the chunk starts after them).
    pub n_sink: usize,
    /// KVzip+: weights divided by the query's hidden-state norm, multiplied by `‖v W_o‖`.
    pub plus_normalization: bool,
}

/// `(batch, n_kv_heads, chunk.len())` scores of the context tokens `chunk` in `context`'s layer,
/// whose cache holds the context and then the reconstruction prompt (the new tokens).
pub fn chunk_scores(
    context: &LayerContext<'_>,
    chunk: Range<usize>,
    options: Options,
) -> Result<Tensor> {
    let shape = context.shape;
    let (batch, _, n_queries, head_dim) = context.queries.dims4()?;
    let (n_kv, group) = (shape.n_kv_heads, shape.group_size());
    let (keys, values) = context
        .cache
        .keys_values()?
        .ok_or_else(|| Error::Shape("kvzip: the layer's cache is empty".to_string()))?;
    let context_len = keys
        .dim(2)?
        .checked_sub(n_queries)
        .filter(|&len| chunk.end <= len)
        .ok_or_else(|| {
            Error::Shape(format!(
                "kvzip: chunk {chunk:?} and {n_queries} prompt tokens do not fit a cache of {} tokens",
                keys.dim(2).unwrap_or(0)
            ))
        })?;
    let sink = options.n_sink.min(chunk.start);
    let chunk_len = chunk.len();
    let pick = |t: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(
            &[
                t.narrow(2, 0, sink)?,
                t.narrow(2, chunk.start, chunk_len)?,
                t.narrow(2, context_len, n_queries)?,
            ],
            2,
        )?
        .to_dtype(DType::F32)?)
    };
    let n_keys = sink + chunk_len + n_queries;
    let keys = pick(&keys)?;
    // (batch, kv, group * queries, d): query head h belongs to KV head h / group; rows are
    // ordered (group member, query).
    let queries = context.queries.to_dtype(DType::F32)?.reshape((
        batch,
        n_kv,
        group * n_queries,
        head_dim,
    ))?;
    let logits =
        (queries.matmul(&keys.transpose(2, 3)?.contiguous()?)? / (head_dim as f64).sqrt())?;
    let mut weights: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    // Causal softmax of every row: query t sees the sinks, the chunk and prompt tokens 0..=t.
    let first_prompt_key = n_keys - n_queries;
    weights
        .par_chunks_mut(n_keys)
        .enumerate()
        .for_each(|(row, weights)| {
            masked_softmax(weights, first_prompt_key + row % n_queries + 1);
        });
    let scale = match options.plus_normalization {
        true => Some(PlusScale::new(context, &pick(&values)?, group)?),
        false => None,
    };
    // Per (batch, KV head): the largest weight of each chunk token over its rows.
    let rows_per_head = group * n_queries;
    let mut scores = vec![f32::NEG_INFINITY; batch * n_kv * chunk_len];
    for (head, (head_weights, head_scores)) in weights
        .chunks_exact(rows_per_head * n_keys)
        .zip(scores.chunks_exact_mut(chunk_len))
        .enumerate()
    {
        let (b, kv_head) = (head / n_kv, head % n_kv);
        for (row, row_weights) in head_weights.chunks_exact(n_keys).enumerate() {
            let (member, query) = (row / n_queries, row % n_queries);
            let row_weights = &row_weights[sink..sink + chunk_len];
            match &scale {
                None => head_scores
                    .iter_mut()
                    .zip(row_weights)
                    .for_each(|(s, &w)| *s = s.max(w)),
                Some(scale) => {
                    let by_row = scale.inv_hidden_norm[b * n_queries + query];
                    let by_key = scale.key_norms(b, kv_head, member, sink..sink + chunk_len);
                    head_scores
                        .iter_mut()
                        .zip(row_weights.iter().zip(by_key))
                        .for_each(|(s, (&w, &k))| *s = s.max(w * by_row * k));
                }
            }
        }
    }
    Ok(Tensor::from_vec(
        scores,
        (batch, n_kv, chunk_len),
        context.queries.device(),
    )?)
}

/// KVzip+'s factors: `1 / ‖h‖` of each prompt query and `‖v W_o‖` of each picked key for each
/// query head (its block of `W_o`).
struct PlusScale {
    /// `(batch, queries)`.
    inv_hidden_norm: Vec<f32>,
    /// `(batch, kv, group, keys)`.
    value_output_norms: Vec<f32>,
    n_kv: usize,
    group: usize,
    n_keys: usize,
}

impl PlusScale {
    /// The factors of `context`'s layer for the picked `values` `(batch, kv, keys, d)`.
    fn new(context: &LayerContext<'_>, values: &Tensor, group: usize) -> Result<Self> {
        let (batch, n_kv, n_keys, head_dim) = values.dims4()?;
        let inv_hidden_norm = context
            .hidden_states
            .to_dtype(DType::F32)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .recip()?
            .flatten_all()?
            .to_vec1()?;
        let output = context.projections.output_weight()?.to_dtype(DType::F32)?; // (hidden, heads*d)
        let mut norms = Vec::with_capacity(n_kv * group);
        for kv_head in 0..n_kv {
            let head_values = values.narrow(1, kv_head, 1)?.squeeze(1)?.contiguous()?; // (batch, keys, d)
            for member in 0..group {
                let query_head = kv_head * group + member;
                let block = output.narrow(1, query_head * head_dim, head_dim)?; // (hidden, d)
                let written = head_values.broadcast_matmul(&block.t()?)?; // (batch, keys, hidden)
                norms.push(written.sqr()?.sum(D::Minus1)?.sqrt()?); // (batch, keys)
            }
        }
        let value_output_norms = Tensor::stack(&norms, 1)? // (batch, kv * group, keys)
            .flatten_all()?
            .to_vec1()?;
        debug_assert_eq!(value_output_norms.len(), batch * n_kv * group * n_keys);
        Ok(Self {
            inv_hidden_norm,
            value_output_norms,
            n_kv,
            group,
            n_keys,
        })
    }

    /// `‖v W_o‖` of the keys `keys` for query head `member` of `kv_head`.
    fn key_norms(&self, batch: usize, kv_head: usize, member: usize, keys: Range<usize>) -> &[f32] {
        let start = ((batch * self.n_kv + kv_head) * self.group + member) * self.n_keys;
        &self.value_output_norms[start + keys.start..start + keys.end]
    }
}
