//! ThinK's channel scores and the channels it prunes, as kvpress's `ThinKPress.compress`
//! computes them.

use candle_core::{DType, Tensor};
use kvpress_core::press::PressInput;
use kvpress_core::Result;

/// Per-channel importance `(batch, n_kv_heads, head_dim)` in f32: the mean over the last
/// `window_size` queries (post-RoPE, all of them when there are fewer) of `q²`, averaged over the
/// KV head's query heads, times the mean over the cached tokens of `k²`.
pub fn channel_scores(input: &PressInput<'_>, window_size: usize) -> Result<Tensor> {
    let (batch, n_heads, n_queries, head_dim) = input.queries.dims4()?;
    let window = window_size.min(n_queries);
    let queries = input
        .queries
        .narrow(2, n_queries - window, window)?
        .to_dtype(DType::F32)?;
    let n_kv_heads = input.shape.n_kv_heads;
    let group = n_heads / n_kv_heads;
    let queries_norm = queries
        .sqr()?
        .mean(2)?
        .reshape((batch, n_kv_heads, group, head_dim))?
        .mean(2)?;
    let keys_norm = input.keys.to_dtype(DType::F32)?.sqr()?.mean(2)?;
    Ok((queries_norm * keys_norm)?)
}

/// The `n_pruned` lowest-scoring channels of every head of `scores` `(batch, n_kv_heads,
/// head_dim)`, sorted (ties go to the earlier channel); one list per head, `batch * n_kv_heads`
/// of them.
pub fn lowest_channels(scores: &Tensor, n_pruned: usize) -> Result<Vec<Vec<u32>>> {
    let (_, _, head_dim) = scores.dims3()?;
    let data = scores
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(data
        .chunks_exact(head_dim.max(1))
        .map(|row| {
            let mut order: Vec<u32> = (0..head_dim as u32).collect();
            order.sort_by(|&a, &b| row[a as usize].total_cmp(&row[b as usize]));
            let mut pruned = order[..n_pruned.min(head_dim)].to_vec();
            pruned.sort_unstable();
            pruned
        })
        .collect())
}

/// Channels pruned at `key_channel_compression_ratio`: `int(head_dim * ratio)`, as kvpress
/// rounds it.
pub fn n_pruned(head_dim: usize, key_channel_compression_ratio: f64) -> usize {
    (head_dim as f64 * key_channel_compression_ratio) as usize
}

/// `keys` `(batch, n_kv_heads, n, head_dim)` with the channels `pruned[head]` set to zero (what
/// kvpress stores).
pub fn zero_channels(keys: &Tensor, pruned: &[Vec<u32>]) -> Result<Tensor> {
    let (b, h, _, d) = keys.dims4()?;
    let mut mask = vec![1f32; b * h * d];
    for (head, channels) in pruned.iter().enumerate() {
        channels
            .iter()
            .for_each(|&c| mask[head * d + c as usize] = 0.0);
    }
    let mask = Tensor::from_vec(mask, (b, h, 1, d), keys.device())?;
    Ok(keys.to_dtype(DType::F32)?.broadcast_mul(&mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lowest_channels_are_sorted_and_ties_go_to_the_earlier_channel() -> Result<()> {
        let scores = Tensor::new(&[[[3f32, 1.0, 2.0, 1.0]]], &Device::Cpu)?;
        assert_eq!(lowest_channels(&scores, 2)?, vec![vec![1, 3]]);
        assert_eq!(lowest_channels(&scores, 3)?, vec![vec![1, 2, 3]]);
        let tie = Tensor::new(&[[[1f32, 1.0, 1.0, 1.0]]], &Device::Cpu)?;
        assert_eq!(lowest_channels(&tie, 1)?, vec![vec![0]]);
        assert_eq!(n_pruned(64, 0.5), 32);
        assert_eq!(n_pruned(64, 0.3), 19);
        Ok(())
    }
}
