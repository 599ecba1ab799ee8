//! The [`Scorer`] trait and the scorer-plus-allocator press built from it.

use candle_core::Tensor;

use crate::press::{press_name, BudgetAllocator, Compression, LayerPosition, Press, PressInput};
use crate::{Error, Result};

/// Scores every cached token of every KV head: higher means keep.
pub trait Scorer: std::fmt::Debug + Send + Sync {
    /// Scores `(batch, n_kv_heads, n_tokens)` in f32 for the tokens of `input.keys`.
    /// `compression_ratio` is the ratio the scores will be used at (a few methods, like
    /// StreamingLLM, depend on it).
    fn score(&self, input: &PressInput<'_>, compression_ratio: f64) -> Result<Tensor>;

    /// Whether [`Self::score`] depends on its `compression_ratio`. Scorers that return `false`
    /// are scored once when one layer is compressed at several ratios
    /// ([`crate::Press::compress_at_ratios`]). The default, `true`, is always correct.
    fn scores_depend_on_ratio(&self) -> bool {
        true
    }
}

/// The scorer of `inner`, the press a wrapper named `press` drives (AdaKV, DMS, ...), or an
/// error naming what is needed.
pub fn inner_scorer<'a>(press: &str, inner: &'a dyn Press) -> Result<&'a dyn Scorer> {
    inner.scorer().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{press} needs a scoring press inside (snapkv, expected_attention, knorm, ...); \
             `{}` does not score tokens",
            press_name(inner)
        ))
    })
}

/// Scores `input` with `scorer` once per distinct need: once for every nonzero ratio of
/// `compression_ratios` when the scores do not depend on the ratio, else once per ratio. Ratio
/// 0 gets `None` (nothing is scored, everything is kept, as in kvpress). Scores are checked to
/// be `(batch, n_kv_heads, n_tokens)`.
pub fn scores_at_ratios(
    scorer: &dyn Scorer,
    input: &PressInput<'_>,
    compression_ratios: &[f64],
) -> Result<Vec<Option<Tensor>>> {
    let expected = (input.batch()?, input.shape.n_kv_heads, input.n_tokens()?);
    let checked = |scores: Tensor| {
        if scores.dims3().ok() == Some(expected) {
            Ok(scores)
        } else {
            Err(Error::Shape(format!(
                "a scorer returned scores {:?}, expected (batch, n_kv_heads, n_tokens) = \
                 {expected:?}",
                scores.dims()
            )))
        }
    };
    let mut shared: Option<Tensor> = None;
    compression_ratios
        .iter()
        .map(|&ratio| {
            if ratio == 0.0 {
                return Ok(None);
            }
            if scorer.scores_depend_on_ratio() {
                return checked(scorer.score(input, ratio)?).map(Some);
            }
            if shared.is_none() {
                shared = Some(checked(scorer.score(input, ratio)?)?);
            }
            Ok(shared.clone())
        })
        .collect()
}

/// The common press: score with `scorer`, then let `allocator` choose what each head keeps.
/// At ratio 0 nothing is scored and everything is kept, as in kvpress.
pub fn score_and_allocate(
    scorer: &dyn Scorer,
    allocator: &dyn BudgetAllocator,
    input: &PressInput<'_>,
    compression_ratio: f64,
) -> Result<Compression> {
    let mut compressions =
        score_and_allocate_at_ratios(scorer, allocator, input, &[compression_ratio])?;
    Ok(compressions.remove(0))
}

/// [`score_and_allocate`] at each of `compression_ratios`, scoring once when the scorer allows
/// ([`Scorer::scores_depend_on_ratio`]).
pub fn score_and_allocate_at_ratios(
    scorer: &dyn Scorer,
    allocator: &dyn BudgetAllocator,
    input: &PressInput<'_>,
    compression_ratios: &[f64],
) -> Result<Vec<Compression>> {
    let scores = scores_at_ratios(scorer, input, compression_ratios)?;
    compression_ratios
        .iter()
        .zip(scores)
        .map(|(&ratio, scores)| allocate_scores(allocator, input, scores, ratio))
        .collect()
}

/// What `allocator` keeps at `compression_ratio` given `scores` (padding masked out); `None`
/// scores keep everything (ratio 0).
pub fn allocate_scores(
    allocator: &dyn BudgetAllocator,
    input: &PressInput<'_>,
    scores: Option<Tensor>,
    compression_ratio: f64,
) -> Result<Compression> {
    let Some(scores) = scores else {
        return Compression::keep_all(input);
    };
    let layer = LayerPosition {
        layer_idx: input.layer_idx,
        n_layers: input.n_layers,
    };
    let selection = allocator.allocate(
        &input.mask_padding(scores.clone())?,
        compression_ratio,
        layer,
    )?;
    Ok(Compression::select(selection, Some(scores)))
}

/// Checks the context is longer than a window a method needs.
pub fn check_window(press: &str, field: &str, window: usize, n_tokens: usize) -> Result<()> {
    if window < n_tokens {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{press}: {field} = {window} must be smaller than the context ({n_tokens} tokens); \
             use a smaller {field} or a longer context"
        )))
    }
}

/// Implements [`crate::Press`] for a scorer type with a `compression_ratio` field, registered
/// under `$name` and allocating with `$allocator` (an expression of a type implementing
/// [`BudgetAllocator`], evaluated with `self` in scope).
///
/// The type needs an inherent `fn check_parameters(&self) -> Result<()>` for its other
/// parameters. A whole press, registered and buildable by name:
///
/// ```
/// use kvpress_core::press::{press_from_json, PressInput, Scorer};
/// use serde::{Deserialize, Serialize};
///
/// /// Keeps the tokens whose values have the largest norm.
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// #[serde(deny_unknown_fields, default)]
/// struct ValueNorm {
///     compression_ratio: f64,
/// }
///
/// impl ValueNorm {
///     fn check_parameters(&self) -> kvpress_core::Result<()> {
///         Ok(())
///     }
/// }
///
/// impl Scorer for ValueNorm {
///     fn score(&self, input: &PressInput<'_>, _ratio: f64) -> kvpress_core::Result<candle_core::Tensor> {
///         Ok(input.values.sqr()?.sum(candle_core::D::Minus1)?.sqrt()?)
///     }
/// }
///
/// kvpress_core::scorer_press!(ValueNorm, "doc_value_norm");
/// kvpress_core::register_press!("doc_value_norm", "largest value norms", || {
///     Box::new(ValueNorm::default())
/// });
///
/// let press = press_from_json(r#"{"press": "doc_value_norm", "compression_ratio": 0.5}"#)?;
/// assert_eq!(press.compression_ratio(), 0.5);
/// # Ok::<(), kvpress_core::Error>(())
/// ```
#[macro_export]
macro_rules! scorer_press {
    ($type:ty, $name:literal, |$this:ident| $allocator:expr) => {
        #[typetag::serde(name = $name)]
        impl $crate::press::Press for $type {
            fn compression_ratio(&self) -> f64 {
                self.compression_ratio
            }

            fn validate(&self) -> $crate::Result<()> {
                $crate::press::check_compression_ratio($name, self.compression_ratio)?;
                self.check_parameters()
            }

            fn scorer(&self) -> Option<&dyn $crate::press::Scorer> {
                Some(self)
            }

            fn compress_at_ratio(
                &self,
                input: &$crate::press::PressInput<'_>,
                compression_ratio: f64,
            ) -> $crate::Result<$crate::press::Compression> {
                let $this = self;
                $crate::press::score_and_allocate(self, &$allocator, input, compression_ratio)
            }

            fn compress_at_ratios(
                &self,
                input: &$crate::press::PressInput<'_>,
                compression_ratios: &[f64],
            ) -> $crate::Result<Vec<$crate::press::Compression>> {
                let $this = self;
                $crate::press::score_and_allocate_at_ratios(
                    self,
                    &$allocator,
                    input,
                    compression_ratios,
                )
            }
        }
    };
    ($type:ty, $name:literal) => {
        $crate::scorer_press!($type, $name, |_this| $crate::press::UniformAllocator);
    };
}
