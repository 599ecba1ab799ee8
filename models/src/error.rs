//! The error type of the models crate.

use std::path::PathBuf;

/// Errors raised while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core crate (cache, hook, rotary tables).
    #[error(transparent)]
    Core(#[from] kvpress_core::Error),
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(candle_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A model file exists but is not a valid GGUF file, safetensors file or config.
    #[error("{path}: {message}")]
    InvalidModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model's architecture is not one this crate implements.
    #[error("unsupported architecture `{0}`: supported are llama (also Mistral and SmolLM2), qwen2, qwen3")]
    UnsupportedArchitecture(String),
    /// A tensor the architecture needs is absent from the weights.
    #[error("missing tensor `{name}` in {source_name}")]
    MissingTensor {
        /// The tensor's name in the file.
        name: String,
        /// The weight file.
        source_name: String,
    },
    /// A metadata or config entry is missing or has the wrong type.
    #[error("missing or invalid config entry `{key}`: {message}")]
    InvalidConfig {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A config entry asks for something this crate does not implement (a scaled RoPE, biases,
    /// another activation, quantized safetensors); running anyway would give wrong results.
    #[error("config entry `{key}` = {value} is not supported (results would be wrong); supported: {supported}")]
    UnsupportedConfig {
        /// The entry, with its path inside `config.json` (`rope_parameters.rope_type`).
        key: String,
        /// The value found.
        value: String,
        /// What this crate implements.
        supported: String,
    },
    /// Two config entries give the same setting different values.
    #[error("config entries `{first}` and `{second}` disagree: {message}")]
    ConflictingConfig {
        /// The first entry.
        first: String,
        /// The second entry.
        second: String,
        /// Both values, which one transformers would use, and what to do.
        message: String,
    },
    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Generated text could not be written.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// The default model has not been fetched yet.
    #[error(
        "the default model is not at {} yet; fetch it with `scripts/fetch-model.sh` \
         (or `kvpress fetch-model`), or pass --model PATH",
        path.display()
    )]
    DefaultModelMissing {
        /// Where it is expected.
        path: PathBuf,
    },
    /// Fetching the default model failed.
    #[error("cannot fetch the default model: {0}")]
    Fetch(String),
    /// The input is not acceptable (empty, too long, unknown token ids).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model computed logits that are not numbers or infinite: its weights or the cached
    /// keys and values hold values that overflow (a damaged model or cache), and no token can
    /// be chosen from them.
    #[error(
        "the model computed {non_finite} non-finite logits (NaN or infinity) of {vocab}: its \
         weights or the cached keys and values are damaged or overflow; no answer can be read \
         from them"
    )]
    NonFiniteLogits {
        /// How many logits were NaN or infinite.
        non_finite: usize,
        /// The vocabulary size.
        vocab: usize,
    },
}

/// Result alias of the models crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        key: impl Into<String>,
        value: impl ToString,
        supported: impl Into<String>,
    ) -> Self {
        Self::UnsupportedConfig {
            key: key.into(),
            value: value.to_string(),
            supported: supported.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    /// Keeps candle's message but drops the backtrace it captures when `RUST_BACKTRACE` is set,
    /// which would otherwise be printed as part of the message.
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(kvpress_core::error::without_backtrace(error))
    }
}
