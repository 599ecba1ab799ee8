//! `kvpress presses`: every registered press with its parameters and defaults.

use std::fmt::Write;

use anyhow::Result;
use kvpress::core::press::{default_parameters, registered_presses};

/// Prints [`press_listing`].
pub fn run() -> Result<()> {
    print!("{}", press_listing()?);
    Ok(())
}

/// One line per press: name, description, then `parameter = default` pairs (`<press>` marks a
/// nested press a wrapper needs).
pub fn press_listing() -> kvpress::core::Result<String> {
    let mut out = String::new();
    for registration in registered_presses() {
        let parameters = default_parameters(registration)?;
        let _ = writeln!(out, "{}: {}", registration.name, registration.description);
        if parameters.is_empty() {
            let _ = writeln!(out, "    (no parameters)");
        }
        for (name, value) in parameters {
            let _ = writeln!(out, "    {name} = {value}");
        }
    }
    Ok(out)
}
