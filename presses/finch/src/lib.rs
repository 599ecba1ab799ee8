//! Finch ([TACL 2024](https://direct.mit.edu/tacl/article/doi/10.1162/tacl_a_00716/125280)),
//! ported from kvpress 0.5.5's `FinchPress` (`finch`): the context is compressed for the
//! question that will be asked of it. The front end prefills the context and the question
//! together; the question's queries score the context like SnapKV's window (without pooling,
//! each query's weights scaled by its position), the question's own tokens are always kept, the
//! kept keys are re-rotated to consecutive positions, and only the rest of the prompt (the chat
//! template's end of turn and assistant header) is fed afterwards.
//!
//! kvpress marks the question with a delimiter token added to the vocabulary and drops it in the
//! embedding layer; kvpress-rs knows where the question starts from the front end, so the model
//! sees the same tokens at the same positions without a new token.
//!
//! ```
//! use presses_finch::Finch;
//! let press = Finch { compression_ratio: 0.5, ..Finch::default() };
//! assert!(press.rerotate_keys);
//! ```
#![warn(missing_docs)]

mod chunks;
mod press;
mod scores;

pub use press::Finch;
pub use scores::finch_scores;
