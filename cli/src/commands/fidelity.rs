//! `kvpress fidelity`: how closely a compressed cache follows the full one, continuing a text
//! from both (teacher-forced).

use std::path::PathBuf;

use anyhow::{bail, Result};
use kvpress::core::press::press_from_file;
use kvpress::hooks::{check_press, FrontEnd};

use super::read_text;
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file: all but its last --continuation tokens are the compressed context.
    #[arg(long)]
    text: PathBuf,
    /// Press config (.json or .toml).
    #[arg(long)]
    press: PathBuf,
    /// Tokens of the continuation (at least 1).
    #[arg(long, default_value_t = 128, value_parser = crate::values::at_least::<1>)]
    continuation: usize,
}

/// Compares the continuation's predictions from the compressed and the full cache: KL, top-1
/// agreement, perplexity and per-layer attention outputs.
pub fn run(args: Args) -> Result<()> {
    let continuation = args.continuation;
    let press = press_from_file(&args.press)?;
    check_press(FrontEnd::Fidelity, press.as_ref())?;
    let text = read_text(&args.text)?;
    let loaded = args.model.load()?;
    let ids = loaded.tokenizer.encode(&text, false)?;
    if ids.len() <= continuation + 1 {
        bail!(
            "the text has {} tokens; it needs more than --continuation ({continuation})",
            ids.len()
        );
    }
    let (context, rest) = ids.split_at(ids.len() - continuation);
    let f = kvpress_eval::fidelity(&loaded.model, context, rest, press.as_ref())?;
    println!(
        "context {} tokens, continuation {} tokens
mean KL {:.4} nats | top-1 agreement {:.3} | perplexity {:.3} -> {:.3} (ratio {:.3})",
        context.len(),
        rest.len(),
        f.mean_kl,
        f.top1_agreement,
        f.perplexity_full,
        f.perplexity_compressed,
        f.perplexity_ratio
    );
    let errors: Vec<String> = f
        .attention_error_per_layer
        .iter()
        .map(|e| format!("{e:.3}"))
        .collect();
    println!(
        "attention output relative error per layer: {}",
        errors.join(" ")
    );
    Ok(())
}
