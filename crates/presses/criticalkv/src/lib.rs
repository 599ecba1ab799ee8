//! CriticalKV for kvpress-rs: two-stage selection weighted by the output-projected value norm.
#![warn(missing_docs)]
