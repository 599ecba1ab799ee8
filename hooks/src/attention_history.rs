//! [`AttentionSums`]: the attention generated tokens gave each cached token, accumulated per
//! layer while decoding for presses whose schedule tracks it (CaM,
//! [`kvpress_core::press::DecodingSchedule::tracks_attention`]).

use candle_core::{DType, Device, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{Error, LayerContext, Result};

/// Running sums, one row per `(batch, kv_head)` with one entry per cached token.
#[derive(Debug, Default)]
pub(crate) struct AttentionSums {
    rows: Vec<Vec<f32>>,
}

impl AttentionSums {
    /// Adds the attention the last query of `context`'s forward gives every cached token (its
    /// softmax over the whole cache, as kvpress's CaM computes it, averaged over each KV head's
    /// query heads), read from the forward's attention weights, which the hook asks the model
    /// for. Tokens new to the cache start from zero.
    pub fn observe(&mut self, context: &LayerContext<'_>) -> Result<()> {
        let weights = context.attention_weights.ok_or_else(|| {
            Error::Unsupported(
                "tracking attention while decoding needs the forward's attention weights, \
                 which this layer cache did not give"
                    .to_string(),
            )
        })?;
        let (batch, _, n_new, len) = weights.dims4()?;
        let (n_kv_heads, group) = (context.shape.n_kv_heads, context.shape.group_size());
        let last_row = weights
            .narrow(2, n_new - 1, 1)?
            .to_dtype(DType::F32)?
            .reshape((batch * n_kv_heads, group, len))?
            .mean(1)?
            .to_vec2::<f32>()?;
        if self.rows.is_empty() {
            self.rows = vec![Vec::new(); last_row.len()];
        }
        if self.rows.len() != last_row.len() || self.rows[0].len() > len {
            return Err(Error::Shape(format!(
                "attention sums of {} heads x {} tokens cannot follow a cache of {} heads x \
                 {len} tokens",
                self.rows.len(),
                self.rows[0].len(),
                last_row.len()
            )));
        }
        for (sums, new) in self.rows.iter_mut().zip(&last_row) {
            sums.resize(len, 0.0);
            sums.iter_mut().zip(new).for_each(|(sum, w)| *sum += w);
        }
        Ok(())
    }

    /// The sums as a `(batch, n_kv_heads, n_tokens)` tensor.
    pub fn tensor(&self, batch: usize, device: &Device) -> Result<Tensor> {
        let len = self.rows.first().map_or(0, Vec::len);
        let data: Vec<f32> = self.rows.concat();
        Ok(Tensor::from_vec(
            data,
            (batch, self.rows.len() / batch.max(1), len),
            device,
        )?)
    }

    /// Keeps the sums of the tokens each head of `selection` keeps, in its order.
    pub fn compact(&mut self, selection: &Selection) -> Result<()> {
        let len = self.rows.first().map_or(0, Vec::len);
        if selection.heads().len() != self.rows.len() || selection.n_tokens() != len {
            return Err(Error::Shape(format!(
                "a selection of {} heads x {} tokens does not fit attention sums of {} x {len}",
                selection.heads().len(),
                selection.n_tokens(),
                self.rows.len(),
            )));
        }
        for (row, head) in self.rows.iter_mut().zip(selection.heads()) {
            *row = head.iter().map(|&i| row[i as usize]).collect();
        }
        Ok(())
    }
}
