//! kvpress's `ExpectedAttentionStatsPress`: ExpectedAttention whose query statistics are read
//! from a file of calibrated statistics instead of being computed from the context's queries.

use std::path::PathBuf;

use candle_core::Tensor;
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use presses_expected_attention::ExpectedAttention;
use serde::{Deserialize, Serialize};

use crate::file::{QUERY_COV, QUERY_MEAN};

/// ExpectedAttention with calibrated query statistics (`expected_attention_stats`): each
/// layer's pre-RoPE query mean `(heads, head_dim)` and covariance `(heads, head_dim, head_dim)`
/// come from `stats_file` (`query_mean`, `query_cov`) for every context, as kvpress's
/// `get_query_statistics` override does; they are then rotated by the RoPE matrix averaged over
/// the `n_future_positions` positions after the context (kvpress's `apply_avg_rope`) and score
/// the tokens exactly as [`ExpectedAttention`] does
/// ([`ExpectedAttention::score_from_statistics`]). The first `n_sink` tokens are always kept;
/// the file's own `n_sink` (how its statistics were collected) may differ, as in kvpress with a
/// `stats_folder`.
///
/// `stats_file` is read (and checked: format, checksums, finite values, variances) on the
/// first compression and kept for the process; each compression checks it against the model
/// (layers, heads, head dim, RoPE frequencies). A relative path is read from the current folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectedAttentionStats {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Number of future positions the RoPE rotation is averaged over (at least 1).
    pub n_future_positions: usize,
    /// Number of first tokens always kept (attention sinks); the context must be longer.
    pub n_sink: usize,
    /// Whether the query covariance enters the expected attention (otherwise only the mean).
    pub use_covariance: bool,
    /// Whether scores are rescaled by the L2 norm of the values: `(score + epsilon) * ||v||`.
    pub use_vnorm: bool,
    /// Added to the scores before the value-norm rescaling (non-negative).
    pub epsilon: f64,
    /// The statistics file (required): written by `kvpress calibrate-queries`, or kvpress's
    /// Hugging Face `ExpectedAttentionStats` safetensors file.
    pub stats_file: PathBuf,
}

impl Default for ExpectedAttentionStats {
    fn default() -> Self {
        let defaults = ExpectedAttention::default();
        Self {
            compression_ratio: defaults.compression_ratio,
            n_future_positions: defaults.n_future_positions,
            n_sink: defaults.n_sink,
            use_covariance: defaults.use_covariance,
            use_vnorm: defaults.use_vnorm,
            epsilon: defaults.epsilon,
            stats_file: PathBuf::new(),
        }
    }
}

impl ExpectedAttentionStats {
    /// The ExpectedAttention press with these parameters (it does the scoring).
    pub fn expected_attention(&self) -> ExpectedAttention {
        ExpectedAttention {
            compression_ratio: self.compression_ratio,
            n_future_positions: self.n_future_positions,
            n_sink: self.n_sink,
            use_covariance: self.use_covariance,
            use_vnorm: self.use_vnorm,
            epsilon: self.epsilon,
        }
    }

    fn check_parameters(&self) -> Result<()> {
        if self.n_future_positions == 0 {
            return Err(Error::InvalidArgument(
                "expected_attention_stats: n_future_positions must be at least 1".to_string(),
            ));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "expected_attention_stats: epsilon {} must be finite and non-negative",
                self.epsilon
            )));
        }
        crate::check_file_named("expected_attention_stats", "stats_file", &self.stats_file)
    }
}

impl Scorer for ExpectedAttentionStats {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        self.check_parameters()?;
        let file = crate::cache::load(&self.stats_file)?;
        file.check_model(input)?;
        let name = "expected_attention_stats";
        let batch = input.keys.dim(0)?;
        // kvpress broadcasts the layer's statistics over the batch (`mu.unsqueeze(0)`).
        let mean = file.layer_values(QUERY_MEAN, name, input)?.repeat(batch);
        let covariance = if self.use_covariance {
            Some(file.layer_values(QUERY_COV, name, input)?.repeat(batch))
        } else {
            None
        };
        self.expected_attention()
            .score_from_statistics(input, mean, covariance)
    }
}

kvpress_core::scorer_press!(ExpectedAttentionStats, "expected_attention_stats");
kvpress_core::register_press!(
    "expected_attention_stats",
    "ExpectedAttention with the query mean and covariance calibrated on other texts (stats_file \
     from `kvpress calibrate-queries`) instead of the context's own queries",
    || Box::new(ExpectedAttentionStats::default())
);
