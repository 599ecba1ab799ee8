//! Runnable examples of kvpress-rs, one way of using the library each. They run on the default
//! model (fetch it with `scripts/fetch-model.sh`):
//!
//! - `cargo run --release -p kvpress-examples --example generate -- "Your question"`: load a model, chat-template
//!   a prompt, stream a greedy answer.
//! - `cargo run --release -p kvpress-examples --example observe_layers`: a custom [`kvpress::core::AttentionHook`]
//!   that looks inside every attention layer during prefill and keeps only the most recent
//!   tokens of each layer's cache, then answers from the shortened cache.
