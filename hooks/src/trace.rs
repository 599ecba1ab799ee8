//! `kvpress trace`: what the model computes on a prompt, in the field names of the kvpress
//! reference fixtures, so that parity can be checked number by number.

use std::collections::BTreeMap;

use crate::press_hook::LayerRecord;
use crate::{ContextSession, Error, PromptSplit, Result};
use candle_core::Tensor;
use kvpress_core::press::{NoteScope, SecondPass};
use kvpress_core::Press;
use kvpress_models::{GenerationConfig, LoadedModel, Sampling};
use serde::{Deserialize, Serialize};

/// Layers whose first keys/values and press scores are recorded (first, middle, last of the
/// default model).
pub const RECORDED_LAYERS: [usize; 3] = [0, 15, 29];
/// Number of context tokens whose keys/values are recorded.
pub const RECORDED_TOKENS: usize = 4;
/// Answer length of the fixtures.
pub const MAX_NEW_TOKENS: usize = 24;

/// A prompt file: `{"context": ..., "question": ...}` (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct PromptFile {
    /// Text that is prefilled (and, with a press, compressed).
    pub context: String,
    /// Question asked afterwards.
    pub question: String,
}

/// The full-cache part of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullTrace {
    /// Logits of the last context token.
    pub last_logits: Vec<f32>,
    /// Layer → `[kv_head][token][dim]` post-RoPE keys of the first context tokens.
    pub keys_first4: BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    /// Layer → `[kv_head][token][dim]` values of the first context tokens.
    pub values_first4: BTreeMap<String, Vec<Vec<Vec<f32>>>>,
    /// Greedy answer ids.
    pub answer_ids: Vec<u32>,
    /// Logits of the first answer token (after the last question token).
    pub answer_first_logits: Vec<f32>,
    /// Greedy answer text.
    pub answer_text: String,
}

/// What one press did to the prompt's context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PressTrace {
    /// `[layer][kv_head]` → sorted kept context token indices.
    pub kept: Vec<Vec<Vec<u32>>>,
    /// Layer → `[kv_head][token]` scores of the press, for the recorded layers. Left out when
    /// empty, so that a press whose scores are not per token can report them as a note named
    /// `scores` (`block`: one entry per block iteration, as kvpress's fixtures record them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, Vec<Vec<f32>>>,
    /// Cache length of every layer after compression.
    pub cache_lengths: Vec<usize>,
    /// Greedy answer ids from the compressed cache.
    pub answer_ids: Vec<u32>,
    /// Logits of the first answer token from the compressed cache.
    pub answer_first_logits: Vec<f32>,
    /// Greedy answer text.
    pub answer_text: String,
    /// Bytes the compressed context cache allocates (K and V, all layers), before the question.
    pub kv_bytes: usize,
    /// Bytes the uncompressed context cache allocates.
    pub kv_bytes_full: usize,
    /// What the press reported beside its selection ([`kvpress_core::press::LayerNote`]), by
    /// name: a list over layers, or an object keyed by layer for notes of the recorded layers.
    #[serde(flatten)]
    pub notes: BTreeMap<String, serde_json::Value>,
}

/// Output of `kvpress trace`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    /// Context part of the chat-templated prompt.
    pub context_text: String,
    /// Question part.
    pub question_text: String,
    /// Context token ids.
    pub context_ids: Vec<u32>,
    /// Question token ids.
    pub question_ids: Vec<u32>,
    /// Full-cache results.
    pub full: FullTrace,
    /// Press name → what the press did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub presses: BTreeMap<String, PressTrace>,
}

/// The fixtures' answer from the session's context: the logits of the first answer token, and
/// the greedy answer of at most [`MAX_NEW_TOKENS`] tokens.
fn greedy_answer(
    model: &LoadedModel,
    session: &mut ContextSession,
    split: &PromptSplit,
) -> Result<(Vec<f32>, kvpress_models::GenerationOutput)> {
    let question =
        Tensor::new(split.question_ids.as_slice(), model.model.device())?.unsqueeze(0)?;
    let first_logits = model
        .model
        .forward(&question, session.cache_mut(), None)?
        .squeeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    session.rewind()?;
    let config = GenerationConfig {
        max_new_tokens: MAX_NEW_TOKENS,
        sampling: Sampling::Greedy,
    };
    let answer = session.answer(
        &model.model,
        &split.question_ids,
        model.tokenizer.eos_ids(),
        &config,
        &mut |_| Ok(()),
    )?;
    Ok((first_logits, answer))
}

/// Traces `prompt` on `model`: split, prefill, record, answer greedily; then the same with every
/// press of `presses` (name, press).
pub fn trace(
    model: &LoadedModel,
    prompt: &PromptFile,
    presses: &[(String, Box<dyn Press>)],
) -> Result<Trace> {
    let split = PromptSplit::new(model, &prompt.context, &prompt.question)?;
    let mut session = ContextSession::prefill(&model.model, &split.context_ids, None)?;
    let mut keys_first4 = BTreeMap::new();
    let mut values_first4 = BTreeMap::new();
    for layer_idx in RECORDED_LAYERS
        .into_iter()
        .filter(|&l| l < model.model.config().n_layers)
    {
        let (keys, values) = session
            .cache()
            .layer(layer_idx)
            .and_then(|l| l.keys_values().transpose())
            .ok_or_else(|| Error::InvalidInput("the context left an empty cache".to_string()))??;
        let n = RECORDED_TOKENS.min(keys.dim(2)?);
        keys_first4.insert(layer_idx.to_string(), first_tokens(&keys, n)?);
        values_first4.insert(layer_idx.to_string(), first_tokens(&values, n)?);
    }
    let (answer_first_logits, answer) = greedy_answer(model, &mut session, &split)?;
    let mut press_traces = BTreeMap::new();
    for (name, press) in presses {
        let press_trace = trace_press(model, &split, press.as_ref()).map_err(|e| Error::Press {
            press: name.clone(),
            source: Box::new(e),
        })?;
        press_traces.insert(name.clone(), press_trace);
    }
    Ok(Trace {
        full: FullTrace {
            last_logits: session.last_logits.to_vec1()?,
            keys_first4,
            values_first4,
            answer_text: model.tokenizer.decode(&answer.tokens, true)?,
            answer_ids: answer.tokens,
            answer_first_logits,
        },
        context_text: split.context_text,
        question_text: split.question_text,
        context_ids: split.context_ids,
        question_ids: split.question_ids,
        presses: press_traces,
    })
}

/// Compresses the split prompt's context with `press`, then answers greedily.
pub fn trace_press(
    model: &LoadedModel,
    split: &PromptSplit,
    press: &dyn Press,
) -> Result<PressTrace> {
    if press.describe().needs_question {
        return trace_question_press(model, split, press);
    }
    let (mut session, report) =
        ContextSession::compress(&model.model, &split.context_ids, press, &RECORDED_LAYERS)?;
    let mut trace = press_trace(model, split, &mut session, &report)?;
    let reconstruction = press.reconstruction().map(|s| s.second_pass());
    if let Some(SecondPass::Reconstruct { chunk_size }) = reconstruction {
        // The fixtures' fields of presses that reconstruct the context (KVzip).
        let chunks = crate::reconstruction::reconstruction_chunks(
            &model.model,
            &split.context_ids,
            chunk_size,
        )?;
        let prefix = chunks.first().map_or(0, |c| c.tokens.start);
        let fields = [
            ("prefix_length", serde_json::json!(prefix)),
            (
                "reconstruction_ids",
                serde_json::json!(chunks.iter().map(|c| &c.ids).collect::<Vec<_>>()),
            ),
            (
                "reconstruction_chunks",
                serde_json::json!(chunks.iter().map(|c| c.tokens.len()).collect::<Vec<_>>()),
            ),
        ];
        for (name, value) in fields {
            trace.notes.insert(name.to_string(), value);
        }
    }
    if let Some(calibration) = press.calibration() {
        // The fixtures' fields of presses calibrated on the model (DuoAttention's heads).
        trace.notes.extend(calibration.notes());
    }
    Ok(trace)
}

/// [`trace_press`] for a press that compresses the context for its question (Finch): the
/// question is prefilled with the context and only the chat suffix is asked afterwards. Beside
/// the common fields, the trace has the fixtures' `window_size` (question tokens),
/// `question_ids` (the suffix) and `question_position_start` (where the suffix is fed), and
/// `model_prefill_ids`: the context and question ids the model sees, which are the fixtures'
/// `prefill_ids` without kvpress's delimiter token (its embedding layer drops it).
fn trace_question_press(
    model: &LoadedModel,
    split: &PromptSplit,
    press: &dyn Press,
) -> Result<PressTrace> {
    let (split, question_tokens) = split.question_in_context(model)?;
    let (mut session, report) = ContextSession::compress_with_question(
        &model.model,
        &split.context_ids,
        question_tokens,
        press,
        &RECORDED_LAYERS,
    )?;
    let position = session.cache().seen_tokens();
    let mut trace = press_trace(model, &split, &mut session, &report)?;
    let fields = [
        ("window_size", serde_json::json!(question_tokens)),
        ("question_ids", serde_json::json!(split.question_ids)),
        ("question_position_start", serde_json::json!(position)),
        ("model_prefill_ids", serde_json::json!(split.context_ids)),
    ];
    for (name, value) in fields {
        trace.notes.insert(name.to_string(), value);
    }
    Ok(trace)
}

/// The trace of a compressed `session` of `split`'s context: answer and what `report` says.
fn press_trace(
    model: &LoadedModel,
    split: &PromptSplit,
    session: &mut ContextSession,
    report: &crate::CompressionReport,
) -> Result<PressTrace> {
    let (answer_first_logits, answer) = greedy_answer(model, session, split)?;
    let mut scores = BTreeMap::new();
    for layer in &report.layers {
        if let Some(layer_scores) = &layer.scores {
            scores.insert(layer.layer_idx.to_string(), layer_scores.get(0)?.to_vec2()?);
        }
    }
    let notes = notes_by_name(&report.layers);
    let n_kv_heads = model.model.config().n_kv_heads;
    Ok(PressTrace {
        kept: report
            .layers
            .iter()
            .map(|l| {
                (0..n_kv_heads)
                    .map(|h| l.selection.head(0, h).to_vec())
                    .collect()
            })
            .collect(),
        scores,
        cache_lengths: report.cache_lengths(),
        answer_text: model.tokenizer.decode(&answer.tokens, true)?,
        answer_ids: answer.tokens,
        answer_first_logits,
        kv_bytes: report.kv_bytes,
        kv_bytes_full: report.kv_bytes_full,
        notes,
    })
}

/// The layers' notes by name: [`NoteScope::EveryLayer`] notes as a list over layers (`null` for
/// a layer without the note), the others as an object keyed by layer index.
fn notes_by_name(layers: &[LayerRecord]) -> BTreeMap<String, serde_json::Value> {
    let mut notes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (position, layer) in layers.iter().enumerate() {
        for note in &layer.notes {
            let entry = notes.entry(note.name.to_string());
            match note.scope {
                NoteScope::EveryLayer => {
                    let list = entry.or_insert_with(|| {
                        serde_json::Value::Array(vec![serde_json::Value::Null; layers.len()])
                    });
                    list[position] = note.value.clone();
                }
                NoteScope::RecordedLayers => {
                    let object = entry.or_insert_with(|| serde_json::json!({}));
                    object[layer.layer_idx.to_string()] = note.value.clone();
                }
            }
        }
    }
    notes
}

/// `[kv_head][token][dim]` of the first `n` tokens of batch 0.
fn first_tokens(cached: &Tensor, n: usize) -> Result<Vec<Vec<Vec<f32>>>> {
    Ok(cached
        .get(0)?
        .narrow(1, 0, n)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec3()?)
}
