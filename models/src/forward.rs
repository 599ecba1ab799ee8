//! Per-forward state shared by all layers: rotary tables for the new tokens' positions, phase.

use candle_core::Tensor;
use kvpress_core::{ForwardPhase, RotaryEmbedding};

use crate::linear::RowMode;

/// What every layer of one forward needs to know besides its input.
pub(crate) struct ForwardStep<'a> {
    /// Cosines for the new tokens' positions, `(s, head_dim / 2)`, or `(batch, s, head_dim / 2)`
    /// for sequences at different positions.
    pub cos: Tensor,
    /// Sines, shaped like the cosines.
    pub sin: Tensor,
    /// Position of the first new token (of the first sequence).
    pub position_offset: usize,
    /// Prefill or decode.
    pub phase: ForwardPhase,
    /// Number of layers of the model.
    pub n_layers: usize,
    /// The model's rotary tables.
    pub rotary: &'a RotaryEmbedding,
    /// How the linear layers treat the rows of the input.
    pub row_mode: RowMode,
}
