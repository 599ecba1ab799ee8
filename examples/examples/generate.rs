//! Load the default model, chat-template a prompt and stream a greedy answer.

use anyhow::{Context, Result};
use kvpress::candle::Device;
use kvpress::models::{generate, load_model, print_tokens, ChatMessage, GenerationConfig};

fn main() -> Result<()> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".into());
    let path = kvpress::default_model::require()?;
    let loaded = load_model(&path, None, &Device::Cpu)?;
    let template = loaded
        .chat_template
        .as_ref()
        .context("the model has no chat template")?;
    let prompt = template.render(&[ChatMessage::user(question)], true)?;
    let ids = loaded.tokenizer.encode(&prompt, false)?;

    let mut cache = loaded.model.new_cache();
    let config = GenerationConfig {
        max_new_tokens: 64,
        ..Default::default()
    };
    generate(
        &loaded.model,
        &mut cache,
        &ids,
        loaded.tokenizer.eos_ids(),
        &config,
        None,
        &mut print_tokens(&loaded.tokenizer, std::io::stdout()),
    )?;
    println!();
    Ok(())
}
