//! The error type shared by the core crate.

/// Errors raised by caches, hooks and rotary tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(candle_core::Error),
    /// Tensors handed to a cache or hook do not have the shapes it expects.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A position beyond what the model's rotary tables support was requested.
    #[error(
        "position {position} is beyond the model's maximum of {max_positions} positions \
         (input too long: shorten the prompt or use a model with a longer context)"
    )]
    PositionOutOfRange {
        /// The first position that does not fit.
        position: usize,
        /// The model's maximum number of positions.
        max_positions: usize,
    },
    /// A value outside its valid range was given.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A press configuration names an unknown press or field, or has an invalid value.
    #[error("invalid press configuration: {0}")]
    Config(String),
    /// A cache could not be rewound to a saved state because a layer was compacted since (a
    /// press ran during a forward that then failed); it was cleared instead.
    #[error(
        "layer {layer} holds {now} tokens, fewer than the {saved} to rewind to (a press \
         compacted it since); the cache was cleared: prefill the context again"
    )]
    CacheCleared {
        /// The first layer shorter than its saved length.
        layer: usize,
        /// Its length now.
        now: usize,
        /// The length to rewind to.
        saved: usize,
    },
    /// The operation is not supported by this cache layout or press.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Result alias of the core crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    /// Keeps candle's message but drops the backtrace it captures when `RUST_BACKTRACE` is set,
    /// which would otherwise be printed as part of the message.
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(crate::error::without_backtrace(error))
    }
}

/// `error` without the backtraces candle wraps around it.
pub fn without_backtrace(error: candle_core::Error) -> candle_core::Error {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}
