//! What can go wrong writing or reading a context file: one variant per kind of problem, each
//! naming the file, what is wrong and what to do.

use std::fmt;
use std::path::PathBuf;

use super::{ModelIdentity, VERSION};

/// A part of a context file that a checksum covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePart {
    /// The JSON header (model identity, press, context ids, positions, tensor records).
    Header,
    /// The stored bytes of one tensor, by name (`layer.N.keys`, `layer.N.values`,
    /// `last_logits`).
    Tensor(String),
}

impl fmt::Display for FilePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("the header"),
            Self::Tensor(name) => write!(f, "tensor `{name}`"),
        }
    }
}

/// What can go wrong with a context file; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write {}: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is no safetensors file with kvpress metadata.
    #[error("{} is not a kvpress context file{detail}", path.display())]
    NotAContextFile {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The file has another format version.
    #[error(
        "{} is a version {found} context file; this kvpress reads version {VERSION}: compress \
         the context again (`kvpress compress`)",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: String,
    },
    /// The file is cut short or its content does not parse.
    #[error("{} is truncated or damaged: {message}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checksum stored in the file does not match the bytes it covers.
    #[error(
        "{} is damaged: the checksum of {part} does not match its bytes; compress the context \
         again",
        path.display()
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// What the checksum covers.
        part: FilePart,
    },
    /// A tensor of the file holds a NaN or an infinite value.
    #[error(
        "{} is damaged: tensor `{tensor}` holds a NaN or infinite value (element {index}); \
         compress the context again",
        path.display()
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Index of the first such element (row-major).
        index: usize,
    },
    /// A field of the header disagrees with the rest of the file or with the model.
    #[error(
        "{} is inconsistent: `{field}` {message}; the file is damaged or was not written by \
         kvpress, compress the context again",
        path.display()
    )]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// The header field or tensor that is wrong.
        field: String,
        /// What it holds and what was expected.
        message: String,
    },
    /// The file was made with another model.
    #[error(
        "{} was made with model {} (sha256 {} of its files: the GGUF file, or a folder's \
         weights, config, tokenizer and chat template; layers/heads/kv heads/head dim/hidden/vocab \
         {:?}), not with {} (sha256 {}, {:?}): a model whose weights or tokenizer or template \
         differ; compress the context again with this model",
        path.display(), made_with.name, made_with.sha256, made_with.shape,
        loaded.name, loaded.sha256, loaded.shape
    )]
    OtherModel {
        /// The file.
        path: PathBuf,
        /// The model it was made with.
        made_with: Box<ModelIdentity>,
        /// The model loaded now.
        loaded: Box<ModelIdentity>,
    },
    /// The cache to save holds a NaN or an infinite value (e.g. an f16 cache that overflowed).
    #[error(
        "the compressed context holds a NaN or infinite value in `{tensor}` (element {index}) \
         and is not saved; with --kv-dtype f16 values above 65504 overflow: try bf16 or f32"
    )]
    NonFiniteCache {
        /// The tensor.
        tensor: String,
        /// Index of the first such element (row-major).
        index: usize,
    },
    /// A layer of the cache to save holds nothing.
    #[error("layer {0} of the context is empty")]
    EmptyLayer(usize),
}
