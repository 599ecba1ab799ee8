//! `kvpress bench`: prefill throughput and decode latency on a model, at given context lengths
//! ([`latency`]); with an option, the compression overhead of presses ([`press`]), the cost of
//! cache appends ([`append`]), long generations ([`generation`]) or batches ([`batch`]).

pub mod append;
pub mod batch;
pub mod generation;
pub mod latency;
pub mod press;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kvpress::core::press::press_from_file;
use kvpress::hooks::{check_press, FrontEnd};
use kvpress::models::LoadedModel;

use super::{config_name, note_debug_build};
use crate::cli::ModelArgs;
use crate::{output, values};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Context lengths in tokens (each at least 1), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096],
          value_parser = values::at_least::<1>)]
    context: Vec<usize>,
    /// Decoded tokens per context length (at least 1: decoding is always measured).
    #[arg(long, default_value_t = 32, value_parser = values::at_least::<1>)]
    decode_tokens: usize,
    /// Runs per context length (at least 1); the fastest is reported.
    #[arg(long, default_value_t = 3, value_parser = values::at_least::<1>)]
    repeats: usize,
    /// Also write the rows as JSON here (checked before the benchmark runs).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure the compression overhead of these press configs instead (repeatable).
    #[arg(long)]
    press: Vec<PathBuf>,
    /// Measure the cost of appending a token to a layer's cache (dense and flattened) at the
    /// --context lengths instead.
    #[arg(long, conflicts_with_all = ["press", "decode_tokens", "repeats"])]
    append_cost: bool,
    /// Measure a generation of this many tokens (at least 1) with each --press (decode-time
    /// compression) instead: ms/token over the last 1000 tokens and peak cache bytes.
    #[arg(long, requires = "press", value_parser = values::at_least::<1>,
          conflicts_with_all = ["batch", "append_cost", "context", "decode_tokens", "repeats"])]
    generate: Option<usize>,
    /// Measure answering this many compressed contexts (at least 1) one at a time vs in one
    /// batch, with each --press, at one --context length (--decode-tokens per answer).
    #[arg(long, requires = "press", value_parser = values::at_least::<1>,
          conflicts_with_all = ["append_cost", "repeats"])]
    batch: Option<usize>,
}

/// Runs the measurement the options ask for (`--batch`, `--generate`, `--append-cost`,
/// `--press`, in that order of precedence; latency without any) and prints its table.
pub fn run(args: Args) -> Result<()> {
    note_debug_build();
    if let Some(path) = &args.json {
        let model_path = args.model.path();
        let inputs: Vec<output::Input<'_>> = std::iter::once(("--model", model_path.as_path()))
            .chain(args.press.iter().map(|p| ("--press", p.as_path())))
            .collect();
        output::check_output_file("--json", path, &inputs)?;
    }
    if args.batch.is_some() && args.context.len() > 1 {
        bail!(
            "--batch measures one context length; give one --context, not {}",
            args.context.len()
        );
    }
    if args.append_cost {
        let rows = args
            .context
            .iter()
            .map(|&n| append::append_cost(n, 20_000))
            .collect::<Result<Vec<_>>>()?;
        print!("{}", append::append_table(&rows));
        return write_json(args.json.as_deref(), &rows);
    }
    let loaded = args.model.load()?;
    check_positions(&loaded, &args)?;
    if let Some(batch) = args.batch {
        return bench_batch(&loaded, &args, batch);
    }
    if let Some(n_tokens) = args.generate {
        return bench_generation(&loaded, &args, n_tokens);
    }
    eprintln!("matrix products: {}", kvpress::kernels::blas_backend());
    if !args.press.is_empty() {
        return bench_presses(&loaded, &args);
    }
    bench_latency(&loaded, &args)
}

/// Refuses, before any measurement, a length that would run past the model's positions.
fn check_positions(loaded: &LoadedModel, args: &Args) -> Result<()> {
    let max_positions = loaded.model.config().max_position_embeddings;
    if let Some(n_tokens) = args.generate {
        let needed = generation::PROMPT_TOKENS + n_tokens;
        if needed > max_positions {
            bail!(
                "--generate {n_tokens} needs {needed} positions ({} prompt tokens first), more \
                 than the model's {max_positions}: at most --generate {}",
                generation::PROMPT_TOKENS,
                max_positions.saturating_sub(generation::PROMPT_TOKENS)
            );
        }
        return Ok(());
    }
    // The batch's question comes before its answers.
    let question = match args.batch {
        Some(_) => batch::question_ids(loaded)?.len(),
        None => 0,
    };
    for &n in &args.context {
        if n + question + args.decode_tokens > max_positions {
            bail!(
                "--context {n} with --decode-tokens {} needs {} positions, more than the \
                 model's {max_positions}",
                args.decode_tokens,
                n + question + args.decode_tokens
            );
        }
    }
    Ok(())
}

/// `--batch`: each press answering `batch` contexts one at a time and in one batch.
fn bench_batch(loaded: &LoadedModel, args: &Args, batch: usize) -> Result<()> {
    let n = args.context.first().copied().unwrap_or(1024);
    batch::check_batch(loaded, n, batch)?;
    let rows = args
        .press
        .iter()
        .map(|path| {
            batch::measure_batch(
                loaded,
                &config_name(path),
                press_from_file(path)?.as_ref(),
                n,
                batch,
                args.decode_tokens,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    print!("{}", batch::batch_table(&rows));
    write_json(args.json.as_deref(), &rows)
}

/// `--generate`: a generation of `n_tokens` tokens with each press.
fn bench_generation(loaded: &LoadedModel, args: &Args, n_tokens: usize) -> Result<()> {
    let rows = args
        .press
        .iter()
        .map(|path| {
            generation::measure_generation(
                loaded,
                &config_name(path),
                press_from_file(path)?.as_ref(),
                n_tokens,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    print!("{}", generation::generation_table(&rows));
    write_json(args.json.as_deref(), &rows)
}

/// `--press`: each press's compression overhead at each context length.
fn bench_presses(loaded: &LoadedModel, args: &Args) -> Result<()> {
    let mut rows = Vec::new();
    for path in &args.press {
        let press = press_from_file(path)?;
        check_press(FrontEnd::Bench, press.as_ref())?;
        let name = config_name(path);
        for &n in &args.context {
            let row = press::measure_press(
                loaded,
                &name,
                press.as_ref(),
                n,
                args.decode_tokens,
                args.repeats,
            )?;
            eprintln!(
                "{name} at {n} tokens: compression {:.3} s = {:.1}% of prefill",
                row.compression_seconds, row.overhead_percent
            );
            rows.push(row);
        }
    }
    print!("{}", press::press_table(&rows));
    write_json(args.json.as_deref(), &rows)
}

/// Without an option: prefill and decode speed at each context length.
fn bench_latency(loaded: &LoadedModel, args: &Args) -> Result<()> {
    let mut rows = Vec::new();
    for &n in &args.context {
        let row = latency::measure(loaded, n, args.decode_tokens, args.repeats)?;
        eprintln!(
            "{n} tokens: prefill {:.2} s, decode {:.1} ms/token",
            row.prefill_seconds, row.decode_ms_per_token
        );
        rows.push(row);
    }
    print!("{}", latency::markdown_table(&rows));
    write_json(args.json.as_deref(), &rows)
}

/// Writes `rows` as pretty JSON to `path`, if given.
fn write_json(path: Option<&Path>, rows: &[impl serde::Serialize]) -> Result<()> {
    match path {
        Some(path) => output::write_file(path, serde_json::to_string_pretty(rows)?),
        None => Ok(()),
    }
}
