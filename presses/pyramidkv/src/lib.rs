//! PyramidKV ([arXiv:2406.02069](https://arxiv.org/abs/2406.02069)) as kvpress computes it:
//! SnapKV scores, and a per-layer budget that decreases linearly with depth (the first layer keeps
//! the most) while the average over layers stays `T * (1 - ratio)`.
//!
//! ```
//! use presses_pyramidkv::layer_budget;
//! // 1175 tokens at ratio 0.5 over 30 layers, window 64, beta 20: the first layer keeps 1111.
//! assert_eq!(layer_budget(1175, 0.5, 64, 20.0, 0, 30), 1111);
//! ```
#![warn(missing_docs)]

use candle_core::Tensor;
pub use kvpress_core::press::{layer_budget, PyramidAllocator};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use presses_snapkv::{check_snapkv_parameters, snapkv_scores};
use serde::{Deserialize, Serialize};

/// The PyramidKV press.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyramidKv {
    /// Average fraction of tokens removed over the layers, in `[0, 1)`.
    pub compression_ratio: f64,
    /// SnapKV's window of last queries; the window is part of every layer's budget.
    pub window_size: usize,
    /// SnapKV's pooling width (odd).
    pub kernel_size: usize,
    /// Steepness: the last layer keeps about `1/beta` of the average budget (at least 1).
    pub beta: f64,
}

impl Default for PyramidKv {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            window_size: 64,
            kernel_size: 5,
            beta: 20.0,
        }
    }
}

impl PyramidKv {
    fn check_parameters(&self) -> Result<()> {
        check_snapkv_parameters("pyramidkv", self.window_size, self.kernel_size)?;
        if self.beta.is_nan() || self.beta < 1.0 {
            return Err(Error::InvalidArgument(format!(
                "pyramidkv: beta {} must be at least 1",
                self.beta
            )));
        }
        Ok(())
    }
}

impl Scorer for PyramidKv {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        snapkv_scores("pyramidkv", input, self.window_size, self.kernel_size)
    }
}

kvpress_core::scorer_press!(PyramidKv, "pyramidkv", |this| PyramidAllocator {
    window_size: this.window_size,
    beta: this.beta,
});
kvpress_core::register_press!(
    "pyramidkv",
    "SnapKV scores with per-layer budgets shrinking with depth (PyramidKV)",
    || Box::new(PyramidKv::default())
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_match_the_kvpress_fixture() {
        // Cache lengths kvpress produced for 1175 tokens at ratio 0.5 (30 layers).
        let budgets: Vec<usize> = (0..30)
            .map(|l| layer_budget(1175, 0.5, 64, 20.0, l, 30))
            .collect();
        assert_eq!(&budgets[..3], &[1111, 1075, 1039]);
        let mean = budgets.iter().sum::<usize>() as f64 / 30.0;
        assert!((mean - 587.5).abs() < 1.0, "mean budget {mean}");
    }

    #[test]
    fn short_contexts_fall_back_to_the_uniform_budget() {
        assert_eq!(layer_budget(100, 0.5, 64, 20.0, 0, 30), 50);
    }
}
