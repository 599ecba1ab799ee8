//! Threshold eviction while decoding ([`DecodingEviction`], DMS with `decoding = true`), as
//! kvpress 0.5.5's `DMSPress` does it: every forward's new tokens are scored from their own
//! hidden states, queries, keys and values and join a sliding window of scores; the tokens that
//! leave the window are evicted from each KV head that scored them below the threshold. Tokens
//! in the window are always the last entries of every head (the window is never evicted), so
//! a leaving token's place in a head is known from the head's length alone.

use candle_core::{DType, Tensor};
use kvpress_core::press::{below_threshold, DecodingEviction, PressInput, Selection};
use kvpress_core::{Error, LayerContext, Result};

/// Per layer, the scores `(batch, n_kv_heads, m)` of the last `m <= window` tokens of the
/// cache, which wait in the window: what a context compressed by a threshold-evicting press
/// carries into its answers (and into its saved file).
#[derive(Debug, Clone, Default)]
pub struct WindowScores {
    layers: Vec<Option<Tensor>>,
}

impl WindowScores {
    /// Window scores of every layer, in layer order.
    pub fn from_layers(layers: Vec<Tensor>) -> Self {
        Self {
            layers: layers.into_iter().map(Some).collect(),
        }
    }

    /// Every layer's window scores, in layer order; `None` when a layer has none.
    pub fn layers(&self) -> Option<Vec<Tensor>> {
        self.layers.iter().cloned().collect()
    }

    /// Whether no layer has window scores.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(Option::is_none)
    }

    /// Keeps the last `window` of a prefill's scores `(batch, n_kv_heads, n)` of `layer_idx`.
    pub(crate) fn keep_prefill(
        &mut self,
        layer_idx: usize,
        scores: &Tensor,
        window: usize,
    ) -> Result<()> {
        let n = scores.dim(2)?;
        let m = n.min(window);
        self.set(layer_idx, scores.narrow(2, n - m, m)?.to_dtype(DType::F32)?);
        Ok(())
    }

    fn set(&mut self, layer_idx: usize, scores: Tensor) {
        if self.layers.len() <= layer_idx {
            self.layers.resize(layer_idx + 1, None);
        }
        self.layers[layer_idx] = Some(scores);
    }

    /// One decoding forward of `context`'s layer: scores its new tokens, then evicts the tokens
    /// leaving the window below the threshold. Returns whether the cache was compacted.
    pub(crate) fn step(
        &mut self,
        context: &mut LayerContext<'_>,
        eviction: &DecodingEviction<'_>,
    ) -> Result<bool> {
        let layer = context.layer_idx;
        let waiting = self.layers.get(layer).cloned().flatten().ok_or_else(|| {
            Error::InvalidArgument(
                "threshold eviction while decoding needs the scores of the context's last \
                 tokens (its sliding window), kept when the context was compressed by the same \
                 press; this cache was compressed otherwise"
                    .to_string(),
            )
        })?;
        let keys = context.keys.to_dtype(DType::F32)?;
        let values = context.values.to_dtype(DType::F32)?;
        let input = PressInput {
            layer_idx: layer,
            n_layers: context.n_layers,
            shape: context.shape,
            hidden_states: context.hidden_states,
            queries: context.queries,
            query_position: context.position_offset,
            keys: &keys,
            values: &values,
            attention_weights: None,
            rotary: context.rotary,
            projections: context.projections,
            front_padding: None,
            question_tokens: 0,
            attention_history: None,
        };
        let new = eviction
            .scorer
            .score(&input, eviction.scorer_ratio)?
            .to_dtype(DType::F32)?;
        let buffer = Tensor::cat(&[&waiting, &new], 2)?;
        let m = buffer.dim(2)?;
        if m <= eviction.window {
            self.set(layer, buffer);
            return Ok(false);
        }
        let leaving = m - eviction.window;
        self.set(layer, buffer.narrow(2, leaving, eviction.window)?);
        let judged = buffer.narrow(2, 0, leaving)?;
        let (batch, n_kv_heads, _) = judged.dims3()?;
        let judged = judged
            .reshape((batch * n_kv_heads, leaving))?
            .to_vec2::<f32>()?;
        let lengths = context
            .cache
            .head_lengths()
            .unwrap_or_else(|| vec![context.cache.len(); batch * n_kv_heads]);
        let threshold = eviction.threshold as f32;
        let mut evicted = false;
        let kept = lengths
            .iter()
            .zip(&judged)
            .map(|(&len, scores)| {
                // The head's last m entries are the buffer; its first `leaving` are judged.
                let first = len.checked_sub(m).ok_or_else(|| {
                    Error::Shape(format!(
                        "a head holds {len} tokens, fewer than the {m} in the sliding window"
                    ))
                })?;
                let head: Vec<u32> = (0..len)
                    .filter(|&t| {
                        !(first..first + leaving).contains(&t)
                            || !below_threshold(scores[t - first], threshold)
                    })
                    .map(|t| t as u32)
                    .collect();
                evicted |= head.len() < len;
                Ok(head)
            })
            .collect::<Result<Vec<_>>>()?;
        if !evicted {
            return Ok(false);
        }
        let n_tokens = lengths.iter().copied().max().unwrap_or(0);
        let selection = Selection::new(kept, batch, n_kv_heads, n_tokens)?;
        context.cache.evict(&selection)?;
        Ok(true)
    }
}
