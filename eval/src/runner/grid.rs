//! What a grid holds: its samples (generated tasks, then dataset lines) and its presses (the
//! full cache, then every press of the config at every ratio).

use std::collections::HashMap;

use kvpress_core::press::{press_from_value, Press};
use kvpress_core::NoPress;
use kvpress_hooks::{ContextSession, PromptSplit, RecordedPrefill};
use kvpress_models::LoadedModel;
use serde_json::Value;

use super::answer::{question_ids, Prompt};
use super::log::ResultsLog;
use crate::config::{with_ratio, EvalConfig, Setting, DATASET_ANSWER_TOKENS};
use crate::dataset::{read_dataset, SkippedLine};
use crate::error::{Error, LineProblem, Result};
use crate::fingerprint::{canonical_json, sha256, without_ratio, ModelSettings, RunSettings};
use crate::report::FULL_CACHE;
use crate::results::{RatioKey, RowKey};
use crate::{generate, Sample, TaskKind};

/// The task name of dataset lines.
const DATASET_TASK: &str = "dataset";

/// A sample of the grid.
pub(super) struct Unit {
    pub(super) task: String,
    pub(super) context_length: usize,
    pub(super) sample_idx: usize,
    pub(super) sample: Sample,
    /// SHA-256 of the sample (context, questions, answer prefixes, expected values).
    sample_sha256: String,
    /// Answer tokens to generate at most.
    pub(super) max_new_tokens: usize,
}

impl Unit {
    fn new(task: &str, context_length: usize, sample_idx: usize, sample: Sample) -> Result<Self> {
        let sample_sha256 = sha256(&canonical_json(&serde_json::to_value(&sample)?));
        Ok(Self {
            task: task.to_string(),
            context_length,
            sample_idx,
            sample,
            sample_sha256,
            max_new_tokens: 0,
        })
    }

    /// The key of this sample's row for `question` in `setting` with `press` at `ratio`.
    pub(super) fn key(&self, setting: Setting, question: usize, press: &str, ratio: f64) -> RowKey {
        RowKey {
            task: self.task.clone(),
            setting,
            context_length: self.context_length,
            sample: self.sample_idx,
            question,
            press: press.to_string(),
            ratio: RatioKey::new(ratio),
        }
    }

    /// Positions the longest prompt of this sample in any of `settings` needs: context (with
    /// the question when question-aware), question part and answer tokens.
    fn positions(&self, model: &LoadedModel, settings: &[Setting]) -> Result<usize> {
        let mut most = 0;
        for &setting in settings {
            for prompt in Prompt::all(self, setting) {
                let context = PromptSplit::context_ids(model, &prompt.context())?.len();
                for &q in &prompt.questions {
                    let question = question_ids(model, &self.sample.questions[q], prompt.aware())?;
                    most = most.max(context + question.len() + self.max_new_tokens);
                }
            }
        }
        Ok(most)
    }
}

/// The samples of the grid: generated tasks (`kinds`, those of `config.tasks`), then dataset
/// lines; and the dataset lines skipped (with `skip_bad`). Refuses, before any work, context
/// lengths that cannot hold a task ([`Error::ContextTooShort`]) and prompts the model's
/// positions cannot hold ([`Error::ContextTooLong`], or a bad dataset line).
pub(super) fn units(
    model: &LoadedModel,
    config: &EvalConfig,
    kinds: &[TaskKind],
    skip_bad: bool,
) -> Result<(Vec<Unit>, Vec<SkippedLine>)> {
    let max_positions = model.model.config().max_position_embeddings;
    let mut units = Vec::new();
    for (task_idx, (task, kind)) in config.tasks.iter().zip(kinds).enumerate() {
        for &length in &config.context_lengths {
            let cell = Cell {
                task_idx,
                task,
                kind,
                length,
            };
            // Before generating (a huge length would take long): the context alone overflows.
            let cell_units = match cell.too_long_to_generate(model, config) {
                true => Vec::new(),
                false => cell.units(model, config)?,
            };
            if let Some(tokens) = cell.overflow(model, config, &cell_units)? {
                return Err(Error::ContextTooLong {
                    task: task.clone(),
                    context_length: length,
                    tokens,
                    answer_tokens: cell.answer_tokens(config),
                    max_positions,
                    largest_length: cell.largest_fitting_length(model, config)?,
                });
            }
            units.extend(cell_units);
        }
    }
    let Some(path) = &config.dataset else {
        return Ok((units, Vec::new()));
    };
    let mut dataset = read_dataset(path, skip_bad)?;
    for (index, sample) in std::mem::take(&mut dataset.samples) {
        let mut unit = Unit::new(DATASET_TASK, 0, index, sample)?;
        unit.max_new_tokens = config.max_new_tokens.unwrap_or(DATASET_ANSWER_TOKENS);
        let tokens = unit.positions(model, &config.settings)?;
        if tokens > max_positions {
            let problem = LineProblem::TooLong {
                tokens,
                answer_tokens: unit.max_new_tokens,
                max_positions,
            };
            dataset.refuse(path, index, problem, skip_bad)?;
        } else {
            units.push(unit);
        }
    }
    if !units.iter().any(|u| u.task == DATASET_TASK) {
        return Err(Error::EmptyDataset {
            path: path.clone(),
            skipped: dataset.skipped.iter().map(ToString::to_string).collect(),
        });
    }
    Ok((units, dataset.skipped))
}

/// One generated task at one context length: the grid's samples of it.
struct Cell<'c> {
    task_idx: usize,
    task: &'c String,
    kind: &'c TaskKind,
    length: usize,
}

impl Cell<'_> {
    fn answer_tokens(&self, config: &EvalConfig) -> usize {
        config.max_new_tokens.unwrap_or(self.kind.answer_tokens())
    }

    /// The samples of this cell; an [`Error::ContextTooShort`] naming the fewest tokens every
    /// sample needs when the length cannot hold some of them.
    fn units(&self, model: &LoadedModel, config: &EvalConfig) -> Result<Vec<Unit>> {
        self.units_at(model, config, self.length)?
            .map_err(|minimum| Error::ContextTooShort {
                task: self.task.clone(),
                context_length: self.length,
                minimum,
            })
    }

    /// The samples of this cell's task at `length` (seeded as the grid seeds them), or the fewest
    /// tokens some sample needs when `length` is too short.
    fn units_at(
        &self,
        model: &LoadedModel,
        config: &EvalConfig,
        length: usize,
    ) -> Result<std::result::Result<Vec<Unit>, usize>> {
        let count = |text: &str| {
            model
                .tokenizer
                .encode(text, false)
                .map_or(usize::MAX, |ids| ids.len())
        };
        let mut units = Vec::new();
        let mut minimum = None;
        for i in 0..config.samples {
            let seed = config.seed.wrapping_mul(1_000_003)
                ^ ((self.task_idx as u64) << 40)
                ^ ((length as u64) << 16)
                ^ i as u64;
            let depth = (i as f64 + 0.5) / config.samples as f64;
            match generate(self.kind, length, seed, depth, &count) {
                Ok(sample) => {
                    let mut unit = Unit::new(self.task, length, i, sample)?;
                    unit.max_new_tokens = self.answer_tokens(config);
                    units.push(unit);
                }
                Err(Error::ContextTooShort { minimum: m, .. }) => {
                    minimum = Some(minimum.unwrap_or(0).max(m));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(match minimum {
            Some(minimum) => Err(minimum),
            None => Ok(units),
        })
    }

    /// Whether the context length and the answer alone are more than the model's positions (no
    /// sample needs to be generated to know that the cell does not fit).
    fn too_long_to_generate(&self, model: &LoadedModel, config: &EvalConfig) -> bool {
        let max_positions = model.model.config().max_position_embeddings;
        self.length.saturating_add(self.answer_tokens(config)) > max_positions
    }

    /// The positions of the longest prompt of `units` when it is more than the model has.
    fn overflow(
        &self,
        model: &LoadedModel,
        config: &EvalConfig,
        units: &[Unit],
    ) -> Result<Option<usize>> {
        if self.too_long_to_generate(model, config) {
            return Ok(Some(self.length.saturating_add(self.answer_tokens(config))));
        }
        let max_positions = model.model.config().max_position_embeddings;
        let mut most = 0;
        for unit in units {
            most = most.max(unit.positions(model, &config.settings)?);
        }
        Ok((most > max_positions).then_some(most))
    }

    /// The largest context length at which every sample of this cell's task fits the model's
    /// positions (found by bisection, each candidate generated and counted as the grid would);
    /// `None` when even the shortest length a sample can have does not fit.
    fn largest_fitting_length(
        &self,
        model: &LoadedModel,
        config: &EvalConfig,
    ) -> Result<Option<usize>> {
        let max_positions = model.model.config().max_position_embeddings;
        let fits = |length: usize| -> Result<bool> {
            let cell = Cell { length, ..*self };
            if cell.too_long_to_generate(model, config) {
                return Ok(false);
            }
            match cell.units_at(model, config, length)? {
                Ok(units) => Ok(cell.overflow(model, config, &units)?.is_none()),
                Err(_) => Ok(false),
            }
        };
        let (mut low, mut high) = (0, self.length.min(max_positions));
        // Invariant: `high` does not fit; `low` fits or is 0.
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if fits(middle)? {
                low = middle;
            } else {
                high = middle;
            }
        }
        Ok((low > 0).then_some(low))
    }
}

/// One press of the grid at all its ratios (or the full cache at ratio 0).
pub(super) struct PressGroup {
    pub(super) name: String,
    pub(super) ratios: Vec<f64>,
    /// The press's config (its ratio is set per ratio).
    config: Value,
    /// The config of the press built at each ratio of `ratios` (defaults filled in).
    resolved: Vec<Value>,
    /// The press at the first ratio; compressing sets the ratios.
    press: Box<dyn Press>,
}

impl PressGroup {
    /// Compressed sessions of the recorded context, one per ratio of `ratios`. Presses that
    /// need attention weights (which a record does not keep) or a reconstruction pass (KVzip)
    /// prefill again, once per ratio.
    pub(super) fn compress(
        &self,
        model: &LoadedModel,
        recorded: &RecordedPrefill,
        context_ids: &[u32],
        ratios: &[f64],
    ) -> Result<Vec<ContextSession>> {
        let own_prefill =
            self.press.describe().needs_attention_weights || self.press.reconstruction().is_some();
        if !own_prefill {
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
pub(super) fn press_groups(config: &EvalConfig) -> Result<Vec<PressGroup>> {
    let no_press: Box<dyn Press> = Box::new(NoPress::default());
    let full = PressGroup {
        name: FULL_CACHE.to_string(),
        ratios: vec![0.0],
        config: serde_json::to_value(&no_press)?,
        resolved: vec![serde_json::to_value(&no_press)?],
        press: no_press,
    };
    let presses = config.presses.iter().map(|p| {
        let built = config
            .compression_ratios
            .iter()
            .map(|&ratio| Ok(press_from_value(with_ratio(&p.config, ratio)?)?))
            .collect::<Result<Vec<_>>>()?;
        let resolved = built
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let press = built
            .into_iter()
            .next()
            .ok_or_else(|| Error::config("compression_ratios", "compression_ratios is empty"))?;
        Ok(PressGroup {
            name: p.name.clone(),
            ratios: config.compression_ratios.clone(),
            config: p.config.clone(),
            resolved,
            press,
        })
    });
    std::iter::once(Ok(full)).chain(presses).collect()
}

/// What the settings file of a run with `model` records of `config`'s grid: the model's
/// settings, the seed (with generated tasks), the answer length and each press's resolved
/// config.
pub(super) fn run_settings(
    model: &ModelSettings,
    config: &EvalConfig,
    groups: &[PressGroup],
) -> RunSettings {
    let mut settings = RunSettings::new(model);
    if !config.tasks.is_empty() {
        settings.set("seed", config.seed.to_string());
    }
    let answer_tokens = config
        .max_new_tokens
        .map_or_else(|| "each task's own".to_string(), |n| n.to_string());
    settings.set("max_new_tokens", answer_tokens);
    for group in groups.iter().filter(|g| g.name != FULL_CACHE) {
        if let Some(resolved) = group.resolved.first() {
            let press = canonical_json(&without_ratio(resolved));
            settings.set(&format!("press `{}`", group.name), press);
        }
    }
    settings
}

/// The fingerprint of every row of the grid of `units`, by key, for a model whose settings
/// hash to `model_hash`.
pub(super) fn fingerprints(
    units: &[Unit],
    config: &EvalConfig,
    groups: &[PressGroup],
    model_hash: &str,
) -> HashMap<RowKey, String> {
    let mut fingerprints = HashMap::new();
    for unit in units {
        for &setting in &config.settings {
            for question in 0..unit.sample.questions.len() {
                for group in groups {
                    for (&ratio, resolved) in group.ratios.iter().zip(&group.resolved) {
                        let key = unit.key(setting, question, &group.name, ratio);
                        let inputs = serde_json::json!({
                            "model": model_hash,
                            "press": resolved,
                            "ratio": ratio,
                            "task": unit.task,
                            "context_length": unit.context_length,
                            "sample": unit.sample_idx,
                            "sample_sha256": unit.sample_sha256,
                            "question": question,
                            "setting": setting.as_str(),
                            "max_new_tokens": unit.max_new_tokens,
                        });
                        let hash = sha256(&canonical_json(&inputs));
                        fingerprints.insert(key, hash[..FINGERPRINT_HEX].to_string());
                    }
                }
            }
        }
    }
    fingerprints
}

/// Hex digits of a row's fingerprint kept (128 bits).
const FINGERPRINT_HEX: usize = 32;

/// Rows of the grid of `units`.
pub(super) fn total_rows(units: &[Unit], config: &EvalConfig, groups: &[PressGroup]) -> usize {
    let per_question: usize = groups.iter().map(|g| g.ratios.len()).sum();
    units
        .iter()
        .map(|u| u.sample.questions.len() * per_question * config.settings.len())
        .sum()
}

/// Rows of the grid of `units` already in `log`.
pub(super) fn found_rows(
    units: &[Unit],
    config: &EvalConfig,
    groups: &[PressGroup],
    log: &ResultsLog,
) -> usize {
    let mut found = 0;
    for unit in units {
        for &setting in &config.settings {
            for question in 0..unit.sample.questions.len() {
                for group in groups {
                    found += group
                        .ratios
                        .iter()
                        .filter(|&&r| log.is_done(&unit.key(setting, question, &group.name, r)))
                        .count();
                }
            }
        }
    }
    found
}
