//! CriticalKV ([arXiv:2502.03805](https://arxiv.org/abs/2502.03805)), as kvpress's
//! `CriticalKVPress` computes it: a two-stage selection around any scoring press. The first stage
//! keeps each head's `first_stage_ratio` share of the budget by the inner press's scores; the
//! second stage ranks the rest by the inner scores weighted with the L1 norm of the values
//! projected by the output projection, `(s + epsilon) * ||W_o v||_1`.
//!
//! ```
//! use presses_criticalkv::CriticalKv;
//! use presses_snapkv::SnapKv;
//! let press = CriticalKv::new(Box::new(SnapKv { compression_ratio: 0.5, ..SnapKv::default() }));
//! assert_eq!(kvpress_core::Press::compression_ratio(&press), 0.5);
//! assert_eq!(press.first_stage_ratio, 0.5);
//! ```
#![warn(missing_docs)]

use candle_core::{DType, Tensor};
use kvpress_core::press::{
    allocate_scores, check_compression_ratio, score_and_allocate, score_rows, scores_at_ratios,
    top_k_indices, Compression, PressDescription, PressInput, Scorer, UniformAllocator,
};
use kvpress_core::{Error, Press, Result};
use serde::{Deserialize, Serialize};

pub use presses_ops::projected_value_norms;

/// The CriticalKV press: a scoring press (`inner`) refined by the output-projected value norm.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalKv {
    /// The scoring press whose scores both stages use; its compression ratio is CriticalKV's.
    pub inner: Box<dyn Press>,
    /// Added to the inner scores before the value-norm weighting (non-negative).
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Share of the kept tokens chosen by the inner scores alone, in `[0, 1]`.
    #[serde(default = "default_first_stage_ratio")]
    pub first_stage_ratio: f64,
}

fn default_epsilon() -> f64 {
    1e-4
}

fn default_first_stage_ratio() -> f64 {
    0.5
}

impl CriticalKv {
    /// CriticalKV around `inner` with kvpress's defaults (`epsilon` 1e-4, `first_stage_ratio`
    /// 0.5).
    pub fn new(inner: Box<dyn Press>) -> Self {
        Self {
            inner,
            epsilon: default_epsilon(),
            first_stage_ratio: default_first_stage_ratio(),
        }
    }

    fn inner_scorer(&self) -> Result<&dyn Scorer> {
        self.inner.scorer().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "criticalkv: the inner press `{}` does not score tokens; criticalkv needs a \
                 scorer press (snapkv, expected_attention, ...) as `inner`",
                press_name(self.inner.as_ref())
            ))
        })
    }
}

/// The config name of a press (its `"press"` tag).
fn press_name(press: &dyn Press) -> String {
    serde_json::to_value(press)
        .ok()
        .and_then(|v| v["press"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{press:?}"))
}

/// Tokens each head keeps in the first stage: `floor((1 - ratio) * T * first_stage_ratio)`, at
/// least 1 when `first_stage_ratio > 0` and the ratio is below 1 (kvpress's `selection_budget`).
pub fn first_stage_budget(
    n_tokens: usize,
    compression_ratio: f64,
    first_stage_ratio: f64,
) -> usize {
    let budget = ((1.0 - compression_ratio) * n_tokens as f64 * first_stage_ratio) as usize;
    let budget = if first_stage_ratio > 0.0 {
        if compression_ratio < 1.0 {
            budget.max(1)
        } else {
            0
        }
    } else {
        budget
    };
    budget.min(n_tokens)
}

impl CriticalKv {
    /// The two-stage scores at `compression_ratio`: the top `first_stage_budget` tokens of the
    /// inner scores first (as `f32::MAX`), then `(inner + epsilon) * ‖W_o v‖₁` for the rest.
    fn two_stage_scores(
        &self,
        inner: Tensor,
        value_norms: &Tensor,
        input: &PressInput<'_>,
        compression_ratio: f64,
    ) -> Result<Tensor> {
        let scores = inner.to_dtype(DType::F32)?;
        let n_tokens = input.n_tokens()?;
        let budget = first_stage_budget(n_tokens, compression_ratio, self.first_stage_ratio);
        let (first_stage, _, _) = score_rows(&scores)?;
        let weighted = ((scores + self.epsilon)? * value_norms)?;
        let (mut rows, batch, n_kv_heads) = score_rows(&weighted)?;
        for (row, inner) in rows.iter_mut().zip(&first_stage) {
            for i in top_k_indices(inner, budget) {
                row[i as usize] = f32::MAX;
            }
        }
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_vec(
            flat,
            (batch, n_kv_heads, n_tokens),
            input.keys.device(),
        )?)
    }
}

impl Scorer for CriticalKv {
    fn score(&self, input: &PressInput<'_>, compression_ratio: f64) -> Result<Tensor> {
        let inner = self.inner_scorer()?.score(input, compression_ratio)?;
        self.two_stage_scores(
            inner,
            &projected_value_norms(input)?,
            input,
            compression_ratio,
        )
    }
}

#[typetag::serde(name = "criticalkv")]
impl Press for CriticalKv {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        self.inner_scorer()?;
        self.inner.validate()?;
        check_compression_ratio("criticalkv", self.compression_ratio())?;
        if !(0.0..=1.0).contains(&self.first_stage_ratio) {
            return Err(Error::InvalidArgument(format!(
                "criticalkv: first_stage_ratio {} is outside [0, 1] (the share of the kept tokens \
                 chosen by the inner scores alone)",
                self.first_stage_ratio
            )));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "criticalkv: epsilon {} must be finite and non-negative",
                self.epsilon
            )));
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self.inner.describe().needs_attention_weights,
            ..PressDescription::defaults_for(self)
        }
    }

    fn scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }

    fn compress_at_ratio(
        &self,
        input: &PressInput<'_>,
        compression_ratio: f64,
    ) -> Result<Compression> {
        score_and_allocate(self, &UniformAllocator, input, compression_ratio)
    }

    /// The inner scores (once, when they do not depend on the ratio) and the value norms are
    /// shared by all ratios; only the two stages run per ratio.
    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        compression_ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        let inner = scores_at_ratios(self.inner_scorer()?, input, compression_ratios)?;
        let mut value_norms: Option<Tensor> = None;
        compression_ratios
            .iter()
            .zip(inner)
            .map(|(&ratio, inner)| {
                let scores = match inner {
                    None => None,
                    Some(inner) => {
                        let norms = match &value_norms {
                            Some(norms) => norms.clone(),
                            None => value_norms.insert(projected_value_norms(input)?).clone(),
                        };
                        Some(self.two_stage_scores(inner, &norms, input, ratio)?)
                    }
                };
                allocate_scores(&UniformAllocator, input, scores, ratio)
            })
            .collect()
    }
}

kvpress_core::register_press!(
    "criticalkv",
    "two-stage selection around a scoring press, weighted by the output-projected value norm \
     (CriticalKV)",
    || Box::new(CriticalKv::new(Box::new(presses_snapkv::SnapKv::default())))
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stage_budget_floors_like_kvpress() {
        assert_eq!(first_stage_budget(256, 0.5, 0.5), 64);
        assert_eq!(first_stage_budget(256, 0.75, 0.5), 32);
        assert_eq!(first_stage_budget(5, 0.5, 0.5), 1);
        assert_eq!(first_stage_budget(3, 0.9, 0.1), 1);
        assert_eq!(first_stage_budget(100, 0.5, 0.0), 0);
        assert_eq!(first_stage_budget(100, 0.0, 1.0), 100);
        assert_eq!(first_stage_budget(100, 1.0, 0.5), 0);
    }
}
