//! KVCompose's token scores in one layer: the context is fed again right after itself, and each
//! context token's score in an attention head aggregates (`agg_task`: max or mean) the weights
//! the repeated context's queries give it (a causal softmax over the whole cache, as kvpress's
//! eager attention computes it); the query heads of a KV head are then aggregated
//! (`agg_group`). Optionally (`add_v_norm`) each score is multiplied by the token's value norm.

use candle_core::{DType, Tensor};
use kvpress_core::{Error, LayerContext, Result};
use kvpress_kernels::softmax::masked_softmax;
use rayon::prelude::*;

/// How scores are aggregated: kvpress's `MaxAggregator` or `MeanAggregator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The largest value.
    Max,
    /// The mean.
    Mean,
}

impl Aggregation {
    /// Aggregates `rows` (equal lengths) element-wise.
    pub fn rows<'a>(self, rows: impl Iterator<Item = &'a [f32]>, len: usize) -> Vec<f32> {
        let (mut out, mut count) = match self {
            Self::Max => (vec![f32::NEG_INFINITY; len], 0usize),
            Self::Mean => (vec![0f32; len], 0usize),
        };
        for row in rows {
            count += 1;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = match self {
                    Self::Max => o.max(v),
                    Self::Mean => *o + v,
                };
            }
        }
        if self == Self::Mean && count > 0 {
            out.iter_mut().for_each(|o| *o /= count as f32);
        }
        out
    }
}

/// How one layer is scored.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Over the repeated context's queries, per attention head.
    pub task: Aggregation,
    /// Over the query heads of a KV head.
    pub group: Aggregation,
    /// Multiply each score by the token's value norm.
    pub value_norm: bool,
}

/// `(batch, n_kv_heads, context_len)` scores of the context tokens in `context`'s layer, whose
/// cache holds the context and then the context again (the new tokens, whose queries these are).
pub fn layer_scores(context: &LayerContext<'_>, options: Options) -> Result<Tensor> {
    let (batch, n_heads, n_queries, head_dim) = context.queries.dims4()?;
    let (n_kv, group) = (context.shape.n_kv_heads, context.shape.group_size());
    let (keys, values) = context
        .cache
        .keys_values()?
        .ok_or_else(|| Error::Shape("kvcompose: the layer's cache is empty".to_string()))?;
    let n_keys = keys.dim(2)?;
    let context_len = n_keys.checked_sub(n_queries).ok_or_else(|| {
        Error::Shape(format!(
            "kvcompose: {n_queries} queries over a cache of {n_keys} tokens"
        ))
    })?;
    let keys = keys.to_dtype(DType::F32)?;
    let queries = context.queries.to_dtype(DType::F32)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // Per attention head: the aggregate over its queries of their weights on the context.
    let mut per_head: Vec<Vec<f32>> = Vec::with_capacity(batch * n_heads);
    for b in 0..batch {
        for h in 0..n_heads {
            let q = queries.get(b)?.get(h)?;
            let k = keys.get(b)?.get(h / group)?;
            let mut weights: Vec<f32> = (q.matmul(&k.t()?)? * scale)?.flatten_all()?.to_vec1()?;
            weights
                .par_chunks_mut(n_keys)
                .enumerate()
                .for_each(|(row, w)| masked_softmax(w, context_len + row + 1));
            let rows = weights.chunks_exact(n_keys).map(|w| &w[..context_len]);
            per_head.push(options.task.rows(rows, context_len));
        }
    }
    let norms = match options.value_norm {
        true => Some(
            values
                .narrow(2, 0, context_len)?
                .to_dtype(DType::F32)?
                .sqr()?
                .sum(3)?
                .sqrt()?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ),
        false => None,
    };
    let mut scores = Vec::with_capacity(batch * n_kv * context_len);
    for (i, heads) in per_head.chunks(group).enumerate() {
        let mut kv_scores = options
            .group
            .rows(heads.iter().map(Vec::as_slice), context_len);
        if let Some(norms) = &norms {
            let norms = &norms[i * context_len..(i + 1) * context_len];
            kv_scores.iter_mut().zip(norms).for_each(|(s, n)| *s *= n);
        }
        scores.extend(kv_scores);
    }
    Ok(Tensor::from_vec(
        scores,
        (batch, n_kv, context_len),
        context.queries.device(),
    )?)
}
