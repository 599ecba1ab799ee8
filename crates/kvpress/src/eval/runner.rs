//! Running an evaluation grid: one recorded prefill per sample and setting, every press and
//! ratio applied to it, answers scored with RULER's string match, rows appended to
//! `results.jsonl` as they finish (a rerun skips them).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use hooks::{ContextSession, PromptSplit, RecordedPrefill};
use kvpress_core::press::{press_from_value, Press};
use kvpress_core::NoPress;
use models::{GenerationConfig, LoadedModel, Sampling};
use serde::{Deserialize, Serialize};

use super::config::{task_kind, with_ratio, EvalConfig, Setting};
use super::dataset::read_dataset;
use super::report::FULL_CACHE;
use super::{generate, string_match, Sample};

/// One answered question of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Task name (`dataset` for a user dataset).
    pub task: String,
    /// `question_agnostic` or `question_aware`.
    pub setting: String,
    /// Requested context length (0 for dataset lines).
    pub context_length: usize,
    /// Sample index.
    pub sample: usize,
    /// Question index within the sample.
    pub question: usize,
    /// Press name (`full cache` for the uncompressed reference).
    pub press: String,
    /// Compression ratio (0 for the full cache).
    pub compression_ratio: f64,
    /// Fraction of the expected values in the answer.
    pub score: f64,
    /// The generated answer.
    pub answer: String,
    /// Tokens of the compressed prompt part.
    pub context_tokens: usize,
}

impl ResultRow {
    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{:.3}",
            self.task,
            self.setting,
            self.context_length,
            self.sample,
            self.question,
            self.press,
            self.compression_ratio
        )
    }
}

/// Where a run stands, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Rows finished (including those found from an earlier run).
    pub done: usize,
    /// Rows in the grid.
    pub total: usize,
    /// Seconds since this run started.
    pub elapsed_seconds: f64,
    /// Estimated seconds left.
    pub eta_seconds: f64,
}

struct Unit {
    task: String,
    context_length: usize,
    sample_idx: usize,
    sample: Sample,
}

fn setting_name(setting: Setting) -> &'static str {
    match setting {
        Setting::QuestionAgnostic => "question_agnostic",
        Setting::QuestionAware => "question_aware",
    }
}

/// The samples of the grid: generated tasks, then dataset lines.
fn units(
    model: &LoadedModel,
    config: &EvalConfig,
    skip_bad: bool,
) -> Result<(Vec<Unit>, Vec<String>)> {
    let count = |text: &str| {
        model
            .tokenizer
            .encode(text, false)
            .map_or(usize::MAX, |ids| ids.len())
    };
    let mut units = Vec::new();
    for (task_idx, task) in config.tasks.iter().enumerate() {
        let kind = task_kind(task)?;
        for &length in &config.context_lengths {
            for i in 0..config.samples {
                let seed = config.seed.wrapping_mul(1_000_003)
                    ^ ((task_idx as u64) << 40)
                    ^ ((length as u64) << 16)
                    ^ i as u64;
                let depth = (i as f64 + 0.5) / config.samples as f64;
                units.push(Unit {
                    task: task.clone(),
                    context_length: length,
                    sample_idx: i,
                    sample: generate(&kind, length, seed, depth, &count),
                });
            }
        }
    }
    let mut warnings = Vec::new();
    if let Some(path) = &config.dataset {
        let (samples, skipped) = read_dataset(path, skip_bad)?;
        warnings = skipped;
        for (i, sample) in samples.into_iter().enumerate() {
            units.push(Unit {
                task: "dataset".to_string(),
                context_length: 0,
                sample_idx: i,
                sample,
            });
        }
    }
    Ok((units, warnings))
}

/// The question part after the chat template's user turn: the question itself (question-
/// agnostic) or nothing (question-aware, where it was compressed with the context), then the end
/// of the user turn, the assistant header and the answer prefix.
fn question_ids(
    model: &LoadedModel,
    question: &str,
    prefix: &str,
    aware: bool,
) -> Result<Vec<u32>> {
    let suffix = PromptSplit::question_suffix(model)?;
    let question = if aware { "" } else { question };
    Ok(model
        .tokenizer
        .encode(&format!("{question}{suffix}{prefix}"), false)?)
}

/// Runs the grid of `config` on `model`, appending rows to `out_dir/results.jsonl` (rows already
/// there are skipped) and reporting progress; returns every row of the grid.
pub fn run(
    model: &LoadedModel,
    config: &EvalConfig,
    out_dir: &Path,
    skip_bad: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<ResultRow>, Vec<String>)> {
    config.check()?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let results_path = out_dir.join("results.jsonl");
    let mut rows: Vec<ResultRow> = match std::fs::read_to_string(&results_path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{} is not a results file", results_path.display()))?,
        Err(_) => Vec::new(),
    };
    let done: HashSet<String> = rows.iter().map(ResultRow::key).collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)?;
    let (units, warnings) = units(model, config, skip_bad)?;
    let presses: Vec<(String, f64, Box<dyn Press>)> = config
        .presses
        .iter()
        .flat_map(|p| config.compression_ratios.iter().map(move |&r| (p, r)))
        .map(|(p, r)| {
            Ok((
                p.name.clone(),
                r,
                press_from_value(with_ratio(&p.config, r)?)?,
            ))
        })
        .collect::<Result<_>>()?;
    let per_question = 1 + presses.len();
    let total: usize = units
        .iter()
        .map(|u| u.sample.questions.len() * per_question * config.settings.len())
        .sum();
    let (start, done_before) = (Instant::now(), rows.len().min(total));
    let generation = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        sampling: Sampling::Greedy,
    };
    for unit in &units {
        for &setting in &config.settings {
            let aware = setting == Setting::QuestionAware;
            // Question-agnostic: one prefill serves every question; question-aware: one each.
            let groups: Vec<Vec<usize>> = if aware {
                (0..unit.sample.questions.len()).map(|q| vec![q]).collect()
            } else {
                vec![(0..unit.sample.questions.len()).collect()]
            };
            for group in groups {
                let row_base = ResultRow {
                    task: unit.task.clone(),
                    setting: setting_name(setting).to_string(),
                    context_length: unit.context_length,
                    sample: unit.sample_idx,
                    question: 0,
                    press: String::new(),
                    compression_ratio: 0.0,
                    score: 0.0,
                    answer: String::new(),
                    context_tokens: 0,
                };
                let wanted = |press: &str, ratio: f64, q: usize| {
                    let row = ResultRow {
                        press: press.to_string(),
                        compression_ratio: ratio,
                        question: q,
                        ..row_base.clone()
                    };
                    !done.contains(&row.key())
                };
                let missing = group.iter().any(|&q| {
                    wanted(FULL_CACHE, 0.0, q) || presses.iter().any(|(n, r, _)| wanted(n, *r, q))
                });
                if !missing {
                    continue;
                }
                let first = &unit.sample.questions[group[0]];
                let context = if aware {
                    format!("{}\n{}", unit.sample.context, first.question)
                } else {
                    unit.sample.context.clone()
                };
                let context_ids = PromptSplit::context_ids(model, &context)?;
                let recorded = RecordedPrefill::record(&model.model, &context_ids)?;
                let full = NoPress::default();
                let configs = std::iter::once((FULL_CACHE.to_string(), 0.0, &full as &dyn Press))
                    .chain(presses.iter().map(|(n, r, p)| (n.clone(), *r, p.as_ref())));
                for (name, ratio, press) in configs {
                    if !group.iter().any(|&q| wanted(&name, ratio, q)) {
                        continue;
                    }
                    let (mut session, _) = if press.needs_attention_weights() {
                        ContextSession::compress(&model.model, &context_ids, press, &[])?
                    } else {
                        recorded.compress(&model.model, press, &[])?
                    };
                    for &q in &group {
                        if !wanted(&name, ratio, q) {
                            continue;
                        }
                        let question = &unit.sample.questions[q];
                        let ids = question_ids(
                            model,
                            &question.question,
                            &question.answer_prefix,
                            aware,
                        )?;
                        let output = session.answer(
                            &model.model,
                            &ids,
                            model.tokenizer.eos_ids(),
                            &generation,
                            &mut |_| Ok(()),
                        )?;
                        let answer = model.tokenizer.decode(&output.tokens, true)?;
                        let row = ResultRow {
                            question: q,
                            press: name.clone(),
                            compression_ratio: ratio,
                            score: string_match(&answer, &question.answers),
                            answer,
                            context_tokens: context_ids.len(),
                            ..row_base.clone()
                        };
                        writeln!(file, "{}", serde_json::to_string(&row)?)?;
                        file.flush()?;
                        rows.push(row);
                        let elapsed = start.elapsed().as_secs_f64();
                        let new = rows.len() - done_before;
                        progress(Progress {
                            done: rows.len().min(total),
                            total,
                            elapsed_seconds: elapsed,
                            eta_seconds: elapsed / new as f64
                                * total.saturating_sub(rows.len()) as f64,
                        });
                    }
                }
            }
        }
    }
    Ok((rows, warnings))
}
