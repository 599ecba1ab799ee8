//! Presses from configuration files: JSON or TOML in kvpress's nesting (`"press"` names the
//! press, a wrapper names its `"inner"` press).
//!
//! [`read_press_config`], [`parse_press_config`] and [`build_press`] say what is wrong with a
//! config as a [`ConfigError`] (which field, which line, what is valid); [`press_from_file`],
//! [`press_from_json`], [`press_from_toml`] and [`press_from_value`] are the same with the
//! crate's [`Error`] (a press's own `validate` error as it is, the others as [`Error::Config`]).

use std::path::Path;

use serde_json::{Map, Value};

use crate::press::{find_press, registered_names, Press};
use crate::{Error, Result};

mod error;
mod unique_keys;

pub use error::{ConfigError, ConfigFormat};

/// Builds the press a JSON config describes, checking names and parameters.
pub fn press_from_json(text: &str) -> Result<Box<dyn Press>> {
    Ok(parse_press_config(text, ConfigFormat::Json)?)
}

/// Builds the press a TOML config describes (same fields as JSON; `[inner]` tables nest).
pub fn press_from_toml(text: &str) -> Result<Box<dyn Press>> {
    Ok(parse_press_config(text, ConfigFormat::Toml)?)
}

/// Reads a `.json` or `.toml` press config.
pub fn press_from_file(path: &Path) -> Result<Box<dyn Press>> {
    Ok(read_press_config(path)?)
}

/// Builds a press from a parsed config value.
pub fn press_from_value(value: Value) -> Result<Box<dyn Press>> {
    Ok(build_press(value)?)
}

/// Reads the press config at `path` (its format from its extension); errors name the file.
pub fn read_press_config(path: &Path) -> std::result::Result<Box<dyn Press>, ConfigError> {
    if path.is_dir() {
        return Err(ConfigError::Read {
            path: path.to_path_buf(),
            error: std::io::Error::other("it is a folder; give a .json or .toml press config file"),
        });
    }
    let Some(format) = ConfigFormat::of_path(path) else {
        return Err(ConfigError::Extension {
            path: path.to_path_buf(),
            extension: path.extension().map(|e| e.to_string_lossy().into_owned()),
        });
    };
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_press_config(&text, format).map_err(|error| ConfigError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    })
}

/// Builds the press the config `text` in `format` describes; when the text is not valid
/// `format` but valid in the other format, says so ([`ConfigError::WrongFormat`]).
pub fn parse_press_config(
    text: &str,
    format: ConfigFormat,
) -> std::result::Result<Box<dyn Press>, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Empty {
            registered: registered_names(),
        });
    }
    let value = match parse_value(text, format) {
        Ok(value) => value,
        Err(error @ ConfigError::Syntax { .. }) => {
            if parse_value(text, format.other()).is_ok() {
                return Err(ConfigError::WrongFormat {
                    named: format,
                    holds: format.other(),
                });
            }
            return Err(error);
        }
        Err(error) => return Err(with_line(error, text, format)),
    };
    build_press(value).map_err(|error| with_line(error, text, format))
}

/// Builds a press from a parsed config value: checks that it is an object naming registered
/// presses, deserializes it (naming the field that does not fit) and validates it.
pub fn build_press(value: Value) -> std::result::Result<Box<dyn Press>, ConfigError> {
    let Value::Object(map) = &value else {
        return Err(ConfigError::NotATable {
            found: kind_of(&value),
            registered: registered_names(),
        });
    };
    if !map.contains_key("press") {
        return Err(ConfigError::MissingPress {
            registered: registered_names(),
        });
    }
    check_press_names(&value)?;
    let press: Box<dyn Press> = match serde_json::from_value(value.clone()) {
        Ok(press) => press,
        Err(error) => return Err(locate_error(map, &error.to_string())),
    };
    press.validate().map_err(ConfigError::Press)?;
    Ok(press)
}

/// Parses `text` as `format` into a JSON value (TOML numbers checked on the way).
fn parse_value(text: &str, format: ConfigFormat) -> std::result::Result<Value, ConfigError> {
    match format {
        ConfigFormat::Json => serde_json::from_str::<unique_keys::UniqueKeys>(text)
            .map(|unique| unique.0)
            .map_err(|e| ConfigError::Syntax {
                format,
                message: json_syntax_message(text, &e),
            }),
        ConfigFormat::Toml => {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| toml_syntax_error(text, &e))?;
            toml_to_json(toml::Value::Table(table), "")
        }
    }
}

fn json_syntax_message(text: &str, error: &serde_json::Error) -> String {
    if ["NaN", "Infinity"].iter().any(|word| text.contains(word)) {
        format!("{error} (JSON has no NaN or Infinity: press parameters must be finite numbers)")
    } else {
        error.to_string()
    }
}

/// A TOML parse error; an integer too large for 64 bits as [`ConfigError::IntegerOverflow`].
fn toml_syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message();
    // toml hands integers beyond 64 bits over as i128/u128, which no JSON value holds.
    let overflow = ["out of range", "overflow", "as i128", "as u128"]
        .iter()
        .any(|word| message.contains(word));
    if let (true, Some(span)) = (overflow, error.span()) {
        let number = text.get(span.clone()).unwrap_or_default().trim();
        if number
            .trim_start_matches(['+', '-'])
            .starts_with(|c: char| c.is_ascii_digit())
        {
            return ConfigError::IntegerOverflow {
                text: number.to_string(),
                line: Some(text[..span.start].matches('\n').count() + 1),
            };
        }
    }
    ConfigError::Syntax {
        format: ConfigFormat::Toml,
        message: error.to_string().trim_end().to_string(),
    }
}

/// A TOML value as JSON; a NaN or infinite float is refused, naming its dotted `path`.
fn toml_to_json(value: toml::Value, path: &str) -> std::result::Result<Value, ConfigError> {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(x) if !x.is_finite() => {
            return Err(ConfigError::NonFinite {
                field: path.to_string(),
                value: x.to_string().to_lowercase(),
                line: None,
            })
        }
        toml::Value::Float(x) => Value::from(x),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| toml_to_json(item, &format!("{path}[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(key, item)| Ok((key.clone(), toml_to_json(item, &child(&key))?)))
                .collect::<std::result::Result<Map<_, _>, ConfigError>>()?,
        ),
    })
}

/// The field of `map` (a press's config) that makes deserializing fail: each field is put in
/// turn into the press's registered example, and the first that fails is named (recursing into
/// nested presses). Without one, the press and serde's `message`.
fn locate_error(map: &Map<String, Value>, message: &str) -> ConfigError {
    let press = map.get("press").and_then(Value::as_str).unwrap_or("?");
    match failing_field(map) {
        Some((press, field, message)) => ConfigError::Field {
            press,
            field,
            message,
            line: None,
        },
        None => ConfigError::Invalid {
            press: press.to_string(),
            message: message.to_string(),
        },
    }
}

/// `(press, dotted field, message)` of the first field of `map` that does not fit its press.
fn failing_field(map: &Map<String, Value>) -> Option<(String, String, String)> {
    let name = map.get("press")?.as_str()?;
    let example = serde_json::to_value((find_press(name)?.example)()).ok()?;
    let Value::Object(base) = example else {
        return None;
    };
    for (key, value) in map.iter().filter(|(key, _)| *key != "press") {
        let mut trial = base.clone();
        trial.insert(key.clone(), value.clone());
        let Err(error) = serde_json::from_value::<Box<dyn Press>>(Value::Object(trial)) else {
            continue;
        };
        if let Some((press, field, message)) = failing_nested(value) {
            return Some((press, format!("{key}{field}"), message));
        }
        let mut message = error.to_string();
        if value.is_null() {
            // What a TOML `nan` or `inf` becomes when read into JSON by another parser.
            message.push_str(
                " (a TOML nan or inf reads as null: press parameters are finite numbers)",
            );
        }
        return Some((name.to_string(), key.clone(), message));
    }
    None
}

/// [`failing_field`] inside a nested press (`.field`) or a list of them (`[i].field`).
fn failing_nested(value: &Value) -> Option<(String, String, String)> {
    match value {
        Value::Object(inner) if inner.contains_key("press") => failing_field(inner)
            .map(|(press, field, message)| (press, format!(".{field}"), message)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            failing_nested(item)
                .map(|(press, field, message)| (press, format!("[{i}]{}", field), message))
        }),
        _ => None,
    }
}

/// `error` with the line of its field in `text`, when one line holds that key.
fn with_line(mut error: ConfigError, text: &str, format: ConfigFormat) -> ConfigError {
    if let ConfigError::Field { field, line, .. } | ConfigError::NonFinite { field, line, .. } =
        &mut error
    {
        *line = line.or_else(|| line_of_key(text, field, format));
    }
    error
}

/// The line (from 1) of the only line of `text` that sets the last key of the dotted `field`.
fn line_of_key(text: &str, field: &str, format: ConfigFormat) -> Option<usize> {
    let key = field.rsplit('.').next()?.split('[').next()?;
    let sets_key = |line: &str| match format {
        ConfigFormat::Toml => line
            .trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('=')),
        ConfigFormat::Json => line.contains(&format!("\"{key}\"")),
    };
    let mut lines = text.lines().enumerate().filter(|(_, line)| sets_key(line));
    match (lines.next(), lines.next()) {
        (Some((index, _)), None) => Some(index + 1),
        _ => None,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// The JSON config of a press (what [`press_from_json`] reads back).
pub fn press_to_json(press: &dyn Press) -> Result<String> {
    serde_json::to_string_pretty(press).map_err(|e| Error::Config(e.to_string()))
}

/// The registered name of `press` (its config's `"press"` tag).
pub fn press_name(press: &dyn Press) -> String {
    serde_json::to_value(press)
        .ok()
        .and_then(|v| v.get("press").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("{press:?}"))
}

/// An owned copy of `press` (through its config), for a runtime that must keep the press beyond
/// the borrow it was given (decode-time compression while answers are generated).
pub fn press_clone(press: &dyn Press) -> Result<Box<dyn Press>> {
    let value = serde_json::to_value(press).map_err(|e| Error::Config(e.to_string()))?;
    press_from_value(value)
}

/// Every object with a `"press"` field must name a registered press.
fn check_press_names(value: &Value) -> std::result::Result<(), ConfigError> {
    match value {
        Value::Object(map) => {
            match map.get("press") {
                Some(Value::String(name)) if find_press(name).is_none() => {
                    return Err(ConfigError::UnknownPress {
                        name: name.clone(),
                        registered: registered_names(),
                    });
                }
                Some(Value::String(_)) | None => {}
                Some(other) => {
                    return Err(ConfigError::PressNotAName {
                        found: other.to_string(),
                        registered: registered_names(),
                    })
                }
            }
            map.values().try_for_each(check_press_names)
        }
        Value::Array(items) => items.iter().try_for_each(check_press_names),
        _ => Ok(()),
    }
}
