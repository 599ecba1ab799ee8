//! Grouped-query attention over a dense key/value store, without repeating K/V per query head.

use candle_core::{Device, Tensor, D};

use candle_core::{Error, Result};

/// What attention produced for the new tokens of one forward.
#[derive(Debug, Clone)]
pub struct AttentionResult {
    /// Attention output, `(batch, n_heads, n_new_tokens, head_dim)`.
    pub output: Tensor,
    /// Softmax weights `(batch, n_heads, n_new_tokens, cache_len)`, only when asked for.
    pub weights: Option<Tensor>,
}

/// Upper bound on the number of score elements materialised at once (per query chunk).
const MAX_SCORE_ELEMENTS: usize = 1 << 24;

/// Causal grouped-query attention of `queries` `(b, n_heads, s, d)` over `keys`/`values`
/// `(b, n_kv_heads, t, d)`, where the `s` queries are the last `s` positions of the `t` keys.
/// Keys and values may be strided views (e.g. a narrowed preallocated cache). Long prefills are
/// processed in query chunks so that the score matrix stays bounded; each chunk only reads the
/// keys it can see.
pub fn grouped_query_attention(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    want_weights: bool,
) -> Result<AttentionResult> {
    let (batch, n_heads, n_queries, head_dim) = queries.dims4()?;
    let (k_batch, n_kv_heads, n_keys, k_dim) = keys.dims4()?;
    if k_batch != batch || k_dim != head_dim || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::Msg(format!(
            "queries {:?} cannot attend over keys {:?}: batch and head dim must match and the \
             query heads must be a multiple of the KV heads",
            queries.dims(),
            keys.dims()
        )));
    }
    if n_queries > n_keys {
        return Err(Error::Msg(format!(
            "{n_queries} new queries but only {n_keys} cached keys: append before attending"
        )));
    }
    match crate::attention_f32(queries, keys, values, want_weights)? {
        Some(output) => Ok(output),
        None => attention_with_candle_ops(queries, keys, values, want_weights),
    }
}

/// The generic path (any dtype or device), built from candle operations; a cache stored in
/// another dtype than the queries is converted first.
fn attention_with_candle_ops(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    want_weights: bool,
) -> Result<AttentionResult> {
    let (batch, n_heads, n_queries, head_dim) = queries.dims4()?;
    let (_, n_kv_heads, n_keys, _) = keys.dims4()?;
    let (keys, values) = if keys.dtype() == queries.dtype() {
        (keys.clone(), values.clone())
    } else {
        (
            keys.to_dtype(queries.dtype())?,
            values.to_dtype(queries.dtype())?,
        )
    };
    let (keys, values) = (&keys, &values);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let grouped = (queries * scale)?.reshape((batch, n_kv_heads, group, n_queries, head_dim))?;
    let first_query_position = n_keys - n_queries;
    let rows_per_chunk =
        (MAX_SCORE_ELEMENTS / (n_heads * n_keys * batch).max(1)).clamp(1, n_queries.max(1));

    let mut outputs = Vec::new();
    let mut weights = Vec::new();
    let mut chunk_start = 0;
    while chunk_start < n_queries {
        let chunk_len = rows_per_chunk.min(n_queries - chunk_start);
        let visible = first_query_position + chunk_start + chunk_len;
        let q = grouped
            .narrow(3, chunk_start, chunk_len)?
            .contiguous()?
            .reshape((batch, n_kv_heads, group * chunk_len, head_dim))?;
        let k = keys.narrow(2, 0, visible)?;
        let v = values.narrow(2, 0, visible)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = if chunk_len > 1 {
            let mask = causal_mask(
                chunk_len,
                first_query_position + chunk_start,
                visible,
                q.device(),
            )?;
            scores
                .reshape((batch, n_kv_heads, group, chunk_len, visible))?
                .broadcast_add(&mask.to_dtype(scores.dtype())?)?
                .reshape((batch, n_kv_heads, group * chunk_len, visible))?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous_if_needed()?)?;
        outputs.push(out.reshape((batch, n_kv_heads, group, chunk_len, head_dim))?);
        if want_weights {
            let probs = probs.reshape((batch, n_heads, chunk_len, visible))?;
            weights.push(probs.pad_with_zeros(D::Minus1, 0, n_keys - visible)?);
        }
        chunk_start += chunk_len;
    }
    let output = Tensor::cat(&outputs, 3)?.reshape((batch, n_heads, n_queries, head_dim))?;
    let weights = if want_weights {
        Some(Tensor::cat(&weights, 2)?)
    } else {
        None
    };
    Ok(AttentionResult { output, weights })
}

/// `(rows, visible)` additive mask: row `r` (at position `first_row_position + r`) sees keys
/// `0..=first_row_position + r`.
fn causal_mask(
    rows: usize,
    first_row_position: usize,
    visible: usize,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            (0..visible).map(move |j| {
                if j > first_row_position + r {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, visible), device)
}

/// Small helper trait: candle's matmul accepts the value view as is when its last dimension is
/// contiguous; otherwise copy it.
trait ContiguousIfNeeded: Sized {
    fn contiguous_if_needed(&self) -> candle_core::Result<Self>;
}

impl ContiguousIfNeeded for Tensor {
    fn contiguous_if_needed(&self) -> candle_core::Result<Self> {
        if self.stride().last() == Some(&1) {
            Ok(self.clone())
        } else {
            self.contiguous()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Textbook attention: repeat K/V per query head, full mask, one softmax.
    fn reference(queries: &Tensor, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, s, d) = queries.dims4()?;
        let (_, h_kv, t, _) = keys.dims4()?;
        let g = h / h_kv;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(2)?
                .expand((b, h_kv, g, t, d))?
                .reshape((b, h, t, d))
        };
        let (k, v) = (repeat(keys)?, repeat(values)?);
        let scores = (queries.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let mask = causal_mask(s, t - s, t, &Device::Cpu)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        Ok((probs.matmul(&v)?, probs))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_textbook_attention_for_prefill_and_continuation() -> Result<()> {
        // Decode-sized problems (few rows per KV head, many keys split into chunks) and
        // prefill-sized ones take different kernels; both must equal the textbook result.
        for (s, t) in [(7, 7), (3, 10), (1, 9), (1, 1000), (2, 700), (40, 300)] {
            let q = Tensor::randn(0f32, 1.0, (2, 6, s, 8), &Device::Cpu)?;
            let k = Tensor::randn(0f32, 1.0, (2, 2, t, 8), &Device::Cpu)?;
            let v = Tensor::randn(0f32, 1.0, (2, 2, t, 8), &Device::Cpu)?;
            let (want, want_weights) = reference(&q, &k, &v)?;
            let without_weights = grouped_query_attention(&q, &k, &v, false)?;
            assert!(without_weights.weights.is_none());
            assert!(
                max_diff(&without_weights.output, &want) < 1e-5,
                "s={s} t={t}"
            );
            let with_weights = grouped_query_attention(&q, &k, &v, true)?;
            assert!(max_diff(&with_weights.output, &want) < 1e-5, "s={s} t={t}");
            assert!(max_diff(&with_weights.weights.unwrap(), &want_weights) < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn chunked_prefill_equals_unchunked() -> Result<()> {
        // 600 queries x 600 keys x 64 heads exceeds the chunk bound, so several chunks run.
        let q = Tensor::randn(0f32, 1.0, (1, 64, 600, 4), &Device::Cpu)?;
        let k = Tensor::randn(0f32, 1.0, (1, 16, 600, 4), &Device::Cpu)?;
        let v = Tensor::randn(0f32, 1.0, (1, 16, 600, 4), &Device::Cpu)?;
        const { assert!(64 * 600 * 600 > MAX_SCORE_ELEMENTS) };
        let got = grouped_query_attention(&q, &k, &v, false)?;
        let (want, _) = reference(&q, &k, &v)?;
        assert!(max_diff(&got.output, &want) < 1e-5);
        Ok(())
    }

    #[test]
    fn strided_cache_views_are_accepted() -> Result<()> {
        let buffer = Tensor::randn(0f32, 1.0, (1, 2, 32, 8), &Device::Cpu)?;
        let k = buffer.narrow(2, 0, 10)?;
        let v = buffer.narrow(2, 5, 10)?;
        let q = Tensor::randn(0f32, 1.0, (1, 4, 1, 8), &Device::Cpu)?;
        let got = grouped_query_attention(&q, &k, &v, false)?;
        let (want, _) = reference(&q, &k.contiguous()?, &v.contiguous()?)?;
        assert!(max_diff(&got.output, &want) < 1e-5);
        Ok(())
    }

    #[test]
    fn half_precision_takes_the_generic_path() -> Result<()> {
        let q = Tensor::randn(0f32, 1.0, (1, 4, 5, 8), &Device::Cpu)?;
        let k = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &Device::Cpu)?;
        let v = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &Device::Cpu)?;
        let (want, _) = reference(&q, &k, &v)?;
        let to = |x: &Tensor| x.to_dtype(DType::BF16);
        let got = grouped_query_attention(&to(&q)?, &to(&k)?, &to(&v)?, true)?;
        assert_eq!(got.output.dtype(), DType::BF16);
        assert!(max_diff(&got.output.to_dtype(DType::F32)?, &want) < 5e-2);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let q = Tensor::zeros((1, 3, 1, 8), DType::F32, &Device::Cpu)?;
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &Device::Cpu)?;
        assert!(matches!(
            grouped_query_attention(&q, &k, &k, false),
            Err(Error::Msg(_))
        ));
        let q = Tensor::zeros((1, 2, 5, 8), DType::F32, &Device::Cpu)?;
        assert!(matches!(
            grouped_query_attention(&q, &k, &k, false),
            Err(Error::Msg(_))
        ));
        Ok(())
    }
}
