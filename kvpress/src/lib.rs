//! kvpress-rs: KV-cache compression for LLM inference on candle.
//!
//! One dependency for users: re-exports the core traits ([`core`]), the models ([`models`]), the
//! runtime ([`hooks`]) and every press crate ([`presses`], linked here so that configs find
//! every press by name), and the default model ([`default_model`]).
#![warn(missing_docs)]

pub use candle_core as candle;

/// The press crates, linked here once so that their presses are registered for every user of
/// this crate (configs and the registry find them by name).
pub mod presses {
    pub use adakv;
    pub use presses_baselines as baselines;
    pub use presses_cap as cap;
    pub use presses_criticalkv as criticalkv;
    pub use presses_dms as dms;
    pub use presses_duo_attention as duo_attention;
    pub use presses_expected_attention as expected_attention;
    pub use presses_finch as finch;
    pub use presses_kvcompose as kvcompose;
    pub use presses_kvzap as kvzap;
    pub use presses_kvzip as kvzip;
    pub use presses_leverage as leverage;
    pub use presses_merging as merging;
    pub use presses_ops as ops;
    pub use presses_pyramidkv as pyramidkv;
    pub use presses_query_stats as query_stats;
    pub use presses_snapkv as snapkv;
    pub use presses_think as think;
    pub use presses_wrappers as wrappers;
}
pub use kvpress_core as core;
pub use kvpress_hooks as hooks;
pub use kvpress_kernels as kernels;
pub use kvpress_models as models;
pub use kvpress_models::default_model;

pub use kvpress_core::press::{press_from_file, press_from_json, press_from_toml, Press};
pub use kvpress_hooks::{Answer, AnswerOptions, CompressedContext, LoadOptions, Pipeline};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
