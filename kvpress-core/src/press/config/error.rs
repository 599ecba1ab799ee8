//! The errors of press configs ([`ConfigError`]) and their two formats ([`ConfigFormat`]).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The two formats a press config is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// JSON (`.json`).
    Json,
    /// TOML (`.toml`).
    Toml,
}

impl ConfigFormat {
    /// The format a file name's extension says (`.json` or `.toml`), if either.
    pub fn of_path(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Some(Self::Json),
            Some("toml") => Some(Self::Toml),
            _ => None,
        }
    }

    /// The file extension of the format, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Toml => "toml",
        }
    }

    pub(super) fn other(self) -> Self {
        match self {
            Self::Json => Self::Toml,
            Self::Toml => Self::Json,
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON",
            Self::Toml => "TOML",
        })
    }
}

/// What is wrong with a press config; each message names the problem and what is valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// The file name ends in neither `.json` nor `.toml`.
    #[error(
        "{}: a press config's file name must end in .json or .toml ({})",
        path.display(),
        extension.as_ref().map_or("it has no extension".to_string(), |e| format!("not .{e}"))
    )]
    Extension {
        /// The file.
        path: PathBuf,
        /// Its extension, if it has one.
        extension: Option<String>,
    },
    /// The config holds nothing (or only white space).
    #[error(
        "the config is empty: a press config is a table (TOML) or object (JSON) with a `press` \
         field naming one of: {registered}"
    )]
    Empty {
        /// The registered press names.
        registered: String,
    },
    /// The text is not valid JSON or TOML.
    #[error("not valid {format}: {message}")]
    Syntax {
        /// The format it was parsed as.
        format: ConfigFormat,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The file's extension names one format but it holds the other.
    #[error(
        "the file is named .{} but holds {holds} (it is valid {holds}, not valid {named}): \
         rename it to .{}",
        named.extension(),
        holds.extension()
    )]
    WrongFormat {
        /// The format of the file name.
        named: ConfigFormat,
        /// The format the text parses as.
        holds: ConfigFormat,
    },
    /// A TOML integer does not fit in 64 bits.
    #[error(
        "not valid TOML{}: the integer {text} does not fit in a 64-bit integer (valid: \
         -9223372036854775808 to 9223372036854775807; press parameters are far smaller)",
        at_line(*line)
    )]
    IntegerOverflow {
        /// The integer as written.
        text: String,
        /// Its line (from 1), when known.
        line: Option<usize>,
    },
    /// A number is NaN or infinite (TOML `nan`, `inf`).
    #[error(
        "field `{field}`{} is {value}: press parameters must be finite numbers",
        at_line(*line)
    )]
    NonFinite {
        /// The field, as a dotted path (`inner.compression_ratio`).
        field: String,
        /// The value as written (`nan`, `inf`, `-inf`).
        value: String,
        /// Its line (from 1), when known.
        line: Option<usize>,
    },
    /// The config (or a nested press) is not a table/object.
    #[error(
        "a press config must be a table (TOML) or object (JSON) with a `press` field, found \
         {found}; registered presses are: {registered}"
    )]
    NotATable {
        /// What it is instead (`an array`, `a number`, ...).
        found: &'static str,
        /// The registered press names.
        registered: String,
    },
    /// The config has no `press` field.
    #[error(
        "missing field `press`: name the press, e.g. press = \"knorm\"; registered presses \
         are: {registered}"
    )]
    MissingPress {
        /// The registered press names.
        registered: String,
    },
    /// A `press` field names no registered press.
    #[error("unknown press `{name}`; registered presses are: {registered}")]
    UnknownPress {
        /// The name given.
        name: String,
        /// The registered press names.
        registered: String,
    },
    /// A `press` field is not a string.
    #[error("\"press\" must be a press name, found {found}; registered presses are: {registered}")]
    PressNotAName {
        /// The value found instead.
        found: String,
        /// The registered press names.
        registered: String,
    },
    /// One field of a press has a wrong type, an invalid value or an unknown name.
    #[error("press `{press}`, field `{field}`{}: {message}", at_line(*line))]
    Field {
        /// The press the field belongs to.
        press: String,
        /// The field, as a dotted path from the config's top (`inner.window_size`).
        field: String,
        /// What is wrong (serde's message: the type expected, the fields that exist).
        message: String,
        /// Its line (from 1), when known.
        line: Option<usize>,
    },
    /// The press's fields do not make a press (e.g. a required field is missing).
    #[error("press `{press}`: {message}")]
    Invalid {
        /// The press named.
        press: String,
        /// What is wrong.
        message: String,
    },
    /// The press was built but its parameters are out of range (its `validate`).
    #[error(transparent)]
    Press(Error),
    /// Any of the above, in a file.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<ConfigError>,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map_or_else(String::new, |line| format!(" (line {line})"))
}

impl From<ConfigError> for Error {
    /// A press's `validate` error as it is; the others as [`Error::Config`].
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Press(error) => error,
            other => Error::Config(other.to_string()),
        }
    }
}
