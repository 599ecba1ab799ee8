//! FINCH for kvpress-rs: SnapKV with the question as the window.
#![warn(missing_docs)]
