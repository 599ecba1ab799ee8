//! CAPKV for kvpress-rs (kvpress 0.5.5's cap press).
#![warn(missing_docs)]
