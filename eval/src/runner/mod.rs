//! Running an evaluation grid: one recorded prefill per sample and setting, every press and
//! ratio applied to it, answers scored with RULER's string match, rows appended to
//! `results.jsonl` as they finish (a rerun skips them).

mod answer;
mod grid;
mod log;

use std::path::Path;
use std::time::Instant;

use kvpress_models::LoadedModel;
use serde::Serialize;

use crate::error::{Error, Result};
pub use crate::results::{read_results, repair_results, ResultRow, RESULTS_FILE};
use crate::EvalConfig;
use answer::Prompt;
use log::ResultsLog;

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
    shard.check()?;
    let kinds = config.checked_tasks()?;
    // Each answer prefills its question: without kept f32 weights, every one of those prefills
    // dequantizes every layer's weights again. The kept weights also let the batched decoding
    // multiply through the sgemm (`Model::forward_sequences`).
    let mut local = model.clone();
    local.model.keep_dequantized_weights(DENSE_WEIGHTS_LIMIT)?;
    let model = &local;
    let mut log = ResultsLog::open(out_dir)?;
    let (units, warnings) = grid::units(model, config, &kinds, skip_bad)?;
    let units = shard.select(units);
    let groups = grid::press_groups(config)?;
    let total = grid::total_rows(&units, config, &groups);
    let found = grid::found_rows(&units, config, &groups, &log);
    let mut tracker = Tracker {
        start: Instant::now(),
        found,
        new: 0,
        total,
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
        warnings,
        timings: tracker.timings,
    })
}

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
