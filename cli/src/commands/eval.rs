//! `kvpress eval`: checks the grid and the output folder (the config, context lengths against
//! the tasks and the model, dataset lines, the rows already there against this run's settings),
//! then runs it in this process or as `--jobs N` worker processes (each a shard of the samples
//! with its share of the cores) appending to one results file; then the table and the plots.
//! Workers stop when their parent dies, and a SIGINT or SIGTERM of the parent is passed on to
//! them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvpress::models::LoadedModel;
use kvpress_eval::{
    prepare, read_results, repair_results, report, EvalConfig, Prepared, Progress, ResultRow,
    RunOptions, Shard,
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
    /// Output folder: results.jsonl, eval-run.json (the settings its rows were made with),
    /// table.md, `plot_<setting>.svg` and `.png`. A rerun resumes only from rows made with the
    /// same model, dtypes, presses and samples; other settings are refused, naming what changed.
    #[arg(long, default_value = "eval-results")]
    out: PathBuf,
    /// Skip malformed dataset lines (each reported with its file and line) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Run these settings instead of the config's: question_agnostic, question_aware
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    settings: Vec<SettingArg>,
    /// Worker processes, each with its share of the cores and of the samples (on small
    /// models one single-threaded process per core finishes sooner than one process
    /// running every product on all cores); at most the cores and the grid's samples.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least::<1>)]
    jobs: usize,
    /// Resume from rows without a fingerprint (results written by an older kvpress, such as
    /// docs/eval) as if this run's model and settings had made them.
    #[arg(long)]
    trust_unfingerprinted: bool,
    /// Compute only shard K of N (`K/N`, K from 0): what each `--jobs` worker runs.
    #[arg(long, hide = true, value_parser = parse_shard)]
    shard: Option<Shard>,
    /// The model's SHA-256, from the parent of a `--jobs` worker (a run hashes it once).
    #[arg(long, hide = true, value_parser = parse_sha256)]
    model_sha256: Option<String>,
    /// The pid of the parent of a `--jobs` worker: the worker stops when that process is gone.
    #[arg(long, hide = true)]
    parent_pid: Option<u32>,
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

/// 64 hexadecimal digits.
fn parse_sha256(text: &str) -> std::result::Result<String, String> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{text}` is not a SHA-256: expected 64 hexadecimal digits"
        ))
    }
}

/// Reads the config (with `--settings` instead of its own, if given) and runs its grid: as a
/// worker with `--shard`, else as the run's parent.
pub fn run(args: Args) -> Result<()> {
    let mut config = EvalConfig::from_file(&args.config)?;
    if !args.settings.is_empty() {
        config.settings = args.settings.iter().copied().map(Into::into).collect();
        config.check()?;
    }
    match args.shard {
        Some(shard) => run_worker(&args, &config, shard),
        None => run_parent(&args, &config),
    }
}

/// The run: checks the grid and the output folder, computes the rows missing (here, or in
/// workers), then writes `table.md` and the plots.
fn run_parent(args: &Args, config: &EvalConfig) -> Result<()> {
    let start = Instant::now();
    let model_path = args.model.path();
    let mut inputs = vec![
        ("--config", args.config.as_path()),
        ("--model", model_path.as_path()),
    ];
    if let Some(dataset) = &config.dataset {
        inputs.push(("the config's dataset", dataset.as_path()));
    }
    let written = ["results.jsonl", "eval-run.json", "table.md"];
    crate::output::prepare_output_dir("--out", &args.out, &written, &inputs)?;
    if repair_results(&args.out)? {
        eprintln!("note: dropped an unfinished last line of the results file (it is recomputed)");
    }
    let loaded = args.model.load()?;
    let options = RunOptions {
        skip_bad: args.skip_bad,
        trust_unfingerprinted: args.trust_unfingerprinted,
        shard: Shard::WHOLE,
        model_sha256: args.model_sha256.clone(),
    };
    let prepared = prepare(&loaded, config, &args.out, &options)?;
    eprintln!(
        "model {} has SHA-256 {} (hashed in {:.2} s); {} of {} rows already in {}",
        loaded.path.display(),
        prepared.model_sha256,
        prepared.hash_seconds,
        prepared.found,
        prepared.rows,
        args.out.display()
    );
    for line in &prepared.skipped {
        eprintln!("warning: {line}");
    }
    let skipped = prepared.skipped.len();
    let jobs = capped_jobs(args.jobs, prepared.samples);
    let rows = if prepared.found == prepared.rows {
        drop(prepared);
        read_results(&args.out)?
    } else if jobs > 1 {
        let model_sha256 = prepared.model_sha256.clone();
        // Workers read the folder again; this process keeps neither it nor the model.
        drop((prepared, loaded));
        run_workers(jobs, &model_sha256)?;
        eprintln!(
            "{jobs} workers finished in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        read_results(&args.out)?
    } else {
        run_here(&loaded, config, prepared, start)?
    };
    if skipped > 0 {
        eprintln!("skipped {skipped} bad dataset lines (listed above)");
    }
    write_outputs(&args.out, &rows)
}

/// `requested` worker processes, at most one per core and one per sample (more would only
/// compete for the cores or have nothing to do); says so on stderr when it caps.
fn capped_jobs(requested: usize, samples: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = requested.min(cores).min(samples.max(1));
    if jobs < requested {
        eprintln!(
            "note: --jobs {requested} capped to {jobs}: at most one worker per core ({cores} \
             cores) and per sample of the grid ({samples} samples)"
        );
    }
    jobs
}

/// Computes the `prepared` grid (or the worker's shard of it) in this process with a progress
/// display, then prints where the time went; returns every row of the results file.
fn run_here(
    loaded: &LoadedModel,
    config: &EvalConfig,
    prepared: Prepared,
    start: Instant,
) -> Result<Vec<ResultRow>> {
    let shard = prepared.shard();
    let tag = if shard.count > 1 {
        format!("[shard {}/{}] ", shard.index, shard.count)
    } else {
        String::new()
    };
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
    let output = prepared.run(loaded, config, &mut |p| {
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
    Ok(output.rows)
}

/// A `--jobs` worker: stops when its parent does, then computes its shard (its parent has
/// checked the grid and the folder, and reported skipped dataset lines).
fn run_worker(args: &Args, config: &EvalConfig, shard: Shard) -> Result<()> {
    let start = Instant::now();
    if let Some(parent) = args.parent_pid {
        stop_with_parent(parent);
    }
    let loaded = args.model.load()?;
    let options = RunOptions {
        skip_bad: args.skip_bad,
        trust_unfingerprinted: args.trust_unfingerprinted,
        shard,
        model_sha256: args.model_sha256.clone(),
    };
    let prepared = prepare(&loaded, config, &args.out, &options)?;
    run_here(&loaded, config, prepared, start).map(drop)
}

/// Makes this worker stop when process `parent` is gone: the kernel sends it SIGTERM when its
/// parent dies (Linux), and a thread checks every half second that its parent is still
/// `parent` (other Unix systems, or a parent that died before this process started).
fn stop_with_parent(parent: u32) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    #[cfg(unix)]
    {
        let orphaned = move || std::os::unix::process::parent_id() != parent;
        if orphaned() {
            eprintln!("the eval run that started this worker is gone; stopping");
            std::process::exit(1);
        }
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if orphaned() {
                eprintln!("the eval run that started this worker is gone; stopping");
                std::process::exit(1);
            }
        });
    }
    #[cfg(not(unix))]
    let _ = parent;
}

/// Runs this command again as `jobs` workers (`--shard K/N`, with the model's SHA-256 and this
/// process's pid), each with an equal share of the cores, and waits for all of them. A SIGINT
/// or SIGTERM received meanwhile is passed on to the workers, which are waited for before the
/// run stops; a worker that fails stops the others.
fn run_workers(jobs: usize, model_sha256: &str) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the kvpress binary to start workers")?;
    // This command's arguments without those the parent sets for each worker (as OS strings:
    // a path need not be UTF-8).
    let set_here = ["--jobs", "--model-sha256", "--parent-pid"];
    let mut args: Vec<OsString> = Vec::new();
    let mut skip_next = false;
    for arg in std::env::args_os().skip(1) {
        let text = arg.to_string_lossy();
        if std::mem::take(&mut skip_next)
            || set_here.iter().any(|o| text.starts_with(&format!("{o}=")))
        {
            continue;
        }
        if set_here.contains(&text.as_ref()) {
            skip_next = true;
            continue;
        }
        args.push(arg);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / jobs).max(1).to_string();
    signals::forward_to_workers();
    let outcome = start_and_wait(&exe, &args, jobs, &threads, model_sha256);
    signals::restore();
    outcome
}

/// Starts the `jobs` workers and waits for them (stopping those started if one cannot start).
fn start_and_wait(
    exe: &Path,
    args: &[OsString],
    jobs: usize,
    threads: &str,
    model_sha256: &str,
) -> Result<()> {
    let mut workers: Vec<Child> = Vec::new();
    for index in 0..jobs {
        let worker = Command::new(exe)
            .args(args)
            .arg("--shard")
            .arg(format!("{index}/{jobs}"))
            .arg("--model-sha256")
            .arg(model_sha256)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .env("RAYON_NUM_THREADS", threads)
            .spawn();
        match worker {
            Ok(worker) => workers.push(worker),
            Err(error) => {
                stop_workers(&mut workers, signals::SIGTERM);
                return Err(error).with_context(|| format!("cannot start worker {index}"));
            }
        }
    }
    wait_for_workers(&mut workers)
}

/// Waits for every worker; on a forwarded signal or a failed worker, stops the others first.
fn wait_for_workers(workers: &mut [Child]) -> Result<()> {
    let mut statuses = vec![None; workers.len()];
    loop {
        for (worker, status) in workers.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = worker.try_wait()?;
            }
        }
        if let Some(signal) = signals::received() {
            stop_workers(workers, signal);
            bail!(
                "interrupted by signal {signal}: the workers were stopped; rerun the same \
                 command to resume"
            );
        }
        let failed: Vec<String> = statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.filter(|s| !s.success())
                    .map(|s| format!("worker {i} ({s})"))
            })
            .collect();
        if !failed.is_empty() {
            stop_workers(workers, signals::SIGTERM);
            bail!(
                "{} failed (the others were stopped); rerun the same command to resume",
                failed.join(", ")
            );
        }
        if statuses.iter().all(Option::is_some) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `signal` to every worker still running and waits for all of them.
fn stop_workers(workers: &mut [Child], signal: i32) {
    for worker in workers.iter_mut() {
        if matches!(worker.try_wait(), Ok(None)) {
            signals::send(worker, signal);
        }
    }
    for worker in workers.iter_mut() {
        let _ = worker.wait();
    }
}

/// SIGINT and SIGTERM of the parent, recorded to be passed on to its workers.
mod signals {
    use std::process::Child;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// SIGTERM's number.
    #[cfg(unix)]
    pub const SIGTERM: i32 = libc::SIGTERM;
    /// SIGTERM's number (no signals here: workers are killed).
    #[cfg(not(unix))]
    pub const SIGTERM: i32 = 15;

    /// The last signal received and not yet handled (0: none).
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    #[cfg(unix)]
    extern "C" fn record(signal: libc::c_int) {
        RECEIVED.store(signal, Ordering::SeqCst);
    }

    /// From now on SIGINT and SIGTERM are recorded instead of ending this process.
    pub fn forward_to_workers() {
        #[cfg(unix)]
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let handler = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(signal, handler);
            }
        }
    }

    /// SIGINT and SIGTERM end this process again.
    pub fn restore() {
        #[cfg(unix)]
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restores the default disposition; no handler runs.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }

    /// The signal received since the last call, if any.
    pub fn received() -> Option<i32> {
        match RECEIVED.swap(0, Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Sends `signal` to `worker` (kills it where there are no signals).
    pub fn send(worker: &mut Child, signal: i32) {
        #[cfg(unix)]
        if let Ok(pid) = libc::pid_t::try_from(worker.id()) {
            // SAFETY: `pid` is a child not yet waited for, so it names that process.
            unsafe {
                libc::kill(pid, signal);
            }
        }
        #[cfg(not(unix))]
        {
            let _ = signal;
            let _ = worker.kill();
        }
    }
}

/// `table.md`, the plots (SVG and PNG) and the table on stdout, from `rows` (each key once).
fn write_outputs(out: &Path, rows: &[ResultRow]) -> Result<()> {
    let table = report::markdown(rows);
    crate::output::write_file(&out.join("table.md"), &table)?;
    for (setting, svg) in report::svg_plots(rows) {
        write_figure(out, &format!("plot_{setting}"), &svg)?;
    }
    print!("{table}");
    eprintln!("results in {}", out.display());
    Ok(())
}
