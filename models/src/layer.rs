//! One pre-norm decoder block: `h += attn(norm(h)); h += mlp(norm(h))`.

use candle_core::Tensor;
use kvpress_core::{AttentionHook, LayerCache};

use crate::attention::Attention;
use crate::forward::ForwardStep;
use crate::linear::{Linear, RowMode};
use crate::projection_group::ProjectionGroup;
use crate::Result;

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    /// The gate and up projections, in that order.
    pub gate_up_proj: ProjectionGroup,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, mode: RowMode) -> Result<Tensor> {
        let projected = self.gate_up_proj.forward(x, mode)?;
        let hidden = match kvpress_kernels::silu_mul(&projected[0], &projected[1])? {
            Some(hidden) => hidden,
            None => (candle_nn::ops::silu(&projected[0])? * &projected[1])?,
        };
        self.down_proj.forward_rows(&hidden, mode)
    }
}

/// A decoder layer.
#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    pub attention_norm: Tensor,
    pub attention: Attention,
    pub mlp_norm: Tensor,
    pub mlp: Mlp,
    pub rms_norm_eps: f32,
}

impl DecoderLayer {
    /// The layer over `hidden` `(b, s, hidden)`, appending to `cache` and calling `hook`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        step: &ForwardStep<'_>,
        layer_idx: usize,
        cache: &mut dyn LayerCache,
        hook: Option<&mut (dyn AttentionHook + '_)>,
    ) -> Result<Tensor> {
        self.block(hidden, step, |normed| {
            self.attention.forward(normed, step, layer_idx, cache, hook)
        })
    }

    /// The layer over the new tokens of several independent sequences: row `i` of `hidden`
    /// `(n, s, hidden)` uses `caches[i]` alone.
    pub fn forward_per_sequence(
        &self,
        hidden: &Tensor,
        step: &ForwardStep<'_>,
        caches: &mut [&mut dyn LayerCache],
    ) -> Result<Tensor> {
        self.block(hidden, step, |normed| {
            self.attention.forward_per_sequence(normed, step, caches)
        })
    }

    /// `h += attend(norm(h)); h += mlp(norm(h))`.
    fn block(
        &self,
        hidden: &Tensor,
        step: &ForwardStep<'_>,
        attend: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let normed = candle_nn::ops::rms_norm(hidden, &self.attention_norm, self.rms_norm_eps)?;
        let hidden = (hidden + attend(&normed)?)?;
        let normed = candle_nn::ops::rms_norm(&hidden, &self.mlp_norm, self.rms_norm_eps)?;
        Ok((&hidden + self.mlp.forward(&normed, step.row_mode)?)?)
    }
}
