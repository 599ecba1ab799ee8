//! The Llama-family decoder: embedding, layers with hook points, final norm, output projection.

use candle_core::{DType, Device, Tensor};
use kvpress_core::{AttentionHook, ForwardPhase, ModelCache, RotaryEmbedding};

use crate::config::ModelConfig;
use crate::forward::ForwardStep;
use crate::layer::DecoderLayer;
use crate::linear::{Embedding, Linear, RowMode};
use crate::reconstruction_prompt::ReconstructionPrompt;
use crate::weights::WeightMode;
use crate::KvStorage;
use crate::{Error, Result};

mod load;
mod sequences;

/// Which positions the output projection is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last new token: `(batch, vocab)`.
    LastToken,
    /// Every new token: `(batch, n_new, vocab)`.
    AllTokens,
}

/// A Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2, Qwen3) with hook points.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    embedding: Embedding,
    layers: Vec<DecoderLayer>,
    final_norm: Tensor,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    weight_mode: WeightMode,
    dtype: DType,
    cache_storage: KvStorage,
    device: Device,
    /// Whether [`Self::keep_dequantized_weights`] kept f32 copies of the quantized weights.
    dense_weights_kept: bool,
    /// The context-reconstruction prompts (KVzip), made from the tokenizer when loaded.
    reconstruction: Option<std::sync::Arc<ReconstructionPrompt>>,
    /// The tokenizer, for presses calibrated on texts (DuoAttention); set by the loaders.
    tokenizer: Option<std::sync::Arc<crate::TextTokenizer>>,
}

impl Model {
    /// The token ids of the context-reconstruction prompts (KVzip): set by the loaders from the
    /// model's tokenizer and chat template; `None` for a model built without them.
    pub fn reconstruction_prompt(&self) -> Option<&ReconstructionPrompt> {
        self.reconstruction.as_deref()
    }

    /// Sets the context-reconstruction prompts (the loaders do).
    pub fn set_reconstruction_prompt(&mut self, prompt: ReconstructionPrompt) {
        self.reconstruction = Some(std::sync::Arc::new(prompt));
    }

    /// The model's tokenizer, for the runtime to tokenize a press's calibration texts: set by
    /// the loaders; `None` for a model built without one.
    pub fn tokenizer(&self) -> Option<&crate::TextTokenizer> {
        self.tokenizer.as_deref()
    }

    /// Sets the tokenizer (the loaders do).
    pub fn set_tokenizer(&mut self, tokenizer: crate::TextTokenizer) {
        self.tokenizer = Some(std::sync::Arc::new(tokenizer));
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// How the weights are held: quantized blocks or dense tensors of a dtype.
    pub fn weight_mode(&self) -> WeightMode {
        self.weight_mode
    }

    /// Dtype of activations and of the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The projection weights of one layer's attention (what presses read `W_q`/`W_o` from).
    pub fn attention_projections(
        &self,
        layer_idx: usize,
    ) -> Option<&dyn kvpress_core::AttentionProjections> {
        self.layers
            .get(layer_idx)
            .map(|l| &l.attention as &dyn kvpress_core::AttentionProjections)
    }

    /// The rotary tables.
    pub fn rotary(&self) -> &RotaryEmbedding {
        &self.rotary
    }

    /// How [`Self::new_cache`] stores keys and values (by default in the activation dtype).
    pub fn kv_storage(&self) -> KvStorage {
        self.cache_storage
    }

    /// Stores keys and values of new caches as `storage`: f16 or bf16 halve the cache of an
    /// f32 model and the bytes each decode step reads, at a small cost in precision; q8 and q4
    /// quantize them ([`crate::QuantizedLayerCache`], on the CPU).
    pub fn set_kv_storage(&mut self, storage: KvStorage) -> Result<()> {
        match storage {
            KvStorage::Float(DType::F32 | DType::F16 | DType::BF16) => {}
            KvStorage::Float(dtype) => {
                return Err(Error::InvalidInput(format!(
                    "KV-cache dtype {dtype:?} is not supported: valid are {}",
                    KvStorage::VALID
                )))
            }
            KvStorage::Quantized(_) if !self.device.is_cpu() => {
                return Err(Error::InvalidInput(format!(
                    "a {storage} KV cache runs on the CPU only; on {:?} use f32, f16 or bf16",
                    self.device
                )))
            }
            KvStorage::Quantized(_) => {}
        }
        self.cache_storage = storage;
        Ok(())
    }

    /// Keeps f32 copies of the quantized weights (decoder layers and output projection), so
    /// that prefills (and presses that read `W_q`/`W_o`) stop dequantizing them on every call
    /// and [`Self::forward_sequences`] multiplies through the sgemm: worth it when many short
    /// prefills and many answers run on one model (evaluation grids). [`Self::forward`]'s
    /// outputs are unchanged: its prefills dequantize anyway and its decode steps still read the
    /// quantized weights. The copies cost 4 bytes per weight: they are kept only if that is at
    /// most `max_bytes`. Returns the bytes added, or `None` when over the limit (nothing is kept
    /// then).
    pub fn keep_dequantized_weights(&mut self, max_bytes: usize) -> Result<Option<usize>> {
        let mut linears: Vec<&mut Linear> = vec![&mut self.lm_head];
        for layer in &mut self.layers {
            linears.extend(layer.attention.qkv_proj.linears_mut());
            linears.push(&mut layer.attention.o_proj);
            linears.extend(layer.mlp.gate_up_proj.linears_mut());
            linears.push(&mut layer.mlp.down_proj);
        }
        let bytes: usize = linears.iter().map(|l| l.dense_copy_bytes()).sum();
        if bytes > max_bytes {
            return Ok(None);
        }
        for linear in linears {
            linear.keep_dense_copy()?;
        }
        self.dense_weights_kept = true;
        Ok(Some(bytes))
    }

    /// Whether [`Self::keep_dequantized_weights`] kept f32 copies of the weights.
    pub fn keeps_dequantized_weights(&self) -> bool {
        self.dense_weights_kept
    }

    /// A fresh dense cache with one layer cache per decoder layer, storing keys and values as
    /// [`Self::kv_storage`] says.
    pub fn new_cache(&self) -> ModelCache {
        crate::dense_cache::dense_model_cache(self.config.n_layers, self.cache_storage)
    }

    /// Runs the new tokens `input_ids` `(batch, n_new)` (u32) through the model, appending to
    /// `cache` and calling `hook` in every layer; returns f32 logits of the last new token,
    /// `(batch, vocab)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut ModelCache,
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Tensor> {
        self.forward_logits(input_ids, cache, hook, LogitsFor::LastToken)
    }

    /// Like [`Self::forward`], choosing which positions get logits.
    pub fn forward_logits(
        &self,
        input_ids: &Tensor,
        cache: &mut ModelCache,
        hook: Option<&mut (dyn AttentionHook + '_)>,
        logits_for: LogitsFor,
    ) -> Result<Tensor> {
        // The forward runs on a worker of rayon's pool, so that the kernels' parallel loops fork
        // and join among workers instead of parking and waking the calling thread for each one.
        let (lengths_before, seen_before) = (cache.lengths(), cache.seen_tokens());
        let phase = if lengths_before.iter().all(|&l| l == 0) {
            ForwardPhase::Prefill
        } else {
            ForwardPhase::Decode
        };
        let result =
            rayon::scope(|_| self.forward_on_worker(input_ids, cache, hook, logits_for, phase));
        if result.is_err() {
            // Layers before the failure already stored the new tokens: drop them again so the
            // cache stays as it was.
            cache.rewind(&lengths_before, seen_before)?;
        }
        result
    }

    fn forward_on_worker(
        &self,
        input_ids: &Tensor,
        cache: &mut ModelCache,
        mut hook: Option<&mut (dyn AttentionHook + '_)>,
        logits_for: LogitsFor,
        phase: ForwardPhase,
    ) -> Result<Tensor> {
        let (_, n_new) = self.check_input(input_ids, cache)?;
        let position_offset = cache.seen_tokens();
        let (cos, sin) = self
            .rotary
            .tables_for_range(position_offset, n_new, self.dtype)?;
        let step = ForwardStep {
            cos,
            sin,
            position_offset,
            phase,
            n_layers: self.config.n_layers,
            rotary: &self.rotary,
            row_mode: RowMode::Batched,
        };
        let mut hidden = self.embedding.forward(input_ids, self.dtype)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache
                .layer_mut(layer_idx)
                .expect("check_input verified the number of cache layers");
            hidden = layer.forward(&hidden, &step, layer_idx, layer_cache, hook.as_deref_mut())?;
        }
        cache.advance(n_new);
        let hidden = match logits_for {
            LogitsFor::LastToken => hidden.narrow(1, n_new - 1, 1)?,
            LogitsFor::AllTokens => hidden,
        };
        let logits = self.logits(&hidden, RowMode::Batched)?;
        Ok(match logits_for {
            LogitsFor::LastToken => logits.squeeze(1)?,
            LogitsFor::AllTokens => logits,
        })
    }

    /// Rotary tables for `n_new` tokens of each sequence, starting at `starts[i]` for sequence
    /// `i`: `(batch, n_new, head_dim / 2)`.
    fn rotary_tables_per_sequence(
        &self,
        starts: &[usize],
        n_new: usize,
    ) -> Result<(Tensor, Tensor)> {
        let mut cos = Vec::with_capacity(starts.len());
        let mut sin = Vec::with_capacity(starts.len());
        for &start in starts {
            let (c, s) = self.rotary.tables_for_range(start, n_new, self.dtype)?;
            cos.push(c);
            sin.push(s);
        }
        Ok((Tensor::stack(&cos, 0)?, Tensor::stack(&sin, 0)?))
    }

    /// f32 logits of the final hidden states `(b, s, hidden)`: `(b, s, vocab)`.
    fn logits(&self, hidden: &Tensor, mode: RowMode) -> Result<Tensor> {
        let hidden = candle_nn::ops::rms_norm(
            &hidden.contiguous()?,
            &self.final_norm,
            self.config.rms_norm_eps as f32,
        )?;
        Ok(self
            .lm_head
            .forward_rows(&hidden, mode)?
            .to_dtype(DType::F32)?)
    }

    /// Validates token ids, length and cache shape; returns `(batch, n_new)`.
    fn check_input(&self, input_ids: &Tensor, cache: &ModelCache) -> Result<(usize, usize)> {
        let (batch, n_new) = input_ids.dims2().map_err(|_| {
            Error::InvalidInput(format!(
                "input ids must be (batch, tokens), got {:?}",
                input_ids.dims()
            ))
        })?;
        if batch == 0 || n_new == 0 {
            return Err(Error::InvalidInput(
                "empty input: at least one token is needed".into(),
            ));
        }
        if input_ids.dtype() != DType::U32 {
            return Err(Error::InvalidInput(format!(
                "input ids must be u32, got {:?}",
                input_ids.dtype()
            )));
        }
        self.check_token_ids(&input_ids.flatten_all()?.to_vec1::<u32>()?)?;
        self.check_room(cache, n_new)?;
        Ok((batch, n_new))
    }

    /// Every id must be inside the vocabulary.
    fn check_token_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().max() {
            Some(&max_id) if max_id as usize >= self.config.vocab_size => {
                Err(Error::InvalidInput(format!(
                    "token id {max_id} is outside the vocabulary (size {})",
                    self.config.vocab_size
                )))
            }
            _ => Ok(()),
        }
    }

    /// `cache` must fit this model and have room for `n_new` more positions.
    fn check_room(&self, cache: &ModelCache, n_new: usize) -> Result<()> {
        let end = cache.seen_tokens() + n_new;
        if end > self.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "{} tokens ({} already processed + {n_new} new) exceed the model's maximum of {} positions",
                end,
                cache.seen_tokens(),
                self.config.max_position_embeddings
            )));
        }
        if let Some(window) = self.config.sliding_window.filter(|&w| end > w) {
            return Err(Error::InvalidInput(format!(
                "{end} tokens exceed this model's attention window of {window}: sliding-window \
                 attention is not implemented, so inputs are limited to the window"
            )));
        }
        if cache.n_layers() != self.config.n_layers {
            return Err(Error::InvalidInput(format!(
                "the cache has {} layers, the model {}",
                cache.n_layers(),
                self.config.n_layers
            )));
        }
        Ok(())
    }
}
