//! One running answer: its cache, its sampler, its text and when it ends.

use std::sync::atomic::Ordering;

use candle_core::Tensor;
use kvpress::core::ModelCache;
use kvpress::models::{LoadedModel, Sampler, StopRule, StreamDecoder};
use tokio::sync::mpsc::UnboundedSender;

use super::{Event, FinishReason, Slot, StopText};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// An answer whose prompt is in its cache and whose next token is chosen.
pub(super) struct Answer {
    pub cache: ModelCache,
    /// The token to feed next (the last one chosen).
    pub next: u32,
    pub tokens: Vec<u32>,
    pub sampler: Sampler,
    pub max_tokens: usize,
    pub decoder: StreamDecoder,
    pub text: StopText,
    pub events: UnboundedSender<Event>,
    pub finished: bool,
    pub _slot: Slot,
}

impl Answer {
    /// Takes the chosen token `id` (the answer's newest): sends its text, and ends the answer
    /// when it is the end of sequence, the token budget is spent, a stop sequence appeared, or
    /// the model has no further position.
    pub fn accept(&mut self, model: &LoadedModel, metrics: &Metrics, id: u32) {
        self.next = id;
        self.tokens.push(id);
        metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
        let piece = match self.decoder.push(&model.tokenizer, id) {
            Ok(piece) => piece.unwrap_or_default(),
            Err(e) => return self.fail(ApiError::internal(format!("cannot decode a token: {e}"))),
        };
        let (text, stopped) = self.text.push(&piece);
        self.send_text(text);
        if stopped {
            return self.finish(model, FinishReason::Stop, true);
        }
        let rule = StopRule {
            eos_ids: model.tokenizer.eos_ids(),
            max_new_tokens: self.max_tokens,
            max_positions: model.model.config().max_position_embeddings,
        };
        if let Some(reason) = rule.check(&self.tokens, self.cache.seen_tokens(), &mut |_| false) {
            self.finish(model, FinishReason::from_stop(reason), false);
        }
    }

    /// Chooses the next token from this answer's row of a step's logits.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32, ApiError> {
        self.sampler
            .sample(logits)
            .map_err(|e| ApiError::internal(format!("sampling failed: {e}")))
    }

    /// Whether the client went away (its answer is dropped).
    pub fn abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// Ends the answer with an error.
    pub fn fail(&mut self, error: ApiError) {
        let _ = self.events.send(Event::Failed(error));
        self.finished = true;
    }

    fn send_text(&mut self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(Event::Text(text));
        }
    }

    fn finish(&mut self, model: &LoadedModel, reason: FinishReason, at_stop_sequence: bool) {
        let rest = self.text.finish();
        self.send_text(rest);
        // Without a stop sequence the text is the tokens decoded at once (what `kvpress run`
        // prints); the pieces streamed add up to it.
        let text = if at_stop_sequence {
            Ok(self.text.text().to_string())
        } else {
            model.tokenizer.decode(&self.tokens, true)
        };
        match text {
            Ok(text) => {
                let _ = self.events.send(Event::Finished {
                    reason,
                    completion_tokens: self.tokens.len(),
                    text,
                });
            }
            Err(e) => {
                let _ = self.events.send(Event::Failed(ApiError::internal(format!(
                    "cannot decode: {e}"
                ))));
            }
        }
        self.finished = true;
    }
}
