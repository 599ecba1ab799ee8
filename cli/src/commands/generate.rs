//! `kvpress generate`: answers a prompt (chat-templated), streaming tokens, then prints speed
//! and cache size.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kvpress::core::press::{press_from_file, Press};
use kvpress::models::{ChatMessage, GenerationConfig, LoadedModel, Sampling};

use super::note_debug_build;
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of greedy decoding (0 means greedy).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus mass when sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed when sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Press config run during generation (e.g. a `decoding` press: decode-time compression).
    #[arg(long)]
    press: Option<PathBuf>,
}

/// Loads the model and the press, then [`generate`]s.
pub fn run(args: Args) -> Result<()> {
    note_debug_build();
    let press = args.press.as_deref().map(press_from_file).transpose()?;
    let sampling = match args.temperature {
        // Temperature 0 means the most likely token, as in most LLM tools.
        Some(0.0) => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        None => Sampling::Greedy,
    };
    generate(
        &args.model.load()?,
        &args.prompt,
        GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            sampling,
        },
        args.raw,
        press.as_deref(),
    )
}

/// Streams the answer to `prompt` on stdout (with `press`'s hook in every forward), then the
/// speed and cache size on stderr.
fn generate(
    loaded: &LoadedModel,
    prompt: &str,
    config: GenerationConfig,
    raw: bool,
    press: Option<&dyn Press>,
) -> Result<()> {
    if prompt.trim().is_empty() {
        bail!("--prompt is empty: give the text to answer");
    }
    let text = match (&loaded.chat_template, raw) {
        (Some(template), false) => template.render(&[ChatMessage::user(prompt)], true)?,
        (None, false) => bail!(
            "{} has no chat template; pass --raw to feed the prompt as it is",
            loaded.path.display()
        ),
        (_, true) => prompt.to_string(),
    };
    let ids = loaded.tokenizer.encode(&text, raw)?;
    let mut hook = press
        .map(|p| kvpress::hooks::PressHook::new(p, &[]))
        .transpose()?;
    let mut cache = match press {
        Some(press) => kvpress::hooks::new_cache_for(&loaded.model, press)?,
        None => loaded.model.new_cache(),
    };
    let output = kvpress::models::generate(
        &loaded.model,
        &mut cache,
        &ids,
        loaded.tokenizer.eos_ids(),
        &config,
        hook.as_mut()
            .map(|h| h as &mut dyn kvpress::core::AttentionHook),
        &mut kvpress::models::print_tokens(&loaded.tokenizer, std::io::stdout()),
    )?;
    println!();
    eprintln!(
        "prefill: {} tokens, {:.1} tokens/s | decode: {} tokens, {:.1} ms/token | KV cache: {:.2} MiB ({} bytes)",
        output.n_prompt_tokens,
        output.prefill_tokens_per_second(),
        output.tokens.len(),
        output.decode_ms_per_token(),
        cache.bytes_used() as f64 / (1024.0 * 1024.0),
        cache.bytes_used()
    );
    Ok(())
}
