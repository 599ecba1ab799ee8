//! Press wrappers for kvpress-rs: composed, per-layer ratios, key re-rotation, chunked scoring.
#![warn(missing_docs)]
