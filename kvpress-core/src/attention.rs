//! The shape of an attention layer and what attention over a cache produces.

use candle_core::Tensor;

/// Head layout of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Query heads that share one KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// What attention produced for the new tokens of one forward.
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// Attention output, `(batch, n_heads, n_new_tokens, head_dim)`.
    pub output: Tensor,
    /// Softmax weights `(batch, n_heads, n_new_tokens, cache_len)`, only when asked for.
    pub weights: Option<Tensor>,
}
