//! [`PerLayer`]: a compression ratio for each layer.

use kvpress_core::press::{
    check_compression_ratio, Compression, Press, PressDescription, PressInput, RatioControl, Scorer,
};
use kvpress_core::{Error, LayerCache, Result};
use serde::{Deserialize, Serialize};

/// Runs `inner` with the ratio of each layer taken from `compression_ratios` (one per layer).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerLayer {
    /// The press whose ratio is set per layer.
    pub inner: Box<dyn Press>,
    /// One ratio per layer, each in `[0, 1)`.
    pub compression_ratios: Vec<f64>,
}

#[typetag::serde(name = "per_layer")]
impl Press for PerLayer {
    fn compression_ratio(&self) -> f64 {
        if self.compression_ratios.is_empty() {
            return 0.0;
        }
        self.compression_ratios.iter().sum::<f64>() / self.compression_ratios.len() as f64
    }

    fn validate(&self) -> Result<()> {
        self.inner.validate()?;
        if self.compression_ratios.is_empty() {
            return Err(Error::InvalidArgument(
                "per_layer: compression_ratios is empty; give one ratio per layer".to_string(),
            ));
        }
        self.compression_ratios
            .iter()
            .try_for_each(|&r| check_compression_ratio("per_layer", r))
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        self.inner.new_layer_cache()
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        self.inner.scorer()
    }

    fn compress(&self, input: &PressInput<'_>) -> Result<Compression> {
        if self.compression_ratios.len() != input.n_layers {
            return Err(Error::InvalidArgument(format!(
                "per_layer: the model has {} layers but compression_ratios has {} entries",
                input.n_layers,
                self.compression_ratios.len()
            )));
        }
        self.inner
            .compress_at_ratio(input, self.compression_ratios[input.layer_idx])
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            ratio: RatioControl::OwnedByPress,
            compresses_prefill: self.compression_ratios.iter().any(|&r| r > 0.0),
            ..self.inner.describe()
        }
    }

    fn compress_at_ratio(&self, _input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Err(Error::Unsupported(
            "per_layer sets each layer's ratio itself; it cannot take one ratio".to_string(),
        ))
    }
}

kvpress_core::register_press!(
    "per_layer",
    "runs a press with one compression ratio per layer",
    || Box::new(PerLayer {
        inner: Box::new(kvpress_core::NoPress::default()),
        compression_ratios: vec![0.0],
    })
);
