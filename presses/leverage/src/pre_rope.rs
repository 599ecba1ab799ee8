//! The prefill these methods score, and its keys before RoPE.
//!
//! kvpress's leverage-family scorers assert that they run on a prefill (every cached token is a
//! query of the forward) and recompute pre-RoPE keys from the hidden states with the layer's key
//! projection. The cached keys rotated back with the model's rotary tables are the same keys up
//! to float rounding, without a second projection.

use candle_core::{DType, Tensor};
use kvpress_core::{Error, PressInput, Result, RotaryEmbedding};

/// Checks that `input` is a prefill whose queries are the cached tokens, with no padded heads.
pub(crate) fn check_prefill(press: &str, input: &PressInput<'_>) -> Result<()> {
    let (n_tokens, n_queries) = (input.n_tokens()?, input.n_queries()?);
    if input.front_padding.is_some() || n_tokens != n_queries {
        return Err(Error::Unsupported(format!(
            "{press} scores a prefill only (every cached token a query of the forward, as in \
             kvpress); got {n_queries} queries over {n_tokens} cached tokens"
        )));
    }
    Ok(())
}

/// `vectors` `(batch, heads, n, head_dim)`, post-RoPE at positions `first_position..`, rotated
/// back to their pre-RoPE values; f32, row-major in the same layout.
pub(crate) fn derotate(
    vectors: &Tensor,
    rotary: &RotaryEmbedding,
    first_position: usize,
) -> Result<Vec<f32>> {
    let (_, _, n, head_dim) = vectors.dims4()?;
    if rotary.head_dim() != head_dim {
        return Err(Error::Unsupported(format!(
            "the rotary tables rotate {} dimensions but heads have {head_dim} (partial rotary \
             embeddings are not supported)",
            rotary.head_dim()
        )));
    }
    let (cos, sin) = rotary.tables_for_range(first_position, n, DType::F32)?;
    let cos = cos.flatten_all()?.to_vec1::<f32>()?;
    let sin = sin.flatten_all()?.to_vec1::<f32>()?;
    let mut data = vectors
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let half = head_dim / 2;
    for (row, x) in data.chunks_exact_mut(head_dim).enumerate() {
        let t = row % n;
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for i in 0..half {
            // The inverse rotation: x * cos + rotate_half(x) * (-sin).
            let (first, second) = (x[i], x[i + half]);
            x[i] = first * c[i] + second * s[i];
            x[i + half] = second * c[i] - first * s[i];
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn derotation_undoes_rope() -> Result<()> {
        let rope = RotaryEmbedding::new(8, 10_000.0, 64, &Device::Cpu)?;
        let xs = Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &Device::Cpu)?;
        let (cos, sin) = rope.tables_for_range(7, 5, DType::F32)?;
        let rotated = RotaryEmbedding::apply(&xs, &cos, &sin)?;
        let back = derotate(&rotated, &rope, 7)?;
        let want = xs.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in back.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }
}
