//! Self-attention of one decoder layer, with the hook point after attention.

use candle_core::Tensor;
use kvpress_core::{AttentionHook, AttentionProjections, AttentionShape, LayerCache, LayerContext};

use crate::forward::ForwardStep;
use crate::linear::Linear;
use crate::projection_group::ProjectionGroup;
use crate::Result;

/// Projections and optional per-head norms of one attention layer.
#[derive(Debug, Clone)]
pub struct Attention {
    /// The q, k and v projections, in that order.
    pub(crate) qkv_proj: ProjectionGroup,
    pub(crate) o_proj: Linear,
    /// Qwen3's per-head RMSNorm weights for queries and keys.
    pub(crate) qk_norm: Option<(Tensor, Tensor)>,
    pub(crate) rms_norm_eps: f64,
    pub(crate) shape: AttentionShape,
}

impl Attention {
    /// Splits a projection `(b, s, heads * head_dim)` into `(b, heads, s, head_dim)`, with
    /// optional per-head RMSNorm.
    fn split_heads(&self, y: &Tensor, n_heads: usize, norm: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, _) = y.dims3()?;
        let y = y.reshape((b, s, n_heads, self.shape.head_dim))?;
        let y = match norm {
            Some(w) => candle_nn::ops::rms_norm(&y.contiguous()?, w, self.rms_norm_eps as f32)?,
            None => y,
        };
        Ok(y.transpose(1, 2)?.contiguous()?)
    }

    /// Queries, keys and values of the new tokens `x` `(b, s, hidden)`, rotated:
    /// `(b, heads, s, head_dim)` each.
    fn project(&self, x: &Tensor, step: &ForwardStep<'_>) -> Result<[Tensor; 3]> {
        let shape = self.shape;
        let (q_norm, k_norm) = match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let projected = self.qkv_proj.forward(x, step.row_mode)?;
        let q = self.split_heads(&projected[0], shape.n_heads, q_norm)?;
        let k = self.split_heads(&projected[1], shape.n_kv_heads, k_norm)?;
        let v = self.split_heads(&projected[2], shape.n_kv_heads, None)?;
        let q = kvpress_core::RotaryEmbedding::apply(&q, &step.cos, &step.sin)?;
        let k = kvpress_core::RotaryEmbedding::apply(&k, &step.cos, &step.sin)?;
        Ok([q, k, v])
    }

    /// The output projection of attention outputs `(b, n_heads, s, head_dim)`.
    fn project_output(&self, attended: &Tensor, step: &ForwardStep<'_>) -> Result<Tensor> {
        let (b, _, s, _) = attended.dims4()?;
        let output =
            attended
                .transpose(1, 2)?
                .reshape((b, s, self.shape.n_heads * self.shape.head_dim))?;
        self.o_proj.forward_rows(&output, step.row_mode)
    }

    /// Attention of the new tokens `x` (normalised hidden states, `(b, s, hidden)`): appends their
    /// keys/values to `cache`, attends, calls the hook, and applies the output projection.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        step: &ForwardStep<'_>,
        layer_idx: usize,
        cache: &mut dyn LayerCache,
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Tensor> {
        let [q, k, v] = self.project(x, step)?;
        cache.append(&k, &v)?;
        let want_weights = hook
            .as_ref()
            .is_some_and(|h| h.wants_attention_weights(layer_idx, step.phase));
        let attention = cache.attend(&q, want_weights)?;
        if let Some(hook) = hook {
            let mut context = LayerContext {
                layer_idx,
                n_layers: step.n_layers,
                phase: step.phase,
                position_offset: step.position_offset,
                shape: self.shape,
                hidden_states: x,
                queries: &q,
                keys: &k,
                values: &v,
                attention_weights: attention.weights.as_ref(),
                rotary: step.rotary,
                projections: self,
                cache,
            };
            hook.after_attention(&mut context)?;
        }
        self.project_output(&attention.output, step)
    }

    /// Attention of the new tokens of several independent sequences: row `i` of `x`
    /// `(n, s, hidden)` is appended to `caches[i]` and attends over it alone, as a forward of
    /// that sequence alone would.
    pub(crate) fn forward_per_sequence(
        &self,
        x: &Tensor,
        step: &ForwardStep<'_>,
        caches: &mut [&mut dyn LayerCache],
    ) -> Result<Tensor> {
        let [q, k, v] = self.project(x, step)?;
        let mut outputs = Vec::with_capacity(caches.len());
        for (i, cache) in caches.iter_mut().enumerate() {
            cache.append(&k.narrow(0, i, 1)?, &v.narrow(0, i, 1)?)?;
            outputs.push(cache.attend(&q.narrow(0, i, 1)?, false)?.output);
        }
        self.project_output(&Tensor::cat(&outputs, 0)?, step)
    }
}

impl AttentionProjections for Attention {
    fn query_weight(&self) -> kvpress_core::Result<Tensor> {
        self.qkv_proj
            .part_weight(0, candle_core::DType::F32)
            .map_err(core_error)
    }

    fn query_bias(&self) -> kvpress_core::Result<Option<Tensor>> {
        match self.qkv_proj.part_bias(0).map_err(core_error)? {
            Some(b) => Ok(Some(b.to_dtype(candle_core::DType::F32)?)),
            None => Ok(None),
        }
    }

    fn query_norm(&self) -> Option<(Tensor, f64)> {
        self.qk_norm
            .as_ref()
            .map(|(q, _)| (q.clone(), self.rms_norm_eps))
    }

    fn output_weight(&self) -> kvpress_core::Result<Tensor> {
        self.o_proj
            .dense_weight(candle_core::DType::F32)
            .map_err(core_error)
    }
}

fn core_error(e: crate::Error) -> kvpress_core::Error {
    match e {
        crate::Error::Core(e) => e,
        crate::Error::Candle(e) => kvpress_core::Error::Candle(e),
        other => kvpress_core::Error::InvalidArgument(other.to_string()),
    }
}
