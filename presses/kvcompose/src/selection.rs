//! KVCompose's budgets (kvpress's `compute_important_per_layer`): the scores of every layer are
//! enhanced (`add_mean_across_heads`: each head's score plus the mean over the layer's heads),
//! then one global budget decides how many tokens each layer (structured: the same count for
//! every head, from the layer's composite score, the mean over its heads of their scores sorted
//! in decreasing order; layer 0 gets the largest composite of all layers) or each head
//! (unstructured) keeps; each head keeps its highest-scoring tokens.

use candle_core::{DType, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{Error, Result};

use crate::scoring::Aggregation;

/// Bonus kvpress adds to the first `keep_token_lower_bound` composite scores.
const LOWER_BOUND_BONUS: f32 = 1e9;

/// What decides the budgets.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Fraction of the entries evicted, in `[0, 1)`.
    pub compression_ratio: f64,
    /// The same count for every head of a layer.
    pub structured: bool,
    /// Over the heads of a layer, for the layer's composite score.
    pub head: Aggregation,
    /// Add the mean over the layer's heads to every head's scores.
    pub add_mean_across_heads: bool,
    /// Tokens every layer (and, unstructured, every head) keeps at least.
    pub keep_token_lower_bound: usize,
}

/// kvpress's `compute_n_kept`: `max(1, floor(n * (1 - ratio)))`.
fn n_kept(n: usize, ratio: f64) -> usize {
    ((n as f64 * (1.0 - ratio)) as usize).max(1)
}

/// Every layer's selection from its `(1, kv_heads, tokens)` scores.
pub fn select(scores: &[Tensor], budget: Budget) -> Result<Vec<Selection>> {
    let Some(first) = scores.first() else {
        return Ok(Vec::new());
    };
    let (batch, n_kv, n_tokens) = first.dims3()?;
    if batch != 1 {
        return Err(Error::Unsupported(
            "kvcompose compresses one context at a time (batch 1)".to_string(),
        ));
    }
    let mut layers: Vec<Vec<Vec<f32>>> = Vec::with_capacity(scores.len());
    for layer in scores {
        if layer.dims3()? != (1, n_kv, n_tokens) {
            return Err(Error::Shape(format!(
                "kvcompose: layer scores {:?}, expected {:?}",
                layer.dims(),
                (1, n_kv, n_tokens)
            )));
        }
        let mut heads = layer.to_dtype(DType::F32)?.get(0)?.to_vec2::<f32>()?;
        if budget.add_mean_across_heads {
            add_mean(&mut heads);
        }
        layers.push(heads);
    }
    let counts = match budget.structured {
        true => per_layer_counts(&layers, budget)
            .into_iter()
            .map(|c| vec![c; n_kv])
            .collect(),
        false => per_head_counts(&layers, budget),
    };
    layers
        .iter()
        .zip(counts)
        .map(|(heads, counts)| {
            let kept = heads
                .iter()
                .zip(counts)
                .map(|(head, count)| highest(head, count))
                .collect();
            Selection::new(kept, 1, n_kv, n_tokens)
        })
        .collect()
}

/// Adds to every head's scores the mean over the heads, token by token.
fn add_mean(heads: &mut [Vec<f32>]) {
    let mean = Aggregation::Mean.rows(heads.iter().map(Vec::as_slice), heads[0].len());
    for head in heads.iter_mut() {
        head.iter_mut().zip(&mean).for_each(|(s, m)| *s += m);
    }
}

/// `values` sorted in decreasing order, the first `bound` raised by the bonus.
fn composite(values: &[f32], bound: usize) -> Vec<f32> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted
        .iter_mut()
        .take(bound)
        .for_each(|v| *v += LOWER_BOUND_BONUS);
    sorted
}

/// Unstructured: each head's count of the global top entries of the heads' composite scores.
fn per_head_counts(layers: &[Vec<Vec<f32>>], budget: Budget) -> Vec<Vec<usize>> {
    let bound = budget.keep_token_lower_bound;
    let composites: Vec<Vec<f32>> = layers
        .iter()
        .flatten()
        .map(|head| composite(head, bound))
        .collect();
    let n_kv = layers.first().map_or(0, Vec::len);
    let flat = top_counts(&composites, budget.compression_ratio);
    flat.chunks(n_kv.max(1)).map(<[usize]>::to_vec).collect()
}

/// Structured: each layer's count of the global top entries of the layers' composite scores
/// (at least `max(1, keep_token_lower_bound)`).
fn per_layer_counts(layers: &[Vec<Vec<f32>>], budget: Budget) -> Vec<usize> {
    let bound = budget.keep_token_lower_bound;
    let n_tokens = layers.first().and_then(|l| l.first()).map_or(0, Vec::len);
    let mut composites: Vec<Vec<f32>> = layers
        .iter()
        .map(|heads| {
            let sorted: Vec<Vec<f32>> = heads.iter().map(|h| composite(h, 0)).collect();
            let mut layer = budget.head.rows(sorted.iter().map(Vec::as_slice), n_tokens);
            layer
                .iter_mut()
                .take(bound)
                .for_each(|v| *v += LOWER_BOUND_BONUS);
            layer
        })
        .collect();
    // Layer 0 gets the largest composite of all layers (kvpress: it must be the largest).
    let largest = Aggregation::Max.rows(composites.iter().map(Vec::as_slice), n_tokens);
    if let Some(first) = composites.first_mut() {
        *first = largest;
    }
    top_counts(&composites, budget.compression_ratio)
        .into_iter()
        .map(|c| c.max(bound.max(1)))
        .collect()
}

/// How many of each row's values are among the `n_kept(all, ratio)` largest of all rows (ties:
/// the earlier row and position first).
fn top_counts(rows: &[Vec<f32>], ratio: f64) -> Vec<usize> {
    let all: Vec<(usize, f32)> = rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| row.iter().map(move |&v| (r, v)))
        .collect();
    let n = n_kept(all.len(), ratio).min(all.len());
    let mut order: Vec<usize> = (0..all.len()).collect();
    let mut counts = vec![0; rows.len()];
    if n == 0 {
        return counts;
    }
    order.select_nth_unstable_by(n - 1, |&a, &b| {
        all[b].1.total_cmp(&all[a].1).then(a.cmp(&b))
    });
    for &i in &order[..n] {
        counts[all[i].0] += 1;
    }
    counts
}

/// Indices of the `count` highest values of `head` (ties: the lower index first), sorted.
fn highest(head: &[f32], count: usize) -> Vec<u32> {
    let mut order: Vec<usize> = (0..head.len()).collect();
    order.sort_by(|&a, &b| head[b].total_cmp(&head[a]).then(a.cmp(&b)));
    let mut kept: Vec<u32> = order[..count.min(head.len())]
        .iter()
        .map(|&i| i as u32)
        .collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(heads: &[&[f32]]) -> Tensor {
        let n = heads[0].len();
        let flat: Vec<f32> = heads.iter().flat_map(|h| h.iter().copied()).collect();
        Tensor::from_vec(flat, (1, heads.len(), n), &Device::Cpu).unwrap()
    }

    fn budget(structured: bool) -> Budget {
        Budget {
            compression_ratio: 0.5,
            structured,
            head: Aggregation::Mean,
            add_mean_across_heads: false,
            keep_token_lower_bound: 0,
        }
    }

    #[test]
    fn unstructured_heads_keep_their_share_of_the_global_top() {
        // 16 entries, 8 kept: head (0, 0) holds 4 of the 8 largest, (0, 1) 1, (1, 0) 3, (1, 1) 0.
        let scores = [
            layer(&[&[9.0, 8.0, 7.0, 6.0], &[5.5, 0.0, 0.0, 0.0]]),
            layer(&[&[0.1, 5.9, 5.8, 5.7], &[1.0, 1.0, 1.0, 1.0]]),
        ];
        let kept = select(&scores, budget(false)).unwrap();
        assert_eq!(kept[0].head(0, 0), &[0, 1, 2, 3]);
        assert_eq!(kept[0].head(0, 1), &[0]);
        assert_eq!(kept[1].head(0, 0), &[1, 2, 3]);
        assert!(kept[1].head(0, 1).is_empty());
    }

    #[test]
    fn structured_layers_keep_one_count_per_head_and_layer_zero_the_most() {
        let scores = [
            layer(&[&[0.1, 0.2, 0.3, 0.4], &[0.4, 0.3, 0.2, 0.1]]),
            layer(&[&[9.0, 8.0, 7.0, 6.0], &[1.0, 2.0, 3.0, 4.0]]),
        ];
        let kept = select(&scores, budget(true)).unwrap();
        // Composites: layer 1 = [6.5, 5.5, 4.5, 3.5]; layer 0 is raised to the same; the 4
        // largest of 8 are two of each layer (ties: layer 0 first).
        assert_eq!(kept[0].head(0, 0), &[2, 3]);
        assert_eq!(kept[0].head(0, 1), &[0, 1]);
        assert_eq!(kept[1].head(0, 0), &[0, 1]);
        assert_eq!(kept[1].head(0, 1), &[2, 3]);
    }

    #[test]
    fn the_mean_across_heads_is_added_and_each_layer_keeps_one_token() {
        let mut heads = vec![vec![1.0, 3.0], vec![3.0, 1.0]];
        add_mean(&mut heads);
        assert_eq!(heads, vec![vec![3.0, 5.0], vec![5.0, 3.0]]);
        let scores = [layer(&[&[1.0, 2.0]]), layer(&[&[0.0, 0.0]])];
        let tiny = Budget {
            compression_ratio: 0.9,
            ..budget(true)
        };
        let kept = select(&scores, tiny).unwrap();
        assert_eq!(
            kept[1].head(0, 0).len(),
            1,
            "a layer keeps at least one token"
        );
    }
}
