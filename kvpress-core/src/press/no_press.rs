//! [`NoPress`]: the full cache, as a press (the reference every evaluation compares against).

use serde::{Deserialize, Serialize};

use crate::press::{Compression, Press, PressDescription, PressInput, RatioControl};
use crate::Result;

/// Keeps every token: the uncompressed cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoPress {}

#[typetag::serde(name = "no_press")]
impl Press for NoPress {
    fn compression_ratio(&self) -> f64 {
        0.0
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Its ratio is 0: a ratio set from outside would not be kept to.
    fn describe(&self) -> PressDescription {
        PressDescription {
            ratio: RatioControl::OwnedByPress,
            ..PressDescription::defaults_for(self)
        }
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, _ratio: f64) -> Result<Compression> {
        Compression::keep_all(input)
    }
}

crate::register_press!("no_press", "keeps every token (the full cache)", || {
    Box::new(NoPress::default())
});
