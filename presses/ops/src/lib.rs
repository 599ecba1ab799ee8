//! Tensor operations several scoring methods share (window attention, grouped-query averaging,
//! pooling, protecting tokens with a score above every other), written once so that every press
//! computes them the way kvpress does. They run on `kvpress-kernels`; every press crate and
//! `adakv` use them.

use candle_core::{DType, Tensor, D};
use kvpress_core::{Error, PressInput, Result};
use kvpress_kernels::{sgemm, GemmDims, MatMut, MatRef};
use rayon::prelude::*;

pub mod torch_topk;

pub use torch_topk::{torch_top_k, TorchTopK};

/// Upper bound on the elements of the projected values materialised at once.
const MAX_CHUNK_ELEMENTS: usize = 1 << 20;

/// Averages per-query-head scores `(batch, n_heads, n)` over each KV head's group of query heads,
/// giving `(batch, n_kv_heads, n)`.
pub fn mean_over_query_groups(scores: &Tensor, n_kv_heads: usize) -> Result<Tensor> {
    let (batch, n_heads, n) = scores.dims3()?;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::Shape(format!(
            "{n_heads} query heads cannot be grouped over {n_kv_heads} KV heads"
        )));
    }
    Ok(scores
        .reshape((batch, n_kv_heads, n_heads / n_kv_heads, n))?
        .mean(2)?)
}

/// Pads the last dimension of `scores` with `left` and `right` entries equal to the largest score
/// plus one, so those tokens survive any top-k (kvpress's protection of window and sink tokens).
pub fn pad_with_max(scores: &Tensor, left: usize, right: usize) -> Result<Tensor> {
    let max = scores.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let value = (max + 1.0) as f64;
    let mut dims = scores.dims().to_vec();
    let last = dims.len() - 1;
    let mut parts = Vec::with_capacity(3);
    if left > 0 {
        dims[last] = left;
        parts.push((Tensor::ones(dims.as_slice(), scores.dtype(), scores.device())? * value)?);
    }
    parts.push(scores.clone());
    if right > 0 {
        dims[last] = right;
        parts.push((Tensor::ones(dims.as_slice(), scores.dtype(), scores.device())? * value)?);
    }
    Ok(Tensor::cat(&parts, last)?)
}

/// One-dimensional average pooling over the last dimension with stride 1 and `kernel / 2` zero
/// padding on each side, dividing by `kernel` everywhere (PyTorch's `avg_pool1d` with
/// `count_include_pad=True`). `kernel` must be odd so the length is unchanged.
pub fn average_pool(scores: &Tensor, kernel: usize) -> Result<Tensor> {
    if kernel.is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "kernel_size {kernel} must be odd so that pooling keeps the length"
        )));
    }
    if kernel == 1 {
        return Ok(scores.clone());
    }
    let dims = scores.dims().to_vec();
    let n = *dims.last().unwrap_or(&0);
    let rows = scores.to_dtype(DType::F32)?.flatten_to(dims.len() - 2)?;
    let (n_rows, _) = rows.dims2()?;
    let data = rows.to_vec2::<f32>()?;
    let pad = kernel / 2;
    let mut out = Vec::with_capacity(n_rows * n);
    for row in &data {
        for i in 0..n {
            let start = i.saturating_sub(pad);
            let end = (i + pad + 1).min(n);
            let sum: f32 = row[start..end].iter().sum();
            out.push(sum / kernel as f32);
        }
    }
    Ok(Tensor::from_vec(out, dims.as_slice(), scores.device())?.to_dtype(scores.dtype())?)
}

/// Attention of the last `window` queries over the keys before the window, `(batch, n_heads,
/// window, n_tokens - window)`: the softmax runs over every key a window query can see (causal),
/// then the window's own columns are dropped without renormalising (kvpress's
/// `compute_window_attention`). Uses the model's attention weights when they were computed.
pub fn window_attention(input: &PressInput<'_>, window: usize) -> Result<Tensor> {
    let n_tokens = input.n_tokens()?;
    if let Some(weights) = eager_window(input, window)? {
        return Ok(weights);
    }
    let (batch, n_heads) = (input.batch()?, input.shape.n_heads);
    let mut rows = window_softmax_rows(input, window)?;
    let kept = n_tokens - window;
    let mut out = Vec::with_capacity(rows.len() / n_tokens * kept);
    for row in rows.chunks_exact_mut(n_tokens) {
        out.extend_from_slice(&row[..kept]);
    }
    Ok(Tensor::from_vec(
        out,
        (batch, n_heads, window, kept),
        input.keys.device(),
    )?)
}

/// The mean over the window's queries of [`window_attention`], `(batch, n_heads, n_tokens -
/// window)`: how much attention each earlier token receives from the last `window` queries.
pub fn window_attention_mean(input: &PressInput<'_>, window: usize) -> Result<Tensor> {
    let n_tokens = input.n_tokens()?;
    if let Some(weights) = eager_window(input, window)? {
        return Ok(weights.mean(2)?);
    }
    let (batch, n_heads) = (input.batch()?, input.shape.n_heads);
    let rows = window_softmax_rows(input, window)?;
    let kept = n_tokens - window;
    let mut mean = vec![0f32; batch * n_heads * kept];
    for (head_rows, head_mean) in rows
        .chunks_exact(window * n_tokens)
        .zip(mean.chunks_exact_mut(kept))
    {
        for row in head_rows.chunks_exact(n_tokens) {
            head_mean
                .iter_mut()
                .zip(&row[..kept])
                .for_each(|(m, &p)| *m += p);
        }
        head_mean.iter_mut().for_each(|m| *m /= window as f32);
    }
    Ok(Tensor::from_vec(
        mean,
        (batch, n_heads, kept),
        input.keys.device(),
    )?)
}

/// The window rows of the model's own attention weights, when it computed them.
fn eager_window(input: &PressInput<'_>, window: usize) -> Result<Option<Tensor>> {
    check_window_fits(input, window)?;
    let Some(weights) = input.attention_weights else {
        return Ok(None);
    };
    let (n_tokens, n_queries) = (input.n_tokens()?, input.n_queries()?);
    Ok(Some(
        weights
            .narrow(2, n_queries - window, window)?
            .narrow(3, 0, n_tokens - window)?
            .to_dtype(DType::F32)?,
    ))
}

fn check_window_fits(input: &PressInput<'_>, window: usize) -> Result<()> {
    let n_tokens = input.n_tokens()?;
    let n_queries = input.n_queries()?;
    if window == 0 || window >= n_tokens || window > n_queries {
        return Err(Error::InvalidArgument(format!(
            "a window of {window} queries needs more than {window} cached tokens and at least \
             {window} queries (have {n_tokens} tokens, {n_queries} queries)"
        )));
    }
    Ok(())
}

/// Softmax rows of the last `window` queries over all keys, causal, laid out as `(batch, n_heads,
/// window, n_tokens)`: one matrix product per KV head for its whole query group, then an in-place
/// masked softmax per row.
fn window_softmax_rows(input: &PressInput<'_>, window: usize) -> Result<Vec<f32>> {
    let n_tokens = input.n_tokens()?;
    let n_queries = input.n_queries()?;
    let (batch, _, _, head_dim) = input.queries.dims4()?;
    let n_kv_heads = input.shape.n_kv_heads;
    let group = input.shape.group_size();
    let queries = input
        .queries
        .narrow(2, n_queries - window, window)?
        .to_dtype(DType::F32)?
        .reshape((batch, n_kv_heads, group * window, head_dim))?;
    let logits = queries.matmul(&input.keys.t()?)?;
    let mut rows = logits.flatten_all()?.to_vec1::<f32>()?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    for (r, row) in rows.chunks_exact_mut(n_tokens).enumerate() {
        // Window query i sits at position n_tokens - window + i and sees keys up to it.
        let visible = n_tokens - window + r % window + 1;
        row[..visible].iter_mut().for_each(|x| *x *= scale);
        // Rows are (batch, kv_head, group, window): padding of that KV head is no key.
        let pad = input.padding_of(r / (group * window));
        row[..pad.min(visible)].fill(f32::NEG_INFINITY);
        kvpress_kernels::masked_softmax(row, visible);
    }
    Ok(rows)
}

/// L2 norm of every cached vector, `(batch, n_kv_heads, n_tokens)`.
pub fn vector_norms(vectors: &Tensor) -> Result<Tensor> {
    Ok(vectors.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// kvpress's `vwl1norm`: for every query head `h` and token `t`, the L1 norm over the hidden size
/// of `W_o^(h) v_t` (the head's columns of the output projection applied to the value of its KV
/// head), averaged over each KV head's query heads: `(batch, n_kv_heads, n_tokens)`.
pub fn projected_value_norms(input: &PressInput<'_>) -> Result<Tensor> {
    let (batch, n_kv_heads, n_tokens, head_dim) = input.values.dims4()?;
    let n_heads = input.shape.n_heads;
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::Shape(format!(
            "{n_heads} query heads cannot be grouped over {n_kv_heads} KV heads"
        )));
    }
    let group = input.shape.group_size();
    let output_weight = input.projections.output_weight()?.to_dtype(DType::F32)?;
    let (hidden, columns) = output_weight.dims2()?;
    if columns != n_heads * head_dim {
        return Err(Error::Shape(format!(
            "the output projection has {columns} input columns, expected n_heads * head_dim = {}",
            n_heads * head_dim
        )));
    }
    // Rows of projected values computed at once (bounded memory).
    let chunk = (MAX_CHUNK_ELEMENTS / (group * hidden).max(1)).max(1);
    let values = input.values.to_dtype(DType::F32)?.contiguous()?;
    let values = values.flatten_all()?.to_vec1::<f32>()?;
    let mut norms = vec![0f32; batch * n_kv_heads * n_tokens];
    let mut projected = vec![0f32; chunk.min(n_tokens) * group * hidden];
    for g in 0..n_kv_heads {
        // (d, G * hidden): W_o^(h)ᵀ of the group's query heads side by side.
        let projection = output_weight
            .narrow(1, g * group * head_dim, group * head_dim)?
            .reshape((hidden, group, head_dim))?
            .permute((2, 1, 0))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for b in 0..batch {
            let head = (b * n_kv_heads + g) * n_tokens;
            for start in (0..n_tokens).step_by(chunk) {
                let len = chunk.min(n_tokens - start);
                let rows = &values[(head + start) * head_dim..(head + start + len) * head_dim];
                let out = &mut projected[..len * group * hidden];
                sgemm(
                    GemmDims {
                        m: len,
                        n: group * hidden,
                        k: head_dim,
                    },
                    1.0,
                    MatRef {
                        data: rows,
                        row_stride: head_dim,
                        transposed: false,
                    },
                    MatRef {
                        data: &projection,
                        row_stride: group * hidden,
                        transposed: false,
                    },
                    0.0,
                    MatMut {
                        data: out,
                        row_stride: group * hidden,
                    },
                );
                norms[head + start..head + start + len]
                    .par_iter_mut()
                    .zip(out.par_chunks_exact(group * hidden))
                    .for_each(|(norm, row)| *norm = l1_norm(row) / group as f32);
            }
        }
    }
    Ok(Tensor::from_vec(
        norms,
        (batch, n_kv_heads, n_tokens),
        input.values.device(),
    )?)
}

/// `sum |x|`, accumulated in 16 lanes so that it vectorises.
fn l1_norm(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, x)| *l += x.abs());
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|x| x.abs()).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pooling_divides_edges_by_the_kernel() -> Result<()> {
        let x = Tensor::new(&[[[5f32, 5.0, 5.0, 5.0]]], &Device::Cpu)?;
        let pooled = average_pool(&x, 5)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(pooled, vec![3.0, 4.0, 4.0, 3.0]);
        assert!(average_pool(&x, 4).is_err());
        Ok(())
    }

    #[test]
    fn padding_uses_the_global_maximum_plus_one() -> Result<()> {
        let x = Tensor::new(&[[[1f32, 2.0], [0.5, 7.0]]], &Device::Cpu)?;
        let padded = pad_with_max(&x, 1, 2)?;
        assert_eq!(padded.dims(), &[1, 2, 5]);
        assert_eq!(
            padded.get(0)?.get(0)?.to_vec1::<f32>()?,
            vec![8.0, 1.0, 2.0, 8.0, 8.0]
        );
        Ok(())
    }

    #[test]
    fn group_mean_averages_consecutive_query_heads() -> Result<()> {
        let x = Tensor::new(&[[[1f32], [3.0], [10.0], [20.0]]], &Device::Cpu)?;
        let mean = mean_over_query_groups(&x, 2)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(mean, vec![2.0, 15.0]);
        Ok(())
    }
}
