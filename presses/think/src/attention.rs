//! Attention over a [`ChannelPrunedCache`]: a pruned (prefix) key scores with the query's kept
//! channels only, an appended (tail) key with every channel; one softmax over both, scale
//! `1/sqrt(head_dim)` of the full head dimension. This is attention over the keys with the
//! pruned channels set to zero, without storing or reading those zeros.

use candle_core::{Device, Tensor};
use kvpress_core::{Error, Result};
use kvpress_kernels::{masked_softmax, sgemm, GemmDims, MatMut, MatRef};
use rayon::prelude::*;

use crate::cache::{f32_data, ChannelPrunedCache};

/// Causal attention of `queries` `(batch, n_heads, n_new, head_dim)`, the queries of the last
/// `n_new` stored tokens (query row `i` sees the first `len - n_new + i + 1` tokens), over the
/// cache; KV heads run in parallel, each reading its keys once for its whole query group.
/// Returns the output in the queries' dtype and, when asked, the weights `(batch, n_heads,
/// n_new, len)`.
pub(crate) fn pruned_attention(
    cache: &ChannelPrunedCache,
    queries: &Tensor,
    want_weights: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (batch, n_heads, n_new, d) = queries.dims4()?;
    let len = cache.stored_len();
    if len == 0 {
        return Err(Error::Shape("attend called on an empty cache".to_string()));
    }
    let n_kv_heads = cache.n_kv_heads;
    if batch != cache.batch || d != cache.head_dim || n_heads % n_kv_heads != 0 || n_new > len {
        return Err(Error::Shape(format!(
            "queries {:?} cannot attend over a cache of batch {}, {n_kv_heads} KV heads, head \
             dim {}, {len} tokens",
            queries.dims(),
            cache.batch,
            cache.head_dim
        )));
    }
    let group = n_heads / n_kv_heads;
    let q = f32_data(queries)?;
    let rows = group * n_new * d;
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..cache.heads())
        .into_par_iter()
        .map(|head| {
            let problem = HeadProblem {
                cache,
                head,
                group,
                n_new,
            };
            problem.attend(&q[head * rows..(head + 1) * rows], want_weights)
        })
        .collect();
    let mut output = Vec::with_capacity(q.len());
    let mut weights = Vec::new();
    for (out, w) in per_head {
        output.extend(out);
        weights.extend(w);
    }
    let shape = (batch, n_heads, n_new, d);
    let output = Tensor::from_vec(output, shape, &Device::Cpu)?.to_dtype(queries.dtype())?;
    let weights = match want_weights {
        true => Some(
            Tensor::from_vec(weights, (batch, n_heads, n_new, len), &Device::Cpu)?
                .to_dtype(queries.dtype())?,
        ),
        false => None,
    };
    Ok((output, weights))
}

/// One KV head's query group attending over that head's stored tokens.
struct HeadProblem<'a> {
    cache: &'a ChannelPrunedCache,
    head: usize,
    group: usize,
    n_new: usize,
}

impl HeadProblem<'_> {
    /// Output `(group, n_new, d)` for queries `q` `(group, n_new, d)`, and the weights `(group,
    /// n_new, len)` when asked (else empty): three matrix products (pruned keys with the kept
    /// channels of the queries, appended keys with the whole queries, probabilities with the
    /// values) around a masked softmax per query row. Row `j * n_new + i` is query head `j` of
    /// the group at new token `i`.
    fn attend(&self, q: &[f32], want_weights: bool) -> (Vec<f32>, Vec<f32>) {
        let c = self.cache;
        let (d, len, n_new) = (c.head_dim, c.stored_len(), self.n_new);
        let (prefix, kept, tail) = (c.prefix_len, c.kept, c.tail_len);
        let rows = self.group * n_new;
        let channels = &c.channels[self.head * kept..(self.head + 1) * kept];
        // The query rows restricted to the kept channels, `(rows, kept)`.
        let q_kept: Vec<f32> = q
            .chunks_exact(d)
            .flat_map(|row| channels.iter().map(move |&ch| row[ch as usize]))
            .collect();
        let prefix_keys = &c.prefix_keys[self.head * prefix * kept..][..prefix * kept];
        let tail_keys = &c.tail_keys[self.head * c.tail_capacity * d..][..tail * d];
        let values = &c.values[self.head * c.value_stride() * d..][..len * d];
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0f32; rows * len];
        if prefix > 0 && kept > 0 {
            let keys = Rows::new(prefix_keys, kept);
            scaled_scores(Rows::new(&q_kept, kept), keys, scale, &mut scores, len);
        }
        if tail > 0 {
            let keys = Rows::new(tail_keys, d);
            scaled_scores(Rows::new(q, d), keys, scale, &mut scores[prefix..], len);
        }
        for (r, row) in scores.chunks_exact_mut(len).enumerate() {
            let i = r % n_new;
            masked_softmax(row, len - n_new + i + 1);
        }
        let out = weighted_values(Rows::new(&scores, len), Rows::new(values, d));
        (out, if want_weights { scores } else { Vec::new() })
    }
}

/// Row-major rows of `width` floats.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    width: usize,
}

impl<'a> Rows<'a> {
    fn new(data: &'a [f32], width: usize) -> Self {
        Self { data, width }
    }

    fn count(&self) -> usize {
        self.data.len() / self.width.max(1)
    }
}

/// `out[r][t] = scale * <queries[r], keys[t]>`, rows of `out` `stride` apart.
fn scaled_scores(queries: Rows<'_>, keys: Rows<'_>, scale: f32, out: &mut [f32], stride: usize) {
    let dims = GemmDims {
        m: queries.count(),
        n: keys.count(),
        k: keys.width,
    };
    let a = MatRef {
        data: queries.data,
        row_stride: queries.width,
        transposed: false,
    };
    let b = MatRef {
        data: keys.data,
        row_stride: keys.width,
        transposed: true,
    };
    let out = MatMut {
        data: out,
        row_stride: stride,
    };
    sgemm(dims, scale, a, b, 0.0, out);
}

/// `out[r] = sum_t probabilities[r][t] * values[t]`, `(rows, d)`.
fn weighted_values(probabilities: Rows<'_>, values: Rows<'_>) -> Vec<f32> {
    let (rows, d) = (probabilities.count(), values.width);
    let mut out = vec![0f32; rows * d];
    let dims = GemmDims {
        m: rows,
        n: d,
        k: probabilities.width,
    };
    let a = MatRef {
        data: probabilities.data,
        row_stride: probabilities.width,
        transposed: false,
    };
    let b = MatRef {
        data: values.data,
        row_stride: d,
        transposed: false,
    };
    let c = MatMut {
        data: &mut out,
        row_stride: d,
    };
    sgemm(dims, 1.0, a, b, 0.0, c);
    out
}
