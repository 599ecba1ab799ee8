//! One decoding step of several independent sequences, each with its own cache: the weights are
//! read once for all of them, while every sequence gets exactly the numbers it would get alone.

use candle_core::Tensor;
use kvpress_core::{ForwardPhase, LayerCache, ModelCache};

use super::Model;
use crate::forward::ForwardStep;
use crate::linear::RowMode;
use crate::{Error, Result};

impl Model {
    /// Decodes one token of each of several independent sequences: `tokens[i]` is appended to
    /// `caches[i]` (a single-sequence cache, of any length and position) and the f32 logits of
    /// every sequence's next token come back, `(n, vocab)`.
    ///
    /// Row `i` equals, bit for bit, the logits [`Self::forward`] gives for `tokens[i]` on
    /// `caches[i]` alone on the CPU with f32 activations and Q4_1, Q8_0 or f32 weights: the
    /// linear layers run their one-row kernels over all rows at once, and each sequence attends
    /// over its own cache with the cache's own kernel. No hook runs. On error, every cache is
    /// left as it was.
    pub fn forward_sequences(
        &self,
        tokens: &[u32],
        caches: &mut [&mut ModelCache],
    ) -> Result<Tensor> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(Error::InvalidInput(format!(
                "one token per sequence is needed: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        self.check_token_ids(tokens)?;
        for cache in caches.iter() {
            self.check_room(cache, 1)?;
            if cache.sequence_positions().is_some() {
                return Err(Error::InvalidInput(
                    "forward_sequences takes one single-sequence cache per sequence, not a \
                     batched cache"
                        .into(),
                ));
            }
        }
        let before: Vec<(Vec<usize>, usize)> = caches
            .iter()
            .map(|c| (c.lengths(), c.seen_tokens()))
            .collect();
        // On a worker of rayon's pool, like `forward_logits`.
        let result = rayon::scope(|_| self.forward_sequences_on_worker(tokens, caches));
        if result.is_err() {
            for (cache, (lengths, seen)) in caches.iter_mut().zip(&before) {
                cache.rewind(lengths, *seen)?;
            }
        }
        result
    }

    fn forward_sequences_on_worker(
        &self,
        tokens: &[u32],
        caches: &mut [&mut ModelCache],
    ) -> Result<Tensor> {
        let positions: Vec<usize> = caches.iter().map(|c| c.seen_tokens()).collect();
        let (cos, sin) = self.rotary_tables_per_sequence(&positions, 1)?;
        let step = ForwardStep {
            cos,
            sin,
            position_offset: positions[0],
            phase: ForwardPhase::Decode,
            n_layers: self.config.n_layers,
            rotary: &self.rotary,
            row_mode: RowMode::Independent,
        };
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(1)?;
        let mut hidden = self.embedding.forward(&ids, self.dtype)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut dyn LayerCache> = caches
                .iter_mut()
                .map(|c| {
                    c.layer_mut(layer_idx)
                        .expect("check_room verified the number of cache layers")
                        as &mut dyn LayerCache
                })
                .collect();
            hidden = layer.forward_per_sequence(&hidden, &step, &mut layer_caches)?;
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        Ok(self.logits(&hidden, RowMode::Independent)?.squeeze(1)?)
    }
}
