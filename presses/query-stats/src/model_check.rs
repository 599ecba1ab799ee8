//! A statistics file against the model a press runs in: what a press can see of the model (its
//! layer count, head layout and RoPE frequencies, from the [`PressInput`]) must be what the file
//! was computed for, and each tensor a press reads must have the model's shape.
//!
//! A press does not see the model's files, so the model identity stored in the header is not
//! compared here: a file computed with another model of the same layout and RoPE base is not
//! detected (the identity is in the header, for the record and for front ends that can compare
//! it with `kvpress_models::model_sha256`: [`QueryStatsFile::check_model_sha256`]).

use kvpress_core::PressInput;

use crate::error::StatsFileError;
use crate::file::{ModelShape, QueryStatsFile, ROPE_INV_FREQ};

/// Largest relative difference accepted between the stored and the model's RoPE frequencies
/// (they are computed the same way, in f32: equal unless the base differs).
const ROPE_TOLERANCE: f32 = 1e-5;

/// The attention layout of the model `input` comes from.
pub fn shape_of(input: &PressInput<'_>) -> ModelShape {
    ModelShape {
        n_layers: input.n_layers,
        n_heads: input.shape.n_heads,
        n_kv_heads: input.shape.n_kv_heads,
        head_dim: input.shape.head_dim,
    }
}

impl QueryStatsFile {
    /// Checks the file against the model of `input`: the header's shape (when the file has a
    /// header) and the RoPE frequencies (when it stores them).
    pub fn check_model(&self, input: &PressInput<'_>) -> Result<(), StatsFileError> {
        let model = shape_of(input);
        if let Some(header) = &self.header {
            if header.shape != model {
                return Err(StatsFileError::OtherModel {
                    path: self.path.clone(),
                    message: format!(
                        "it was calibrated on {} ({}), this model has {model}; calibrate this \
                         model with `kvpress calibrate-queries --model ...`",
                        header.model.name, header.shape
                    ),
                });
            }
        }
        if let Some(stored) = self.tensor(ROPE_INV_FREQ) {
            let model_freq = input.rotary.inv_freq();
            let differs = stored.data.len() != model_freq.len()
                || stored
                    .data
                    .iter()
                    .zip(model_freq)
                    .any(|(a, b)| (a - b).abs() > ROPE_TOLERANCE * b.abs());
            if differs {
                return Err(StatsFileError::OtherModel {
                    path: self.path.clone(),
                    message: format!(
                        "its RoPE frequencies ({} pairs, first {:?}) are not this model's ({} \
                         pairs, first {:?}): another RoPE base or head dimension",
                        stored.data.len(),
                        stored.data.get(1),
                        model_freq.len(),
                        model_freq.get(1)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Refuses a file whose header names another model than the one hashed `sha256`
    /// (`kvpress_models::model_sha256`); a file without a header passes.
    pub fn check_model_sha256(&self, sha256: &str) -> Result<(), StatsFileError> {
        match &self.header {
            Some(header) if header.model.sha256 != sha256 => Err(StatsFileError::OtherModel {
                path: self.path.clone(),
                message: format!(
                    "it was calibrated on {} (SHA-256 {}), this model's SHA-256 is {sha256}",
                    header.model.name, header.model.sha256
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The values of tensor `name` for `input`'s layer (the tensor's first index), after
    /// checking that the file holds it (for `press`) with the model's shape.
    pub fn layer_values(
        &self,
        name: &str,
        press: &str,
        input: &PressInput<'_>,
    ) -> Result<&[f32], StatsFileError> {
        let tensor = self.tensor(name).ok_or_else(|| StatsFileError::Missing {
            path: self.path.clone(),
            tensor: name.to_string(),
            press: press.to_string(),
            holds: self.tensor_names(),
        })?;
        let model = shape_of(input);
        let expected = model.tensor_shape(name).unwrap_or_default();
        if tensor.shape != expected {
            return Err(StatsFileError::Shape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected,
                found: tensor.shape.clone(),
                why: format!("this model has {model}"),
            });
        }
        let per_layer: usize = expected.iter().skip(1).product();
        let start = input.layer_idx * per_layer;
        tensor
            .data
            .get(start..start + per_layer)
            .ok_or_else(|| StatsFileError::Shape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.clone(),
                found: tensor.shape.clone(),
                why: format!(
                    "layer {} of a model of {} layers",
                    input.layer_idx, input.n_layers
                ),
            })
    }
}
