//! The prefill worker: compresses contexts and puts each new answer's prompt into its cache,
//! beside the decoding loop.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use candle_core::Tensor;
use kvpress::core::press::Press;
use kvpress::hooks::{check_press, ContextSession, FrontEnd, PromptSplit};
use kvpress::models::{LoadedModel, Sampler, StreamDecoder};
use tokio::sync::mpsc::UnboundedSender;

use super::answer::Answer;
use super::{AnswerSpec, Event, Job, Slot, Start, StopText};
use crate::contexts::{Contexts, StoredContext};
use crate::error::{from_library, ApiError};
use crate::metrics::Metrics;

pub(super) struct Worker {
    pub model: Arc<LoadedModel>,
    pub contexts: Arc<Contexts>,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    /// Runs jobs until every engine handle is gone.
    pub fn run(self, jobs: mpsc::Receiver<Job>, ready: mpsc::Sender<Answer>) {
        for job in jobs {
            match job {
                Job::Answer { spec, events, slot } => {
                    if events.is_closed() {
                        continue;
                    }
                    match self.prepare(spec, &events, slot) {
                        Ok(answer) => {
                            if ready.send(answer).is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            let _ = events.send(Event::Failed(error));
                        }
                    }
                }
                Job::Compress {
                    text,
                    press,
                    reply,
                    slot,
                } => {
                    let result = self.compress_and_store(&text, press.as_ref());
                    if result.is_ok() {
                        self.metrics
                            .contexts_created
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(result);
                    drop(slot);
                }
            }
        }
    }

    fn compress_and_store(
        &self,
        text: &str,
        press: &dyn Press,
    ) -> Result<Arc<StoredContext>, ApiError> {
        let (session, context_ids) = self.compress(text, press)?;
        self.contexts.add(&session, &context_ids, press)
    }

    /// Compresses `text` (the chat template's user turn, as kvpress does) with `press`.
    fn compress(
        &self,
        text: &str,
        press: &dyn Press,
    ) -> Result<(ContextSession, Vec<u32>), ApiError> {
        check_press(FrontEnd::Serve, press)
            .map_err(|e| ApiError::bad_field("press", e.to_string()))?;
        if text.trim().is_empty() {
            return Err(ApiError::bad_field("text", "the context is empty"));
        }
        let context_ids = PromptSplit::context_ids(&self.model, text).map_err(from_library)?;
        let positions = self.model.model.config().max_position_embeddings;
        if context_ids.len() >= positions {
            return Err(ApiError::bad_field(
                "text",
                format!(
                    "the context is {} tokens; the model has {positions} positions, and the \
                     question and the answer need some",
                    context_ids.len()
                ),
            ));
        }
        let (session, _report) =
            ContextSession::compress(&self.model.model, &context_ids, press, &[])
                .map_err(from_library)?;
        Ok((session, context_ids))
    }

    /// Puts the answer's prompt into its cache and chooses its first token.
    fn prepare(
        &self,
        spec: AnswerSpec,
        events: &UnboundedSender<Event>,
        slot: Slot,
    ) -> Result<Answer, ApiError> {
        let model = &self.model;
        let (mut cache, prompt_ids, context_tokens) = match spec.start {
            Start::Context { context, question } => {
                let session = context.session.try_clone().map_err(from_library)?;
                let ids = self.question_ids(&question)?;
                (session.into_cache(), ids, context.info.context_tokens)
            }
            Start::Press {
                context,
                press,
                question,
            } => {
                let (session, context_ids) = self.compress(&context, press.as_ref())?;
                let ids = self.question_ids(&question)?;
                (session.into_cache(), ids, context_ids.len())
            }
            Start::Prompt { ids } => (model.model.new_cache(), ids, 0),
        };
        if prompt_ids.is_empty() {
            return Err(ApiError::bad_request("the prompt is empty"));
        }
        let positions = model.model.config().max_position_embeddings;
        let needed = cache.seen_tokens() + prompt_ids.len();
        if needed >= positions {
            return Err(ApiError::bad_request(format!(
                "the prompt needs {needed} positions with its context; the model has {positions}, \
                 and the answer needs at least one more"
            )));
        }
        let mut sampler =
            Sampler::new(spec.sampling).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let input = Tensor::new(prompt_ids.as_slice(), model.model.device())
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let logits = model
            .model
            .forward(&input, &mut cache, None)
            .and_then(|l| Ok(l.squeeze(0)?))
            .map_err(|e| ApiError::internal(format!("the prompt's forward failed: {e}")))?;
        let first = sampler
            .sample(&logits)
            .map_err(|e| ApiError::internal(format!("sampling failed: {e}")))?;
        let _ = events.send(Event::Started {
            prompt_tokens: context_tokens + prompt_ids.len(),
        });
        let mut answer = Answer {
            cache,
            next: first,
            tokens: Vec::new(),
            sampler,
            max_tokens: spec.max_tokens,
            decoder: StreamDecoder::default(),
            text: StopText::new(spec.stop),
            events: events.clone(),
            finished: false,
            _slot: slot,
        };
        answer.accept(model, &self.metrics, first);
        Ok(answer)
    }

    /// The question followed by the chat template's end of turn and assistant header, as
    /// `kvpress run` puts it after a context.
    fn question_ids(&self, question: &str) -> Result<Vec<u32>, ApiError> {
        if question.trim().is_empty() {
            return Err(ApiError::bad_field(
                "messages",
                "the question (the last user message) is empty",
            ));
        }
        let suffix = PromptSplit::question_suffix(&self.model).map_err(from_library)?;
        self.model
            .tokenizer
            .encode(&format!("{question}{suffix}"), false)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}
