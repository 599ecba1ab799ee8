//! Test support for presses: a synthetic attention layer ([`SyntheticLayer`]) that produces a
//! [`PressInput`] without a model, the conformance suite ([`conformance`]) that every press
//! crate runs, so each method is held to the same contract, and the cache conformance suite
//! ([`cache_conformance`]) every [`kvpress_core::LayerCache`] layout runs.
#![warn(missing_docs)]

pub mod cache_conformance;
mod cache_refinements;
pub mod conformance;
mod synthetic;

pub use cache_conformance::{run_cache_conformance, CacheLayout};
pub use conformance::{run_conformance, run_decoding_conformance, Promises};
pub use synthetic::{SyntheticLayer, SyntheticShape};

/// Re-exported so tests can build inputs without naming the core crate.
pub use kvpress_core::PressInput;
