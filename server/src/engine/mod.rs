//! The engine: a prefill worker and a decoding loop, each on its own thread, sharing the model.
//!
//! - The prefill worker (`prefill`) compresses new contexts and runs each new answer's
//!   prompt forward (its question, or a whole prompt), so that a long prefill never stops the
//!   decoding loop: it runs beside it.
//! - The decoding loop (`decode`) is continuous batching: every step runs one token of
//!   every running answer through [`kvpress::models::Model::forward_sequences`]; answers ready
//!   after their prefill join between steps (up to `max_batch`), finished ones and those whose
//!   client went away leave. Each answer has its own cache (a copy of its context's), sampler
//!   and stop rule; row `i` of a step equals what the model gives that answer alone, so a
//!   greedy answer equals its one-at-a-time answer.

mod answer;
mod decode;
mod prefill;
mod stop_text;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use kvpress::core::press::Press;
use kvpress::models::{LoadedModel, Sampling, StopReason};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::contexts::{Contexts, StoredContext};
use crate::error::ApiError;
use crate::metrics::Metrics;

pub use stop_text::StopText;

/// Where an answer's cache comes from.
pub enum Start {
    /// A stored context answers `question` (kvpress's question suffix follows it), as `kvpress
    /// run` answers from a context.
    Context {
        /// The context.
        context: Arc<StoredContext>,
        /// The question.
        question: String,
    },
    /// `context` is compressed with `press` for this answer alone, then answers `question`.
    Press {
        /// The text to compress (the chat template's user turn, as kvpress does).
        context: String,
        /// The press.
        press: Box<dyn Press>,
        /// The question.
        question: String,
    },
    /// A full cache after the prompt `ids` (no compression).
    Prompt {
        /// Token ids of the prompt (chat-templated or raw).
        ids: Vec<u32>,
    },
}

/// An answer to generate.
pub struct AnswerSpec {
    /// Where its cache comes from.
    pub start: Start,
    /// Greedy or nucleus sampling.
    pub sampling: Sampling,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
}

/// Why an answer ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop sequence.
    Stop,
    /// `max_tokens`, or the model's last position.
    Length,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }

    fn from_stop(reason: StopReason) -> Self {
        match reason {
            StopReason::Eos | StopReason::Stopped => Self::Stop,
            StopReason::MaxNewTokens | StopReason::ContextFull => Self::Length,
        }
    }
}

/// What an answer sends its client.
#[derive(Debug)]
pub enum Event {
    /// The prompt is in the cache; decoding starts.
    Started {
        /// Tokens of the prompt (context and question).
        prompt_tokens: usize,
    },
    /// More text.
    Text(String),
    /// The answer is complete.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Its tokens.
        completion_tokens: usize,
        /// Its whole text.
        text: String,
    },
    /// It failed.
    Failed(ApiError),
}

enum Job {
    Answer {
        spec: AnswerSpec,
        events: async_mpsc::UnboundedSender<Event>,
        slot: Slot,
    },
    Compress {
        text: String,
        press: Box<dyn Press>,
        reply: oneshot::Sender<Result<Arc<StoredContext>, ApiError>>,
        slot: Slot,
    },
}

/// A place among the answers and compressions the server takes at once, given back when
/// dropped (the work finished, failed or was cancelled).
struct Slot(Arc<Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handle front ends submit work to. Dropping every handle stops the threads once their
/// work is done.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    capacity: usize,
}

/// Settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Most answers decoded together.
    pub max_batch: usize,
    /// Most further requests waiting.
    pub max_queue: usize,
}

/// A thread pool of its own for the prefill worker or the decoding loop, as wide as the
/// global one: the kernels split their work over the current pool, and in one shared pool a
/// prefill's many tasks would queue the decoding step's behind them (stopping the answers for
/// the whole prefill). With two pools the system shares the cores between them.
fn thread_pool(name: &'static str) -> std::io::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map_err(std::io::Error::other)
}

impl Engine {
    /// Starts the prefill worker and the decoding loop.
    pub fn start(
        model: Arc<LoadedModel>,
        contexts: Arc<Contexts>,
        metrics: Arc<Metrics>,
        limits: EngineLimits,
    ) -> std::io::Result<Self> {
        let (jobs, job_queue) = mpsc::channel();
        let (ready, ready_queue) = mpsc::channel();
        let worker = prefill::Worker {
            model: Arc::clone(&model),
            contexts,
            metrics: Arc::clone(&metrics),
        };
        let prefill_pool = thread_pool("kvpress-prefill")?;
        std::thread::Builder::new()
            .name("kvpress-prefill".into())
            .spawn(move || prefill_pool.install(|| worker.run(job_queue, ready)))?;
        let decoder = decode::Decoder {
            model,
            metrics: Arc::clone(&metrics),
            max_batch: limits.max_batch,
        };
        let decode_pool = thread_pool("kvpress-decode")?;
        std::thread::Builder::new()
            .name("kvpress-decode".into())
            .spawn(move || decode_pool.install(|| decoder.run(ready_queue)))?;
        Ok(Self {
            jobs,
            metrics,
            capacity: limits.max_batch + limits.max_queue,
        })
    }

    /// Queues an answer; its events come on the returned channel (dropping it cancels the
    /// answer). 429 when the server is full.
    pub fn answer(
        &self,
        spec: AnswerSpec,
    ) -> Result<async_mpsc::UnboundedReceiver<Event>, ApiError> {
        let slot = self.admit()?;
        let (events, receiver) = async_mpsc::unbounded_channel();
        self.send(Job::Answer { spec, events, slot })?;
        Ok(receiver)
    }

    /// Compresses `text` with `press` and stores it; 429 when the server is full.
    pub async fn compress(
        &self,
        text: String,
        press: Box<dyn Press>,
    ) -> Result<Arc<StoredContext>, ApiError> {
        let slot = self.admit()?;
        let (reply, receiver) = oneshot::channel();
        self.send(Job::Compress {
            text,
            press,
            reply,
            slot,
        })?;
        receiver
            .await
            .map_err(|_| ApiError::internal("the prefill worker stopped"))?
    }

    fn admit(&self) -> Result<Slot, ApiError> {
        let taken = self.metrics.in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(&self.metrics));
        if taken >= self.capacity {
            drop(slot);
            return Err(ApiError::busy(format!(
                "the server is full ({} answers and compressions running or waiting: \
                 --max-batch plus --max-queue); retry later",
                self.capacity
            )));
        }
        Ok(slot)
    }

    fn send(&self, job: Job) -> Result<(), ApiError> {
        // A job that cannot be sent is dropped with its slot.
        self.jobs.send(job).map_err(|_| ApiError::shutting_down())
    }
}
