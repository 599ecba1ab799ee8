//! The error type of the evaluation crate.

use std::fmt;
use std::path::PathBuf;

/// Errors raised while reading eval configs, datasets and results files, running the grid,
/// measuring fidelity and rendering pictures.
///
/// Messages are written for users. A variant that adds context to another error (a file's I/O
/// error, a dataset line's problem, a press's config error) writes that error's message into its
/// own and keeps it in a field for callers that match on it, rather than also returning it from
/// [`std::error::Error::source`] (a chain printed with anyhow's `{:#}` would show it twice). The
/// wrappers of the other kvpress crates' errors and of candle's are transparent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core crate (press configs, caches, hooks).
    #[error(transparent)]
    Core(#[from] kvpress_core::Error),
    /// An error from the model (loading, tokenizer, forward passes); boxed, as it is large.
    #[error(transparent)]
    Models(Box<kvpress_models::Error>),
    /// An error from the hooks crate (prefills, compression, answering, front-end checks);
    /// boxed, as it is large.
    #[error(transparent)]
    Hooks(Box<kvpress_hooks::Error>),
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(candle_core::Error),
    /// A file or folder could not be read, created, opened, written or repaired.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        /// What was being done.
        action: IoAction,
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The eval config file is not TOML of an eval config (syntax, unknown field, wrong type).
    #[error("{} is not a valid eval config: {error}", path.display())]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser found.
        error: toml::de::Error,
    },
    /// A field of the eval config holds a value the grid cannot run.
    #[error("{message}")]
    InvalidConfig {
        /// The field: `tasks`, `samples`, `context_lengths`, `compression_ratios`, `settings`,
        /// `max_new_tokens` or `presses`.
        field: &'static str,
        /// What is wrong, and what is valid.
        message: String,
    },
    /// A task name is not one of the generated tasks.
    #[error("unknown task `{name}`: valid are {}", valid.join(", "))]
    UnknownTask {
        /// The name given.
        name: String,
        /// The valid names ([`crate::TaskKind::NAMES`]).
        valid: &'static [&'static str],
    },
    /// A press of the eval config cannot be built, or cannot run in the grid, at one of the
    /// config's compression ratios.
    #[error("press `{press}` at ratio {ratio}: {error}")]
    InvalidPress {
        /// The press's name in the eval config.
        press: String,
        /// The compression ratio.
        ratio: f64,
        /// Why: a press config error ([`Error::Core`]) or a front-end refusal ([`Error::Hooks`]).
        error: Box<Error>,
    },
    /// A press of the eval config sets `compression_ratio` itself, which the grid would
    /// silently override with each of its `compression_ratios`.
    #[error(
        "press `{press}` sets `{field}`, but the grid sets every press's ratio from \
         `compression_ratios`: remove the field from the press config"
    )]
    PressSetsRatio {
        /// The press's name in the eval config.
        press: String,
        /// Where the field is, e.g. `config.inner.compression_ratio`.
        field: String,
    },
    /// Two presses of the eval config have one name (their rows could not be told apart).
    #[error("two presses are named `{name}`: every press of the grid needs a name of its own")]
    DuplicatePress {
        /// The name given twice.
        name: String,
    },
    /// A context length of the grid cannot hold a task: even without any filler the task's
    /// context (instructions, needles, answers) has more tokens than that.
    #[error(
        "context length {context_length} is too short for task `{task}`: its smallest context \
         has {minimum} tokens with this model's tokenizer; use context lengths of at least \
         {minimum}"
    )]
    ContextTooShort {
        /// The task.
        task: String,
        /// The context length asked for.
        context_length: usize,
        /// The fewest tokens a context of this task has (the largest over the grid's samples).
        minimum: usize,
    },
    /// A prompt of a generated task (context, question and answer tokens) does not fit the
    /// model's positions; its answer would be cut short. (Dataset lines that do not fit are bad
    /// lines: [`LineProblem::TooLong`].)
    #[error(
        "task `{task}` at context length {context_length}: the prompt needs {tokens} positions \
         (context, question and {answer_tokens} answer tokens) but the model has \
         {max_positions}; {}",
        match largest_length {
            Some(length) => format!("the longest context length whose samples all fit is {length}"),
            None => "no context length of this task fits: lower max_new_tokens".to_string(),
        }
    )]
    ContextTooLong {
        /// The task.
        task: String,
        /// The context length asked for.
        context_length: usize,
        /// Positions the prompt and its longest answer need.
        tokens: usize,
        /// Answer tokens of the task.
        answer_tokens: usize,
        /// The model's positions (`max_position_embeddings`).
        max_positions: usize,
        /// The longest context length at which every sample of the task fits, if any.
        largest_length: Option<usize>,
    },
    /// A line of a dataset is malformed (and `--skip-bad` was not given).
    #[error(
        "{}:{line}: {problem} (pass --skip-bad to skip malformed lines)",
        path.display()
    )]
    DatasetLine {
        /// The dataset file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with the line.
        problem: LineProblem,
    },
    /// A dataset holds no usable line.
    #[error(
        "{} holds no usable line{}",
        path.display(),
        match skipped.len() {
            0 => String::new(),
            n => format!(" ({n} skipped with --skip-bad:\n  {})", skipped.join("\n  ")),
        }
    )]
    EmptyDataset {
        /// The dataset file.
        path: PathBuf,
        /// The lines skipped with `--skip-bad`, each with its reason.
        skipped: Vec<String>,
    },
    /// A line of a results file (other than a last line cut short) is not a result row.
    #[error("{}:{line}: not a result row: {error}", path.display())]
    ResultsLine {
        /// The results file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What the JSON parser found.
        error: serde_json::Error,
    },
    /// Two rows of a results file have one key (task, setting, context length, sample,
    /// question, press, ratio) but differ: which one counts cannot be told.
    #[error(
        "{}:{line}: row {key} was already on line {first_line} with another result; remove \
         one of the two lines",
        path.display()
    )]
    ConflictingRows {
        /// The results file.
        path: PathBuf,
        /// The line of the second row, from 1.
        line: usize,
        /// The line of the first row, from 1.
        first_line: usize,
        /// The rows' key, as the table names it.
        key: String,
    },
    /// The output folder holds results made with other settings than this run's (the settings
    /// file of the folder says which).
    #[error(
        "results in {} were made with {}: use another --out, or move {}/results.jsonl away to \
         compute them again",
        out.display(),
        changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; and with "),
        out.display()
    )]
    SettingsChanged {
        /// The output folder.
        out: PathBuf,
        /// Each setting that differs.
        changes: Vec<SettingChange>,
    },
    /// Rows of the results file have a fingerprint other than the one this run computes for
    /// the same row: something that decides the answer changed (the sample's text, the press's
    /// resolved config, the answer length, the code) without a setting naming it.
    #[error(
        "{} holds {count} rows computed from other inputs than this run's (first: {first}): the \
         sample's text, the press's resolved config or the answer length differs; use another \
         --out, or move the file away to compute them again",
        path.display()
    )]
    RowsChanged {
        /// The results file.
        path: PathBuf,
        /// Rows whose fingerprint differs.
        count: usize,
        /// The first such row's key.
        first: String,
    },
    /// The results file holds rows without a fingerprint (written before rows had one): what
    /// made them cannot be checked.
    #[error(
        "{} holds {count} rows without a fingerprint (written by an older kvpress), so this run \
         cannot tell which model and settings made them: pass --trust-unfingerprinted to resume \
         from them as if this run's settings had made them, or use another --out",
        path.display()
    )]
    UnfingerprintedRows {
        /// The results file.
        path: PathBuf,
        /// Rows without a fingerprint.
        count: usize,
    },
    /// The results file holds fingerprinted rows but the settings file that names what made
    /// them is missing.
    #[error(
        "{} holds fingerprinted rows but {} (the settings they were made with) is missing: \
         restore it or use another --out",
        results.display(),
        settings.display()
    )]
    SettingsFileMissing {
        /// The results file.
        results: PathBuf,
        /// The missing settings file.
        settings: PathBuf,
    },
    /// The settings file of an output folder is not one this version writes.
    #[error("{} is not a settings file of kvpress eval: {error}", path.display())]
    SettingsFile {
        /// The settings file.
        path: PathBuf,
        /// What the JSON parser found.
        error: serde_json::Error,
    },
    /// A value could not be serialized as JSON (a result row, a press config).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A shard outside the grid was asked for.
    #[error("shard {index}/{count} does not exist: the index must be below the count")]
    InvalidShard {
        /// The shard asked for.
        index: usize,
        /// The number of shards.
        count: usize,
    },
    /// Fidelity was asked for without continuation tokens.
    #[error("the continuation is empty")]
    EmptyContinuation,
    /// An SVG to render does not parse.
    #[error("the SVG does not parse: {0}")]
    Svg(resvg::usvg::Error),
    /// An SVG to render has no usable size.
    #[error("the SVG has no size")]
    SvgSize,
    /// The image of an SVG could not be allocated.
    #[error("cannot allocate a {width}x{height} image")]
    ImageSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A rendered image could not be encoded as PNG.
    #[error("PNG encoding failed: {0}")]
    PngEncoding(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias of the evaluation crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    /// Keeps candle's message but drops the backtrace it captures when `RUST_BACKTRACE` is set,
    /// which would otherwise be printed as part of the message.
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(kvpress_core::error::without_backtrace(error))
    }
}

impl From<kvpress_models::Error> for Error {
    fn from(error: kvpress_models::Error) -> Self {
        Self::Models(Box::new(error))
    }
}

impl From<kvpress_hooks::Error> for Error {
    fn from(error: kvpress_hooks::Error) -> Self {
        Self::Hooks(Box::new(error))
    }
}

impl Error {
    /// An [`Error::Io`] of `action` on `path`.
    pub(crate) fn io(action: IoAction, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            error,
        }
    }

    /// An [`Error::InvalidConfig`] of `field`.
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            message: message.into(),
        }
    }
}

/// A setting that differs between the results in an output folder and this run
/// ([`Error::SettingsChanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The setting, as the command line or the config names it (`--kv-dtype`, `seed`, press
    /// `knorm`).
    pub setting: String,
    /// Its value in the folder's settings file.
    pub was: String,
    /// Its value in this run.
    pub now: String,
}

impl fmt::Display for SettingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}; this run uses {}",
            self.setting, self.was, self.now
        )
    }
}

/// What was being done to a file or folder when an [`Error::Io`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoAction {
    /// Reading a file.
    Read,
    /// Creating a folder.
    Create,
    /// Opening a file to append to it.
    Open,
    /// Writing to a file.
    Write,
    /// Cutting an unfinished last line off a results file.
    Repair,
}

impl fmt::Display for IoAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Create => "create",
            Self::Open => "open",
            Self::Write => "write",
            Self::Repair => "repair",
        })
    }
}

/// What is wrong with a dataset line ([`Error::DatasetLine`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineProblem {
    /// The line is not JSON.
    #[error("not JSON: {0}")]
    Json(serde_json::Error),
    /// The line is JSON but not an object.
    #[error(
        "a line must be a JSON object {{\"context\", \"question\", \"answer\"}} (or \
         \"questions\" with \"answers\"), found {found}"
    )]
    NotAnObject {
        /// What it is.
        found: &'static str,
    },
    /// The line has a key no dataset line has.
    #[error(
        "unknown key `{key}`: a line has context, question or questions, answer or answers, and \
         optionally answer_prefix"
    )]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A field has the wrong type.
    #[error("`{key}` must be {expected}, found {found}")]
    WrongType {
        /// The field.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// `context` is missing or empty.
    #[error("`context` is missing or empty")]
    EmptyContext,
    /// `questions` and `answers` differ in length.
    #[error("{questions} questions but {answers} answers")]
    CountMismatch {
        /// Questions given.
        questions: usize,
        /// Answer lists given.
        answers: usize,
    },
    /// An expected answer is empty, or a question expects no answer at all: every answer
    /// would score 1.0.
    #[error(
        "question {question} expects an empty answer (`\"\"` or `[]`), which every answer \
         matches: give the expected values"
    )]
    EmptyAnswer {
        /// The question's index in the line, from 0.
        question: usize,
    },
    /// The line is not UTF-8.
    #[error("not UTF-8 text (invalid byte at column {column})")]
    NotUtf8 {
        /// The column of the first invalid byte, from 1.
        column: usize,
    },
    /// The line's prompt does not fit the model's positions.
    #[error(
        "the prompt needs {tokens} positions (context, question and {answer_tokens} answer \
         tokens) but the model has {max_positions}"
    )]
    TooLong {
        /// Positions the prompt and its longest answer need.
        tokens: usize,
        /// Answer tokens of dataset questions.
        answer_tokens: usize,
        /// The model's positions (`max_position_embeddings`).
        max_positions: usize,
    },
    /// Neither `question` with `answer` nor `questions` with `answers` is given.
    #[error(
        "give `question` with `answer`, or `questions` with `answers` (one list per question)"
    )]
    NoQuestion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_threads_and_messages_hold_their_causes() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
        let error = Error::io(
            IoAction::Read,
            "/x/eval.toml",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(
            error.to_string(),
            "cannot read /x/eval.toml: entity not found"
        );
        assert!(
            std::error::Error::source(&error).is_none(),
            "not printed twice"
        );
        let unknown = kvpress_core::Error::Config("unknown press `snap`".to_string());
        let press = Error::InvalidPress {
            press: "p".to_string(),
            ratio: 0.5,
            error: Box::new(unknown.into()),
        };
        assert_eq!(
            press.to_string(),
            "press `p` at ratio 0.5: invalid press configuration: unknown press `snap`"
        );
    }
}
