//! What the scoring wrappers (`chunk`, `chunkkv`, `entropy_gated_chunkkv`, `block`) share: they
//! take the scores of a scoring press (kvpress requires a `ScorerPress`) and choose the tokens
//! themselves.

use candle_core::Tensor;
use kvpress_core::press::{
    scores_at_ratios, CacheLayout, Compression, Press, PressInput, RatioControl, Scorer, Selection,
};
use kvpress_core::{Error, Result};

/// Checks that `inner` is valid and a scoring press a wrapper can drive: it has a scorer, reads
/// no attention weights, keeps the cached keys, uses the dense layout, runs at any ratio and
/// does not compress while decoding (kvpress's `assert isinstance(press, ScorerPress)`).
pub(crate) fn check_scoring_inner(wrapper: &str, inner: &dyn Press) -> Result<()> {
    inner.validate()?;
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "{wrapper}: inner must be a scoring press (snapkv, keydiff, knorm, ...); {why}"
        )))
    };
    let description = inner.describe();
    if inner.scorer().is_none() {
        return refuse("this one does not score tokens");
    }
    if description.needs_attention_weights {
        return refuse("this one needs attention weights, which the wrapper does not provide");
    }
    if description.rerotates_keys {
        return refuse("this one re-rotates keys");
    }
    if description.cache_layout != CacheLayout::Dense {
        return refuse("this one keeps different numbers of tokens per head");
    }
    if description.ratio != RatioControl::Settable || description.compresses_while_decoding {
        return refuse("this one sets its own ratios or compresses while decoding");
    }
    Ok(())
}

/// The scorer of `inner` (checked by [`check_scoring_inner`]).
pub(crate) fn scorer_of<'a>(wrapper: &str, inner: &'a dyn Press) -> Result<&'a dyn Scorer> {
    inner.scorer().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{wrapper}: inner must be a scoring press (snapkv, keydiff, knorm, ...)"
        ))
    })
}

/// Scores `(batch, n_kv_heads, n_tokens)` as one f32 vector per batch element, each the sum over
/// the KV heads of that element's scores, added head after head (kvpress's `scores.sum(dim=1)`).
pub(crate) fn head_sums(scores: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (batch, n_kv_heads, n_tokens) = scores.dims3()?;
    let rows = scores
        .to_dtype(candle_core::DType::F32)?
        .reshape((batch * n_kv_heads, n_tokens))?
        .to_vec2::<f32>()?;
    Ok(rows
        .chunks(n_kv_heads.max(1))
        .map(|heads| {
            let mut sum = vec![0f32; n_tokens];
            for head in heads {
                sum.iter_mut().zip(head).for_each(|(s, &x)| *s += x);
            }
            sum
        })
        .collect())
}

/// The compressions of a scoring wrapper at each of `ratios`: `inner`'s scores (computed once
/// for all ratios when they do not depend on the ratio), each turned into the wrapper's
/// selection by `select(scores, ratio)`; a ratio that needs no scores keeps everything. The
/// reported scores are the inner scorer's.
pub(crate) fn select_at_ratios(
    wrapper: &str,
    inner: &dyn Press,
    input: &PressInput<'_>,
    ratios: &[f64],
    select: impl Fn(&Tensor, f64) -> Result<Selection>,
) -> Result<Vec<Compression>> {
    let scores = scores_at_ratios(scorer_of(wrapper, inner)?, input, ratios)?;
    ratios
        .iter()
        .zip(scores)
        .map(|(&ratio, scores)| match scores {
            None => Compression::keep_all(input),
            Some(scores) => Ok(Compression::select(select(&scores, ratio)?, Some(scores))),
        })
        .collect()
}
