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
use kvpress_core::cpu::{sgemm, GemmDims, MatMut, MatRef};
use kvpress_core::press::{
    allocate_scores, check_compression_ratio, score_and_allocate, score_rows, scores_at_ratios,
    top_k_indices, Compression, PressInput, Scorer, UniformAllocator,
};
use kvpress_core::{Error, Press, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Upper bound on the elements of the projected values materialised at once.
const MAX_CHUNK_ELEMENTS: usize = 1 << 20;

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

/// kvpress's `vwl1norm`: for every query head `h` and token `t`, the L1 norm over the hidden size
/// of `W_o^(h) v_t` (the head's columns of the output projection applied to the value of its KV
/// head), averaged over each KV head's query heads: `(batch, n_kv_heads, n_tokens)`.
pub fn projected_value_norms(input: &PressInput<'_>) -> Result<Tensor> {
    let (batch, n_kv_heads, n_tokens, head_dim) = input.values.dims4()?;
    let n_heads = input.shape.n_heads;
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::Shape(format!(
            "{n_heads} query heads cannot be grouped over {n_kv_heads} KV heads"
        )));
    }
    let group = n_heads / n_kv_heads;
    let output_weight = input.projections.output_weight()?.to_dtype(DType::F32)?;
    let (hidden, columns) = output_weight.dims2()?;
    if columns != n_heads * head_dim {
        return Err(Error::Shape(format!(
            "the output projection has {columns} input columns, expected n_heads * head_dim = {}",
            n_heads * head_dim
        )));
    }
    // Rows of projected values computed at once (bounded memory).
    let chunk = (MAX_CHUNK_ELEMENTS / (group * hidden).max(1)).max(1);
    let values = input.values.to_dtype(DType::F32)?.contiguous()?;
    let values = values.flatten_all()?.to_vec1::<f32>()?;
    let mut norms = vec![0f32; batch * n_kv_heads * n_tokens];
    let mut projected = vec![0f32; chunk.min(n_tokens) * group * hidden];
    for g in 0..n_kv_heads {
        // (d, G * hidden): W_o^(h)ᵀ of the group's query heads side by side.
        let projection = output_weight
            .narrow(1, g * group * head_dim, group * head_dim)?
            .reshape((hidden, group, head_dim))?
            .permute((2, 1, 0))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for b in 0..batch {
            let head = (b * n_kv_heads + g) * n_tokens;
            for start in (0..n_tokens).step_by(chunk) {
                let len = chunk.min(n_tokens - start);
                let rows = &values[(head + start) * head_dim..(head + start + len) * head_dim];
                let out = &mut projected[..len * group * hidden];
                sgemm(
                    GemmDims {
                        m: len,
                        n: group * hidden,
                        k: head_dim,
                    },
                    1.0,
                    MatRef {
                        data: rows,
                        row_stride: head_dim,
                        transposed: false,
                    },
                    MatRef {
                        data: &projection,
                        row_stride: group * hidden,
                        transposed: false,
                    },
                    0.0,
                    MatMut {
                        data: out,
                        row_stride: group * hidden,
                    },
                );
                norms[head + start..head + start + len]
                    .par_iter_mut()
                    .zip(out.par_chunks_exact(group * hidden))
                    .for_each(|(norm, row)| *norm = l1_norm(row) / group as f32);
            }
        }
    }
    Ok(Tensor::from_vec(
        norms,
        (batch, n_kv_heads, n_tokens),
        input.values.device(),
    )?)
}

/// `sum |x|`, accumulated in 16 lanes so that it vectorises.
fn l1_norm(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, x)| *l += x.abs());
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|x| x.abs()).sum::<f32>()
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

    fn needs_attention_weights(&self) -> bool {
        self.inner.needs_attention_weights()
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
