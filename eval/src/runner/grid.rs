//! What a grid holds: its samples (generated tasks, then dataset lines) and its presses (the
//! full cache, then every press of the config at every ratio).

use kvpress_core::press::{press_from_value, Press};
use kvpress_core::NoPress;
use kvpress_hooks::{ContextSession, RecordedPrefill};
use kvpress_models::LoadedModel;
use serde_json::Value;

use super::log::ResultsLog;
use crate::config::{with_ratio, EvalConfig, Setting, DATASET_ANSWER_TOKENS};
use crate::dataset::read_dataset;
use crate::error::Result;
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
    /// Answer tokens to generate at most.
    pub(super) max_new_tokens: usize,
}

impl Unit {
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
}

/// The samples of the grid: generated tasks (`kinds`, those of `config.tasks`), then dataset
/// lines; and the warnings about skipped dataset lines.
pub(super) fn units(
    model: &LoadedModel,
    config: &EvalConfig,
    kinds: &[TaskKind],
    skip_bad: bool,
) -> Result<(Vec<Unit>, Vec<String>)> {
    let count = |text: &str| {
        model
            .tokenizer
            .encode(text, false)
            .map_or(usize::MAX, |ids| ids.len())
    };
    let mut units = Vec::new();
    for (task_idx, (task, kind)) in config.tasks.iter().zip(kinds).enumerate() {
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
                    sample: generate(kind, length, seed, depth, &count),
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
                task: DATASET_TASK.to_string(),
                context_length: 0,
                sample_idx: i,
                sample,
                max_new_tokens: config.max_new_tokens.unwrap_or(DATASET_ANSWER_TOKENS),
            });
        }
    }
    Ok((units, warnings))
}

/// One press of the grid at all its ratios (or the full cache at ratio 0).
pub(super) struct PressGroup {
    pub(super) name: String,
    pub(super) ratios: Vec<f64>,
    /// The press's config (its ratio is set per ratio).
    config: Value,
    /// The press at the first ratio; compressing sets the ratios.
    press: Box<dyn Press>,
}

impl PressGroup {
    /// Compressed sessions of the recorded context, one per ratio of `ratios`. Presses that
    /// need attention weights (which a record does not keep) prefill again, once per ratio.
    pub(super) fn compress(
        &self,
        model: &LoadedModel,
        recorded: &RecordedPrefill,
        context_ids: &[u32],
        ratios: &[f64],
    ) -> Result<Vec<ContextSession>> {
        if !self.press.describe().needs_attention_weights {
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

/// Every row of the grid of `units`: for each setting, question, press and ratio.
fn grid_keys<'a>(
    units: &'a [Unit],
    config: &'a EvalConfig,
    groups: &'a [PressGroup],
) -> impl Iterator<Item = RowKey> + 'a {
    units.iter().flat_map(move |unit| {
        config.settings.iter().flat_map(move |&setting| {
            (0..unit.sample.questions.len()).flat_map(move |question| {
                groups.iter().flat_map(move |group| {
                    let key = move |&ratio: &f64| unit.key(setting, question, &group.name, ratio);
                    group.ratios.iter().map(key)
                })
            })
        })
    })
}

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
    grid_keys(units, config, groups)
        .filter(|key| log.is_done(key))
        .count()
}
