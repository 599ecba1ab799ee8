//! The error type of the hooks crate.

/// Errors raised while driving a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core crate.
    #[error(transparent)]
    Core(#[from] kvpress_core::Error),
    /// An error from the model.
    #[error(transparent)]
    Model(#[from] kvpress_models::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A front end cannot run a press as the press's description says.
    #[error("`{press}` cannot run in `{front_end}`: {reason}")]
    PressNotSupported {
        /// The press's registered name.
        press: String,
        /// The front end.
        front_end: &'static str,
        /// Why, and what to use instead.
        reason: String,
    },
    /// Running one of several presses failed.
    #[error("press {press}: {source}")]
    Press {
        /// The press's name.
        press: String,
        /// What went wrong.
        source: Box<Error>,
    },
    /// A saved context could not be written, or read back (damaged, another model, another
    /// format version).
    #[error(transparent)]
    ContextFile(Box<crate::context_file::ContextFileError>),
    /// The input cannot be processed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of the hooks crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::context_file::ContextFileError> for Error {
    fn from(error: crate::context_file::ContextFileError) -> Self {
        Self::ContextFile(Box::new(error))
    }
}
