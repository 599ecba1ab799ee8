//! Fidelity of a compressed cache beyond task accuracy: continue a text from the compressed
//! cache and from the full cache (teacher forcing the same tokens) and compare the next-token
//! distributions and every layer's attention output.

use candle_core::{DType, Tensor};
use kvpress_core::{AttentionHook, ForwardPhase, LayerContext, NoPress, Press};
use kvpress_hooks::{ContextSession, RecordedPrefill};
use kvpress_models::{KvStorage, LogitsFor, Model};
use serde::Serialize;

use crate::error::{Error, Result};

/// How closely a compressed cache follows the full one over a continuation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fidelity {
    /// `KL(full ‖ compressed)` of the next-token distribution at each continuation token (nats).
    pub kl_per_token: Vec<f64>,
    /// Mean of `kl_per_token`.
    pub mean_kl: f64,
    /// Fraction of positions where both caches predict the same most likely token.
    pub top1_agreement: f64,
    /// Perplexity of the continuation with the full cache.
    pub perplexity_full: f64,
    /// Perplexity of the continuation with the compressed cache.
    pub perplexity_compressed: f64,
    /// `perplexity_compressed / perplexity_full`.
    pub perplexity_ratio: f64,
    /// Per layer: `‖o_compressed - o_full‖ / ‖o_full‖` of the attention outputs of the
    /// continuation's queries (each run's own queries: errors of earlier layers carry over).
    pub attention_error_per_layer: Vec<f64>,
}

/// Records the attention output of every layer during decode-phase forwards.
#[derive(Debug, Default)]
struct AttentionOutputs {
    per_layer: Vec<Option<Tensor>>,
}

impl AttentionHook for AttentionOutputs {
    fn after_attention(&mut self, context: &mut LayerContext<'_>) -> kvpress_core::Result<()> {
        if context.phase == ForwardPhase::Decode {
            let output = context.cache.attend(context.queries, false)?.output;
            if self.per_layer.len() <= context.layer_idx {
                self.per_layer.resize(context.layer_idx + 1, None);
            }
            self.per_layer[context.layer_idx] = Some(output);
        }
        Ok(())
    }
}

/// Log-softmax of one row of logits.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&x| x as f64 - log_sum).collect()
}

/// What a continuation produced: logits of the last context token and of every continuation
/// token, and each layer's attention output.
struct Continuation {
    logits: Vec<Vec<f32>>,
    attention: Vec<Option<Tensor>>,
}

/// Continues `session`'s context with the teacher-forced `continuation`.
fn continue_from(
    model: &Model,
    mut session: ContextSession,
    continuation: &[u32],
) -> Result<Continuation> {
    let mut recorder = AttentionOutputs::default();
    let input = Tensor::new(continuation, model.device())?.unsqueeze(0)?;
    let last = session.last_logits.to_vec1::<f32>()?;
    let logits = model.forward_logits(
        &input,
        session.cache_mut(),
        Some(&mut recorder),
        LogitsFor::AllTokens,
    )?;
    let mut rows = vec![last];
    rows.extend(logits.squeeze(0)?.to_vec2::<f32>()?);
    Ok(Continuation {
        logits: rows,
        attention: recorder.per_layer,
    })
}

/// `‖compressed - full‖ / ‖full‖`.
fn relative_error(full: &Tensor, compressed: &Tensor) -> Result<f64> {
    let diff = (full - compressed)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let norm = full.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}

/// Compresses `context_ids` with `press` and measures how the continuation `continuation_ids`
/// fares with the compressed cache against the full one, stored in f32 (so a narrower
/// `Model::kv_storage` is measured with the press).
pub fn fidelity(
    model: &Model,
    context_ids: &[u32],
    continuation_ids: &[u32],
    press: &dyn Press,
) -> Result<Fidelity> {
    if continuation_ids.is_empty() {
        return Err(Error::EmptyContinuation);
    }
    kvpress_hooks::check_press(kvpress_hooks::FrontEnd::Fidelity, press)?;
    let recorded = RecordedPrefill::record(model, context_ids)?;
    // The reference is the full cache stored in f32, whatever storage the compressed cache
    // uses (`--kv-dtype f16` or `q4` is measured against it too).
    let f32_storage = KvStorage::Float(DType::F32);
    let f32_model;
    let reference = if model.kv_storage() == f32_storage {
        model
    } else {
        let mut copy = model.clone();
        copy.set_kv_storage(f32_storage)?;
        f32_model = copy;
        &f32_model
    };
    // The reference prefill runs in f32 too: a half-precision cache changes the prefill itself
    // (each layer attends over its stored keys), a quantized one does not (it attends over the
    // newest tokens in f32) but is recorded again all the same.
    let reference_prefill = match model.kv_storage() == f32_storage {
        true => None,
        false => Some(RecordedPrefill::record(reference, context_ids)?),
    };
    let (full_session, _) = reference_prefill.as_ref().unwrap_or(&recorded).compress(
        reference,
        &NoPress::default(),
        &[],
    )?;
    // Presses needing attention weights or a reconstruction pass compress a prefill of their
    // own (the recorded prefill keeps neither).
    let (compressed_session, _) =
        if press.describe().needs_attention_weights || press.reconstruction().is_some() {
            ContextSession::compress(model, context_ids, press, &[])?
        } else {
            recorded.compress(model, press, &[])?
        };
    let full_run = continue_from(reference, full_session, continuation_ids)?;
    let compressed_run = continue_from(model, compressed_session, continuation_ids)?;
    let (full, compressed) = (&full_run.logits, &compressed_run.logits);
    // Row i predicts continuation token i; the last row predicts past the continuation.
    let n = continuation_ids.len();
    let mut kl = Vec::with_capacity(n);
    let (mut agree, mut nll_full, mut nll_compressed) = (0usize, 0f64, 0f64);
    for i in 0..n {
        let (p, q) = (log_softmax(&full[i]), log_softmax(&compressed[i]));
        kl.push(
            p.iter()
                .zip(&q)
                .map(|(lp, lq)| lp.exp() * (lp - lq))
                .sum::<f64>()
                .max(0.0),
        );
        agree +=
            usize::from(kvpress_models::argmax(&full[i]) == kvpress_models::argmax(&compressed[i]));
        let token = continuation_ids[i] as usize;
        nll_full -= p[token];
        nll_compressed -= q[token];
    }
    let perplexity_full = (nll_full / n as f64).exp();
    let perplexity_compressed = (nll_compressed / n as f64).exp();
    let attention_error_per_layer = full_run
        .attention
        .iter()
        .zip(&compressed_run.attention)
        .map(|(f, c)| match (f, c) {
            (Some(f), Some(c)) => relative_error(f, c),
            _ => Ok(0.0),
        })
        .collect::<Result<_>>()?;
    Ok(Fidelity {
        mean_kl: kl.iter().sum::<f64>() / n as f64,
        kl_per_token: kl,
        top1_agreement: agree as f64 / n as f64,
        perplexity_full,
        perplexity_compressed,
        perplexity_ratio: perplexity_compressed / perplexity_full,
        attention_error_per_layer,
    })
}
