//! A hand-made layer: given keys (and optionally attention weights), a [`PressInput`] whose other
//! tensors are zeros of consistent shapes.

use candle_core::{Device, Tensor};
use kvpress_core::{AttentionProjections, AttentionShape, PressInput, Result, RotaryEmbedding};

#[derive(Debug)]
struct ZeroProjections {
    hidden: usize,
    n_heads: usize,
    head_dim: usize,
}

impl AttentionProjections for ZeroProjections {
    fn query_weight(&self) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (self.n_heads * self.head_dim, self.hidden),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)
    }

    fn query_bias(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn query_norm(&self) -> Option<(Tensor, f64)> {
        None
    }

    fn output_weight(&self) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (self.hidden, self.n_heads * self.head_dim),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)
    }
}

/// Keys `(batch, n_kv_heads, n_tokens, head_dim)`, zero queries over `n_heads` heads, and
/// optional attention weights `(batch, n_heads, n_tokens, n_tokens)`.
pub struct HandMade {
    shape: AttentionShape,
    hidden_states: Tensor,
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    attention_weights: Option<Tensor>,
    rotary: RotaryEmbedding,
    projections: ZeroProjections,
}

impl HandMade {
    /// A layer over `keys` with `n_heads` query heads.
    pub fn new(keys: Tensor, n_heads: usize) -> Result<Self> {
        let (batch, n_kv_heads, n_tokens, head_dim) = keys.dims4()?;
        let hidden = 4;
        Ok(Self {
            shape: AttentionShape {
                n_heads,
                n_kv_heads,
                head_dim,
            },
            hidden_states: Tensor::zeros(
                (batch, n_tokens, hidden),
                candle_core::DType::F32,
                &Device::Cpu,
            )?,
            queries: Tensor::zeros(
                (batch, n_heads, n_tokens, head_dim),
                candle_core::DType::F32,
                &Device::Cpu,
            )?,
            values: keys.zeros_like()?,
            keys,
            attention_weights: None,
            rotary: RotaryEmbedding::new(head_dim, 10_000.0, 1024, &Device::Cpu)?,
            projections: ZeroProjections {
                hidden,
                n_heads,
                head_dim,
            },
        })
    }

    /// The same layer with these attention weights.
    pub fn with_weights(mut self, weights: Tensor) -> Self {
        self.attention_weights = Some(weights);
        self
    }

    /// The press input.
    pub fn input(&self) -> PressInput<'_> {
        PressInput {
            layer_idx: 0,
            n_layers: 1,
            shape: self.shape,
            hidden_states: &self.hidden_states,
            queries: &self.queries,
            query_position: 0,
            keys: &self.keys,
            values: &self.values,
            attention_weights: self.attention_weights.as_ref(),
            rotary: &self.rotary,
            projections: &self.projections,
            front_padding: None,
            question_tokens: 0,
            attention_history: None,
        }
    }
}

/// A `(1, n_kv_heads, n_tokens, head_dim)` key tensor from per-head rows of vectors.
pub fn keys(heads: &[&[&[f32]]]) -> Result<Tensor> {
    let n_tokens = heads[0].len();
    let head_dim = heads[0][0].len();
    let flat: Vec<f32> = heads
        .iter()
        .flat_map(|h| h.iter().flat_map(|v| v.iter().copied()))
        .collect();
    Ok(Tensor::from_vec(
        flat,
        (1, heads.len(), n_tokens, head_dim),
        &Device::Cpu,
    )?)
}
