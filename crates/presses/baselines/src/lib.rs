//! Baseline presses for kvpress-rs: knorm, streaming_llm, random, tova, observed_attention, keydiff.
#![warn(missing_docs)]
