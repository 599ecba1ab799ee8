//! `kvpress inspect`: pictures of what a press kept (SVG and PNG): per layer x head budgets,
//! and a kept-token map over the context.

use std::path::PathBuf;

use anyhow::Result;
use kvpress::core::press::press_from_file;
use kvpress::hooks::{check_press, FrontEnd};

use super::{config_name, read_text, write_figure};
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
    /// Output folder for budgets.svg/.png and kept.svg/.png.
    #[arg(long, default_value = "inspect")]
    out: PathBuf,
}

/// Compresses the context and writes `budgets` and `kept` (`.svg` and `.png`) into `--out`.
pub fn run(args: Args) -> Result<()> {
    let Args {
        model,
        context,
        press,
        out,
    } = args;
    let name = config_name(&press);
    let model_path = model.path();
    let inputs = [
        ("--context", context.as_path()),
        ("--press", press.as_path()),
        ("--model", model_path.as_path()),
    ];
    let press = press_from_file(&press)?;
    check_press(FrontEnd::Inspect, press.as_ref())?;
    let text = read_text(&context)?;
    let figures = ["budgets.svg", "budgets.png", "kept.svg", "kept.png"];
    crate::output::prepare_output_dir("--out", &out, &figures, &inputs)?;
    let loaded = model.load()?;
    let ids = kvpress::hooks::PromptSplit::context_ids(&loaded, &text)?;
    let (_, report) =
        kvpress::hooks::ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[])?;
    let title = format!(
        "{name}: tokens kept per layer and KV head ({} context tokens)",
        ids.len()
    );
    write_figure(
        &out,
        "budgets",
        &kvpress_eval::inspect::budgets_svg(&report.layers, &title),
    )?;
    let title = format!("{name}: kept tokens over the context (rows: layer x KV head)");
    write_figure(
        &out,
        "kept",
        &kvpress_eval::inspect::kept_map_svg(&report.layers, 200, &title),
    )?;
    println!(
        "{}: kept {:.1}% | wrote budgets.svg, budgets.png, kept.svg and kept.png in {}",
        name,
        100.0 * report.kept_fraction(),
        out.display()
    );
    Ok(())
}
