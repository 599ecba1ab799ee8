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
use kvpress_core::press::{BudgetAllocator, LayerPosition, PressInput, Scorer, Selection};
use kvpress_core::{Error, Result, UniformAllocator};
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
    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        snapkv_scores("pyramidkv", input, self.window_size, self.kernel_size)
    }
}

/// Tokens layer `layer_idx` of `n_layers` keeps out of `n_tokens` (kvpress's
/// `PyramidKVPress.get_layer_budget`): the budgets fall linearly from the first layer to the
/// last, averaging `window + T(1-ratio) - window`; when the pyramid does not fit the context the
/// budget is the uniform `round(T(1-ratio))`.
pub fn layer_budget(
    n_tokens: usize,
    compression_ratio: f64,
    window_size: usize,
    beta: f64,
    layer_idx: usize,
    n_layers: usize,
) -> usize {
    let t = n_tokens as f64;
    let w = window_size as f64;
    let max_capacity = w + t * (1.0 - compression_ratio);
    let mut min_num = (max_capacity - w) / beta;
    let mut max_num = (max_capacity - w) * 2.0 - min_num;
    if max_num >= t - w {
        max_num = t - w;
        min_num = (max_capacity - w) * 2.0 - max_num;
    }
    if !(t >= max_num && max_num >= min_num && min_num >= w) {
        return (round_half_even(t * (1.0 - compression_ratio)) as usize).max(1);
    }
    let steps = if n_layers > 1 {
        (max_num - min_num) / (n_layers - 1) as f64
    } else {
        0.0
    };
    round_half_even(max_num - layer_idx as f64 * steps) as usize
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let rounded = x.round();
    if (x - x.trunc()).abs() == 0.5 && rounded % 2.0 != 0.0 {
        rounded - x.signum()
    } else {
        rounded
    }
}

/// The pyramid allocator: every head of a layer keeps its top [`layer_budget`] tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyramidAllocator {
    /// SnapKV window (part of the budget).
    pub window_size: usize,
    /// Steepness.
    pub beta: f64,
}

impl BudgetAllocator for PyramidAllocator {
    fn allocate(
        &self,
        scores: &Tensor,
        compression_ratio: f64,
        layer: LayerPosition,
    ) -> Result<Selection> {
        let n_tokens = scores.dims().last().copied().unwrap_or(0);
        let budget = layer_budget(
            n_tokens,
            compression_ratio,
            self.window_size,
            self.beta,
            layer.layer_idx,
            layer.n_layers,
        );
        UniformAllocator::keep_top(scores, budget.min(n_tokens))
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

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(3.4), 3.0);
    }
}
