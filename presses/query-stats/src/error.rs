//! What can be wrong with a query statistics file, each case naming the file and what is valid.

use std::path::PathBuf;

/// An unreadable, damaged or unsuitable query statistics file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsFileError {
    /// The file cannot be read.
    #[error(
        "cannot read the query statistics file {path}: {message}; write it with `kvpress \
         calibrate-queries --text FILE --out {path}` (a relative path is read from the current \
         folder)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is not a query statistics file this build reads (not safetensors, a header that
    /// does not parse, another format version, an unknown tensor, an unsupported dtype).
    #[error("{path} is not a query statistics file this build reads: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what is valid.
        message: String,
    },
    /// A tensor's bytes do not match the checksum its header lists.
    #[error(
        "{path}: tensor `{tensor}` does not match its checksum (the file is damaged); compute \
         it again with `kvpress calibrate-queries`"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The damaged tensor.
        tensor: String,
    },
    /// A tensor holds NaN or an infinity, or a covariance a negative variance.
    #[error("{path}: tensor `{tensor}` {problem}; statistics must be finite (variances >= 0)")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Where and what (e.g. "holds NaN at layer 3").
        problem: String,
    },
    /// A tensor's shape is not the one the model (or the file's own header) needs.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} ({why})")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shape it must have.
        expected: Vec<usize>,
        /// The shape it has.
        found: Vec<usize>,
        /// Where the expected shape comes from.
        why: String,
    },
    /// A press needs a tensor the file does not hold.
    #[error(
        "{path} holds no `{tensor}` tensor, which {press} needs (it holds: {holds}); a file \
         written by `kvpress calibrate-queries` holds every tensor"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The press that needs it.
        press: String,
        /// The tensors the file holds, comma-separated.
        holds: String,
    },
    /// The file was computed for another model.
    #[error("{path} was computed for another model: {message}")]
    OtherModel {
        /// The file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// The calibration collected too little, or the model produced non-finite queries.
    #[error("query calibration: {0}")]
    Calibration(String),
}

impl From<StatsFileError> for kvpress_core::Error {
    fn from(error: StatsFileError) -> Self {
        kvpress_core::Error::InvalidArgument(error.to_string())
    }
}
