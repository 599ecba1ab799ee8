//! A synthetic attention layer: random (or constant) hidden states projected and rotated like a
//! real layer, so that every quantity a press may use is consistent.

use candle_core::{DType, Device, Tensor};
use kvpress_core::{AttentionProjections, AttentionShape, PressInput, RotaryEmbedding};
use kvpress_kernels::grouped_query_attention;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sizes of a synthetic layer.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticShape {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Head dimension (even).
    pub head_dim: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Cached tokens (all of them are the forward's queries, as in a prefill).
    pub n_tokens: usize,
}

impl SyntheticShape {
    /// 4 query heads over 2 KV heads, head dim 8, hidden 16, batch 1, `n_tokens` tokens.
    pub fn small(n_tokens: usize) -> Self {
        Self {
            batch: 1,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            hidden: 16,
            n_tokens,
        }
    }
}

/// Weights of the synthetic layer (dense f32).
#[derive(Debug, Clone)]
struct SyntheticProjections {
    query_weight: Tensor,
    output_weight: Tensor,
}

impl AttentionProjections for SyntheticProjections {
    fn query_weight(&self) -> kvpress_core::Result<Tensor> {
        Ok(self.query_weight.clone())
    }

    fn query_bias(&self) -> kvpress_core::Result<Option<Tensor>> {
        Ok(None)
    }

    fn query_norm(&self) -> Option<(Tensor, f64)> {
        None
    }

    fn output_weight(&self) -> kvpress_core::Result<Tensor> {
        Ok(self.output_weight.clone())
    }
}

/// One prefilled attention layer with everything a [`PressInput`] exposes.
#[derive(Debug, Clone)]
pub struct SyntheticLayer {
    /// Sizes.
    pub shape: SyntheticShape,
    /// Layer index reported to presses.
    pub layer_idx: usize,
    /// Layers in the synthetic model.
    pub n_layers: usize,
    hidden_states: Tensor,
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    attention_weights: Option<Tensor>,
    rotary: RotaryEmbedding,
    projections: SyntheticProjections,
    question_tokens: usize,
}

impl SyntheticLayer {
    /// Random hidden states and weights from `seed` (deterministic).
    pub fn random(shape: SyntheticShape, seed: u64) -> kvpress_core::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    // Sum of uniforms: a cheap, portable bell-shaped distribution.
                    (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0
                })
                .collect()
        };
        let hidden = normal(shape.batch * shape.n_tokens * shape.hidden);
        let weights = [
            normal(shape.n_heads * shape.head_dim * shape.hidden),
            normal(shape.n_kv_heads * shape.head_dim * shape.hidden),
            normal(shape.n_kv_heads * shape.head_dim * shape.hidden),
            normal(shape.hidden * shape.n_heads * shape.head_dim),
        ];
        Self::from_parts(shape, hidden, weights)
    }

    /// Every hidden state and weight equal to one: all scores tie.
    pub fn constant(shape: SyntheticShape) -> kvpress_core::Result<Self> {
        let ones = |n: usize| vec![0.5f32; n];
        let weights = [
            ones(shape.n_heads * shape.head_dim * shape.hidden),
            ones(shape.n_kv_heads * shape.head_dim * shape.hidden),
            ones(shape.n_kv_heads * shape.head_dim * shape.hidden),
            ones(shape.hidden * shape.n_heads * shape.head_dim),
        ];
        Self::from_parts(
            shape,
            ones(shape.batch * shape.n_tokens * shape.hidden),
            weights,
        )
    }

    fn from_parts(
        shape: SyntheticShape,
        hidden: Vec<f32>,
        [wq, wk, wv, wo]: [Vec<f32>; 4],
    ) -> kvpress_core::Result<Self> {
        let device = Device::Cpu;
        let SyntheticShape {
            batch,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden: hidden_size,
            n_tokens,
        } = shape;
        let scale = 1.0 / (hidden_size as f64).sqrt();
        let hidden_states = Tensor::from_vec(hidden, (batch, n_tokens, hidden_size), &device)?;
        let query_weight =
            (Tensor::from_vec(wq, (n_heads * head_dim, hidden_size), &device)? * scale)?;
        let key_weight =
            (Tensor::from_vec(wk, (n_kv_heads * head_dim, hidden_size), &device)? * scale)?;
        let value_weight =
            (Tensor::from_vec(wv, (n_kv_heads * head_dim, hidden_size), &device)? * scale)?;
        let output_weight =
            (Tensor::from_vec(wo, (hidden_size, n_heads * head_dim), &device)? * scale)?;
        let rotary = RotaryEmbedding::new(head_dim, 10_000.0, 1 << 16, &device)?;
        let (cos, sin) = rotary.tables_for_range(0, n_tokens, DType::F32)?;
        let project = |w: &Tensor, heads: usize| -> kvpress_core::Result<Tensor> {
            Ok(hidden_states
                .broadcast_matmul(&w.t()?)?
                .reshape((batch, n_tokens, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let queries = RotaryEmbedding::apply(&project(&query_weight, n_heads)?, &cos, &sin)?;
        let keys = RotaryEmbedding::apply(&project(&key_weight, n_kv_heads)?, &cos, &sin)?;
        let values = project(&value_weight, n_kv_heads)?;
        Ok(Self {
            shape,
            layer_idx: 0,
            n_layers: 4,
            hidden_states,
            queries,
            keys,
            values,
            attention_weights: None,
            rotary,
            projections: SyntheticProjections {
                query_weight,
                output_weight,
            },
            question_tokens: 0,
        })
    }

    /// The same layer with its causal attention weights computed (for presses that need them).
    pub fn with_attention_weights(mut self) -> kvpress_core::Result<Self> {
        let output = grouped_query_attention(&self.queries, &self.keys, &self.values, true)?;
        self.attention_weights = output.weights;
        Ok(self)
    }

    /// The same layer with its last `n` tokens presented as the question prefilled with the
    /// context ([`PressInput::question_tokens`]), for presses that need it (Finch).
    pub fn with_question_tokens(mut self, n: usize) -> Self {
        self.question_tokens = n;
        self
    }

    /// The same layer reported as layer `layer_idx` of `n_layers`.
    pub fn at_layer(mut self, layer_idx: usize, n_layers: usize) -> Self {
        self.layer_idx = layer_idx;
        self.n_layers = n_layers;
        self
    }

    /// The press input of this layer.
    pub fn input(&self) -> PressInput<'_> {
        PressInput {
            layer_idx: self.layer_idx,
            n_layers: self.n_layers,
            shape: AttentionShape {
                n_heads: self.shape.n_heads,
                n_kv_heads: self.shape.n_kv_heads,
                head_dim: self.shape.head_dim,
            },
            hidden_states: &self.hidden_states,
            queries: &self.queries,
            query_position: 0,
            keys: &self.keys,
            values: &self.values,
            attention_weights: self.attention_weights.as_ref(),
            rotary: &self.rotary,
            projections: &self.projections,
            front_padding: None,
            question_tokens: self.question_tokens,
            attention_history: None,
        }
    }
}
