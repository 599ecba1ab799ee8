//! One decoding step of several independent sequences, each with its own cache: the weights are
//! read once for all of them.

use candle_core::Tensor;
use kvpress_core::{ForwardPhase, LayerCache, ModelCache};

use super::Model;
use crate::forward::ForwardStep;
use crate::linear::RowMode;
use crate::{Error, Result};

impl Model {
    /// Runs new tokens of several independent sequences: `tokens[i]` (the same number of tokens
    /// for every sequence) is appended to `caches[i]` (a single-sequence cache, of any length
    /// and position) and the f32 logits of every sequence's next token come back, `(n, vocab)`:
    /// one decoding step of many answers, or the same question put to many contexts.
    ///
    /// Each sequence attends over its own cache with the cache's own kernel, at its own
    /// positions. The linear layers read each weight once for all rows:
    /// - after [`Self::keep_dequantized_weights`], through the sgemm over the f32 copies for
    ///   every number of rows (several times faster with many sequences; the kernel does not
    ///   change as sequences finish), which differs from running each sequence alone in rounding
    ///   only;
    /// - otherwise, for one token per sequence, with the one-row kernels, so that row `i`
    ///   equals, bit for bit, the logits [`Self::forward`] gives for `tokens[i]` on `caches[i]`
    ///   alone (CPU, f32 activations, Q4_1, Q8_0 or f32 weights); for several tokens per
    ///   sequence, with the fastest kernels for all the rows.
    ///
    /// No hook runs. On error, every cache is left as it was.
    pub fn forward_sequences(
        &self,
        tokens: &[&[u32]],
        caches: &mut [&mut ModelCache],
    ) -> Result<Tensor> {
        if tokens.is_empty() || tokens.len() != caches.len() {
            return Err(Error::InvalidInput(format!(
                "one token list per sequence is needed: {} lists for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let n_new = tokens[0].len();
        if n_new == 0 || tokens.iter().any(|t| t.len() != n_new) {
            return Err(Error::InvalidInput(format!(
                "every sequence needs the same, non-zero number of new tokens, got {:?}",
                tokens.iter().map(|t| t.len()).collect::<Vec<_>>()
            )));
        }
        let ids: Vec<u32> = tokens.concat();
        self.check_token_ids(&ids)?;
        for cache in caches.iter() {
            self.check_room(cache, n_new)?;
        }
        let before: Vec<(Vec<usize>, usize)> = caches
            .iter()
            .map(|c| (c.lengths(), c.seen_tokens()))
            .collect();
        let ids = Tensor::from_vec(ids, (tokens.len(), n_new), &self.device)?;
        // On a worker of rayon's pool, like `forward_logits`.
        let result = rayon::scope(|_| self.forward_sequences_on_worker(&ids, caches));
        if result.is_err() {
            for (cache, (lengths, seen)) in caches.iter_mut().zip(&before) {
                cache.rewind(lengths, *seen)?;
            }
        }
        result
    }

    fn forward_sequences_on_worker(
        &self,
        ids: &Tensor,
        caches: &mut [&mut ModelCache],
    ) -> Result<Tensor> {
        let n_new = ids.dim(1)?;
        let positions: Vec<usize> = caches.iter().map(|c| c.seen_tokens()).collect();
        let (cos, sin) = self.rotary_tables_per_sequence(&positions, n_new)?;
        let row_mode = match (self.dense_weights_kept, n_new) {
            (true, _) => RowMode::Sgemm,
            (false, 1) => RowMode::Independent,
            (false, _) => RowMode::Batched,
        };
        let step = ForwardStep {
            cos,
            sin,
            position_offset: positions[0],
            phase: ForwardPhase::Decode,
            n_layers: self.config.n_layers,
            rotary: &self.rotary,
            row_mode,
        };
        let mut hidden = self.embedding.forward(ids, self.dtype)?;
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
            cache.advance(n_new);
        }
        let last = hidden.narrow(1, n_new - 1, 1)?;
        Ok(self.logits(&last, row_mode)?.squeeze(1)?)
    }
}
