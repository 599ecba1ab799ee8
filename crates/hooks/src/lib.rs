//! The runtime that drives a model (and, through its hook points, presses) the way kvpress's
//! pipeline does: split a chat prompt into context and question, prefill the context once, answer
//! any number of questions from that cache, rewinding it after each answer.
//!
//! ```no_run
//! use candle_core::Device;
//! use hooks::{ContextSession, PromptSplit};
//! use models::{load_model, GenerationConfig};
//!
//! let loaded = load_model("model.gguf".as_ref(), None, &Device::Cpu)?;
//! let split = PromptSplit::new(&loaded, "A long document ...", "What is it about?")?;
//! let mut session = ContextSession::prefill(&loaded.model, &split.context_ids, None)?;
//! let answer = session.answer(&loaded.model, &split.question_ids, loaded.tokenizer.eos_ids(),
//!                             &GenerationConfig::default(), &mut |_| Ok(()))?;
//! println!("{}", loaded.tokenizer.decode(&answer.tokens, true)?);
//! # Ok::<(), hooks::Error>(())
//! ```
#![warn(missing_docs)]

mod error;
mod press_hook;
mod prompt;
mod recorded;
mod session;

pub use error::{Error, Result};
pub use press_hook::{LayerRecord, PressHook};
pub use prompt::PromptSplit;
pub use recorded::RecordedPrefill;
pub use session::{new_cache_for, CompressionReport, ContextSession};
