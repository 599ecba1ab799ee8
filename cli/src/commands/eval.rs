//! `kvpress eval`: one process, or `--jobs N` worker processes (each a shard of the samples with
//! its share of the cores) appending to one results file; then the table and the plots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kvpress_eval::{
    read_results, repair_results, report, run_shard, EvalConfig, Progress, ResultRow, Shard,
};

use super::write_figure;
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Eval config (TOML), e.g. configs/eval/default.toml.
    #[arg(long)]
    config: PathBuf,
    /// Output folder: results.jsonl, table.md, `plot_<setting>.svg` and `.png`.
    #[arg(long, default_value = "eval-results")]
    out: PathBuf,
    /// Skip malformed dataset lines (reported) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Run these settings instead of the config's: question_agnostic, question_aware
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    settings: Vec<SettingArg>,
    /// Worker processes, each with its share of the cores and of the samples (on small
    /// models one single-threaded process per core finishes sooner than one process
    /// running every product on all cores).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Compute only shard K of N (`K/N`, K from 0): what each `--jobs` worker runs.
    #[arg(long, hide = true, value_parser = parse_shard)]
    shard: Option<Shard>,
}

/// A setting of `kvpress eval` on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SettingArg {
    /// The context is compressed alone (kvpress's default).
    QuestionAgnostic,
    /// The question is compressed with the context.
    QuestionAware,
}

impl From<SettingArg> for kvpress_eval::Setting {
    fn from(setting: SettingArg) -> Self {
        match setting {
            SettingArg::QuestionAgnostic => Self::QuestionAgnostic,
            SettingArg::QuestionAware => Self::QuestionAware,
        }
    }
}

/// `K/N` with `K < N`.
fn parse_shard(text: &str) -> std::result::Result<kvpress_eval::Shard, String> {
    let invalid = || format!("`{text}` is not a shard: expected K/N with 0 <= K < N, e.g. 0/2");
    let (index, count) = text.split_once('/').ok_or_else(invalid)?;
    let index: usize = index.trim().parse().map_err(|_| invalid())?;
    let count: usize = count.trim().parse().map_err(|_| invalid())?;
    if index >= count {
        return Err(invalid());
    }
    Ok(kvpress_eval::Shard { index, count })
}

/// Reads the config (with `--settings` instead of its own, if given) and runs its grid.
pub fn run(args: Args) -> Result<()> {
    let mut config = EvalConfig::from_file(&args.config)?;
    if !args.settings.is_empty() {
        config.settings = args.settings.into_iter().map(Into::into).collect();
    }
    run_grid(
        &args.model,
        &config,
        &args.out,
        args.skip_bad,
        args.jobs,
        args.shard,
    )
}

/// Runs the grid of `config` (or one `shard` of it) and, unless this is a shard, writes
/// `table.md` and the plots.
fn run_grid(
    model: &ModelArgs,
    config: &EvalConfig,
    out: &Path,
    skip_bad: bool,
    jobs: usize,
    shard: Option<Shard>,
) -> Result<()> {
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let start = Instant::now();
    if shard.is_none() && repair_results(out)? {
        eprintln!("note: dropped an unfinished last line of the results file (it is recomputed)");
    }
    if jobs > 1 && shard.is_none() {
        run_workers(jobs)?;
        eprintln!(
            "{jobs} workers finished in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        return write_outputs(out, &read_results(out)?);
    }
    let shard = shard.unwrap_or(Shard::WHOLE);
    let tag = if shard.count > 1 {
        format!("[shard {}/{}] ", shard.index, shard.count)
    } else {
        String::new()
    };
    let loaded = model.load()?;
    let mut reported = 0;
    let show = |p: &Progress| {
        format!(
            "{tag}[{}/{}] {:.1}% | {:.0} s elapsed | ETA {:.0} s",
            p.done,
            p.total,
            100.0 * p.done as f64 / p.total.max(1) as f64,
            p.elapsed_seconds,
            p.eta_seconds
        )
    };
    let output = run_shard(&loaded, config, out, skip_bad, shard, &mut |p| {
        if shard.count == 1 {
            eprint!("\r{}   ", show(&p));
        } else if p.done >= reported + 50 || p.done == p.total {
            // Workers share the terminal: whole lines, now and then.
            reported = p.done;
            eprintln!("{}", show(&p));
        }
    })?;
    if shard.count == 1 {
        eprintln!();
    }
    for warning in &output.warnings {
        eprintln!("{tag}warning: {warning}");
    }
    let t = output.timings;
    eprintln!(
        "{tag}time: {:.0} s in all; prefill {:.0} s, compression {:.0} s, questions {:.0} s, \
         decoding {:.0} s ({} answer tokens)",
        start.elapsed().as_secs_f64(),
        t.prefill_seconds,
        t.compression_seconds,
        t.question_seconds,
        t.decoding_seconds,
        t.answer_tokens
    );
    if shard.count == 1 {
        write_outputs(out, &output.rows)?;
    }
    Ok(())
}

/// Runs this command again as `jobs` workers (`--shard K/N`), each with an equal share of the
/// cores, and waits for all of them.
fn run_workers(jobs: usize) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the kvpress binary to start workers")?;
    let mut args: Vec<String> = Vec::new();
    let mut skip_next = false;
    for arg in std::env::args().skip(1) {
        if std::mem::take(&mut skip_next) || arg.starts_with("--jobs=") {
            continue;
        }
        if arg == "--jobs" {
            skip_next = true;
            continue;
        }
        args.push(arg);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / jobs).max(1).to_string();
    let workers = (0..jobs)
        .map(|index| {
            Command::new(&exe)
                .args(&args)
                .arg("--shard")
                .arg(format!("{index}/{jobs}"))
                .env("RAYON_NUM_THREADS", &threads)
                .spawn()
                .with_context(|| format!("cannot start worker {index}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut failed = Vec::new();
    for (index, mut worker) in workers.into_iter().enumerate() {
        let status = worker.wait()?;
        if !status.success() {
            failed.push(format!("worker {index} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} failed; rerun the same command to resume",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `table.md`, the plots (SVG and PNG) and the table on stdout.
fn write_outputs(out: &Path, rows: &[ResultRow]) -> Result<()> {
    let table = report::markdown(rows);
    std::fs::write(out.join("table.md"), &table)?;
    for (setting, svg) in report::svg_plots(rows) {
        write_figure(out, &format!("plot_{setting}"), &svg)?;
    }
    print!("{table}");
    eprintln!("results in {}", out.display());
    Ok(())
}
