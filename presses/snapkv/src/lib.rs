//! SnapKV ([arXiv:2404.14469](https://arxiv.org/abs/2404.14469)), as kvpress computes it: the
//! last `window_size` queries attend over the context; each earlier token scores the mean weight
//! it receives, smoothed by average pooling and averaged over each KV head's query heads. The
//! window's own tokens are always kept.
//!
//! ```
//! use presses_snapkv::SnapKv;
//! let press = SnapKv { compression_ratio: 0.5, ..SnapKv::default() };
//! assert_eq!(press.window_size, 64);
//! ```
#![warn(missing_docs)]

use candle_core::Tensor;
use kvpress_core::press::{check_window, PressInput, Scorer};
use kvpress_core::{Error, Result};
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// The SnapKV press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapKv {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Number of last queries whose attention scores the context (must be below the context
    /// length).
    pub window_size: usize,
    /// Width of the average pooling over token scores (odd).
    pub kernel_size: usize,
}

impl Default for SnapKv {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            window_size: 64,
            kernel_size: 5,
        }
    }
}

impl SnapKv {
    fn check_parameters(&self) -> Result<()> {
        check_snapkv_parameters("snapkv", self.window_size, self.kernel_size)
    }
}

/// Checks SnapKV's window and kernel (shared with the presses built on SnapKV's scores).
pub fn check_snapkv_parameters(press: &str, window_size: usize, kernel_size: usize) -> Result<()> {
    if window_size == 0 {
        return Err(Error::InvalidArgument(format!(
            "{press}: window_size must be at least 1"
        )));
    }
    if kernel_size == 0 || kernel_size.is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "{press}: kernel_size {kernel_size} must be odd (1, 3, 5, ...)"
        )));
    }
    Ok(())
}

/// SnapKV scores `(batch, n_kv_heads, n_tokens)` of `input` for a window and pooling kernel; the
/// window tokens get the largest score plus one.
pub fn snapkv_scores(
    press: &str,
    input: &PressInput<'_>,
    window_size: usize,
    kernel_size: usize,
) -> Result<Tensor> {
    check_window(press, "window_size", window_size, input.n_tokens()?)?;
    let mean_weights = ops::window_attention_mean(input, window_size)?;
    let per_query_head = ops::average_pool(&mean_weights, kernel_size)?;
    let per_kv_head = ops::mean_over_query_groups(&per_query_head, input.shape.n_kv_heads)?;
    ops::pad_with_max(&per_kv_head, 0, window_size)
}

impl Scorer for SnapKv {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        snapkv_scores("snapkv", input, self.window_size, self.kernel_size)
    }
}

kvpress_core::scorer_press!(SnapKv, "snapkv");
kvpress_core::register_press!(
    "snapkv",
    "attention of the last window of queries, pooled (SnapKV)",
    || Box::new(SnapKv::default())
);
