//! Evaluation building blocks: RULER-style task generators (seeded, offline) and RULER's
//! string-match metric.
//!
//! ```
//! use kvpress::eval::{generate, string_match, TaskKind};
//! // Context length in tokens, here counted as words.
//! let count = |text: &str| text.split_whitespace().count();
//! let sample = generate(&TaskKind::niah_single(), 300, 7, 0.5, &count);
//! assert!(count(&sample.context) <= 300);
//! let question = &sample.questions[0];
//! assert_eq!(string_match(&format!("It is {}.", question.answers[0]), &question.answers), 1.0);
//! ```

mod metric;
mod tasks;
mod words;

pub use metric::string_match;
pub use tasks::{generate, Haystack, NeedleValue, Question, Sample, TaskKind};
