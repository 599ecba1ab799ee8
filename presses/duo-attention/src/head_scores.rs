//! kvpress's on-the-fly DuoAttention head scores (`duo_attention_on_the_fly`): per calibration
//! text and layer, the mean pre-RoPE query and key of each head are repeated over `q_len`
//! positions and rotated; the last query's softmax attention over the `q_len` keys is summed
//! cumulatively, and the mean of that curve (the area under it, over `q_len`) is the head's
//! score, averaged over the query heads of each KV head and over the texts. Attention on early
//! positions makes the curve rise early (a score near 1), attention on the most recent positions
//! late (near 0); kvpress makes the lowest-scoring heads streaming heads.

use candle_core::{DType, Tensor, D};
use kvpress_core::press::CalibrationSample;
use kvpress_core::rope::RotaryEmbedding;
use kvpress_core::{Error, Result};

/// Head scores `[layer][kv_head]` from the calibration samples (the mean over the samples of
/// each sample's scores, summed in the samples' order as kvpress does).
pub fn head_scores(
    samples: &[CalibrationSample],
    rotary: &RotaryEmbedding,
    q_len: usize,
) -> Result<Vec<Vec<f32>>> {
    let Some(first) = samples.first() else {
        return Err(Error::InvalidArgument(
            "duo_attention: no calibration texts".to_string(),
        ));
    };
    if q_len == 0 || q_len > rotary.max_positions() {
        return Err(Error::InvalidArgument(format!(
            "duo_attention: q_len = {q_len}; valid is 1 to {} (the model's positions)",
            rotary.max_positions()
        )));
    }
    let (cos, sin) = rotary.tables_for_range(0, q_len, DType::F32)?;
    let mut totals: Vec<Vec<f32>> = first
        .layer_means
        .iter()
        .map(|(_, k)| Ok(vec![0f32; k.dim(0)?]))
        .collect::<Result<_>>()?;
    let n = samples.len() as f32;
    for sample in samples {
        for (total, (q, k)) in totals.iter_mut().zip(&sample.layer_means) {
            let scores = layer_scores(q, k, &cos, &sin)?;
            for (t, s) in total.iter_mut().zip(scores) {
                *t += s / n;
            }
        }
    }
    Ok(totals)
}

/// One layer's scores per KV head from its mean queries `(n_heads, d)` and keys
/// `(n_kv_heads, d)`, with the rotary tables of positions `0..q_len`.
fn layer_scores(q: &Tensor, k: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Vec<f32>> {
    let (n_heads, d) = q.dims2()?;
    let n_kv_heads = k.dim(0)?;
    let q_len = cos.dim(0)?;
    let groups = n_heads / n_kv_heads;
    let repeated = |x: &Tensor, heads: usize| -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.reshape((1, heads, 1, d))?;
        let x = x.broadcast_as((1, heads, q_len, d))?.contiguous()?;
        RotaryEmbedding::apply(&x, cos, sin)
    };
    // The last query (position q_len - 1) against the keys of every position.
    let q_last = repeated(q, n_heads)?.narrow(2, q_len - 1, 1)?;
    let keys = repeated(k, n_kv_heads)?;
    let keys = keys
        .unsqueeze(2)?
        .broadcast_as((1, n_kv_heads, groups, q_len, d))?
        .reshape((1, n_heads, q_len, d))?;
    let logits = (q_last.matmul(&keys.t()?)? / (d as f64).sqrt())?;
    let weights = candle_nn::ops::softmax_last_dim(&logits)?.reshape((n_heads, q_len))?;
    let area = weights.cumsum(D::Minus1)?.mean(D::Minus1)?;
    Ok(area
        .reshape((n_kv_heads, groups))?
        .mean(D::Minus1)?
        .to_vec1::<f32>()?)
}
