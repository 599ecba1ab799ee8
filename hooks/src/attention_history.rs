//! [`AttentionSums`]: the attention generated tokens gave each cached token, accumulated per
//! layer while decoding for presses whose schedule tracks it (CaM,
//! [`kvpress_core::press::DecodingSchedule::tracks_attention`]).

use candle_core::{DType, Device, Tensor, D};
use kvpress_core::press::Selection;
use kvpress_core::{Error, LayerContext, Result};

/// The last query's softmax over the whole cache, `(batch, n_heads, 1, len)`.
fn last_query_attention(context: &LayerContext<'_>) -> Result<Tensor> {
    let (keys, _) = context
        .cache
        .keys_values()?
        .ok_or_else(|| Error::Shape("cannot track attention over an empty cache".to_string()))?;
    let (batch, n_kv_heads, _, head_dim) = keys.dims4()?;
    let n_new = context.queries.dim(2)?;
    let group = context.shape.group_size();
    let query = context
        .queries
        .narrow(2, n_new - 1, 1)?
        .to_dtype(DType::F32)?
        .reshape((batch, n_kv_heads, group, head_dim))?;
    let keys = keys.to_dtype(DType::F32)?.contiguous()?;
    let logits = (query.matmul(&keys.t()?)? / (head_dim as f64).sqrt())?;
    let max = logits.max_keepdim(D::Minus1)?;
    let exp = logits.broadcast_sub(&max)?.exp()?;
    let weights = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
    let len = weights.dim(3)?;
    Ok(weights.reshape((batch, n_kv_heads * group, 1, len))?)
}

/// Running sums `(batch * n_kv_heads)` rows of one entry per cached token.
#[derive(Debug, Default)]
pub(crate) struct AttentionSums {
    rows: usize,
    len: usize,
    data: Vec<f32>,
}

impl AttentionSums {
    /// Adds the attention the last query of `context`'s forward gives every cached token (its
    /// softmax over the whole cache, as kvpress's CaM computes it, averaged over each KV head's
    /// query heads): from the forward's attention weights when the model computed them (the hook
    /// asks for them), else computed here. Tokens new to the cache start from zero.
    pub fn observe(&mut self, context: &LayerContext<'_>) -> Result<()> {
        let n_new = context.queries.dim(2)?;
        let batch = context.queries.dim(0)?;
        let n_kv_heads = context.shape.n_kv_heads;
        let group = context.shape.group_size();
        let last_row = match context.attention_weights {
            Some(weights) => weights.narrow(2, n_new - 1, 1)?.to_dtype(DType::F32)?,
            None => last_query_attention(context)?,
        };
        let len = last_row.dim(3)?;
        let weights = last_row
            .reshape((batch, n_kv_heads, group, len))?
            .mean(2)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.grow(batch * n_kv_heads, len)?;
        self.data
            .iter_mut()
            .zip(&weights)
            .for_each(|(sum, w)| *sum += w);
        Ok(())
    }

    /// Pads every row with zeros up to `len` tokens.
    fn grow(&mut self, rows: usize, len: usize) -> Result<()> {
        if self.data.is_empty() {
            (self.rows, self.len) = (rows, 0);
        }
        if rows != self.rows || len < self.len {
            return Err(Error::Shape(format!(
                "attention sums of {} heads x {} tokens cannot follow a cache of {rows} heads x \
                 {len} tokens",
                self.rows, self.len
            )));
        }
        let mut grown = vec![0f32; rows * len];
        for (new, old) in grown
            .chunks_exact_mut(len)
            .zip(self.data.chunks_exact(self.len.max(1)))
        {
            new[..self.len].copy_from_slice(&old[..self.len]);
        }
        (self.data, self.len) = (grown, len);
        Ok(())
    }

    /// The sums as a `(batch, n_kv_heads, n_tokens)` tensor.
    pub fn tensor(&self, batch: usize, device: &Device) -> Result<Tensor> {
        let heads = self.rows / batch.max(1);
        Ok(Tensor::from_vec(
            self.data.clone(),
            (batch, heads, self.len),
            device,
        )?)
    }

    /// Keeps the sums of the tokens each head of `selection` keeps, in its order.
    pub fn compact(&mut self, selection: &Selection) -> Result<()> {
        if selection.heads().len() != self.rows || selection.n_tokens() != self.len {
            return Err(Error::Shape(format!(
                "a selection of {} heads x {} tokens does not fit attention sums of {} x {}",
                selection.heads().len(),
                selection.n_tokens(),
                self.rows,
                self.len
            )));
        }
        let kept = selection.uniform_len().ok_or_else(|| {
            Error::Unsupported("attention sums of heads keeping different counts".to_string())
        })?;
        let mut data = Vec::with_capacity(self.rows * kept);
        for (row, head) in self.data.chunks_exact(self.len).zip(selection.heads()) {
            data.extend(head.iter().map(|&i| row[i as usize]));
        }
        (self.data, self.len) = (data, kept);
        Ok(())
    }
}
