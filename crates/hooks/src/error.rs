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
    Model(#[from] models::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The input cannot be processed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of the hooks crate.
pub type Result<T> = std::result::Result<T, Error>;
