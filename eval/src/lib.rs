//! Evaluation: RULER-style task generators (seeded, offline), RULER's string-match metric, user
//! datasets (JSONL), the grid runner behind `kvpress eval` (one recorded prefill per sample,
//! every press and ratio applied to it, results fingerprinted and resumable, Markdown table,
//! SVG plot), and
//! fidelity metrics ([`fidelity`]: KL, top-1 agreement, perplexity ratio, attention-output
//! error per layer). Every fallible function returns this crate's [`Error`].
//!
//! ```
//! use kvpress_eval::{generate, string_match, TaskKind};
//! // Context length in tokens, here counted as words.
//! let count = |text: &str| text.split_whitespace().count();
//! let sample = generate(&TaskKind::niah_single(), 300, 7, 0.5, &count).unwrap();
//! assert!(count(&sample.context) <= 300);
//! let question = &sample.questions[0];
//! assert_eq!(string_match(&format!("It is {}.", question.answers[0]), &question.answers), 1.0);
//! ```

pub mod config;
pub mod dataset;
mod error;
mod fidelity;
pub mod fingerprint;
pub mod inspect;
mod metric;
pub mod png;
pub mod report;
pub mod results;
pub mod runner;
mod tasks;
mod words;

pub use config::{EvalConfig, EvalPress, Setting};
pub use dataset::SkippedLine;
pub use error::{Error, IoAction, LineProblem, Result, SettingChange};
pub use fidelity::{fidelity, Fidelity};
pub use fingerprint::{model_sha256, SETTINGS_FILE};
pub use metric::string_match;
pub use results::{unique_rows, RatioKey, RowKey};
pub use runner::{
    prepare, read_results, repair_results, run, Prepared, Progress, ResultRow, RunOptions,
    RunOutput, Shard, Timings, RESULTS_FILE,
};
pub use tasks::{generate, Haystack, NeedleValue, Question, Sample, TaskKind};
