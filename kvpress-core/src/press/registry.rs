//! The press registry: every press crate lists its presses here (through `inventory`), so that
//! configs, the command line and users can find them by name.

use serde_json::{Map, Value};

use crate::press::Press;
use crate::{Error, Result};

/// One registered press: its config name, what it does, and an example instance (its defaults,
/// or for a wrapper, the wrapper around a placeholder press).
#[derive(Debug)]
pub struct PressRegistration {
    /// Name in configs (the `"press"` tag), e.g. `"snapkv"`.
    pub name: &'static str,
    /// One line on what the press does.
    pub description: &'static str,
    /// Builds the press with its default parameters.
    pub example: fn() -> Box<dyn Press>,
}

inventory::collect!(PressRegistration);

/// Registers a press by name (its config name, a one-line description, and a function building
/// it with default parameters). Use it once per press type, in the crate that defines it; see
/// [`crate::scorer_press!`] for a complete example.
#[macro_export]
macro_rules! register_press {
    ($name:literal, $description:literal, $example:expr) => {
        $crate::inventory::submit! {
            $crate::press::PressRegistration {
                name: $name,
                description: $description,
                example: $example,
            }
        }
    };
}

/// Every registered press, sorted by name. Only presses of crates linked into the binary are
/// there: binaries and tests must name the press crates (`use snapkv as _;`).
pub fn registered_presses() -> Vec<&'static PressRegistration> {
    let mut all: Vec<_> = inventory::iter::<PressRegistration>().collect();
    all.sort_by_key(|r| r.name);
    all
}

/// The registration named `name`.
pub fn find_press(name: &str) -> Option<&'static PressRegistration> {
    inventory::iter::<PressRegistration>().find(|r| r.name == name)
}

/// Names of every registered press, comma-separated (for error messages).
pub fn registered_names() -> String {
    registered_presses()
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The parameters of a registered press with their defaults: the example serialized, without
/// its tag, with nested presses shown as `"<press>"`.
pub fn default_parameters(registration: &PressRegistration) -> Result<Map<String, Value>> {
    let example = (registration.example)();
    let value = serde_json::to_value(&example)
        .map_err(|e| Error::Config(format!("cannot serialize {}: {e}", registration.name)))?;
    let Value::Object(mut fields) = value else {
        return Err(Error::Config(format!(
            "{} does not serialize to an object",
            registration.name
        )));
    };
    fields.remove("press");
    for value in fields.values_mut() {
        hide_nested_presses(value);
    }
    Ok(fields)
}

fn hide_nested_presses(value: &mut Value) {
    match value {
        Value::Object(map) if map.contains_key("press") => *value = Value::from("<press>"),
        Value::Array(items) => items.iter_mut().for_each(hide_nested_presses),
        _ => {}
    }
}
