//! What every layer keeps: the first `n_sink` tokens get the highest score, then the entries
//! with the lowest scores are evicted — a share of all (layer, KV head, token) entries at once
//! (kvpress's default), or the same share of every layer (`layerwise`).

use candle_core::{DType, Tensor};
use kvpress_core::press::Selection;
use kvpress_core::{Error, Result};

/// How much is evicted.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Fraction of the entries evicted.
    pub compression_ratio: f64,
    /// The same fraction in every layer.
    pub layerwise: bool,
    /// First tokens always kept.
    pub n_sink: usize,
}

/// Every layer's selection from its `(batch, kv_heads, tokens)` scores.
pub fn select(scores: &[Tensor], budget: Budget) -> Result<Vec<Selection>> {
    let Some(first) = scores.first() else {
        return Ok(Vec::new());
    };
    let (batch, n_kv, n_tokens) = first.dims3()?;
    if budget.compression_ratio <= 0.0 {
        return Ok(scores
            .iter()
            .map(|_| Selection::all(batch, n_kv, n_tokens))
            .collect());
    }
    let mut layers: Vec<Vec<f32>> = Vec::with_capacity(scores.len());
    for layer in scores {
        if layer.dims3()? != (batch, n_kv, n_tokens) {
            return Err(Error::Shape(format!(
                "kvzip: layer scores {:?}, expected {:?}",
                layer.dims(),
                (batch, n_kv, n_tokens)
            )));
        }
        layers.push(layer.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?);
    }
    pin_sinks(&mut layers, n_tokens, budget.n_sink);
    let per_layer = batch * n_kv * n_tokens;
    let evicted = match budget.layerwise {
        true => vec![(per_layer as f64 * budget.compression_ratio) as usize; layers.len()],
        false => evicted_per_layer(&layers, budget.compression_ratio),
    };
    layers
        .iter()
        .zip(evicted)
        .map(|(layer, n)| {
            let mut dropped = vec![false; layer.len()];
            for index in lowest(layer, n) {
                dropped[index] = true;
            }
            let kept = dropped
                .chunks(n_tokens)
                .map(|head| {
                    head.iter()
                        .enumerate()
                        .filter(|(_, &d)| !d)
                        .map(|(t, _)| t as u32)
                        .collect()
                })
                .collect();
            Selection::new(kept, batch, n_kv, n_tokens)
        })
        .collect()
}

/// The first `n_sink` tokens of every head of every layer get the highest score plus one.
fn pin_sinks(layers: &mut [Vec<f32>], n_tokens: usize, n_sink: usize) {
    let top = layers
        .iter()
        .flatten()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for layer in layers.iter_mut() {
        for head in layer.chunks_mut(n_tokens) {
            head[..n_sink.min(n_tokens)].fill(top + 1.0);
        }
    }
}

/// How many entries each layer loses when the lowest `ratio` of all entries go.
fn evicted_per_layer(layers: &[Vec<f32>], ratio: f64) -> Vec<usize> {
    let all: Vec<f32> = layers.iter().flatten().copied().collect();
    let n = (all.len() as f64 * ratio) as usize;
    let per_layer = layers.first().map_or(1, Vec::len).max(1);
    let mut counts = vec![0; layers.len()];
    for index in lowest(&all, n) {
        counts[index / per_layer] += 1;
    }
    counts
}

/// Indices of the `n` lowest values (ties: the lower index first).
fn lowest(values: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    let by_value = |a: &usize, b: &usize| values[*a].total_cmp(&values[*b]).then(a.cmp(b));
    order.select_nth_unstable_by(n - 1, by_value);
    order.truncate(n);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(values: &[f32], heads: usize) -> Tensor {
        Tensor::from_vec(
            values.to_vec(),
            (1, heads, values.len() / heads),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn one_budget_across_layers_evicts_the_lowest_entries_wherever_they_are() {
        let scores = [
            layer(&[9.0, 0.1, 0.2, 5.0], 1),
            layer(&[9.0, 4.0, 3.0, 6.0], 1),
        ];
        let budget = Budget {
            compression_ratio: 0.25,
            layerwise: false,
            n_sink: 1,
        };
        let kept = select(&scores, budget).unwrap();
        assert_eq!(kept[0].head(0, 0), &[0, 3]);
        assert_eq!(kept[1].head(0, 0), &[0, 1, 2, 3]);
        let budget = Budget {
            layerwise: true,
            ..budget
        };
        let kept = select(&scores, budget).unwrap();
        assert_eq!(kept[0].head(0, 0), &[0, 2, 3]);
        assert_eq!(kept[1].head(0, 0), &[0, 1, 3]);
    }

    #[test]
    fn sinks_are_kept_whatever_they_score_and_heads_keep_different_counts() {
        let scores = [layer(&[0.0, 0.0, 1.0, 2.0, 0.0, 7.0, 8.0, 9.0], 2)];
        let budget = Budget {
            compression_ratio: 0.5,
            layerwise: false,
            n_sink: 1,
        };
        let kept = select(&scores, budget).unwrap();
        // Sinks pinned to 10: [10, 0, 1, 2 | 10, 7, 8, 9]; the 4 lowest go.
        assert_eq!(kept[0].head(0, 0), &[0]);
        assert_eq!(kept[0].head(0, 1), &[0, 2, 3]);
    }

    #[test]
    fn ratio_zero_keeps_everything() {
        let scores = [layer(&[1.0, 2.0], 1)];
        let budget = Budget {
            compression_ratio: 0.0,
            layerwise: false,
            n_sink: 4,
        };
        assert!(select(&scores, budget).unwrap()[0].keeps_everything());
    }
}
