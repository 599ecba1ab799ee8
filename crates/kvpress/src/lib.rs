//! kvpress-rs: KV-cache compression for LLM inference on candle.
//!
//! One dependency for users: re-exports the core traits ([`core`]), the models ([`models`]) and
//! the runtime ([`hooks`]), plus what the `kvpress` command line is built from: the default
//! model ([`default_model`]), the parity trace ([`trace`]) and the benchmark ([`mod@bench`]).
#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod context_file;
pub mod default_model;
pub mod eval;
pub mod listing;
pub mod run;
pub mod trace;

pub use candle_core as candle;

/// The press crates, linked here once so that their presses are registered for every user of
/// this crate (configs and the registry find them by name).
pub mod presses {
    pub use adakv;
    pub use presses_baselines as baselines;
    pub use presses_criticalkv as criticalkv;
    pub use presses_expected_attention as expected_attention;
    pub use presses_pyramidkv as pyramidkv;
    pub use presses_snapkv as snapkv;
    pub use presses_wrappers as wrappers;
}
pub use hooks;
pub use kvpress_core as core;
pub use models;

/// The README's Rust examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Parses a KV-cache dtype: `f32`, `f16`, `bf16`.
pub fn parse_cache_dtype(text: &str) -> Result<candle_core::DType, String> {
    use candle_core::DType;
    match text {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!(
            "unknown KV-cache dtype `{other}`: valid are f32, f16, bf16"
        )),
    }
}

/// Parses a weight mode: `quantized` (or `q`, GGUF only), `f32`, `f16`, `bf16`.
pub fn parse_weight_mode(text: &str) -> Result<models::WeightMode, String> {
    use candle_core::DType;
    match text {
        "quantized" | "q" => Ok(models::WeightMode::Quantized),
        "f32" => Ok(models::WeightMode::Dense(DType::F32)),
        "f16" => Ok(models::WeightMode::Dense(DType::F16)),
        "bf16" => Ok(models::WeightMode::Dense(DType::BF16)),
        other => Err(format!(
            "unknown dtype `{other}`: valid are quantized, f32, f16, bf16"
        )),
    }
}
