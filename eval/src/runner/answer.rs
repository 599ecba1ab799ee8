//! Answering the questions of one prefill: record the context once, compress it with every
//! press configuration still to answer, and answer each question with all of them in one batch.

use std::time::Instant;

use kvpress_hooks::batch::answer_batch_until;
use kvpress_hooks::{ContextSession, PromptSplit, RecordedPrefill};
use kvpress_models::LoadedModel;

use super::grid::{PressGroup, Unit};
use super::log::ResultsLog;
use super::Tracker;
use crate::config::Setting;
use crate::error::Result;
use crate::results::{ResultRow, RowKey};
use crate::{string_match, Question};

/// One prefill of the grid: a sample's context in a setting, and the questions answered from
/// it.
pub(super) struct Prompt<'u> {
    unit: &'u Unit,
    setting: Setting,
    /// Indices of the sample's questions.
    pub(super) questions: Vec<usize>,
}

impl<'u> Prompt<'u> {
    /// The prefills of `unit` in `setting`. Question-agnostic: one prefill serves every
    /// question; question-aware: one each, the question compressed with the context.
    pub(super) fn all(unit: &'u Unit, setting: Setting) -> Vec<Self> {
        let n = unit.sample.questions.len();
        let groups: Vec<Vec<usize>> = if setting == Setting::QuestionAware {
            (0..n).map(|q| vec![q]).collect()
        } else {
            vec![(0..n).collect()]
        };
        groups
            .into_iter()
            .map(|questions| Self {
                unit,
                setting,
                questions,
            })
            .collect()
    }

    /// Whether the question is compressed with the context.
    pub(super) fn aware(&self) -> bool {
        self.setting == Setting::QuestionAware
    }

    fn key(&self, question: usize, press: &str, ratio: f64) -> RowKey {
        self.unit.key(self.setting, question, press, ratio)
    }

    /// Whether the row of `question` with `press` at `ratio` is still to compute.
    fn missing(&self, log: &ResultsLog, question: usize, press: &str, ratio: f64) -> bool {
        !log.is_done(&self.key(question, press, ratio))
    }

    /// The text to prefill: the context, and the first question when question-aware.
    pub(super) fn context(&self) -> String {
        let sample = &self.unit.sample;
        if self.aware() {
            format!(
                "{}\n{}",
                sample.context, sample.questions[self.questions[0]].question
            )
        } else {
            sample.context.clone()
        }
    }

    /// The ratios of each press with a row still to compute for some question.
    fn todo<'g>(
        &self,
        groups: &'g [PressGroup],
        log: &ResultsLog,
    ) -> Vec<(&'g PressGroup, Vec<f64>)> {
        groups
            .iter()
            .map(|group| {
                let ratios = group.ratios.iter().copied().filter(|&ratio| {
                    self.questions
                        .iter()
                        .any(|&q| self.missing(log, q, &group.name, ratio))
                });
                (group, ratios.collect::<Vec<f64>>())
            })
            .filter(|(_, ratios)| !ratios.is_empty())
            .collect()
    }
}

/// A press configuration applied to a prompt's prefill.
struct Compressed<'g> {
    group: &'g PressGroup,
    ratio: f64,
    session: ContextSession,
}

/// Computes the rows of `prompt` missing from `log` and appends them.
pub(super) fn answer_prompt(
    model: &LoadedModel,
    prompt: &Prompt<'_>,
    groups: &[PressGroup],
    log: &mut ResultsLog,
    tracker: &mut Tracker<'_>,
) -> Result<()> {
    let todo = prompt.todo(groups, log);
    if todo.is_empty() {
        return Ok(());
    }
    let context_ids = PromptSplit::context_ids(model, &prompt.context())?;
    let recorded = RecordedPrefill::record(&model.model, &context_ids)?;
    tracker.timings.prefill_seconds += recorded.prefill_seconds();
    // Every press configuration still to answer, compressed from the one prefill.
    let mut configs = Vec::new();
    for (group, ratios) in todo {
        let compression_start = Instant::now();
        let sessions = group.compress(model, &recorded, &context_ids, &ratios)?;
        tracker.timings.compression_seconds += compression_start.elapsed().as_secs_f64();
        configs.extend(
            sessions
                .into_iter()
                .zip(ratios)
                .map(|(session, ratio)| Compressed {
                    group,
                    ratio,
                    session,
                }),
        );
    }
    drop(recorded);
    let context_tokens = context_ids.len();
    for &q in &prompt.questions {
        answer_question(model, prompt, q, context_tokens, &mut configs, log, tracker)?;
    }
    Ok(())
}

/// Answers question `q` of `prompt` with every configuration of `configs` whose row is missing,
/// all together; each answer stops once it holds every expected value, since no further token
/// can change its score.
fn answer_question(
    model: &LoadedModel,
    prompt: &Prompt<'_>,
    q: usize,
    context_tokens: usize,
    configs: &mut [Compressed<'_>],
    log: &mut ResultsLog,
    tracker: &mut Tracker<'_>,
) -> Result<()> {
    let question = &prompt.unit.sample.questions[q];
    let ids = question_ids(model, question, prompt.aware())?;
    let (answering, mut sessions): (Vec<(&PressGroup, f64)>, Vec<&mut ContextSession>) = configs
        .iter_mut()
        .filter(|c| prompt.missing(log, q, &c.group.name, c.ratio))
        .map(|c| ((c.group, c.ratio), &mut c.session))
        .unzip();
    if sessions.is_empty() {
        return Ok(());
    }
    let batch = answer_batch_until(
        model,
        &mut sessions,
        &vec![ids; answering.len()],
        prompt.unit.max_new_tokens,
        &mut |_, tokens| {
            !question.answers.is_empty()
                && model
                    .tokenizer
                    .decode(tokens, true)
                    .is_ok_and(|text| string_match(&text, &question.answers) == 1.0)
        },
    )?;
    tracker.timings.question_seconds += batch.question_time.as_secs_f64();
    tracker.timings.decoding_seconds += batch.decode_time.as_secs_f64();
    for ((group, ratio), output) in answering.into_iter().zip(batch.answers) {
        tracker.timings.answer_tokens += output.tokens.len();
        let answer = model.tokenizer.decode(&output.tokens, true)?;
        let unit = prompt.unit;
        log.append(ResultRow {
            task: unit.task.clone(),
            setting: prompt.setting,
            context_length: unit.context_length,
            sample: unit.sample_idx,
            question: q,
            press: group.name.clone(),
            compression_ratio: ratio,
            score: string_match(&answer, &question.answers),
            answer,
            context_tokens,
            // The log signs the row with this run's fingerprint of its key.
            fingerprint: None,
        })?;
        tracker.row_done();
    }
    Ok(())
}

/// The question part after the chat template's user turn: the question itself (question-
/// agnostic) or nothing (question-aware, where it was compressed with the context), then the end
/// of the user turn, the assistant header and the answer prefix.
pub(super) fn question_ids(
    model: &LoadedModel,
    question: &Question,
    aware: bool,
) -> Result<Vec<u32>> {
    let suffix = PromptSplit::question_suffix(model)?;
    let text = if aware { "" } else { &question.question };
    let prefix = &question.answer_prefix;
    Ok(model
        .tokenizer
        .encode(&format!("{text}{suffix}{prefix}"), false)?)
}
