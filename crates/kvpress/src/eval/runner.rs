//! Running an evaluation grid: one recorded prefill per sample and setting, every press and
//! ratio applied to it, answers scored with RULER's string match, rows appended to
//! `results.jsonl` as they finish (a rerun skips them).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hooks::{ContextSession, PromptSplit, RecordedPrefill};
use kvpress_core::press::{press_from_value, Press};
use kvpress_core::NoPress;
use models::LoadedModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{task_kind, with_ratio, EvalConfig, Setting, DATASET_ANSWER_TOKENS};
use super::dataset::read_dataset;
use super::report::FULL_CACHE;
use super::{generate, string_match, Sample};
use crate::batch::answer_batch_until;

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
    /// The generated answer (generation stops once it holds every expected value, since
    /// further tokens cannot change the score).
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

/// Where the time of a run went (rows computed by this run only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Seconds of context prefills (one per sample and setting, shared by every press).
    pub prefill_seconds: f64,
    /// Seconds applying presses to recorded prefills.
    pub compression_seconds: f64,
    /// Seconds running questions through compressed caches (before the first answer token).
    pub question_seconds: f64,
    /// Seconds decoding answers.
    pub decoding_seconds: f64,
    /// Answer tokens generated.
    pub answer_tokens: usize,
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
    /// Where the time went so far.
    pub timings: Timings,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Every row of the grid (found from an earlier run or computed now).
    pub rows: Vec<ResultRow>,
    /// Skipped dataset lines (with `--skip-bad`).
    pub warnings: Vec<String>,
    /// Where this run's time went.
    pub timings: Timings,
}

struct Unit {
    task: String,
    context_length: usize,
    sample_idx: usize,
    sample: Sample,
    /// Answer tokens to generate at most.
    max_new_tokens: usize,
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
                    max_new_tokens: config.max_new_tokens.unwrap_or(kind.answer_tokens()),
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
                max_new_tokens: config.max_new_tokens.unwrap_or(DATASET_ANSWER_TOKENS),
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

/// Largest f32 copy of a model's quantized weights the runner keeps (4 bytes per weight).
const DENSE_WEIGHTS_LIMIT: usize = 2 << 30;

/// One press of the grid at all its ratios (or the full cache at ratio 0).
struct PressGroup {
    name: String,
    ratios: Vec<f64>,
    /// The press's config (its ratio is set per ratio).
    config: Value,
    /// The press at the first ratio; compressing sets the ratios.
    press: Box<dyn Press>,
}

impl PressGroup {
    /// Compressed sessions of the recorded context, one per ratio of `ratios`. Presses that
    /// need attention weights (which a record does not keep) prefill again, once per ratio.
    fn compress(
        &self,
        model: &LoadedModel,
        recorded: &RecordedPrefill,
        context_ids: &[u32],
        ratios: &[f64],
    ) -> Result<Vec<ContextSession>> {
        if !self.press.needs_attention_weights() {
            let compressed =
                recorded.compress_at_ratios(&model.model, self.press.as_ref(), ratios, &[])?;
            return Ok(compressed.into_iter().map(|(session, _)| session).collect());
        }
        ratios
            .iter()
            .map(|&ratio| {
                let press = press_from_value(with_ratio(&self.config, ratio)?)?;
                Ok(ContextSession::compress(&model.model, context_ids, press.as_ref(), &[])?.0)
            })
            .collect()
    }
}

/// The full cache, then every press of `config` with the config's ratios.
fn press_groups(config: &EvalConfig) -> Result<Vec<PressGroup>> {
    let no_press: Box<dyn Press> = Box::new(NoPress::default());
    let full = PressGroup {
        name: FULL_CACHE.to_string(),
        ratios: vec![0.0],
        config: serde_json::to_value(&no_press)?,
        press: no_press,
    };
    let presses = config.presses.iter().map(|p| {
        let ratio = config.compression_ratios.first().copied().unwrap_or(0.0);
        Ok(PressGroup {
            name: p.name.clone(),
            ratios: config.compression_ratios.clone(),
            config: p.config.clone(),
            press: press_from_value(with_ratio(&p.config, ratio)?)?,
        })
    });
    std::iter::once(Ok(full)).chain(presses).collect()
}

/// Rows of this grid (`units` × settings × questions × presses and ratios) already in `done`.
fn found_rows(
    units: &[Unit],
    config: &EvalConfig,
    groups: &[PressGroup],
    done: &HashSet<String>,
) -> usize {
    let mut found = 0;
    for unit in units {
        for &setting in &config.settings {
            for question in 0..unit.sample.questions.len() {
                for group in groups {
                    for &ratio in &group.ratios {
                        let row = ResultRow {
                            task: unit.task.clone(),
                            setting: setting_name(setting).to_string(),
                            context_length: unit.context_length,
                            sample: unit.sample_idx,
                            question,
                            press: group.name.clone(),
                            compression_ratio: ratio,
                            score: 0.0,
                            answer: String::new(),
                            context_tokens: 0,
                        };
                        found += usize::from(done.contains(&row.key()));
                    }
                }
            }
        }
    }
    found
}

/// The results file in an output folder.
pub const RESULTS_FILE: &str = "results.jsonl";

/// Every row in `out_dir/results.jsonl` (none when it does not exist). A last line cut short
/// (a run killed while writing it) is ignored; any other malformed line is an error.
pub fn read_results(out_dir: &Path) -> Result<Vec<ResultRow>> {
    let path = out_dir.join(RESULTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a result row", path.display(), i + 1))
        })
        .collect()
}

/// Cuts a last line without its newline (a run killed while writing it) off
/// `out_dir/results.jsonl`, so that appended rows start on a line of their own; returns whether
/// it did. Call it before starting workers, never while one runs.
pub fn repair_results(out_dir: &Path) -> Result<bool> {
    let path = out_dir.join(RESULTS_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(false);
    }
    let complete = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(complete as u64))
        .with_context(|| format!("cannot repair {}", path.display()))?;
    Ok(true)
}

/// Which part of the grid a run computes: samples `index`, `index + count`, ... (several
/// processes, one per shard, share the cores better than one process's threads on small
/// products; they append to the same results file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, in `0..count`.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
}

impl Shard {
    /// The whole grid.
    pub const WHOLE: Self = Self { index: 0, count: 1 };
}

/// Runs the grid of `config` on `model`, appending rows to `out_dir/results.jsonl` (rows already
/// there are skipped) and reporting progress; returns every row of the grid.
pub fn run(
    model: &LoadedModel,
    config: &EvalConfig,
    out_dir: &Path,
    skip_bad: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput> {
    run_shard(model, config, out_dir, skip_bad, Shard::WHOLE, progress)
}

/// [`run`] for the samples of one `shard`; the rows returned are those in the results file plus
/// this shard's new ones.
pub fn run_shard(
    model: &LoadedModel,
    config: &EvalConfig,
    out_dir: &Path,
    skip_bad: bool,
    shard: Shard,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput> {
    if shard.count == 0 || shard.index >= shard.count {
        bail!(
            "shard {}/{} does not exist: the index must be below the count",
            shard.index,
            shard.count
        );
    }
    config.check()?;
    // Each answer prefills its question: without kept f32 weights, every one of those prefills
    // dequantizes every layer's weights again. The kept weights also let the batched decoding
    // multiply through the sgemm (`Model::forward_sequences`).
    let mut local = model.clone();
    local.model.keep_dequantized_weights(DENSE_WEIGHTS_LIMIT)?;
    let model = &local;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let results_path = out_dir.join(RESULTS_FILE);
    let mut rows = read_results(out_dir)?;
    let done: HashSet<String> = rows.iter().map(ResultRow::key).collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)?;
    let (units, warnings) = units(model, config, skip_bad)?;
    let units: Vec<Unit> = units
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % shard.count == shard.index)
        .map(|(_, unit)| unit)
        .collect();
    let groups = press_groups(config)?;
    let per_question: usize = groups.iter().map(|g| g.ratios.len()).sum();
    let total: usize = units
        .iter()
        .map(|u| u.sample.questions.len() * per_question * config.settings.len())
        .sum();
    let found = found_rows(&units, config, &groups, &done);
    let (start, mut new) = (Instant::now(), 0);
    let mut timings = Timings::default();
    for unit in &units {
        for &setting in &config.settings {
            let aware = setting == Setting::QuestionAware;
            // Question-agnostic: one prefill serves every question; question-aware: one each.
            let question_groups: Vec<Vec<usize>> = if aware {
                (0..unit.sample.questions.len()).map(|q| vec![q]).collect()
            } else {
                vec![(0..unit.sample.questions.len()).collect()]
            };
            for questions in question_groups {
                let base = ResultRow {
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
                let missing = |name: &str, ratio: f64| -> Vec<usize> {
                    questions
                        .iter()
                        .copied()
                        .filter(|&q| {
                            let row = ResultRow {
                                press: name.to_string(),
                                compression_ratio: ratio,
                                question: q,
                                ..base.clone()
                            };
                            !done.contains(&row.key())
                        })
                        .collect()
                };
                let todo: Vec<(&PressGroup, Vec<f64>)> = groups
                    .iter()
                    .map(|g| {
                        let ratios = g.ratios.iter().copied();
                        (
                            g,
                            ratios
                                .filter(|&r| !missing(&g.name, r).is_empty())
                                .collect(),
                        )
                    })
                    .filter(|(_, ratios): &(_, Vec<f64>)| !ratios.is_empty())
                    .collect();
                if todo.is_empty() {
                    continue;
                }
                let first = &unit.sample.questions[questions[0]];
                let context = if aware {
                    format!("{}\n{}", unit.sample.context, first.question)
                } else {
                    unit.sample.context.clone()
                };
                let context_ids = PromptSplit::context_ids(model, &context)?;
                let recorded = RecordedPrefill::record(&model.model, &context_ids)?;
                timings.prefill_seconds += recorded.prefill_seconds();
                // Every press configuration still to answer, compressed from the one prefill.
                let mut configs: Vec<(&PressGroup, f64, ContextSession)> = Vec::new();
                for (group, ratios) in todo {
                    let compression_start = Instant::now();
                    let sessions = group.compress(model, &recorded, &context_ids, &ratios)?;
                    timings.compression_seconds += compression_start.elapsed().as_secs_f64();
                    configs.extend(
                        sessions
                            .into_iter()
                            .zip(ratios)
                            .map(|(session, ratio)| (group, ratio, session)),
                    );
                }
                drop(recorded);
                for &q in &questions {
                    let question = &unit.sample.questions[q];
                    let ids =
                        question_ids(model, &question.question, &question.answer_prefix, aware)?;
                    let (answering, mut sessions): (Vec<(&PressGroup, f64)>, Vec<_>) = configs
                        .iter_mut()
                        .filter(|(group, ratio, _)| missing(&group.name, *ratio).contains(&q))
                        .map(|(group, ratio, session)| ((*group, *ratio), session))
                        .unzip();
                    if sessions.is_empty() {
                        continue;
                    }
                    // All configurations answer together; each answer stops once it holds every
                    // expected value, since no further token can change its score.
                    let batch = answer_batch_until(
                        model,
                        &mut sessions,
                        &vec![ids; answering.len()],
                        unit.max_new_tokens,
                        &mut |_, tokens| {
                            !question.answers.is_empty()
                                && model
                                    .tokenizer
                                    .decode(tokens, true)
                                    .is_ok_and(|text| string_match(&text, &question.answers) == 1.0)
                        },
                    )?;
                    timings.question_seconds += batch.question_time.as_secs_f64();
                    timings.decoding_seconds += batch.decode_time.as_secs_f64();
                    for ((group, ratio), output) in answering.into_iter().zip(batch.answers) {
                        timings.answer_tokens += output.tokens.len();
                        let answer = model.tokenizer.decode(&output.tokens, true)?;
                        let row = ResultRow {
                            question: q,
                            press: group.name.clone(),
                            compression_ratio: ratio,
                            score: string_match(&answer, &question.answers),
                            answer,
                            context_tokens: context_ids.len(),
                            ..base.clone()
                        };
                        // One write per row: shards running at once append whole lines.
                        let line = format!("{}\n", serde_json::to_string(&row)?);
                        file.write_all(line.as_bytes())?;
                        rows.push(row);
                        let elapsed = start.elapsed().as_secs_f64();
                        new += 1;
                        progress(Progress {
                            done: found + new,
                            total,
                            elapsed_seconds: elapsed,
                            eta_seconds: elapsed / new as f64
                                * total.saturating_sub(found + new) as f64,
                            timings,
                        });
                    }
                }
            }
        }
    }
    Ok(RunOutput {
        rows,
        warnings,
        timings,
    })
}
