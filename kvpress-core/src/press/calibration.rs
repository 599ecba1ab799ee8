//! Presses whose choice depends on statistics of the model itself, computed once on calibration
//! texts before anything is compressed (DuoAttention's on-the-fly head scores). The runtime
//! (`kvpress_hooks::calibrate`) tokenizes the press's [`ModelCalibration::texts`], runs each
//! through the model and hands the press, per text and per layer, the mean query and key of
//! every head ([`CalibrationSample`]); the press derives what it needs and keeps it.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::rope::RotaryEmbedding;
use crate::Result;

/// One calibration text as the model saw it.
#[derive(Debug, Clone)]
pub struct CalibrationSample {
    /// The text.
    pub text: String,
    /// Its token ids: the tokenizer's BOS, then the text's tokens (as transformers'
    /// `tokenizer(text)` gives them).
    pub ids: Vec<u32>,
    /// Per layer: the mean over the text's tokens of each query head's pre-RoPE query
    /// `(n_heads, head_dim)` and of each KV head's pre-RoPE key `(n_kv_heads, head_dim)`, f32,
    /// as `q_proj` / `k_proj` of the layer's normalised input give them.
    pub layer_means: Vec<(Tensor, Tensor)>,
}

/// Calibration a press needs from the model before it compresses.
pub trait ModelCalibration: Send + Sync {
    /// The calibration texts, in the order the press sums over them.
    fn texts(&self) -> Result<Vec<String>>;

    /// Whether the press already holds its calibration (the runtime then skips it).
    fn is_calibrated(&self) -> bool;

    /// Takes the statistics of every text (`rotary`: the model's rotary tables) and keeps what
    /// the press derives from them.
    fn calibrate(&self, samples: &[CalibrationSample], rotary: &RotaryEmbedding) -> Result<()>;

    /// What the calibration found, by the reference fixtures' field names (written by
    /// `kvpress trace`); empty before [`Self::calibrate`].
    fn notes(&self) -> BTreeMap<String, serde_json::Value>;
}
