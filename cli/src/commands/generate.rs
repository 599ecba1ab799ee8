//! `kvpress generate`: answers a prompt (chat-templated), streaming tokens, then prints speed
//! and cache size.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kvpress::core::press::{press_from_file, Press, PressDescription};
use kvpress::hooks::{check_press, FrontEnd, PressHook};
use kvpress::models::{ChatMessage, GenerationConfig, LoadedModel, Sampling};

use super::note_debug_build;
use crate::cli::ModelArgs;
use crate::{answers, values};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// Maximum number of generated tokens (at least 1).
    #[arg(long, default_value_t = 256, value_parser = values::at_least::<1>)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of greedy decoding (0 means greedy; finite, >= 0).
    #[arg(long, value_parser = values::temperature)]
    temperature: Option<f64>,
    /// Nucleus mass when sampling, in (0, 1] [default: 1].
    #[arg(long, requires = "temperature", value_parser = values::top_p)]
    top_p: Option<f64>,
    /// Seed when sampling (0 to 2^64 - 1) [default: 0].
    #[arg(long, requires = "temperature", value_parser = values::seed)]
    seed: Option<u64>,
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
    if args.prompt.trim().is_empty() {
        bail!("--prompt is empty: give the text to answer");
    }
    let press = args.press.as_deref().map(press_from_file).transpose()?;
    if let Some(press) = &press {
        check_press(FrontEnd::Generate, press.as_ref())?;
    }
    generate(
        &args.model.load()?,
        &args.prompt,
        GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            sampling: sampling(&args),
        },
        args.raw,
        press.as_deref(),
    )
}

/// Greedy decoding, or top-p sampling with `--temperature` above 0.
fn sampling(args: &Args) -> Sampling {
    match args.temperature {
        // Temperature 0 means the most likely token, as in most LLM tools.
        Some(temperature) if temperature > 0.0 => Sampling::TopP {
            temperature,
            top_p: args.top_p.unwrap_or(1.0),
            seed: args.seed.unwrap_or(0),
        },
        _ => {
            if args.top_p.is_some() || args.seed.is_some() {
                eprintln!(
                    "warning: --temperature 0 decodes greedily: --top-p and --seed do nothing"
                );
            }
            Sampling::Greedy
        }
    }
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
    let text = match (&loaded.chat_template, raw) {
        (Some(template), false) => template.render(&[ChatMessage::user(prompt)], true)?,
        (None, false) => bail!(
            "{} has no chat template; pass --raw to feed the prompt as it is",
            loaded.path.display()
        ),
        (_, true) => prompt.to_string(),
    };
    let ids = loaded.tokenizer.encode(&text, raw)?;
    let max_positions = loaded.model.config().max_position_embeddings;
    let what = format!("the prompt ({} tokens)", ids.len());
    answers::check_room(&what, ids.len(), config.max_new_tokens, max_positions, true)?;
    if let Some(press) = press {
        kvpress::hooks::calibrate(&loaded.model, press)?;
    }
    let mut hook = press.map(|p| PressHook::new(p, &[])).transpose()?;
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
    if let Some(hook) = &hook {
        report_press(hook, press.map(|p| p.describe()));
    }
    let note = answers::stop_note(
        output.stop_reason,
        output.tokens.len(),
        config.max_new_tokens,
        max_positions,
    );
    if let Some(why) = note {
        eprintln!("answer stopped: {why}");
    }
    Ok(())
}

/// What the press did: the share of the prompt's tokens its prefill compression kept (the KV
/// cache line above gives the bytes, which a channel-pruning press such as ThinK reduces while
/// keeping every token), and how often it compressed while the answer was generated.
fn report_press(hook: &PressHook<'_>, description: Option<PressDescription>) {
    let Some(description) = description else {
        return;
    };
    if description.compresses_prefill {
        eprintln!(
            "press: kept {:.1}% of the prompt's tokens after its prefill",
            100.0 * kvpress::hooks::kept_fraction(hook.records())
        );
    }
    if description.compresses_while_decoding {
        eprintln!(
            "press: {}",
            kvpress::hooks::run::decode_compressions_note(hook.decode_compressions())
        );
    }
}
