//! How to add a scoring method to kvpress-rs from your own crate: this crate defines
//! `value_norm`, a press that keeps the tokens whose values have the largest L2 norm, and
//! registers it by name. Any binary that links this crate (`use kvpress_example_press as _;`) can then
//! build it from a config such as `{"press": "value_norm", "compression_ratio": 0.5}`.
//!
//! The recipe, in four steps:
//! 1. a serde struct with a `compression_ratio` field and the method's parameters;
//! 2. `impl Scorer`: scores `(batch, n_kv_heads, n_tokens)`, higher = keep;
//! 3. `kvpress_core::scorer_press!` makes it a `Press` (uniform top-k per head, typetag name);
//! 4. `kvpress_core::register_press!` lists it (name, description, defaults).
//!
//! ```
//! use kvpress_example_press as _;
//! let press = kvpress_core::press::press_from_json(
//!     r#"{"press": "value_norm", "compression_ratio": 0.5}"#,
//! )?;
//! assert_eq!(press.compression_ratio(), 0.5);
//! # Ok::<(), kvpress_core::Error>(())
//! ```
#![warn(missing_docs)]

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::Result;
use presses_ops as ops;
use serde::{Deserialize, Serialize};

/// Keeps the tokens whose values have the largest L2 norm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueNorm {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl ValueNorm {
    /// Parameters beyond the ratio (none here).
    fn check_parameters(&self) -> Result<()> {
        Ok(())
    }
}

impl Scorer for ValueNorm {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        ops::vector_norms(input.values)
    }
}

kvpress_core::scorer_press!(ValueNorm, "value_norm");
kvpress_core::register_press!(
    "value_norm",
    "keeps the tokens whose values have the largest norm (example plug-in crate)",
    || Box::new(ValueNorm::default())
);
