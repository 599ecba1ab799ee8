//! The evaluation config (`kvpress eval --config EVAL.toml`).

use std::path::{Path, PathBuf};

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoAction, Result};
use crate::report::FULL_CACHE;
use crate::results::RatioKey;
use crate::TaskKind;

/// Whether the question is seen by the press.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// kvpress's default: the context is compressed alone, questions come afterwards.
    QuestionAgnostic,
    /// The question is part of the compressed prefill (window scorers see it).
    QuestionAware,
}

impl Setting {
    /// The setting's name in configs, results and plot names: `question_agnostic` or
    /// `question_aware`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QuestionAgnostic => "question_agnostic",
            Self::QuestionAware => "question_aware",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Context lengths in tokens of the generated tasks (a dataset line keeps its own context).
    #[serde(default)]
    pub context_lengths: Vec<usize>,
    /// Samples per generated task and length (needle depths spread evenly); every dataset line
    /// is one sample of its own.
    #[serde(default)]
    pub samples: usize,
    /// Compression ratios of every press, each in [0, 1) and given once.
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(IoAction::Read, path, e))?;
        let config: Self = toml::from_str(&text).map_err(|error| Error::ConfigFile {
            path: path.to_path_buf(),
            error,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks names and ranges, naming what is valid. What needs the model (whether each
    /// context length holds its task and fits the model's positions) is checked when a run
    /// plans its grid, before any work.
    pub fn check(&self) -> Result<()> {
        self.checked_tasks().map(drop)
    }

    /// [`Self::check`], returning the kinds of `tasks` (in order).
    pub(crate) fn checked_tasks(&self) -> Result<Vec<TaskKind>> {
        let kinds = self
            .tasks
            .iter()
            .map(|task| task_kind(task))
            .collect::<Result<Vec<_>>>()?;
        if self.tasks.is_empty() && self.dataset.is_none() {
            return Err(Error::config(
                "tasks",
                "the eval config names no task and no dataset: list tasks (valid are \
                 niah_single, niah_multikey, ...) or give a dataset",
            ));
        }
        no_duplicates("tasks", &self.tasks)?;
        if self.tasks.is_empty() {
            self.check_dataset_only()?;
        } else {
            self.check_samples()?;
            self.check_context_lengths()?;
        }
        self.check_ratios()?;
        if self.settings.is_empty() {
            return Err(Error::config(
                "settings",
                "settings is empty: give question_agnostic and/or question_aware",
            ));
        }
        no_duplicates("settings", &self.settings)?;
        if self.max_new_tokens == Some(0) {
            return Err(Error::config(
                "max_new_tokens",
                "max_new_tokens = 0 would score empty answers: give at least 1, or leave it out \
                 for each task's own",
            ));
        }
        self.check_presses()?;
        Ok(kinds)
    }

    /// A grid of dataset lines alone sets no context length and no sample count: those shape
    /// generated tasks, while every line is evaluated once, with its own context.
    fn check_dataset_only(&self) -> Result<()> {
        let why = "apply to generated tasks only; every dataset line is evaluated once, with its \
                   own context: remove it (or list tasks)";
        if !self.context_lengths.is_empty() {
            return Err(Error::config(
                "context_lengths",
                format!("context_lengths {why}"),
            ));
        }
        if self.samples != 0 {
            return Err(Error::config("samples", format!("samples {why}")));
        }
        Ok(())
    }

    /// Samples of generated tasks: at least 1, at most [`MAX_SAMPLES`].
    fn check_samples(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::config(
                "samples",
                "samples = 0 (or no `samples`) would run no sample of the tasks: give at least 1",
            ));
        }
        if self.samples > MAX_SAMPLES {
            return Err(Error::config(
                "samples",
                format!(
                    "samples = {} is more than {MAX_SAMPLES} per task and context length (each \
                     sample is answered by every press at every ratio): give at most \
                     {MAX_SAMPLES}",
                    self.samples
                ),
            ));
        }
        Ok(())
    }

    /// Context lengths: some, none 0, none twice.
    fn check_context_lengths(&self) -> Result<()> {
        if self.context_lengths.is_empty() {
            return Err(Error::config(
                "context_lengths",
                "context_lengths is empty: give at least one length in tokens",
            ));
        }
        if self.context_lengths.contains(&0) {
            return Err(Error::config(
                "context_lengths",
                "context length 0 holds no task: give lengths in tokens that hold each task's \
                 instructions and needles (a few hundred at least)",
            ));
        }
        no_duplicates("context_lengths", &self.context_lengths)
    }

    /// Ratios: some, each in [0, 1), no two the same to the thousandth (as rows are keyed).
    fn check_ratios(&self) -> Result<()> {
        if self.compression_ratios.is_empty() {
            return Err(Error::config(
                "compression_ratios",
                "compression_ratios is empty, which would drop every press: give ratios in \
                 [0, 1)",
            ));
        }
        let mut seen: Vec<RatioKey> = Vec::new();
        for &ratio in &self.compression_ratios {
            if !(0.0..1.0).contains(&ratio) {
                return Err(Error::config(
                    "compression_ratios",
                    format!("compression ratio {ratio} is outside [0, 1)"),
                ));
            }
            let key = RatioKey::new(ratio);
            if seen.contains(&key) {
                return Err(Error::config(
                    "compression_ratios",
                    format!(
                        "compression ratio {ratio} is given twice (rows are keyed by the ratio \
                         to the thousandth, {key}): give each ratio once"
                    ),
                ));
            }
            seen.push(key);
        }
        Ok(())
    }

    /// Presses: named once each (not as the full cache), without a ratio of their own, and
    /// runnable by the grid at every ratio.
    fn check_presses(&self) -> Result<()> {
        let mut names: Vec<&str> = Vec::new();
        for press in &self.presses {
            if press.name.trim().is_empty() || press.name == FULL_CACHE {
                return Err(Error::config(
                    "presses",
                    format!(
                        "a press cannot be named `{}`: give each press a name of its own \
                         (`{FULL_CACHE}` names the uncompressed reference)",
                        press.name
                    ),
                ));
            }
            if let Some(bad) = press
                .name
                .chars()
                .find(|&c| !(c.is_alphanumeric() || PRESS_NAME_PUNCTUATION.contains(c)))
            {
                return Err(Error::config(
                    "presses",
                    format!(
                        "the press name {:?} holds {bad:?}: names are written into table.md and \
                         the plots, so they may hold letters, digits, spaces and \
                         {PRESS_NAME_PUNCTUATION:?} only",
                        press.name
                    ),
                ));
            }
            if names.contains(&press.name.as_str()) {
                return Err(Error::DuplicatePress {
                    name: press.name.clone(),
                });
            }
            names.push(&press.name);
            // A press the grid cannot run at all: that is the reason to give, before any field.
            if let Ok(bare) = kvpress_core::press::press_from_value(press.config.clone()) {
                kvpress_hooks::check_press(kvpress_hooks::FrontEnd::Eval, bare.as_ref()).map_err(
                    |error| Error::InvalidPress {
                        press: press.name.clone(),
                        ratio: self.compression_ratios[0],
                        error: Box::new(error.into()),
                    },
                )?;
            }
            if let Some(field) = ratio_field(&press.config, "config") {
                return Err(Error::PressSetsRatio {
                    press: press.name.clone(),
                    field,
                });
            }
            for &ratio in &self.compression_ratios {
                check_press(press, ratio)?;
            }
        }
        Ok(())
    }
}

/// The most samples per task and context length a grid may ask for: 10,000 samples of one cell
/// are hours of answers per press and ratio already; more is a typo, and generating them alone
/// would take minutes before any answer.
pub const MAX_SAMPLES: usize = 10_000;

/// The characters a press name may hold besides letters and digits (none of them means anything
/// in Markdown tables, SVG or file names).
const PRESS_NAME_PUNCTUATION: &str = " _-.@()+,=";

/// An [`Error::InvalidConfig`] of `field` if `values` holds one value twice.
fn no_duplicates<T: PartialEq + fmt::Debug>(field: &'static str, values: &[T]) -> Result<()> {
    for (i, value) in values.iter().enumerate() {
        if values[..i].contains(value) {
            return Err(Error::config(
                field,
                format!("{field} lists {value:?} twice: give each once"),
            ));
        }
    }
    Ok(())
}

/// The field of the press config `node` (a JSON object) that holds the ratio the grid sets: the
/// one its press names ([`kvpress_core::Press::ratio_field`]: `compression_ratio`, or e.g.
/// DuoAttention's `head_compression_ratio`), `compression_ratio` for a node naming no known press.
pub(crate) fn ratio_key(node: &serde_json::Map<String, Value>) -> &'static str {
    node.get("press")
        .and_then(Value::as_str)
        .and_then(kvpress_core::press::find_press)
        .map_or("compression_ratio", |r| (r.example)().ratio_field())
}

/// Whether `key` of the press config `node` holds a ratio the grid sets ([`ratio_key`], or
/// `compression_ratio` wherever it stands).
pub(crate) fn is_ratio_key(node: &serde_json::Map<String, Value>, key: &str) -> bool {
    key == "compression_ratio" || key == ratio_key(node)
}

/// Where `config` (found at `path`) or a press nested in it sets its ratio ([`is_ratio_key`]).
fn ratio_field(config: &Value, path: &str) -> Option<String> {
    match config {
        Value::Object(map) => map.iter().find_map(|(key, value)| {
            let here = format!("{path}.{key}");
            if is_ratio_key(map, key) {
                Some(here)
            } else {
                ratio_field(value, &here)
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| ratio_field(item, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Whether the grid can build and run `press` at `ratio`.
fn check_press(press: &EvalPress, ratio: f64) -> Result<()> {
    let config = with_ratio(&press.config, ratio)?;
    let invalid = |error: Error| Error::InvalidPress {
        press: press.name.clone(),
        ratio,
        error: Box::new(error),
    };
    let eval = kvpress_hooks::FrontEnd::Eval;
    let built = kvpress_core::press::press_from_value(config).map_err(|error| {
        // A press that takes no ratio (a wrapper without `inner`) may be one the grid refuses
        // anyway: then that is the reason to give.
        match kvpress_core::press::press_from_value(press.config.clone()) {
            Ok(bare) => kvpress_hooks::check_press(eval, bare.as_ref())
                .err()
                .map_or_else(|| invalid(error.into()), |e| invalid(e.into())),
            Err(_) => invalid(error.into()),
        }
    })?;
    kvpress_hooks::check_press(eval, built.as_ref()).map_err(|e| invalid(e.into()))
}

/// The task a name stands for ([`TaskKind::NAMES`]).
pub fn task_kind(name: &str) -> Result<TaskKind> {
    name.parse()
}

/// `config` with the ratio set on the innermost press (wrappers name their `inner`), in the
/// field that press names (`kvpress_core::Press::ratio_field`: `compression_ratio`, or e.g.
/// DuoAttention's `head_compression_ratio`).
pub fn with_ratio(config: &Value, ratio: f64) -> Result<Value> {
    let mut config = config.clone();
    let mut node = &mut config;
    while node.get("inner").is_some_and(Value::is_object) {
        node = node.get_mut("inner").expect("checked");
    }
    match node.as_object_mut() {
        Some(map) => {
            map.insert(ratio_key(map).to_string(), Value::from(ratio));
            Ok(config)
        }
        None => Err(Error::config(
            "presses",
            format!("a press config must be a table, found {config}"),
        )),
    }
}
