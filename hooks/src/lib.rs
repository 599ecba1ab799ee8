//! The runtime that drives a model (and, through its hook points, presses) the way kvpress's
//! pipeline does: split a chat prompt into context and question, prefill the context once, answer
//! any number of questions from that cache, rewinding it after each answer.
//!
//! - [`pipeline`]: the text-in, text-out API ([`Pipeline`], [`CompressedContext`]).
//! - [`ContextSession`]: compress once, answer many, on token ids; it runs a decode-time press
//!   while answers are generated.
//! - [`PressHook`]: runs a press in every layer after the prefill (and on its decode-time
//!   schedule); [`RecordedPrefill`]: one prefill compressed by many presses at many ratios;
//!   [`reconstruction`]: the second pass of presses that score by reconstructing the context
//!   (KVzip).
//! - [`calibration`]: presses calibrated on the model before they compress (DuoAttention).
//! - [`front_end`]: the check every front end makes before it runs a press ([`check_press`]).
//! - [`PromptSplit`]: kvpress's context/question split of a chat prompt.
//! - [`batch`]: several compressed contexts answered in one decoding step each.
//! - [`context_file`]: saved compressed contexts; [`snapshot`]: rebuilding caches from
//!   snapshots.
//! - [`run`] and [`trace`]: what `kvpress run` and `kvpress trace` print and record.
//!
//! The token-level API:
//!
//! ```no_run
//! use candle_core::Device;
//! use kvpress_hooks::{ContextSession, PromptSplit};
//! use kvpress_models::{load_model, GenerationConfig};
//!
//! let loaded = load_model("model.gguf".as_ref(), None, &Device::Cpu)?;
//! let split = PromptSplit::new(&loaded, "A long document ...", "What is it about?")?;
//! let mut session = ContextSession::prefill(&loaded.model, &split.context_ids, None)?;
//! let answer = session.answer(&loaded.model, &split.question_ids, loaded.tokenizer.eos_ids(),
//!                             &GenerationConfig::default(), &mut |_| Ok(()))?;
//! println!("{}", loaded.tokenizer.decode(&answer.tokens, true)?);
//! # Ok::<(), kvpress_hooks::Error>(())
//! ```
#![warn(missing_docs)]

mod attention_history;
pub mod batch;
pub mod calibration;
pub mod context_file;
pub mod decoding_eviction;
mod error;
pub mod front_end;
pub mod pipeline;
mod press_hook;
mod prompt;
pub mod reconstruction;
mod recorded;
pub mod run;
mod session;
pub mod snapshot;
pub mod trace;

pub use calibration::calibrate;
pub use error::{Error, Result};
pub use front_end::{check_press, FrontEnd};
pub use pipeline::{Answer, AnswerOptions, CompressedContext, LoadOptions, Pipeline};
pub use press_hook::{kept_fraction, LayerRecord, PressHook};
pub use prompt::PromptSplit;
pub use recorded::RecordedPrefill;
pub use session::{new_cache_for, CompressionReport, ContextSession};
