//! What KVzap learns to predict (kvpress's `kvzap/data.py`): a text is fed as a chat in which
//! the user gives it and asks "Repeat the previous context exactly.", and the assistant repeats
//! it. In every layer, each token of the first copy gets its KVzip+ score: the attention the
//! repeated copy's queries give it (causal softmax over everything before them, as eager
//! attention computes it), divided by the query's hidden-state norm and multiplied by the norm
//! of what its value writes into the residual stream (`‖W_o v‖`), the maximum over the
//! repeated queries and the query heads of its KV head; the target is its log. The input is the
//! token's attention input (normalised hidden state).

use std::ops::Range;

use candle_core::{DType, Tensor, D};
use kvpress_core::{Error, LayerContext, Result};
use kvpress_kernels::softmax::masked_softmax;

/// One layer's training rows: the first copy's attention inputs `(n, hidden)` and log KVzip+
/// scores `(n, n_kv_heads)`.
pub fn layer_targets(
    context: &LayerContext<'_>,
    prompt: Range<usize>,
    repeated: Range<usize>,
) -> Result<(Tensor, Tensor)> {
    let (batch, n_heads, n_tokens, head_dim) = context.queries.dims4()?;
    if batch != 1 || repeated.end > n_tokens || prompt.end > repeated.start {
        return Err(Error::Shape(format!(
            "kvzap targets: prompt {prompt:?} and repetition {repeated:?} in {n_tokens} tokens"
        )));
    }
    let (n_kv, group) = (context.shape.n_kv_heads, context.shape.group_size());
    let (keys, values) = context
        .cache
        .keys_values()?
        .ok_or_else(|| Error::Shape("kvzap targets: the layer's cache is empty".to_string()))?;
    let keys = keys.to_dtype(DType::F32)?.get(0)?;
    let values = values.to_dtype(DType::F32)?.get(0)?;
    let queries = context.queries.to_dtype(DType::F32)?.get(0)?;
    let hidden = context.hidden_states.to_dtype(DType::F32)?.get(0)?;
    let inv_norm: Vec<f32> = hidden
        .narrow(0, repeated.start, repeated.len())?
        .sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|n| 1.0 / n)
        .collect();
    let w_o = context.projections.output_weight()?.to_dtype(DType::F32)?; // (hidden, H*d)
    let n_keys = repeated.end;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut scores = vec![f32::NEG_INFINITY; n_kv * prompt.len()];
    for h in 0..n_heads {
        let kv = h / group;
        let q = queries.get(h)?.narrow(0, repeated.start, repeated.len())?;
        let k = keys.get(kv)?.narrow(0, 0, n_keys)?;
        let mut weights: Vec<f32> = (q.matmul(&k.t()?)? * scale)?.flatten_all()?.to_vec1()?;
        let w_oh = w_o.narrow(1, h * head_dim, head_dim)?; // (hidden, d)
        let v = values.get(kv)?.narrow(0, prompt.start, prompt.len())?; // (n, d)
        let written: Vec<f32> = v
            .matmul(&w_oh.t()?)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .to_vec1()?;
        let head_scores = &mut scores[kv * prompt.len()..(kv + 1) * prompt.len()];
        for (row, w) in weights.chunks_exact_mut(n_keys).enumerate() {
            masked_softmax(w, repeated.start + row + 1);
            let by_row = inv_norm[row];
            for ((s, &weight), &by_key) in
                head_scores.iter_mut().zip(&w[prompt.clone()]).zip(&written)
            {
                *s = s.max(weight * by_row * by_key);
            }
        }
    }
    let log: Vec<f32> = scores.iter().map(|s| s.ln()).collect();
    let y = Tensor::from_vec(log, (n_kv, prompt.len()), &candle_core::Device::Cpu)?.t()?;
    let x = hidden.narrow(0, prompt.start, prompt.len())?;
    Ok((x.contiguous()?, y.contiguous()?))
}
