//! Finch's optional chunked selection: every chunk of the prefilled tokens keeps its own share.

use candle_core::Tensor;
use kvpress_core::press::{n_kept, score_rows, top_k_indices, Selection};
use kvpress_core::Result;

/// Every head keeps, in each consecutive chunk of `chunk_length` tokens (the last one may be
/// shorter), the `n_kept(chunk, ratio)` best-scored tokens of that chunk, as kvpress's Finch
/// does with `chunk_length`.
pub fn keep_top_per_chunk(scores: &Tensor, ratio: f64, chunk_length: usize) -> Result<Selection> {
    let (rows, batch, n_kv_heads) = score_rows(scores)?;
    let n_tokens = rows.first().map_or(0, Vec::len);
    let kept = rows
        .iter()
        .map(|row| {
            let mut kept = Vec::new();
            for (chunk_idx, chunk) in row.chunks(chunk_length.max(1)).enumerate() {
                let offset = (chunk_idx * chunk_length) as u32;
                let top = top_k_indices(chunk, n_kept(chunk.len(), ratio));
                kept.extend(top.into_iter().map(|i| i + offset));
            }
            kept
        })
        .collect();
    Selection::new(kept, batch, n_kv_heads, n_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_chunk_keeps_its_share() {
        // 10 tokens in chunks of 4, 4, 2 at ratio 0.5: 2 + 2 + 1 kept.
        let row = [0.0f32, 9.0, 1.0, 8.0, 7.0, 0.0, 6.0, 1.0, 5.0, 0.0];
        let scores = Tensor::from_vec(row.to_vec(), (1, 1, 10), &Device::Cpu).unwrap();
        let selection = keep_top_per_chunk(&scores, 0.5, 4).unwrap();
        assert_eq!(selection.head(0, 0), &[1, 3, 4, 6, 8]);
    }
}
