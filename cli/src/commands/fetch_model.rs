//! `kvpress fetch-model`: downloads the default model and prints where it is.

use anyhow::Result;
use kvpress::default_model;

/// Fetches the default model (if missing) and prints its path.
pub fn run() -> Result<()> {
    let path = default_model::fetch()?;
    println!("{}", path.display());
    Ok(())
}
