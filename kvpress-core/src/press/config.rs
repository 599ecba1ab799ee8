//! Presses from configuration files: JSON or TOML in kvpress's nesting (`"press"` names the
//! press, a wrapper names its `"inner"` press).

use std::path::Path;

use serde_json::Value;

use crate::press::{registered_names, Press};
use crate::{Error, Result};

/// Builds the press a JSON config describes, checking names and parameters.
pub fn press_from_json(text: &str) -> Result<Box<dyn Press>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
    press_from_value(value)
}

/// Builds the press a TOML config describes (same fields as JSON; `[inner]` tables nest).
pub fn press_from_toml(text: &str) -> Result<Box<dyn Press>> {
    let value: Value =
        toml::from_str(text).map_err(|e| Error::Config(format!("not valid TOML: {e}")))?;
    press_from_value(value)
}

/// Reads a `.json` or `.toml` press config.
pub fn press_from_file(path: &Path) -> Result<Box<dyn Press>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let press = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => press_from_toml(&text),
        Some("json") => press_from_json(&text),
        _ => Err(Error::Config(
            "press configs must end in .json or .toml".to_string(),
        )),
    };
    press.map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Builds a press from a parsed config value.
pub fn press_from_value(value: Value) -> Result<Box<dyn Press>> {
    check_press_names(&value)?;
    let press: Box<dyn Press> =
        serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))?;
    press.validate()?;
    Ok(press)
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
fn check_press_names(value: &Value) -> Result<()> {
    match value {
        Value::Object(map) => {
            match map.get("press") {
                Some(Value::String(name)) if crate::press::find_press(name).is_none() => {
                    return Err(Error::Config(format!(
                        "unknown press `{name}`; registered presses are: {}",
                        registered_names()
                    )));
                }
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(Error::Config(format!(
                        "\"press\" must be a press name, found {other}"
                    )))
                }
                None => {}
            }
            map.values().try_for_each(check_press_names)
        }
        Value::Array(items) => items.iter().try_for_each(check_press_names),
        _ => Ok(()),
    }
}
