//! Presses that score with query statistics calibrated once per model, and the calibration
//! they read: kvpress 0.5.5's `qfilter` ([`QFilter`], Q-Filters) and
//! `expected_attention_stats` ([`ExpectedAttentionStats`]). kvpress downloads these statistics
//! from the Hugging Face hub; here `kvpress calibrate-queries` computes them from local text
//! ([`calibration`]) into one safetensors file ([`mod@file`]) that both presses read.
//!
//! A press config names its file (`filters_file`, `stats_file`); validating the config only
//! checks that a path is given, so a config stays valid before its file is computed. The file is
//! read on the first compression that uses it ([`cache`]) and checked then, each problem an
//! error naming the file ([`StatsFileError`]): missing or unreadable, not this format, damaged
//! (checksums), non-finite values, shapes that are not the model's, another model's layout or
//! RoPE ([`model_check`]).
//!
//! ```
//! use presses_query_stats::{ExpectedAttentionStats, QFilter};
//! let qfilter = QFilter { compression_ratio: 0.5, filters_file: "stats.safetensors".into() };
//! let stats = ExpectedAttentionStats { stats_file: "stats.safetensors".into(), ..Default::default() };
//! assert_eq!(stats.n_future_positions, 512);
//! # let _ = qfilter;
//! ```
#![warn(missing_docs)]

pub mod cache;
pub mod calibration;
mod error;
mod expected_attention_stats;
pub mod file;
pub mod model_check;
pub mod principal;
mod qfilter;

use std::path::Path;

pub use calibration::{Calibration, CalibrationSource, QueryCollector};
pub use error::StatsFileError;
pub use expected_attention_stats::ExpectedAttentionStats;
pub use file::{ModelIdentity, ModelShape, QueryStatsFile};
pub use qfilter::QFilter;

/// Refuses an empty path for the required file field `field` of `press`.
fn check_file_named(press: &str, field: &str, path: &Path) -> kvpress_core::Result<()> {
    if path.as_os_str().is_empty() {
        return Err(kvpress_core::Error::InvalidArgument(format!(
            "{press}: {field} is required: the path of a query statistics file written by \
             `kvpress calibrate-queries --text FILE --out PATH`"
        )));
    }
    Ok(())
}
