//! The head-wise presses: `adakv` (AdaKV around any scoring press) and `critical_adakv`
//! (CriticalKV's two stages inside AdaKV's per-head budgets).

use candle_core::{DType, Tensor};
use kvpress_core::press::{
    check_compression_ratio, inner_scorer, score_rows, scores_at_ratios, top_k_indices,
    BudgetAllocator, Compression, LayerPosition, Press, PressDescription, PressInput, Selection,
};
use kvpress_core::{Error, LayerCache, Result};
use presses_ops::projected_value_norms;
use serde::{Deserialize, Serialize};

use crate::allocator::{head_budgets, AdaKvAllocator, PyramidBudget, Safeguard};
use crate::FlatLayerCache;

fn default_alpha() -> f64 {
    0.2
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The checks both head-wise presses share: the inner press is valid and scores tokens, and the
/// safeguard is a fraction.
fn validate_head_wise(press: &str, inner: &dyn Press, alpha: f64) -> Result<()> {
    inner.validate()?;
    inner_scorer(press, inner)?;
    if (0.0..=1.0).contains(&alpha) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{press}: alpha_safeguard {alpha} is outside [0, 1]"
        )))
    }
}

/// The inner press's scores at each of `ratios` (`None` at ratio 0, where everything is kept
/// unscored), scored once when the inner scorer allows.
fn inner_scores(
    press: &str,
    inner: &dyn Press,
    input: &PressInput<'_>,
    ratios: &[f64],
) -> Result<Vec<Option<Tensor>>> {
    for &ratio in ratios {
        check_compression_ratio(press, ratio)?;
    }
    scores_at_ratios(inner_scorer(press, inner)?, input, ratios)
}

/// A head-wise press's compressions at each of `ratios`: the inner scores (once when they do
/// not depend on the ratio) allocated by `allocate`; ratio 0 keeps everything.
fn head_wise_at_ratios(
    press: &str,
    inner: &dyn Press,
    input: &PressInput<'_>,
    ratios: &[f64],
    allocate: impl Fn(Tensor, f64) -> Result<Compression>,
) -> Result<Vec<Compression>> {
    let scores = inner_scores(press, inner, input, ratios)?;
    ratios
        .iter()
        .zip(scores)
        .map(|(&ratio, scores)| match scores {
            Some(scores) => allocate(scores, ratio),
            None => Compression::keep_all(input),
        })
        .collect()
}

/// AdaKV: one budget per layer (the inner press's ratio) shared across its KV heads by a
/// global top-k of the inner press's scores; every head keeps at least `alpha_safeguard` of its
/// uniform share. Heads then store different numbers of tokens, in the flattened cache.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaKv {
    /// The scoring press (its ratio is the layer budget).
    pub inner: Box<dyn Press>,
    /// Share of the per-head budget each head keeps whatever the others score, in `[0, 1]`.
    #[serde(default = "default_alpha")]
    pub alpha_safeguard: f64,
    /// The AdaKV paper's allocation instead of kvpress's: per-head caps
    /// `round((1 - alpha) c_h + floor(alpha B))`, with the last `window_size` tokens always kept.
    #[serde(default, skip_serializing_if = "is_default")]
    pub floor_alpha: bool,
    /// Ada-Pyramid: PyramidKV's per-layer budgets with this `beta`, split head-wise.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pyramid_beta: Option<f64>,
    /// Window of last tokens for `floor_alpha` (kept outside the split) and for `pyramid_beta`
    /// (part of the layer budget).
    #[serde(default, skip_serializing_if = "is_default")]
    pub window_size: usize,
}

impl AdaKv {
    /// kvpress's AdaKV around `inner` with the default safeguard 0.2.
    pub fn new(inner: Box<dyn Press>) -> Self {
        Self {
            inner,
            alpha_safeguard: default_alpha(),
            floor_alpha: false,
            pyramid_beta: None,
            window_size: 0,
        }
    }

    /// The allocator these settings describe.
    pub fn allocator(&self) -> AdaKvAllocator {
        AdaKvAllocator {
            alpha_safeguard: self.alpha_safeguard,
            safeguard: if self.floor_alpha {
                Safeguard::FloorAlpha {
                    window_size: self.window_size,
                }
            } else {
                Safeguard::Protect
            },
            pyramid: self.pyramid_beta.map(|beta| PyramidBudget {
                window_size: self.window_size,
                beta,
            }),
        }
    }
}

#[typetag::serde(name = "adakv")]
impl Press for AdaKv {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        validate_head_wise("adakv", self.inner.as_ref(), self.alpha_safeguard)?;
        if let Some(beta) = self.pyramid_beta {
            if beta.is_nan() || beta < 1.0 {
                return Err(Error::InvalidArgument(format!(
                    "adakv: pyramid_beta {beta} must be at least 1"
                )));
            }
        }
        Ok(())
    }

    fn describe(&self) -> PressDescription {
        PressDescription {
            needs_attention_weights: self.inner.describe().needs_attention_weights,
            ..PressDescription::defaults_for(self)
        }
    }

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FlatLayerCache::new()))
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        Ok(self.compress_at_ratios(input, &[ratio])?.remove(0))
    }

    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        head_wise_at_ratios(
            "adakv",
            self.inner.as_ref(),
            input,
            ratios,
            |scores, ratio| self.allocate(input, scores, ratio),
        )
    }
}

impl AdaKv {
    /// What one layer keeps at `ratio` given the inner scores.
    fn allocate(&self, input: &PressInput<'_>, scores: Tensor, ratio: f64) -> Result<Compression> {
        let layer = LayerPosition {
            layer_idx: input.layer_idx,
            n_layers: input.n_layers,
        };
        let selection =
            self.allocator()
                .allocate(&input.mask_padding(scores.clone())?, ratio, layer)?;
        Ok(Compression::select(selection, Some(scores)))
    }
}

fn default_epsilon() -> f64 {
    1e-4
}

fn default_first_stage_ratio() -> f64 {
    0.5
}

/// CriticalAdaKV (kvpress's `CriticalAdaKVPress`): AdaKV's per-head budgets `b_h` from the
/// global top-k of the inner scores (with the safeguard), then inside each head CriticalKV's two
/// stages: its top `floor(b_h * first_stage_ratio)` tokens by the inner scores, the rest of `b_h`
/// by `(s + epsilon) * ‖W_o v‖₁`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalAdaKv {
    /// The scoring press (its ratio is the layer budget).
    pub inner: Box<dyn Press>,
    /// Share of the per-head budget each head keeps, in `[0, 1]`.
    #[serde(default = "default_alpha")]
    pub alpha_safeguard: f64,
    /// Added to the inner scores before the value-norm weighting.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Share of each head's budget chosen by the inner scores alone, in `[0, 1]`.
    #[serde(default = "default_first_stage_ratio")]
    pub first_stage_ratio: f64,
}

impl CriticalAdaKv {
    /// kvpress's defaults around `inner`.
    pub fn new(inner: Box<dyn Press>) -> Self {
        Self {
            inner,
            alpha_safeguard: default_alpha(),
            epsilon: default_epsilon(),
            first_stage_ratio: default_first_stage_ratio(),
        }
    }
}

#[typetag::serde(name = "critical_adakv")]
impl Press for CriticalAdaKv {
    fn compression_ratio(&self) -> f64 {
        self.inner.compression_ratio()
    }

    fn validate(&self) -> Result<()> {
        validate_head_wise("critical_adakv", self.inner.as_ref(), self.alpha_safeguard)?;
        if !(0.0..=1.0).contains(&self.first_stage_ratio) {
            return Err(Error::InvalidArgument(format!(
                "critical_adakv: first_stage_ratio {} is outside [0, 1]",
                self.first_stage_ratio
            )));
        }
        if self.epsilon.is_nan() || self.epsilon < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "critical_adakv: epsilon {} must be at least 0",
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

    fn new_layer_cache(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FlatLayerCache::new()))
    }

    fn compress_at_ratio(&self, input: &PressInput<'_>, ratio: f64) -> Result<Compression> {
        Ok(self.compress_at_ratios(input, &[ratio])?.remove(0))
    }

    fn compress_at_ratios(
        &self,
        input: &PressInput<'_>,
        ratios: &[f64],
    ) -> Result<Vec<Compression>> {
        head_wise_at_ratios(
            "critical_adakv",
            self.inner.as_ref(),
            input,
            ratios,
            |scores, ratio| self.allocate(input, scores, ratio),
        )
    }
}

impl CriticalAdaKv {
    /// What one layer keeps at `ratio` given the inner scores.
    fn allocate(&self, input: &PressInput<'_>, scores: Tensor, ratio: f64) -> Result<Compression> {
        let (rows, batch, n_kv_heads) = score_rows(&input.mask_padding(scores.clone())?)?;
        let n_tokens = rows.first().map_or(0, Vec::len);
        let allocator = AdaKvAllocator::kvpress(self.alpha_safeguard);
        let budget = kvpress_core::press::n_kept(n_tokens, ratio);
        let n_safe = allocator.n_safe(budget);
        let norms = projected_value_norms(input)?.to_dtype(DType::F32)?;
        let (norm_rows, _, _) = score_rows(&norms)?;
        let mut kept = Vec::with_capacity(rows.len());
        for (sequence, sequence_norms) in rows.chunks(n_kv_heads).zip(norm_rows.chunks(n_kv_heads))
        {
            let budgets = head_budgets(sequence, budget, n_safe);
            for ((row, norm), &head_budget) in sequence.iter().zip(sequence_norms).zip(&budgets) {
                kept.push(self.two_stages(row, norm, n_safe, head_budget));
            }
        }
        let selection = Selection::new(kept, batch, n_kv_heads, n_tokens)?;
        Ok(Compression::select(selection, Some(scores)))
    }
}

impl CriticalAdaKv {
    /// One head's kept tokens: safeguard and first stage by the inner scores, then the
    /// value-norm-weighted scores fill the head's budget.
    fn two_stages(&self, scores: &[f32], norms: &[f32], n_safe: usize, budget: usize) -> Vec<u32> {
        let mut scores = scores.to_vec();
        for i in top_k_indices(&scores, n_safe) {
            scores[i as usize] = f32::MAX;
        }
        let first_stage = (budget as f64 * self.first_stage_ratio) as usize;
        for i in top_k_indices(&scores, first_stage) {
            scores[i as usize] = f32::MAX;
        }
        let weighted: Vec<f32> = scores
            .iter()
            .zip(norms)
            .map(|(&s, &n)| (s + self.epsilon as f32) * n)
            .collect();
        top_k_indices(&weighted, budget)
    }
}

kvpress_core::register_press!(
    "adakv",
    "head-wise budgets: a layer's budget shared across heads by the inner press's scores (AdaKV)",
    || Box::new(AdaKv::new(Box::new(kvpress_core::NoPress::default())))
);
kvpress_core::register_press!(
    "critical_adakv",
    "AdaKV budgets with CriticalKV's two-stage selection inside each head (CriticalAdaKV)",
    || Box::new(CriticalAdaKv::new(Box::new(
        kvpress_core::NoPress::default()
    )))
);
