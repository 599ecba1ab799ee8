//! Calibrating a press on the model before it compresses ([`ModelCalibration`], DuoAttention on
//! the fly): each calibration text is tokenized (its BOS, then its tokens, as transformers'
//! `tokenizer(text)` gives them), run through the model alone, and every layer's mean pre-RoPE
//! query and key per head handed to the press.

use candle_core::{DType, Tensor, D};
use kvpress_core::press::{CalibrationSample, ModelCalibration, Press};
use kvpress_core::rope::RotaryEmbedding;
use kvpress_core::{AttentionHook, LayerContext};
use kvpress_models::Model;

use crate::{Error, Result};

/// Calibrates `press` on `model` if it asks for it and is not calibrated yet; every front end
/// calls it before compressing with a press (presses calibrated on the model refuse to compress
/// without it).
pub fn calibrate(model: &Model, press: &dyn Press) -> Result<()> {
    let Some(calibration) = press.calibration() else {
        return Ok(());
    };
    if calibration.is_calibrated() {
        return Ok(());
    }
    let samples = calibration_samples(model, calibration)?;
    calibration.calibrate(&samples, model.rotary())?;
    Ok(())
}

/// Each of the press's texts with its ids and its layers' mean queries and keys.
fn calibration_samples(
    model: &Model,
    calibration: &dyn ModelCalibration,
) -> Result<Vec<CalibrationSample>> {
    let tokenizer = model.tokenizer().ok_or_else(|| {
        Error::InvalidInput(
            "this press is calibrated on texts, and the model was built without its tokenizer \
             (load it with kvpress_models::load_model)"
                .to_string(),
        )
    })?;
    let max_positions = model.rotary().max_positions();
    calibration
        .texts()?
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let ids = tokenizer.encode_with_bos(&text)?;
            if ids.is_empty() || ids.len() > max_positions {
                return Err(Error::InvalidInput(format!(
                    "calibration text {i} has {} tokens; each must have 1 to {max_positions} \
                     (the model's positions)",
                    ids.len()
                )));
            }
            let layer_means = mean_queries_keys(model, &ids)?;
            Ok(CalibrationSample {
                text,
                ids,
                layer_means,
            })
        })
        .collect()
}

/// Per layer, the mean pre-RoPE query of every query head and key of every KV head over `ids`.
fn mean_queries_keys(model: &Model, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
    let mut recorder = MeanRecorder::default();
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    model.forward(&input, &mut model.new_cache(), Some(&mut recorder))?;
    recorder
        .means
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            Error::InvalidInput("the model skipped a layer's attention while calibrating".into())
        })
}

/// Records each layer's mean pre-RoPE queries and keys.
#[derive(Default)]
struct MeanRecorder {
    means: Vec<Option<(Tensor, Tensor)>>,
}

impl AttentionHook for MeanRecorder {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        let n = context.queries.dim(2)?;
        let (cos, sin) = context
            .rotary
            .tables_for_range(context.position_offset, n, DType::F32)?;
        let mean = |xs: &Tensor| -> kvpress_core::Result<Tensor> {
            // Rotating back by the same angles gives the pre-RoPE vectors.
            let unrotated = RotaryEmbedding::apply(&xs.to_dtype(DType::F32)?, &cos, &sin.neg()?)?;
            Ok(unrotated.mean(D::Minus2)?.squeeze(0)?)
        };
        let means = (mean(context.queries)?, mean(context.keys)?);
        if self.means.len() <= context.layer_idx {
            self.means.resize(context.layer_idx + 1, None);
        }
        self.means[context.layer_idx] = Some(means);
        Ok(())
    }
}
