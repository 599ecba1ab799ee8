//! Evaluation: RULER-style task generators (seeded, offline), RULER's string-match metric, user
//! datasets (JSONL), the grid runner behind `kvpress eval` (one recorded prefill per sample,
//! every press and ratio applied to it, resumable results, Markdown table, SVG plot), and
//! fidelity metrics ([`fidelity`]: KL, top-1 agreement, perplexity ratio, attention-output
//! error per layer). Every fallible function returns this crate's [`Error`].
//!
//! ```
//! use kvpress_eval::{generate, string_match, TaskKind};
//! // Context length in tokens, here counted as words.
//! let count = |text: &str| text.split_whitespace().count();
//! let sample = generate(&TaskKind::niah_single(), 300, 7, 0.5, &count);
//! assert!(count(&sample.context) <= 300);
//! let question = &sample.questions[0];
//! assert_eq!(string_match(&format!("It is {}.", question.answers[0]), &question.answers), 1.0);
//! ```

pub mod config;
pub mod dataset;
mod error;
mod fidelity;
pub mod inspect;
mod metric;
pub mod png;
pub mod report;
pub mod results;
pub mod runner;
mod tasks;
mod words;

pub use config::{EvalConfig, EvalPress, Setting};
pub use error::{Error, IoAction, LineProblem, Result};
pub use fidelity::{fidelity, Fidelity};
pub use metric::string_match;
pub use results::{RatioKey, RowKey};
pub use runner::{
    read_results, repair_results, run, run_shard, Progress, ResultRow, RunOutput, Shard, Timings,
    RESULTS_FILE,
};
pub use tasks::{generate, Haystack, NeedleValue, Question, Sample, TaskKind};
