//! The evaluation config (`kvpress eval --config EVAL.toml`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TaskKind;

/// Whether the question is seen by the press.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// kvpress's default: the context is compressed alone, questions come afterwards.
    QuestionAgnostic,
    /// The question is part of the compressed prefill (window scorers see it).
    QuestionAware,
}

/// A press of the grid: a name and its config (its ratio is set from `compression_ratios`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPress {
    /// Name in the results.
    pub name: String,
    /// Press config, as in a press file (without `compression_ratio`).
    pub config: Value,
}

fn default_settings() -> Vec<Setting> {
    vec![Setting::QuestionAgnostic]
}

/// Answer tokens for dataset questions unless the config sets `max_new_tokens`.
pub const DATASET_ANSWER_TOKENS: usize = 32;

/// What to evaluate: tasks × context lengths × samples × settings × presses × ratios, plus the
/// full cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Generated tasks: niah_single, niah_single_words, niah_single_uuids, niah_multikey,
    /// niah_multivalue, niah_multiquery, variable_tracking, common_words, frequent_words.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// A JSONL file of `{context, question | questions, answer | answers, answer_prefix?}`.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    /// Context lengths in tokens (generated tasks).
    pub context_lengths: Vec<usize>,
    /// Samples per task and length (needle depths spread evenly).
    pub samples: usize,
    /// Compression ratios of every press.
    pub compression_ratios: Vec<f64>,
    /// The presses.
    pub presses: Vec<EvalPress>,
    /// Question-agnostic, question-aware or both.
    #[serde(default = "default_settings")]
    pub settings: Vec<Setting>,
    /// Answer tokens for every question; by default each task's own
    /// ([`super::TaskKind::answer_tokens`]), and [`DATASET_ANSWER_TOKENS`] for dataset lines.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Seed of the generated samples.
    #[serde(default)]
    pub seed: u64,
}

impl EvalConfig {
    /// Reads and checks a TOML config.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid eval config", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks names and ranges, naming what is valid.
    pub fn check(&self) -> Result<()> {
        for task in &self.tasks {
            task_kind(task)?;
        }
        if self.tasks.is_empty() && self.dataset.is_none() {
            bail!("the eval config names no task and no dataset");
        }
        if self.samples == 0 || self.context_lengths.is_empty() {
            bail!("samples and context_lengths must not be empty");
        }
        for &ratio in &self.compression_ratios {
            if !(0.0..1.0).contains(&ratio) {
                bail!("compression ratio {ratio} is outside [0, 1)");
            }
        }
        for press in &self.presses {
            for &ratio in &self.compression_ratios {
                kvpress_core::press::press_from_value(with_ratio(&press.config, ratio)?)
                    .with_context(|| format!("press `{}` at ratio {ratio}", press.name))?;
            }
        }
        Ok(())
    }
}

/// The task a name stands for.
pub fn task_kind(name: &str) -> Result<TaskKind> {
    use super::{Haystack, NeedleValue};
    let single = |value| TaskKind::Niah {
        haystack: Haystack::Noise,
        value,
        n_keys: 1,
        n_values: 1,
        n_queries: 1,
    };
    Ok(match name {
        "niah_single" => TaskKind::niah_single(),
        "niah_single_words" => single(NeedleValue::Words),
        "niah_single_uuids" => single(NeedleValue::Uuids),
        "niah_multikey" => TaskKind::niah_multikey(),
        "niah_multivalue" => TaskKind::niah_multivalue(),
        "niah_multiquery" => TaskKind::niah_multiquery(),
        "variable_tracking" => TaskKind::variable_tracking(),
        "common_words" => TaskKind::CommonWords,
        "frequent_words" => TaskKind::FrequentWords,
        other => bail!(
            "unknown task `{other}`: valid are niah_single, niah_single_words, niah_single_uuids, \
             niah_multikey, niah_multivalue, niah_multiquery, variable_tracking, common_words, \
             frequent_words"
        ),
    })
}

/// `config` with `compression_ratio` set on the innermost press (wrappers name their `inner`).
pub fn with_ratio(config: &Value, ratio: f64) -> Result<Value> {
    let mut config = config.clone();
    let mut node = &mut config;
    while node.get("inner").is_some_and(Value::is_object) {
        node = node.get_mut("inner").expect("checked");
    }
    match node.as_object_mut() {
        Some(map) => {
            map.insert("compression_ratio".to_string(), Value::from(ratio));
            Ok(config)
        }
        None => bail!("a press config must be a table, found {config}"),
    }
}
