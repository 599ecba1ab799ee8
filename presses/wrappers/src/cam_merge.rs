//! CaM's merge-then-evict step on one layer (kvpress 0.5.5's `CAMPress.compress`).

use candle_core::{DType, Tensor};
use kvpress_core::press::{score_rows, top_k_indices, Selection};
use kvpress_core::{Error, Result};
use rand::rngs::StdRng;
use rand::Rng;

/// What one CaM step works on.
pub(crate) struct MergeInput<'a> {
    /// The inner scorer's scores `(batch, n_kv_heads, n_tokens)`.
    pub scores: &'a Tensor,
    /// Cached values `(batch, n_kv_heads, n_tokens, head_dim)`.
    pub values: &'a Tensor,
    /// Accumulated attention `(batch, n_kv_heads, n_tokens)`; `None`: none observed yet (then
    /// nothing merges, as kvpress's 0/0 merge probabilities become 0).
    pub attention: Option<&'a Tensor>,
    /// Tokens every head keeps.
    pub n_kept: usize,
    /// Evicted tokens that may merge: the forwards since the last compression.
    pub n_merge: usize,
    /// Kept neighbours each merged value is spread over.
    pub merge_budget: usize,
}

/// Ranks tokens by their scores averaged over the KV heads; keeps the `n_kept` best (ties to the
/// earlier token) in every head; of the others, the `n_merge` best (ties to the later token) may
/// merge: each into the `merge_budget` kept tokens after it, with probability
/// `clamp(A_m / mean(A_window), 0, 1)` per head (a Bernoulli draw from `rng`, in the order
/// batch, merged token, head), adding `v_m / |window|` to each. Returns the selection with the
/// kept tokens' (merged) values.
pub(crate) fn merge_then_evict(input: &MergeInput<'_>, rng: &mut StdRng) -> Result<Selection> {
    let (batch, n_kv_heads, n_tokens, head_dim) = input.values.dims4()?;
    let (rows, _, _) = score_rows(input.scores)?;
    let values = input
        .values
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let attention = match input.attention {
        Some(a) => a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; batch * n_kv_heads * n_tokens],
    };
    if attention.len() != batch * n_kv_heads * n_tokens || rows.len() != batch * n_kv_heads {
        return Err(Error::Shape(format!(
            "cam: scores {:?} and attention of {} entries do not fit values {:?}",
            input.scores.dims(),
            attention.len(),
            input.values.dims()
        )));
    }
    let mut kept_heads = Vec::with_capacity(batch * n_kv_heads);
    let mut kept_values = Vec::with_capacity(batch * n_kv_heads * input.n_kept * head_dim);
    for b in 0..batch {
        let heads = &rows[b * n_kv_heads..(b + 1) * n_kv_heads];
        let mean: Vec<f32> = (0..n_tokens)
            .map(|t| heads.iter().map(|row| row[t]).sum::<f32>() / n_kv_heads as f32)
            .collect();
        let kept = top_k_indices(&mean, input.n_kept);
        let merged = merge_candidates(&mean, &kept, input.n_merge);
        let offset = |h: usize, t: usize| ((b * n_kv_heads + h) * n_tokens + t) * head_dim;
        let mut merged_values = values.clone();
        for &m in &merged {
            let start = kept.partition_point(|&k| k <= m);
            let window = &kept[start..(start + input.merge_budget).min(kept.len())];
            if window.is_empty() {
                continue;
            }
            for h in 0..n_kv_heads {
                let a = |t: u32| attention[(b * n_kv_heads + h) * n_tokens + t as usize];
                let mean_window = window.iter().map(|&w| a(w)).sum::<f32>() / window.len() as f32;
                let p = merge_probability(a(m), mean_window);
                if rng.random::<f64>() >= p {
                    continue;
                }
                let from = offset(h, m as usize);
                let share: Vec<f32> = values[from..from + head_dim]
                    .iter()
                    .map(|v| v / window.len() as f32)
                    .collect();
                for &w in window {
                    let to = offset(h, w as usize);
                    merged_values[to..to + head_dim]
                        .iter_mut()
                        .zip(&share)
                        .for_each(|(v, s)| *v += s);
                }
            }
        }
        for h in 0..n_kv_heads {
            for &k in &kept {
                let at = offset(h, k as usize);
                kept_values.extend_from_slice(&merged_values[at..at + head_dim]);
            }
            kept_heads.push(kept.clone());
        }
    }
    let kept_values = Tensor::from_vec(
        kept_values,
        (batch, n_kv_heads, input.n_kept, head_dim),
        input.values.device(),
    )?;
    Selection::new(kept_heads, batch, n_kv_heads, n_tokens)?.with_values(kept_values)
}

/// The evicted tokens (not in `kept`) that may merge: the `n_merge` of highest `mean` score,
/// ties to the later token (kvpress's stable sort over the flipped eviction order), by position.
fn merge_candidates(mean: &[f32], kept: &[u32], n_merge: usize) -> Vec<u32> {
    let mut evicted: Vec<u32> = (0..mean.len() as u32)
        .filter(|t| kept.binary_search(t).is_err())
        .collect();
    evicted.sort_by(|&x, &y| {
        mean[y as usize]
            .total_cmp(&mean[x as usize])
            .then(y.cmp(&x))
    });
    evicted.truncate(n_merge);
    evicted.sort_unstable();
    evicted
}

/// kvpress's merge probability: `A_m / mean(A_window)` clamped to `[0, 1]`, 0 for 0/0 (NaN) and
/// 1 for a positive attention over a zero mean (infinity).
fn merge_probability(attention: f32, mean_window: f32) -> f64 {
    let p = attention as f64 / mean_window as f64;
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_follow_kvpress_edge_cases() {
        assert_eq!(merge_probability(0.0, 0.0), 0.0);
        assert_eq!(merge_probability(0.5, 0.0), 1.0);
        assert_eq!(merge_probability(0.1, 0.4), 0.25);
        assert_eq!(merge_probability(0.8, 0.4), 1.0);
    }

    #[test]
    fn merge_candidates_are_the_best_evicted_ties_to_the_later() {
        let mean = [5.0, 1.0, 3.0, 3.0, 0.0, 9.0];
        // kept: 0 and 5; evicted 1, 2, 3, 4; the best two are 2 and 3 (tie: 3 first, then 2).
        assert_eq!(merge_candidates(&mean, &[0, 5], 1), vec![3]);
        assert_eq!(merge_candidates(&mean, &[0, 5], 2), vec![2, 3]);
    }
}
