//! AdaKV's head-wise allocation of one sequence on the GPU (kvpress's `AdaKVPress`, the
//! [`crate::Safeguard::Protect`] rule): each head's top `n_safe` scores are protected, then the
//! layer keeps the global top `budget * heads` of all its heads' scores. Everything stays on the
//! device, for contexts of any length.

use candle_core::{DType, Tensor};
use kvpress_core::{Error, Result};

use super::compact::segment_starts;
use super::kernels::check_cuda;
use super::top_k::top_k;

/// The kept tokens of one sequence's heads from its scores `(heads, T)` (f32/f16/bf16, on a CUDA
/// device), as [`crate::AdaKvAllocator::kvpress`] chooses them on the CPU: `(kept, kept_starts)`,
/// ascending global indices into the `(heads, T)` grid and the `heads + 1` starts of each head's
/// segment, ready for [`super::CudaFlatLayer::compact_segments`] with `index_stride = T`.
///
/// `budget` is the average number of tokens a head keeps (`floor(T (1 - ratio))`), `n_safe` the
/// number every head keeps at least ([`crate::AdaKvAllocator::n_safe`]).
pub fn protect_selection(
    scores: &Tensor,
    budget: usize,
    n_safe: usize,
) -> Result<(Tensor, Tensor)> {
    check_cuda(scores, "scores", None)?;
    let (heads, n_tokens) = scores.dims2().map_err(|_| {
        Error::Shape(format!(
            "scores {:?} must be (heads, tokens) for one sequence",
            scores.dims()
        ))
    })?;
    if n_safe > budget || budget > n_tokens {
        return Err(Error::InvalidArgument(format!(
            "need n_safe ({n_safe}) <= budget ({budget}) <= tokens ({n_tokens})"
        )));
    }
    let scores = scores.to_dtype(DType::F32)?.contiguous()?;
    let protected = if n_safe > 0 {
        let safe = top_k(&scores, n_safe)?;
        let inf = Tensor::full(f32::INFINITY, (heads, n_safe), scores.device())?;
        scores.scatter(&safe, &inf, 1)?
    } else {
        scores
    };
    let flat = protected.reshape((1, heads * n_tokens))?;
    let kept = top_k(&flat, budget * heads)?.flatten_all()?;
    let starts = segment_starts(&kept, n_tokens, heads)?;
    Ok((kept, starts))
}
