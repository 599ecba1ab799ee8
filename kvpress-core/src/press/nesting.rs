//! What a wrapper may hold: a press inside another only acts as far as the outer press passes
//! it on. Decode-time compression ([`Press::decoding`]) only runs from the press the runtime
//! holds, which finds it through the wrappers that pass it on (`composed`, `prefill_decoding`):
//! a decode-time press inside any other wrapper would silently never run. A press that needs the
//! question prefilled with the context (Finch) is only given it at the top.

use serde_json::Value;

use crate::press::{press_from_value, press_name, Press};
use crate::{Error, Result};

/// Checks every press nested in `press` (walking its config): a press that compresses while
/// decoding must sit in a wrapper that compresses while decoding too (that passes its schedule
/// on), or the error names both and where the decode-time press can go.
pub fn check_nesting(press: &dyn Press) -> Result<()> {
    let config = serde_json::to_value(press)
        .map_err(|e| Error::InvalidArgument(format!("cannot describe the press: {e}")))?;
    check_children(&config, press)
}

/// Whether `press` holds other presses (a wrapper such as `chunkkv`, `adakv` or `composed`).
pub fn holds_presses(press: &dyn Press) -> bool {
    serde_json::to_value(press).is_ok_and(|config| !nested_presses(&config).is_empty())
}

/// Checks the presses directly inside `config` (the config of `outer`), then theirs.
fn check_children(config: &Value, outer: &dyn Press) -> Result<()> {
    for child in nested_presses(config) {
        let inner = press_from_value(child.clone())?;
        if inner.reconstruction().is_some() {
            return Err(Error::InvalidArgument(format!(
                "`{}` holds `{}`, which scores the context by reconstructing it in a second \
                 forward pass and chooses across every layer at once; it cannot run inside \
                 another press, so use `{}` on its own",
                press_name(outer),
                press_name(inner.as_ref()),
                press_name(inner.as_ref()),
            )));
        }
        if inner.calibration().is_some() {
            return Err(Error::InvalidArgument(format!(
                "`{}` holds `{}`, which is calibrated on the model before the prefill; only a \
                 press at the top is calibrated (inside a wrapper it would run uncalibrated), so \
                 use `{}` on its own",
                press_name(outer),
                press_name(inner.as_ref()),
                press_name(inner.as_ref()),
            )));
        }
        if inner.describe().needs_question {
            return Err(Error::InvalidArgument(format!(
                "`{}` holds `{}`, which compresses the context for the question prefilled with \
                 it; only a press at the top is given the question (wrappers would score or cut \
                 it as context), so use `{}` on its own",
                press_name(outer),
                press_name(inner.as_ref()),
                press_name(inner.as_ref()),
            )));
        }
        if inner.describe().compresses_while_decoding && !outer.describe().compresses_while_decoding
        {
            return Err(Error::InvalidArgument(format!(
                "`{}` holds `{}`, which compresses while tokens are generated, but `{}` does not \
                 run what it holds while decoding, so it would never compress; put the \
                 decode-time press at the top, or directly inside `composed` or \
                 `prefill_decoding`",
                press_name(outer),
                press_name(inner.as_ref()),
                press_name(outer),
            )));
        }
        check_children(child, inner.as_ref())?;
    }
    Ok(())
}

/// The press configs directly inside `config`: every field value (or element of an array field)
/// that is an object naming a press.
fn nested_presses(config: &Value) -> Vec<&Value> {
    let Some(fields) = config.as_object() else {
        return Vec::new();
    };
    let is_press = |value: &&Value| value.get("press").is_some_and(Value::is_string);
    fields
        .iter()
        .filter(|(name, _)| name.as_str() != "press")
        .flat_map(|(_, value)| match value {
            Value::Array(items) => items.iter().filter(is_press).collect::<Vec<_>>(),
            other => std::iter::once(other).filter(is_press).collect(),
        })
        .collect()
}
