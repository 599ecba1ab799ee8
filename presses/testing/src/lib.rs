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
pub use conformance::{run_conformance, run_decoding_conformance, Promises, QUESTION_TOKENS};
pub use synthetic::{SyntheticLayer, SyntheticShape};

/// Re-exported so tests can build inputs without naming the core crate.
pub use kvpress_core::PressInput;

/// The tokens each head keeps when `press` compresses `layer` (with attention weights when the
/// press needs them): what the press crates snapshot on a fixed synthetic input.
pub fn kept_sets(
    press: &dyn kvpress_core::Press,
    mut layer: SyntheticLayer,
) -> kvpress_core::Result<Vec<Vec<u32>>> {
    if press.describe().needs_attention_weights {
        layer = layer.with_attention_weights()?;
    }
    Ok(press.compress(&layer.input())?.selection.heads().to_vec())
}
