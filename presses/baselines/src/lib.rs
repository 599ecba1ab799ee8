//! Baseline presses for kvpress-rs, each computing its scores the way kvpress 0.5.5 does:
//!
//! - [`Knorm`] (`"knorm"`): keeps the keys of smallest L2 norm.
//! - [`StreamingLlm`] (`"streaming_llm"`): keeps the first `n_sink` tokens and the most recent.
//! - [`RandomPress`] (`"random"`): keeps random tokens (seedable).
//! - [`Tova`] (`"tova"`): keeps the tokens the last query attends to most, averaged over heads.
//! - [`ObservedAttention`] (`"observed_attention"`): keeps the tokens with the largest average
//!   attention received from the queries that see them (needs the model's attention weights).
//! - [`KeyDiff`] (`"keydiff"`): keeps the keys least similar to the mean normalised key.
//! - [`LagKv`] (`"lagkv"`): ranks each partition's tokens against the channel range of the next
//!   partition; sinks and the last partition are kept.
//! - [`SimLayerKv`] (`"simlayerkv"`): lazy layers keep only their initial and recent tokens.
//!
//! Every scoring press here lets the uniform allocator keep each head's top
//! `floor(T * (1 - ratio))` tokens (LagKV, whose scores tie by design, with PyTorch's choice among
//! ties: `presses_ops::TorchTopK`); SimLayerKV decides per layer and owns its ratio.
//!
//! ```
//! use kvpress_core::Press;
//! use presses_baselines::StreamingLlm;
//! let press = StreamingLlm { compression_ratio: 0.5, ..StreamingLlm::default() };
//! assert_eq!(press.n_sink, 4);
//! assert!(press.validate().is_ok());
//! ```
#![warn(missing_docs)]

pub mod keydiff;
pub mod knorm;
pub mod lagkv;
pub mod observed_attention;
pub mod random;
pub mod simlayerkv;
pub mod streaming_llm;
pub mod tova;

pub use keydiff::{keydiff_scores, KeyDiff};
pub use knorm::{knorm_scores, Knorm};
pub use lagkv::{lagkv_scores, LagKv};
pub use observed_attention::{observed_attention_scores, ObservedAttention};
pub use random::{random_scores, RandomPress};
pub use simlayerkv::SimLayerKv;
pub use streaming_llm::{streaming_llm_scores, StreamingLlm};
pub use tova::{tova_scores, Tova};
