//! Running an evaluation grid: one recorded prefill per sample and setting, every press and
//! ratio applied to it, answers scored with RULER's string match, rows appended to
//! `results.jsonl` as they finish, each with the fingerprint of what decided it (a rerun skips
//! them, once they are checked to have been made with this run's settings).

mod answer;
mod grid;
mod log;

use std::path::Path;
use std::time::Instant;

use kvpress_models::LoadedModel;
use serde::Serialize;

use crate::dataset::SkippedLine;
use crate::error::{Error, Result};
use crate::fingerprint::{model_sha256, ModelSettings};
pub use crate::results::{read_results, repair_results, ResultRow, RESULTS_FILE};
use crate::EvalConfig;
use answer::Prompt;
use grid::{PressGroup, Unit};
use log::{FolderCheck, ResultsLog};

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
#[derive(Debug)]
pub struct RunOutput {
    /// Every row of the results file, each key once (found from an earlier run or computed
    /// now).
    pub rows: Vec<ResultRow>,
    /// Dataset lines skipped (with `--skip-bad`).
    pub skipped: Vec<SkippedLine>,
    /// Where this run's time went.
    pub timings: Timings,
}

/// How to run a grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Skip malformed dataset lines (listed in the output) instead of stopping.
    pub skip_bad: bool,
    /// Resume from rows without a fingerprint (written before rows had one) as if this run's
    /// settings had made them; without it such rows are refused
    /// ([`Error::UnfingerprintedRows`]).
    pub trust_unfingerprinted: bool,
    /// The part of the grid to compute.
    pub shard: Shard,
    /// SHA-256 of the model's files ([`crate::model_sha256`]) when the caller has it (workers
    /// get their parent's, so a run hashes the model once); `None`: hashed by the run.
    pub model_sha256: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            skip_bad: false,
            trust_unfingerprinted: false,
            shard: Shard::WHOLE,
            model_sha256: None,
        }
    }
}

/// A run of a grid checked and ready ([`prepare`]): what it found, and [`Prepared::run`] to
/// compute the rows still missing.
pub struct Prepared {
    /// Samples of the grid (what shards divide).
    pub samples: usize,
    /// Rows of the grid.
    pub rows: usize,
    /// Rows of the grid already in the output folder.
    pub found: usize,
    /// Dataset lines skipped (with `--skip-bad`).
    pub skipped: Vec<SkippedLine>,
    /// SHA-256 of the model's files.
    pub model_sha256: String,
    /// Seconds spent hashing the model (0 when [`RunOptions::model_sha256`] was given).
    pub hash_seconds: f64,
    shard: Shard,
    units: Vec<Unit>,
    groups: Vec<PressGroup>,
    log: ResultsLog,
}

/// Checks everything about a run of `config` on `model` into `out_dir` that can be checked
/// before any work (the config, each context length against its tasks and the model's
/// positions, dataset lines, the rows already in the folder against this run's settings and
/// fingerprints), records the run's settings in the folder and opens its results file;
/// computes nothing.
pub fn prepare(
    model: &LoadedModel,
    config: &EvalConfig,
    out_dir: &Path,
    options: &RunOptions,
) -> Result<Prepared> {
    options.shard.check()?;
    let kinds = config.checked_tasks()?;
    let hash_start = Instant::now();
    let (model_sha256, hash_seconds) = match &options.model_sha256 {
        Some(sha256) => (sha256.clone(), 0.0),
        None => (
            model_sha256(&model.path)?,
            hash_start.elapsed().as_secs_f64(),
        ),
    };
    let model_settings = ModelSettings::of(model, model_sha256.clone());
    let groups = grid::press_groups(config)?;
    let (units, skipped) = grid::units(model, config, &kinds, options.skip_bad)?;
    let settings = grid::run_settings(&model_settings, config, &groups);
    let check = FolderCheck {
        settings: &settings,
        fingerprints: grid::fingerprints(&units, config, &groups, &model_settings.hash()),
        trust_unfingerprinted: options.trust_unfingerprinted,
    };
    let log = ResultsLog::open(out_dir, check)?;
    Ok(Prepared {
        samples: units.len(),
        rows: grid::total_rows(&units, config, &groups),
        found: grid::found_rows(&units, config, &groups, &log),
        skipped,
        model_sha256,
        hash_seconds,
        shard: options.shard,
        units,
        groups,
        log,
    })
}

/// Runs the grid of `config` (the samples of `options.shard`) on `model`: [`prepare`], then
/// [`Prepared::run`].
pub fn run(
    model: &LoadedModel,
    config: &EvalConfig,
    out_dir: &Path,
    options: &RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput> {
    prepare(model, config, out_dir, options)?.run(model, config, progress)
}

impl Prepared {
    /// The part of the grid this run computes.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Computes this run's shard of the rows still missing on `model` (the one prepared with,
    /// for `config`, the config prepared), appending them to the results file and reporting
    /// progress; returns every row of the results file.
    pub fn run(
        self,
        model: &LoadedModel,
        config: &EvalConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunOutput> {
        let Self {
            shard,
            units,
            groups,
            mut log,
            skipped,
            ..
        } = self;
        let units = shard.select(units);
        // Each answer prefills its question: without kept f32 weights, every one of those
        // prefills dequantizes every layer's weights again. The kept weights also let the
        // batched decoding multiply through the sgemm (`Model::forward_sequences`).
        let mut local = model.clone();
        local.model.keep_dequantized_weights(DENSE_WEIGHTS_LIMIT)?;
        let model = &local;
        let mut tracker = Tracker {
            start: Instant::now(),
            found: grid::found_rows(&units, config, &groups, &log),
            new: 0,
            total: grid::total_rows(&units, config, &groups),
            timings: Timings::default(),
            progress,
        };
        for unit in &units {
            for &setting in &config.settings {
                for prompt in Prompt::all(unit, setting) {
                    answer::answer_prompt(model, &prompt, &groups, &mut log, &mut tracker)?;
                }
            }
        }
        Ok(RunOutput {
            rows: log.into_rows(),
            skipped,
            timings: tracker.timings,
        })
    }
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

    /// An [`Error::InvalidShard`] unless `index < count`.
    fn check(self) -> Result<()> {
        if self.count == 0 || self.index >= self.count {
            return Err(Error::InvalidShard {
                index: self.index,
                count: self.count,
            });
        }
        Ok(())
    }

    /// This shard's items of `all`.
    fn select<T>(self, all: Vec<T>) -> Vec<T> {
        all.into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, item)| item)
            .collect()
    }
}

/// Largest f32 copy of a model's quantized weights the runner keeps (4 bytes per weight).
const DENSE_WEIGHTS_LIMIT: usize = 2 << 30;

/// Counts the rows of a run and reports progress.
struct Tracker<'p> {
    start: Instant,
    /// Rows of the grid found from an earlier run.
    found: usize,
    /// Rows computed by this run.
    new: usize,
    /// Rows of the grid.
    total: usize,
    timings: Timings,
    progress: &'p mut dyn FnMut(Progress),
}

impl Tracker<'_> {
    /// Counts a computed row and reports where the run stands.
    fn row_done(&mut self) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.new += 1;
        let done = self.found + self.new;
        (self.progress)(Progress {
            done,
            total: self.total,
            elapsed_seconds: elapsed,
            eta_seconds: elapsed / self.new as f64 * self.total.saturating_sub(done) as f64,
            timings: self.timings,
        });
    }
}
