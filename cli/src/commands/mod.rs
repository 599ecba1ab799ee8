//! One module per `kvpress` command: its options (`Args`, flattened into
//! [`crate::cli::Command`]) and `run`, which carries it out; plus what several commands share.

pub mod bench;
pub mod calibrate_queries;
pub mod compress;
pub mod eval;
pub mod fetch_model;
pub mod fidelity;
pub mod generate;
pub mod inspect;
pub mod presses;
pub mod run;
pub mod serve;
pub mod trace;
pub mod train_kvzap;

use std::path::Path;

use anyhow::{Context, Result};
use kvpress::core::press::{press_from_file, Press};
use kvpress::core::NoPress;

/// Commands that report speed say so when this binary has debug assertions (the dev profile):
/// they slow the kernels down by up to 2x.
fn note_debug_build() {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: built with debug assertions (the dev profile), which slow the kernels down; \
             for speed numbers build with `cargo run --release -p kvpress-cli -- ...`"
        );
    }
}

/// Writes `svg` as `dir/stem.svg` and its rendering as `dir/stem.png`.
fn write_figure(dir: &Path, stem: &str, svg: &str) -> Result<()> {
    crate::output::write_file(&dir.join(format!("{stem}.svg")), svg)?;
    crate::output::write_file(
        &dir.join(format!("{stem}.png")),
        kvpress_eval::png::svg_to_png(svg)?,
    )
}

/// The text of the file at `path`.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A press config's name: its file name without the extension.
fn config_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The press of the config at `path`, or no compression without one.
fn load_press(path: Option<&Path>) -> Result<Box<dyn Press>> {
    match path {
        Some(path) => Ok(press_from_file(path)?),
        None => Ok(Box::new(NoPress::default())),
    }
}
