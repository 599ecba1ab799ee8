//! A scoring method from a crate of its own (`example-press`, outside `presses/`), selected by
//! name from a config like any built-in press.
//!
//! `cargo run -p examples --example plugin_press`

use anyhow::Result;
use kvpress::candle::Device;
use kvpress::core::press::press_from_toml;
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{load_model, GenerationConfig};
// Linking the crate registers its press; nothing else from it is needed.
use example_press as _;

const CONTEXT: &str = include_str!("../../../data/needle-haystack.txt");
const QUESTION: &str = "What is the special magic number for ocean mentioned in the provided text?";

fn main() -> Result<()> {
    let press = press_from_toml("press = \"value_norm\"\ncompression_ratio = 0.5\n")?;
    let loaded = load_model(&kvpress::default_model::require()?, None, &Device::Cpu)?;
    let split = PromptSplit::new(&loaded, CONTEXT, QUESTION)?;
    let (mut session, report) =
        ContextSession::compress(&loaded.model, &split.context_ids, press.as_ref(), &[])?;
    let answer = session.answer(
        &loaded.model,
        &split.question_ids,
        loaded.tokenizer.eos_ids(),
        &GenerationConfig::default(),
        &mut |_| Ok(()),
    )?;
    println!(
        "value_norm kept {:.0}% of the cache; answer: {}",
        100.0 * report.kept_fraction(),
        loaded.tokenizer.decode(&answer.tokens, true)?
    );
    Ok(())
}
