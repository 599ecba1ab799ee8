//! CAPKV for kvpress-rs, ported from kvpress 0.5.5's `CapPress` (`cap`): tokens are weighted by
//! the alignment of their keys with a historical-query anchor and scored by the leverage of
//! their values under the weighted capacity matrix.
#![warn(missing_docs)]

mod anchor;
mod cap;
mod capacity;

pub use cap::Cap;
