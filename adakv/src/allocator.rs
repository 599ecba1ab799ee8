//! Head-wise budget allocation: one budget per layer, shared across its KV heads by a global
//! top-k, each head guaranteed a safeguard share.

use candle_core::Tensor;
use kvpress_core::press::{
    layer_budget, n_kept, score_rows, top_k_indices, BudgetAllocator, LayerPosition, Selection,
};
use kvpress_core::Result;

/// PyramidKV layer budgets for the head-wise split (Ada-Pyramid).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PyramidBudget {
    /// SnapKV window counted in every layer's budget.
    pub window_size: usize,
    /// Steepness of the pyramid (≥ 1).
    pub beta: f64,
}

/// How the safeguard is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Safeguard {
    /// kvpress's `AdaKVPress`: each head's top `floor(n_kept * alpha)` tokens are protected, then
    /// the layer keeps the global top `n_kept * n_kv_heads` scores of all its heads.
    Protect,
    /// The AdaKV paper's code: budgets `c_h` from the global top-k over the tokens before the
    /// last `window_size` ones, then `round((1 - alpha) c_h + floor(alpha B))` per head (`B` the
    /// per-head budget without the window); the window is always kept on top.
    FloorAlpha {
        /// Last tokens always kept, outside the budget split.
        window_size: usize,
    },
}

/// The AdaKV allocator: a layer's budget (`floor(T(1-r))` per head, or a pyramid budget) split
/// across heads by score, every head keeping at least its safeguard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaKvAllocator {
    /// Share of the per-head budget every head keeps, in `[0, 1]`.
    pub alpha_safeguard: f64,
    /// How the safeguard works.
    pub safeguard: Safeguard,
    /// PyramidKV layer budgets instead of the uniform one.
    pub pyramid: Option<PyramidBudget>,
}

impl AdaKvAllocator {
    /// kvpress's AdaKV with safeguard `alpha_safeguard`.
    pub fn kvpress(alpha_safeguard: f64) -> Self {
        Self {
            alpha_safeguard,
            safeguard: Safeguard::Protect,
            pyramid: None,
        }
    }

    /// Tokens each head keeps on average in this layer.
    pub fn layer_budget(&self, n_tokens: usize, ratio: f64, layer: LayerPosition) -> usize {
        match self.pyramid {
            None => n_kept(n_tokens, ratio),
            Some(p) => layer_budget(
                n_tokens,
                ratio,
                p.window_size,
                p.beta,
                layer.layer_idx,
                layer.n_layers,
            )
            .min(n_tokens),
        }
    }

    /// The safeguard count of a per-head budget: `floor(budget * alpha)`, at least 1 when alpha
    /// and the budget are positive (kvpress).
    pub fn n_safe(&self, budget: usize) -> usize {
        let n = (budget as f64 * self.alpha_safeguard) as usize;
        if self.alpha_safeguard > 0.0 && budget > 0 {
            n.max(1)
        } else {
            n
        }
    }
}

/// Per-head budgets of one sequence: how many of the global top `budget * n_heads` entries of
/// `rows` (one score row per head) fall in each head, after each head's top `n_safe` entries are
/// protected. Ties go to the earlier (head, token).
pub fn head_budgets(rows: &[Vec<f32>], budget: usize, n_safe: usize) -> Vec<usize> {
    let protected: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            let mut row = row.clone();
            for i in top_k_indices(&row, n_safe) {
                row[i as usize] = f32::INFINITY;
            }
            row
        })
        .collect();
    let n_tokens = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = protected.concat();
    let mut counts = vec![0; rows.len()];
    for index in top_k_indices(&flat, budget * rows.len()) {
        counts[index as usize / n_tokens.max(1)] += 1;
    }
    counts
}

/// Python's `round` (halves to even).
fn round_half_even(x: f64) -> usize {
    let rounded = x.round();
    let rounded = if (x - x.trunc()).abs() == 0.5 && rounded % 2.0 != 0.0 {
        rounded - 1.0
    } else {
        rounded
    };
    rounded.max(0.0) as usize
}

impl BudgetAllocator for AdaKvAllocator {
    fn allocate(&self, scores: &Tensor, ratio: f64, layer: LayerPosition) -> Result<Selection> {
        let (rows, batch, n_kv_heads) = score_rows(scores)?;
        let n_tokens = rows.first().map_or(0, Vec::len);
        let budget = self.layer_budget(n_tokens, ratio, layer);
        let mut kept = Vec::with_capacity(rows.len());
        for sequence in rows.chunks(n_kv_heads) {
            match self.safeguard {
                Safeguard::Protect => {
                    let budgets = head_budgets(sequence, budget, self.n_safe(budget));
                    for (row, &b) in sequence.iter().zip(&budgets) {
                        kept.push(top_k_indices(&protect_top(row, self.n_safe(budget)), b));
                    }
                }
                Safeguard::FloorAlpha { window_size } => {
                    kept.extend(self.floor_alpha(sequence, budget, window_size));
                }
            }
        }
        Selection::new(kept, batch, n_kv_heads, n_tokens)
    }
}

/// `row` with its top `n` entries raised to infinity.
fn protect_top(row: &[f32], n: usize) -> Vec<f32> {
    let mut row = row.to_vec();
    for i in top_k_indices(&row, n) {
        row[i as usize] = f32::INFINITY;
    }
    row
}

impl AdaKvAllocator {
    /// The paper's allocation for one sequence's heads.
    fn floor_alpha(&self, rows: &[Vec<f32>], budget: usize, window: usize) -> Vec<Vec<u32>> {
        let n_tokens = rows.first().map_or(0, Vec::len);
        let window = window.min(n_tokens);
        let prefix_len = n_tokens - window;
        let prefix_budget = budget.saturating_sub(window);
        if prefix_budget >= prefix_len {
            return vec![(0..n_tokens as u32).collect(); rows.len()];
        }
        let prefixes: Vec<Vec<f32>> = rows.iter().map(|r| r[..prefix_len].to_vec()).collect();
        let counts = head_budgets(&prefixes, prefix_budget, 0);
        let floor = (prefix_budget as f64 * self.alpha_safeguard) as usize;
        prefixes
            .iter()
            .zip(counts)
            .map(|(prefix, count)| {
                let cap =
                    round_half_even(count as f64 * (1.0 - self.alpha_safeguard) + floor as f64)
                        .min(prefix_len);
                let mut kept = top_k_indices(prefix, cap);
                kept.extend(prefix_len as u32..n_tokens as u32);
                kept
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer() -> LayerPosition {
        LayerPosition {
            layer_idx: 0,
            n_layers: 1,
        }
    }

    #[test]
    fn concentrated_heads_give_budget_to_dispersed_ones() -> Result<()> {
        // Head 0 has one strong token, head 1 is flat: head 1 gets most of the shared budget.
        let scores = Tensor::new(
            &[[
                [9f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
            ]],
            &Device::Cpu,
        )?;
        let selection = AdaKvAllocator::kvpress(0.25).allocate(&scores, 0.5, layer())?;
        assert_eq!(selection.total_kept(), 8, "the layer budget: 4 per head");
        assert_eq!(selection.head(0, 0), &[0]);
        assert_eq!(selection.head(0, 1).len(), 7);
        Ok(())
    }

    #[test]
    fn safeguard_keeps_a_floor_per_head() -> Result<()> {
        let scores = Tensor::new(
            &[[[1f32, 1.0, 1.0, 1.0], [9.0, 9.0, 9.0, 9.0]]],
            &Device::Cpu,
        )?;
        let selection = AdaKvAllocator::kvpress(0.5).allocate(&scores, 0.5, layer())?;
        // n_kept 2, n_safe 1: head 0 keeps its best token although head 1 outscores it.
        assert_eq!(selection.head(0, 0).len(), 1);
        assert_eq!(selection.head(0, 1).len(), 3);
        Ok(())
    }

    #[test]
    fn paper_variant_keeps_the_window_and_a_floor() -> Result<()> {
        let scores = Tensor::new(
            &[[
                [9f32, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
                [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0, 1.0],
            ]],
            &Device::Cpu,
        )?;
        let allocator = AdaKvAllocator {
            alpha_safeguard: 0.5,
            safeguard: Safeguard::FloorAlpha { window_size: 2 },
            pyramid: None,
        };
        let selection = allocator.allocate(&scores, 0.5, layer())?;
        // B = 4 - 2 = 2 per head; global top 4 of the prefixes: 1 in head 0, 3 in head 1;
        // caps: round(0.5 * 1 + 1) = 2 (half to even) and round(0.5 * 3 + 1) = 2.
        assert_eq!(selection.head(0, 0), &[0, 1, 6, 7]);
        assert_eq!(selection.head(0, 1), &[0, 1, 6, 7]);
        Ok(())
    }
}
