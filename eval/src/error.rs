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
        /// The field: `tasks`, `samples`, `context_lengths`, `compression_ratios` or `presses`.
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
    #[error("{} holds no usable line", path.display())]
    EmptyDataset {
        /// The dataset file.
        path: PathBuf,
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
    /// The line is not JSON, or not an object of the known keys.
    #[error("{0}")]
    Json(serde_json::Error),
    /// `context` is empty.
    #[error("`context` is empty")]
    EmptyContext,
    /// `questions` and `answers` differ in length.
    #[error("{questions} questions but {answers} answers")]
    CountMismatch {
        /// Questions given.
        questions: usize,
        /// Answer lists given.
        answers: usize,
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
