//! Budget allocation: from per-token scores to the tokens each KV head keeps.

use candle_core::{DType, Tensor};

use crate::press::Selection;
use crate::{Error, Result};

/// Where a layer sits in the model (some allocators give layers different budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPosition {
    /// Index of the layer.
    pub layer_idx: usize,
    /// Number of layers in the model.
    pub n_layers: usize,
}

/// Decides which tokens each KV head keeps, given scores (higher = keep).
pub trait BudgetAllocator: std::fmt::Debug + Send + Sync {
    /// `scores` is `(batch, n_kv_heads, n_tokens)`; `compression_ratio` the fraction of tokens to
    /// remove.
    fn allocate(
        &self,
        scores: &Tensor,
        compression_ratio: f64,
        layer: LayerPosition,
    ) -> Result<Selection>;
}

/// Tokens kept per head at `compression_ratio`, as kvpress computes it: `floor(T * (1 - ratio))`,
/// at least 1 when the ratio is below 1.
pub fn n_kept(n_tokens: usize, compression_ratio: f64) -> usize {
    if compression_ratio >= 1.0 {
        return 0;
    }
    let kept = (n_tokens as f64 * (1.0 - compression_ratio)) as usize;
    kept.max(1).min(n_tokens)
}

/// Checks that a compression ratio is in `[0, 1)`.
pub fn check_compression_ratio(press: &str, ratio: f64) -> Result<()> {
    if (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{press}: compression_ratio {ratio} is outside [0, 1) (it is the fraction of tokens \
             removed: 0 keeps everything, 0.5 keeps half)"
        )))
    }
}

/// Scores `(batch, n_kv_heads, n_tokens)` as one f32 row per head.
pub fn score_rows(scores: &Tensor) -> Result<(Vec<Vec<f32>>, usize, usize)> {
    let (batch, n_kv_heads, n_tokens) = scores.dims3().map_err(|_| {
        Error::Shape(format!(
            "scores must be (batch, n_kv_heads, n_tokens), got {:?}",
            scores.dims()
        ))
    })?;
    let rows = scores
        .to_dtype(DType::F32)?
        .reshape((batch * n_kv_heads, n_tokens))?
        .to_vec2::<f32>()?;
    Ok((rows, batch, n_kv_heads))
}

/// Indices of the `k` largest values of `row`, sorted by position. Ties go to the earlier token;
/// NaN counts as the smallest score.
pub fn top_k_indices(row: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(row.len());
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    let by_score_desc = |a: &u32, b: &u32| {
        let (x, y) = (row[*a as usize], row[*b as usize]);
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(y).total_cmp(&key(x)).then(a.cmp(b))
    };
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, by_score_desc);
    }
    order.truncate(k);
    order.sort_unstable();
    order
}

/// The kvpress allocator: every head keeps its own top `n_kept(T, ratio)` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UniformAllocator;

impl UniformAllocator {
    /// Every head keeps its `n_kept` best tokens.
    pub fn keep_top(scores: &Tensor, n_kept: usize) -> Result<Selection> {
        keep_top_per_head(scores, n_kept, top_k_indices)
    }
}

/// Every head of `scores` `(batch, n_kv_heads, n_tokens)` keeps the `n_kept` tokens `top_k`
/// picks from its row (sorted indices): how a uniform budget becomes a selection, whichever rule
/// breaks ties.
pub fn keep_top_per_head(
    scores: &Tensor,
    n_kept: usize,
    top_k: fn(&[f32], usize) -> Vec<u32>,
) -> Result<Selection> {
    let (rows, batch, n_kv_heads) = score_rows(scores)?;
    let n_tokens = rows.first().map_or(0, Vec::len);
    let kept = rows.iter().map(|row| top_k(row, n_kept)).collect();
    Selection::new(kept, batch, n_kv_heads, n_tokens)
}

impl BudgetAllocator for UniformAllocator {
    fn allocate(
        &self,
        scores: &Tensor,
        compression_ratio: f64,
        _layer: LayerPosition,
    ) -> Result<Selection> {
        let n_tokens = scores.dims().last().copied().unwrap_or(0);
        Self::keep_top(scores, n_kept(n_tokens, compression_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_kept_floors_like_kvpress() {
        assert_eq!(n_kept(1175, 0.5), 587);
        assert_eq!(n_kept(1175, 0.75), 293);
        assert_eq!(n_kept(10, 0.0), 10);
        assert_eq!(n_kept(3, 0.9), 1);
        assert_eq!(n_kept(3, 1.0), 0);
    }

    #[test]
    fn top_k_prefers_high_scores_and_earlier_ties() {
        let row = [0.1, 0.9, 0.5, 0.9, f32::NAN, 0.2];
        assert_eq!(top_k_indices(&row, 2), vec![1, 3]);
        assert_eq!(top_k_indices(&row, 3), vec![1, 2, 3]);
        assert_eq!(top_k_indices(&row, 0), Vec::<u32>::new());
        assert_eq!(top_k_indices(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }

    #[test]
    fn ratio_outside_the_unit_interval_is_an_error() {
        assert!(check_compression_ratio("knorm", 0.0).is_ok());
        let err = check_compression_ratio("knorm", 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside [0, 1)"), "{err}");
        assert!(check_compression_ratio("knorm", -0.1).is_err());
        assert!(check_compression_ratio("knorm", f64::NAN).is_err());
    }
}
