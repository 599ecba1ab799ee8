//! `kvpress bench`: prefill throughput and decode latency on a model, at given context lengths
//! ([`latency`]); with an option, the compression overhead of presses ([`press`]), the cost of
//! cache appends ([`append`]), long generations ([`generation`]) or batches ([`batch`]).

pub mod append;
pub mod batch;
pub mod generation;
pub mod latency;
pub mod press;

use std::path::{Path, PathBuf};

use anyhow::Result;
use kvpress::core::press::press_from_file;
use kvpress::hooks::{check_press, FrontEnd};
use kvpress::models::LoadedModel;

use super::{config_name, note_debug_build};
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Context lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
    context: Vec<usize>,
    /// Decoded tokens per context length.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Runs per context length; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure the compression overhead of these press configs instead (repeatable).
    #[arg(long)]
    press: Vec<PathBuf>,
    /// Measure the cost of appending a token to a layer's cache (dense and flattened) at the
    /// --context lengths instead.
    #[arg(long)]
    append_cost: bool,
    /// Measure a generation of this many tokens with each --press (decode-time compression)
    /// instead: ms/token over the last 1000 tokens and peak cache bytes.
    #[arg(long)]
    generate: Option<usize>,
    /// Measure answering this many compressed contexts one at a time vs in one batch, with
    /// each --press, at the first --context length (--decode-tokens per answer).
    #[arg(long)]
    batch: Option<usize>,
}

/// Runs the measurement the options ask for (`--batch`, `--generate`, `--append-cost`,
/// `--press`, in that order of precedence; latency without any) and prints its table.
pub fn run(args: Args) -> Result<()> {
    note_debug_build();
    if let Some(batch) = args.batch {
        return bench_batch(&args, batch);
    }
    if let Some(n_tokens) = args.generate {
        return bench_generation(&args, n_tokens);
    }
    if args.append_cost {
        let rows = args
            .context
            .iter()
            .map(|&n| append::append_cost(n, 20_000))
            .collect::<Result<Vec<_>>>()?;
        print!("{}", append::append_table(&rows));
        return Ok(());
    }
    let loaded = args.model.load()?;
    eprintln!("matrix products: {}", kvpress::kernels::blas_backend());
    if !args.press.is_empty() {
        return bench_presses(&loaded, &args);
    }
    bench_latency(&loaded, &args)
}

/// `--batch`: each press answering `batch` contexts one at a time and in one batch.
fn bench_batch(args: &Args, batch: usize) -> Result<()> {
    let loaded = args.model.load()?;
    let n = args.context.first().copied().unwrap_or(1024);
    let rows = args
        .press
        .iter()
        .map(|path| {
            batch::measure_batch(
                &loaded,
                &config_name(path),
                press_from_file(path)?.as_ref(),
                n,
                batch,
                args.decode_tokens,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    print!("{}", batch::batch_table(&rows));
    Ok(())
}

/// `--generate`: a generation of `n_tokens` tokens with each press.
fn bench_generation(args: &Args, n_tokens: usize) -> Result<()> {
    let loaded = args.model.load()?;
    let rows = args
        .press
        .iter()
        .map(|path| {
            generation::measure_generation(
                &loaded,
                &config_name(path),
                press_from_file(path)?.as_ref(),
                n_tokens,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    print!("{}", generation::generation_table(&rows));
    Ok(())
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
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(rows)?)?;
    }
    Ok(())
}
