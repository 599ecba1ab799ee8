//! Leverage-family presses for kvpress-rs (kvpress 0.5.5): leverage_score, non_causal_attn, compactor.
#![warn(missing_docs)]
