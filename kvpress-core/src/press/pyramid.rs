//! PyramidKV's per-layer budgets (kvpress's `PyramidKVPress.get_layer_budget`): shared by the
//! PyramidKV press and by head-wise allocators that split a pyramid budget across heads.

use candle_core::Tensor;

use crate::press::{BudgetAllocator, LayerPosition, Selection, UniformAllocator};
use crate::Result;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(3.4), 3.0);
    }
}
