//! The [`Finch`] press.

use kvpress_core::press::{
    check_compression_ratio, Compression, Press, PressDescription, PressInput, UniformAllocator,
};
use kvpress_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::chunks::keep_top_per_chunk;
use crate::scores::finch_scores;

/// The Finch press. It needs the question prefilled with the context
/// ([`PressDescription::needs_question`]); `kvpress run` and `kvpress trace` do that, the other
/// front ends refuse it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Finch {
    /// Fraction of the prefilled tokens (context and question) removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// When set, every chunk of this many tokens keeps its own share (it must exceed
    /// `question tokens / (1 - compression_ratio)`, as kvpress asserts); unset: one selection
    /// over all tokens.
    pub chunk_length: Option<usize>,
    /// Scale each question query's weights by its position (kvpress's default).
    pub normalize_scores: bool,
    /// Re-rotate the kept keys to positions `0..n_kept` so that the rest of the prompt continues
    /// from the compressed length (kvpress's default). Without it, later tokens continue after
    /// the prefilled context and question (kvpress continues one position later, counting its
    /// dropped delimiter token).
    pub rerotate_keys: bool,
    /// kvpress's delimiter between context and question, added to its tokenizer. Accepted so
    /// that kvpress's configs load; kvpress-rs needs no delimiter (the front end knows where the
    /// question starts), so it changes nothing.
    pub delimiter_token: Option<String>,
}

impl Default for Finch {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            chunk_length: None,
            normalize_scores: true,
            rerotate_keys: true,
            delimiter_token: Some("<|finch_sep|>".to_string()),
        }
    }
}

#[typetag::serde(name = "finch")]
impl Press for Finch {
    fn compression_ratio(&self) -> f64 {
        self.compression_ratio
    }

    fn validate(&self) -> Result<()> {
        check_compression_ratio("finch", self.compression_ratio)?;
        if self.chunk_length == Some(0) {
            return Err(Error::InvalidArgument(
                "finch: chunk_length must be at least 1 (or left out for one selection over all \
                 tokens)"
                    .to_string(),
            ));
        }
        if self.delimiter_token.as_deref().is_some_and(str::is_empty) {
            return Err(Error::InvalidArgument(
                "finch: delimiter_token is empty; leave it out (kvpress-rs needs no delimiter)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            rerotates_keys: self.rerotate_keys,
            needs_question: true,
            ..PressDescription::defaults_for(self)
        }
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        check_compression_ratio("finch", ratio)?;
        if ratio == 0.0 {
            return Compression::keep_all(input);
        }
        let question = input.question_tokens;
        if question == 0 {
            return Err(Error::InvalidArgument(
                "finch compresses the context for the question asked of it, and no question was \
                 prefilled with the context: use it with `kvpress run` (each question compresses \
                 the context anew) or `kvpress trace`"
                    .to_string(),
            ));
        }
        let scores = finch_scores(input, question, self.normalize_scores)?;
        let selection = match self.chunk_length {
            None => UniformAllocator::keep_top(
                &scores,
                kvpress_core::press::n_kept(input.n_tokens()?, ratio),
            )?,
            Some(chunk_length) => {
                let needed = question as f64 / (1.0 - ratio);
                if (chunk_length as f64) <= needed {
                    return Err(Error::InvalidArgument(format!(
                        "finch: chunk_length {chunk_length} must exceed question tokens / (1 - \
                         compression_ratio) = {question} / {:.3} = {needed:.1}, or a chunk \
                         could not keep the question",
                        1.0 - ratio
                    )));
                }
                keep_top_per_chunk(&scores, ratio, chunk_length)?
            }
        };
        let mut compression = Compression::select(selection, Some(scores));
        if self.rerotate_keys {
            let kept_keys = compression.selection.gather(input.keys)?;
            compression.keys = Some(presses_wrappers::rerotate_keys(
                &kept_keys,
                &compression.selection,
                input.rotary.inv_freq(),
            )?);
        }
        Ok(compression)
    }
}

kvpress_core::register_press!(
    "finch",
    "the question's attention over the context, with the question prefilled (Finch); run and trace",
    || Box::new(Finch::default())
);
