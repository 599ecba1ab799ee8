//! Test support for presses: a synthetic attention layer ([`SyntheticLayer`]) that produces a
//! [`PressInput`] without a model, and the conformance suite ([`conformance`]) that every press
//! crate runs, so each method is held to the same contract.
#![warn(missing_docs)]

pub mod conformance;
mod synthetic;

pub use conformance::{run_conformance, Promises};
pub use synthetic::{SyntheticLayer, SyntheticShape};

/// Re-exported so tests can build inputs without naming the core crate.
pub use kvpress_core::PressInput;
