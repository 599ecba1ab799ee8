//! CAPKV's historical-query anchor: the mean over the context's queries (after the sinks) of
//! their pre-RoPE values rotated by the RoPE matrix averaged over the next positions.

use candle_core::DType;
use kvpress_core::{Error, PressInput, Result, RotaryEmbedding};

/// Half-width `(cos, sin)` of the RoPE matrix averaged over positions `start..start + n`
/// (kvpress's `_avg_rope_matrix`: `mean_p (cos_p I + sin_p P)`, `P` the rotate-half matrix),
/// angles `p * f` in f32 as the model's tables compute them.
pub(crate) fn averaged_rotation(
    rotary: &RotaryEmbedding,
    start: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
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
    let n = n as f64;
    (
        cos.into_iter().map(|c| c / n).collect(),
        sin.into_iter().map(|s| s / n).collect(),
    )
}

/// The anchor of every query head, `(batch, n_heads, head_dim)` flattened, in f64: the mean of
/// the queries of tokens `n_sink..` rotated back to their pre-RoPE values (kvpress projects the
/// hidden states again, which gives the same queries), then `mean @ Rᵀ` with `R` averaged over
/// the `n_future_positions` positions after the forward's `n_queries` tokens (kvpress counts
/// from the number of queries).
pub(crate) fn query_anchor(
    input: &PressInput<'_>,
    n_sink: usize,
    n_future_positions: usize,
) -> Result<Vec<f64>> {
    let (batch, n_heads, n_queries, d) = input.queries.dims4()?;
    if n_queries <= n_sink {
        return Err(Error::InvalidArgument(format!(
            "cap: the forward has {n_queries} query tokens, it needs more than n_sink = {n_sink}"
        )));
    }
    if input.rotary.head_dim() != d {
        return Err(Error::Unsupported(format!(
            "cap: the rotary tables rotate {} dimensions but heads have {d} (partial rotary \
             embeddings are not supported)",
            input.rotary.head_dim()
        )));
    }
    let n = n_queries - n_sink;
    let queries = input
        .queries
        .narrow(2, n_sink, n)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (cos, sin) = input
        .rotary
        .tables_for_range(input.query_position + n_sink, n, DType::F32)?;
    let (cos, sin) = (
        cos.flatten_all()?.to_vec1::<f32>()?,
        sin.flatten_all()?.to_vec1::<f32>()?,
    );
    let half = d / 2;
    let mut anchors = vec![0f64; batch * n_heads * d];
    for (head, anchor) in anchors.chunks_exact_mut(d).enumerate() {
        for t in 0..n {
            let q = &queries[(head * n + t) * d..(head * n + t + 1) * d];
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for i in 0..half {
                // The inverse rotation: q * cos + rotate_half(q) * (-sin).
                anchor[i] += f64::from(q[i] * c[i] + q[i + half] * s[i]);
                anchor[i + half] += f64::from(q[i + half] * c[i] - q[i] * s[i]);
            }
        }
        anchor.iter_mut().for_each(|a| *a /= n as f64);
    }
    let (cos, sin) = averaged_rotation(input.rotary, n_queries, n_future_positions);
    for anchor in anchors.chunks_exact_mut(d) {
        for i in 0..half {
            let (a, b) = (anchor[i], anchor[i + half]);
            anchor[i] = cos[i] * a - sin[i] * b;
            anchor[i + half] = cos[i] * b + sin[i] * a;
        }
    }
    Ok(anchors)
}
