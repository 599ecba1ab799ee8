//! Building a [`Model`] from its weights: embedding, decoder layers, final norm, output
//! projection.

use candle_core::Device;
use kvpress_core::{AttentionShape, RotaryEmbedding};

use super::Model;
use crate::attention::Attention;
use crate::config::ModelConfig;
use crate::layer::{DecoderLayer, Mlp};
use crate::linear::Linear;
use crate::param::{LayerParam, Param};
use crate::projection_group::ProjectionGroup;
use crate::weights::WeightLoader;
use crate::Result;

impl Model {
    pub(crate) fn load(
        config: ModelConfig,
        weights: &mut WeightLoader<'_>,
        device: &Device,
    ) -> Result<Self> {
        let c = &config;
        let embedding = weights.embedding(c.vocab_size, c.hidden_size)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            layers.push(load_layer(c, weights, i)?);
        }
        let final_norm = weights.vector(Param::FinalNorm, c.hidden_size)?;
        let lm_head = if c.tie_word_embeddings {
            Linear::new(embedding.table().clone(), None)?
        } else {
            weights.linear(Param::LmHead, None, (c.vocab_size, c.hidden_size))?
        };
        let rotary =
            RotaryEmbedding::new(c.head_dim, c.rope_theta, c.max_position_embeddings, device)?;
        Ok(Self {
            embedding,
            layers,
            final_norm,
            lm_head,
            rotary,
            weight_mode: weights.mode(),
            dtype: weights.dtype(),
            cache_storage: crate::KvStorage::Float(weights.dtype()),
            device: device.clone(),
            dense_weights_kept: false,
            reconstruction: None,
            tokenizer: None,
            config,
        })
    }
}

/// Decoder layer `i`: its attention, then its MLP, then both norms (the order in which a missing
/// tensor is found and named).
fn load_layer(c: &ModelConfig, weights: &mut WeightLoader<'_>, i: usize) -> Result<DecoderLayer> {
    let p = |lp: LayerParam| Param::Layer(i, lp);
    let attention = load_attention(c, weights, i)?;
    let mlp = load_mlp(c, weights, i)?;
    Ok(DecoderLayer {
        attention_norm: weights.vector(p(LayerParam::AttentionNorm), c.hidden_size)?,
        attention,
        mlp_norm: weights.vector(p(LayerParam::MlpNorm), c.hidden_size)?,
        mlp,
        rms_norm_eps: c.rms_norm_eps as f32,
    })
}

/// Layer `i`'s attention: optional per-head norms, the q, k, v and output projections.
fn load_attention(c: &ModelConfig, weights: &mut WeightLoader<'_>, i: usize) -> Result<Attention> {
    let q_dim = c.n_heads * c.head_dim;
    let kv_dim = c.n_kv_heads * c.head_dim;
    let p = |lp: LayerParam| Param::Layer(i, lp);
    let bias = |lp: LayerParam| c.architecture.has_qkv_bias().then_some(p(lp));
    let qk_norm = if c.architecture.has_qk_norm() {
        Some((
            weights.vector(p(LayerParam::QueryNorm), c.head_dim)?,
            weights.vector(p(LayerParam::KeyNorm), c.head_dim)?,
        ))
    } else {
        None
    };
    let qkv = vec![
        weights.linear(
            p(LayerParam::QueryWeight),
            bias(LayerParam::QueryBias),
            (q_dim, c.hidden_size),
        )?,
        weights.linear(
            p(LayerParam::KeyWeight),
            bias(LayerParam::KeyBias),
            (kv_dim, c.hidden_size),
        )?,
        weights.linear(
            p(LayerParam::ValueWeight),
            bias(LayerParam::ValueBias),
            (kv_dim, c.hidden_size),
        )?,
    ];
    Ok(Attention {
        qkv_proj: ProjectionGroup::new(qkv)?,
        o_proj: weights.linear(p(LayerParam::OutputWeight), None, (c.hidden_size, q_dim))?,
        qk_norm,
        rms_norm_eps: c.rms_norm_eps,
        shape: AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        },
    })
}

/// Layer `i`'s SwiGLU feed-forward: the gate, up and down projections.
fn load_mlp(c: &ModelConfig, weights: &mut WeightLoader<'_>, i: usize) -> Result<Mlp> {
    let p = |lp: LayerParam| Param::Layer(i, lp);
    let gate_up = vec![
        weights.linear(
            p(LayerParam::GateWeight),
            None,
            (c.intermediate_size, c.hidden_size),
        )?,
        weights.linear(
            p(LayerParam::UpWeight),
            None,
            (c.intermediate_size, c.hidden_size),
        )?,
    ];
    Ok(Mlp {
        gate_up_proj: ProjectionGroup::new(gate_up)?,
        down_proj: weights.linear(
            p(LayerParam::DownWeight),
            None,
            (c.hidden_size, c.intermediate_size),
        )?,
    })
}
