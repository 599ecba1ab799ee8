//! Q-Filters ([arXiv:2503.02812](https://arxiv.org/abs/2503.02812)) as kvpress's
//! `QFilterPress` scores with them: one fixed filter per layer and KV head, read from a file.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use kvpress_core::press::{PressInput, Scorer};
use kvpress_core::{Error, Result};
use kvpress_kernels::dot;
use serde::{Deserialize, Serialize};

use crate::file::Q_FILTERS;

/// The Q-Filters press (`qfilter`): token `t` of KV head `h` scores `-(f_h · k_t)`, with `k_t`
/// its post-RoPE key in the cache and `f_h` the layer's filter for that head from
/// `filters_file` (`q_filters`, `(layers, kv_heads, head_dim)`).
///
/// The sign is kvpress's, and the files store filters to match: the Q-Filters authors (their
/// `make_filters.py`, whose outputs kvpress downloads) store `f = -u`, with `u` the first right
/// singular vector of a head's post-RoPE queries oriented so that queries project positively on
/// it; `kvpress calibrate-queries` writes its filters the same way. The score is then `⟨u,
/// k_t⟩`, the paper's estimate of the mean attention logit `E_q⟨q, k_t⟩ ≈ κ⟨u, k_t⟩` (κ > 0):
/// keys pointing where the queries point score high and are kept. No token is always kept.
///
/// `filters_file` is read (and checked: format, checksums, finite values) on the first
/// compression and kept for the process; each compression checks it against the model (layers,
/// heads, head dim, RoPE frequencies). A relative path is read from the current folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QFilter {
    /// Fraction of tokens removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// The statistics file holding `q_filters` (required): written by `kvpress
    /// calibrate-queries`, or kvpress's Hugging Face `QFilters` safetensors file.
    pub filters_file: PathBuf,
}

impl Default for QFilter {
    fn default() -> Self {
        Self {
            compression_ratio: 0.0,
            filters_file: PathBuf::new(),
        }
    }
}

impl QFilter {
    fn check_parameters(&self) -> Result<()> {
        crate::check_file_named("qfilter", "filters_file", &self.filters_file)
    }
}

impl Scorer for QFilter {
    fn scores_depend_on_ratio(&self) -> bool {
        false
    }

    fn score(&self, input: &PressInput<'_>, _compression_ratio: f64) -> Result<Tensor> {
        self.check_parameters()?;
        let file = crate::cache::load(&self.filters_file)?;
        file.check_model(input)?;
        let filters = file.layer_values(Q_FILTERS, "qfilter", input)?;
        let (batch, n_kv_heads, n_tokens, d) = input.keys.dims4()?;
        if filters.len() != n_kv_heads * d {
            return Err(Error::Shape(format!(
                "qfilter: {} filter values for {n_kv_heads} KV heads of dimension {d}",
                filters.len()
            )));
        }
        if n_tokens == 0 || d == 0 {
            return Err(Error::Shape(format!(
                "qfilter: nothing to score ({n_tokens} tokens of dimension {d})"
            )));
        }
        let keys = input
            .keys
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut scores = Vec::with_capacity(batch * n_kv_heads * n_tokens);
        for (row, head_keys) in keys.chunks_exact(n_tokens * d).enumerate() {
            let filter = &filters[(row % n_kv_heads) * d..(row % n_kv_heads + 1) * d];
            scores.extend(head_keys.chunks_exact(d).map(|k| -dot(filter, k)));
        }
        Ok(Tensor::from_vec(
            scores,
            (batch, n_kv_heads, n_tokens),
            input.keys.device(),
        )?)
    }
}

kvpress_core::scorer_press!(QFilter, "qfilter");
kvpress_core::register_press!(
    "qfilter",
    "keeps the keys of largest projection on each head's Q-Filter, the principal direction of \
     its queries (Q-Filters; filters_file from `kvpress calibrate-queries`)",
    || Box::new(QFilter::default())
);
