//! Merging for kvpress-rs: evict, then merge evicted values into similar survivors (kvpress
//! 0.5.5's `MergingPress`, after Token Merging and D2O).
//!
//! - [`Merging`] (`merging`): a scoring press (`inner`) decides which tokens survive; each
//!   evicted token's value is then folded into the kept token of most cosine-similar key,
//!   weighted by that similarity and the two value norms ([`merge`]). Keys are unchanged. The
//!   merged values travel to the cache in the selection
//!   ([`kvpress_core::press::Selection::with_values`]); the press reports `value_norms`, the
//!   norm of every kept token's value after merging, as the reference fixtures name it.
//!
//! ```
//! use kvpress_core::{NoPress, Press};
//! use presses_merging::Merging;
//! let press = Merging::new(Box::new(NoPress::default()));
//! assert_eq!((press.similarity_threshold, press.merge_fraction), (0.0, 1.0));
//! assert_eq!(press.compression_ratio(), 0.0);
//! ```
#![warn(missing_docs)]

pub mod merge;
mod press;

pub use press::Merging;
