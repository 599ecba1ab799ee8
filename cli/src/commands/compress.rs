//! `kvpress compress`: compresses a context once and saves the compressed cache to a file
//! (`run --load` answers from it without the context).

use std::path::PathBuf;

use anyhow::Result;
use kvpress::core::press::press_from_file;
use kvpress::hooks::context_file;
use kvpress::hooks::{check_press, FrontEnd};

use super::read_text;
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file holding the context.
    #[arg(long)]
    context: PathBuf,
    /// Press config (.json or .toml).
    #[arg(long)]
    press: PathBuf,
    /// Output file (safetensors), e.g. CTX.kvp; written atomically (a temporary file renamed
    /// onto it), so it is never left half written. It must not be the --context or --press file.
    #[arg(long)]
    out: PathBuf,
}

/// Compresses the context, saves it to `--out` and prints its size against the full cache's.
/// Keys and values are stored in the KV-cache dtype (`--kv-dtype`).
pub fn run(args: Args) -> Result<()> {
    let Args {
        model,
        context,
        press,
        out,
    } = args;
    let model_path = model.path();
    let inputs = [
        ("--context", context.as_path()),
        ("--press", press.as_path()),
        ("--model", model_path.as_path()),
    ];
    crate::output::check_output_file("--out", &out, &inputs)?;
    let press = press_from_file(&press)?;
    check_press(FrontEnd::Compress, press.as_ref())?;
    let loaded = model.load()?;
    let text = read_text(&context)?;
    let context_ids = kvpress::hooks::PromptSplit::context_ids(&loaded, &text)?;
    let (session, report) =
        kvpress::hooks::ContextSession::compress(&loaded.model, &context_ids, press.as_ref(), &[])?;
    let size = context_file::save(&out, &loaded, &session, &context_ids, press.as_ref())?;
    // The file stores the cache in its own storage type, so the full cache is counted in it too
    // (a quantized cache holds a prefill's tokens in f32 until compression: not what it stores).
    let storage = loaded.model.kv_storage();
    let dtype = storage.name();
    let config = loaded.model.config();
    let full = report.context_tokens
        * config.n_layers
        * config.n_kv_heads
        * storage.kv_bytes(1, config.head_dim);
    println!(
        "{}: {} bytes ({:.1}% of the {} bytes of the full {dtype} cache) | {} context tokens, \
         kept {:.1}% | KV cache {dtype}, {} bytes",
        out.display(),
        size,
        100.0 * size as f64 / full.max(1) as f64,
        full,
        report.context_tokens,
        100.0 * report.kept_fraction(),
        report.kv_bytes
    );
    Ok(())
}
