//! [`Chunked`]: the context compressed chunk by chunk.

use candle_core::Tensor;
use kvpress_core::press::{
    Compression, InputChunk, Press, PressDescription, PressInput, Scorer, Selection,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

/// Splits the context into chunks of `chunk_length` tokens and lets `inner` compress each chunk
/// on its own (scores see only the chunk), so that every part of the context keeps its share
/// (kvpress's `ChunkPress`, after FINCH).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunked {
    /// The press run on each chunk.
    pub inner: Box<dyn Press>,
    /// Tokens per chunk (the last chunk may be shorter).
    #[serde(default = "default_chunk_length")]
    pub chunk_length: usize,
}

fn default_chunk_length() -> usize {
    1024
}

#[typetag::serde(name = "chunk")]
impl Press for Chunked {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        self.inner.validate()?;
        if self.chunk_length == 0 {
            return Err(Error::InvalidArgument(
                "chunk: chunk_length must be at least 1".to_string(),
            ));
        }
        if self.inner.describe().needs_attention_weights {
            return Err(Error::InvalidArgument(
                "chunk: the inner press needs attention weights, which chunked scoring does not \
                 provide"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            rerotates_keys: self.inner.describe().rerotates_keys,
            ..PressDescription::defaults_for(self)
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.inner.new_layer_cache()
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        self.inner.scorer()
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        let n_tokens = input.n_tokens()?;
        if ratio == 0.0 {
            return Compression::keep_all(input);
        }
        let mut selection: Option<Selection> = None;
        let mut scores = Vec::new();
        for start in (0..n_tokens).step_by(self.chunk_length) {
            let len = self.chunk_length.min(n_tokens - start);
            let chunk = InputChunk::new(input, start, len)?;
            let part = self.inner.compress_at_ratio(&chunk.input(input), ratio)?;
            if part.keys.is_some() {
                return Err(Error::Unsupported(
                    "chunk: an inner press that rewrites keys cannot be chunked".to_string(),
                ));
            }
            let shifted = part.selection.shifted(start, n_tokens)?;
            match selection.as_mut() {
                None => selection = Some(shifted),
                Some(all) => all.merge(&shifted)?,
            }
            scores.extend(part.scores);
        }
        let selection =
            selection.ok_or_else(|| Error::InvalidArgument("chunk: empty context".to_string()))?;
        let n_chunks = n_tokens.div_ceil(self.chunk_length);
        let scores = if scores.len() == n_chunks {
            Some(Tensor::cat(&scores, 2)?)
        } else {
            None
        };
        Ok(Compression::select(selection, scores))
    }
}

kvpress_core::register_press!(
    "chunk",
    "compresses the context in independent chunks of chunk_length tokens",
    || Box::new(Chunked {
        inner: Box::new(kvpress_core::NoPress::default()),
        chunk_length: default_chunk_length(),
    })
);
