//! A scoring method from a crate of its own (`example-press`, outside `presses/`), selected by
//! name from a config like any built-in press.
//!
//! `cargo run --release -p kvpress-examples --example plugin_press`

use anyhow::Result;
use kvpress::{press_from_toml, Pipeline};
// Linking the crate registers its press; nothing else from it is needed.
use kvpress_example_press as _;

const CONTEXT: &str = include_str!("../../data/needle-haystack.txt");
const QUESTION: &str = "What is the special magic number for ocean mentioned in the provided text?";

fn main() -> Result<()> {
    let press = press_from_toml("press = \"value_norm\"\ncompression_ratio = 0.5\n")?;
    let pipe = Pipeline::load_default()?;
    let ctx = pipe.compress(CONTEXT, press.as_ref())?;
    let kept = ctx.report().map_or(1.0, |r| r.kept_fraction());
    println!("value_norm kept {:.0}% of the cache", 100.0 * kept);
    println!("{QUESTION}\n  {}", ctx.ask(QUESTION)?);
    Ok(())
}
