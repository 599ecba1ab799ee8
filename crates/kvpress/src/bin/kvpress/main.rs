//! The `kvpress` command line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvpress::core::press::{press_from_file, Press};
use kvpress::core::NoPress;
use kvpress::models::{self, ChatMessage, GenerationConfig, LoadedModel, Sampling};
use kvpress::{bench, context_file, default_model, listing, run, trace};

// Large activations are allocated and freed in every layer; glibc's allocator returns such blocks
// to the kernel each time, so every forward pays for fresh zeroed pages. mimalloc keeps them,
// once told not to purge freed memory (see `keep_freed_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its option enum's 16th entry, in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to give freed memory back to the kernel: large blocks (KV caches,
/// activations) are freed and allocated again all the time, and each purge makes the next
/// allocation fault in zeroed pages again (an evaluation sample at 4k tokens: 1.96 M page faults
/// and 16% more CPU time without this, 3 k with it). Resident memory stays at its peak.
fn keep_freed_memory() {
    // SAFETY: sets an integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Commands that report speed say so when this binary has debug assertions (the dev profile):
/// they slow the kernels down by up to 2x.
fn note_debug_build() {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: built with debug assertions (the dev profile), which slow the kernels down; \
             for speed numbers build with `cargo run --release -p kvpress -- ...`"
        );
    }
}

mod cli;
mod eval_command;

use cli::{Cli, Command};

/// Writes `svg` as `dir/stem.svg` and its rendering as `dir/stem.png`.
pub(crate) fn write_figure(dir: &std::path::Path, stem: &str, svg: &str) -> Result<()> {
    let path = dir.join(format!("{stem}.svg"));
    std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join(format!("{stem}.png"));
    std::fs::write(&path, kvpress::eval::png::svg_to_png(svg)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes, without a backtrace: these are user-facing errors.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::FetchModel => {
            let path = default_model::fetch()?;
            println!("{}", path.display());
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            raw,
            press,
        } => {
            note_debug_build();
            let press = press.as_deref().map(press_from_file).transpose()?;
            let sampling = match temperature {
                // Temperature 0 means the most likely token, as in most LLM tools.
                Some(0.0) => Sampling::Greedy,
                Some(temperature) => Sampling::TopP {
                    temperature,
                    top_p,
                    seed,
                },
                None => Sampling::Greedy,
            };
            generate(
                &model.load()?,
                &prompt,
                GenerationConfig {
                    max_new_tokens,
                    sampling,
                },
                raw,
                press.as_deref(),
            )?;
        }
        Command::Presses => print!("{}", listing::press_listing()?),
        Command::Inspect {
            model,
            context,
            press,
            out,
        } => {
            let name = config_name(&press);
            let press = press_from_file(&press)?;
            let loaded = model.load()?;
            let text = std::fs::read_to_string(&context)
                .with_context(|| format!("cannot read {}", context.display()))?;
            let ids = kvpress::hooks::PromptSplit::context_ids(&loaded, &text)?;
            let (_, report) =
                kvpress::hooks::ContextSession::compress(&loaded.model, &ids, press.as_ref(), &[])?;
            std::fs::create_dir_all(&out)?;
            let title = format!(
                "{name}: tokens kept per layer and KV head ({} context tokens)",
                ids.len()
            );
            write_figure(
                &out,
                "budgets",
                &kvpress::eval::inspect::budgets_svg(&report.layers, &title),
            )?;
            let title = format!("{name}: kept tokens over the context (rows: layer x KV head)");
            write_figure(
                &out,
                "kept",
                &kvpress::eval::inspect::kept_map_svg(&report.layers, 200, &title),
            )?;
            println!(
                "{}: kept {:.1}% | wrote budgets.svg, budgets.png, kept.svg and kept.png in {}",
                name,
                100.0 * report.kept_fraction(),
                out.display()
            );
        }
        Command::Fidelity {
            model,
            text,
            press,
            continuation,
        } => {
            let press = press_from_file(&press)?;
            let loaded = model.load()?;
            let text = std::fs::read_to_string(&text)
                .with_context(|| format!("cannot read {}", text.display()))?;
            let ids = loaded.tokenizer.encode(&text, false)?;
            if ids.len() <= continuation + 1 {
                bail!(
                    "the text has {} tokens; it needs more than --continuation ({continuation})",
                    ids.len()
                );
            }
            let (context, rest) = ids.split_at(ids.len() - continuation);
            let f = kvpress::eval::fidelity(&loaded.model, context, rest, press.as_ref())?;
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
        }
        Command::Eval {
            model,
            config,
            out,
            skip_bad,
            settings,
            jobs,
            shard,
        } => {
            let mut config = kvpress::eval::EvalConfig::from_file(&config)?;
            if !settings.is_empty() {
                config.settings = settings.into_iter().map(Into::into).collect();
            }
            eval_command::run(&model, &config, &out, skip_bad, jobs, shard)?;
        }
        Command::Run {
            model,
            context,
            load,
            question,
            press,
            max_new_tokens,
            compare,
        } => {
            note_debug_build();
            let loaded = model.load()?;
            if let Some(path) = load {
                let (mut session, header) = context_file::load(&path, &loaded)?;
                let answers = run::answer_all(&loaded, &mut session, &question, max_new_tokens)?;
                for answer in &answers {
                    println!("Q: {}\nA: {}", answer.question, answer.text.trim());
                }
                println!(
                    "loaded {}: {} context tokens compressed by {} | KV cache {} bytes",
                    path.display(),
                    header.context_ids.len(),
                    header.press,
                    session.cache().bytes_reserved()
                );
                return Ok(());
            }
            let context = context.context("--context or --load is required")?;
            let press_name = press
                .as_deref()
                .map_or_else(|| "no_press".to_string(), config_name);
            let press = load_press(press.as_deref())?;
            let text = std::fs::read_to_string(&context)
                .with_context(|| format!("cannot read {}", context.display()))?;
            let output = run::run(&loaded, &text, &question, press.as_ref(), max_new_tokens)?;
            if compare {
                let full = run::run(
                    &loaded,
                    &text,
                    &question,
                    &NoPress::default(),
                    max_new_tokens,
                )?;
                run::print_comparison(&full, &output, &press_name, std::io::stdout())?;
            } else {
                run::print(&output, std::io::stdout())?;
            }
        }
        Command::Compress {
            model,
            context,
            press,
            out,
        } => {
            let loaded = model.load()?;
            let press = press_from_file(&press)?;
            let text = std::fs::read_to_string(&context)
                .with_context(|| format!("cannot read {}", context.display()))?;
            let context_ids = kvpress::hooks::PromptSplit::context_ids(&loaded, &text)?;
            let (session, report) = kvpress::hooks::ContextSession::compress(
                &loaded.model,
                &context_ids,
                press.as_ref(),
                &[],
            )?;
            let size = context_file::save(&out, &loaded, &session, &context_ids, press.as_ref())?;
            println!(
                "{}: {} bytes ({:.1}% of the {} bytes of the full cache) | {} context tokens, kept {:.1}%",
                out.display(),
                size,
                100.0 * size as f64 / report.kv_bytes_full as f64,
                report.kv_bytes_full,
                report.context_tokens,
                100.0 * report.kept_fraction()
            );
        }
        Command::Trace {
            model,
            prompt,
            out,
            press,
        } => {
            let text = std::fs::read_to_string(&prompt)
                .with_context(|| format!("cannot read {}", prompt.display()))?;
            let prompt_file: trace::PromptFile =
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: expected {{\"context\", \"question\"}}",
                        prompt.display()
                    )
                })?;
            let presses = press
                .iter()
                .map(|path| {
                    let name = config_name(path);
                    Ok((name, press_from_file(path)?))
                })
                .collect::<Result<Vec<_>>>()?;
            let result = trace::trace(&model.load()?, &prompt_file, &presses)?;
            for (name, press_trace) in &result.presses {
                eprintln!("{name}: answer {:?}", press_trace.answer_text);
            }
            std::fs::write(&out, serde_json::to_string(&result)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("answer: {:?}", result.full.answer_text);
        }
        Command::Bench {
            model,
            context,
            decode_tokens,
            repeats,
            json,
            press,
            append_cost,
            generate,
            batch,
        } => {
            note_debug_build();
            if let Some(batch) = batch {
                let loaded = model.load()?;
                let n = context.first().copied().unwrap_or(1024);
                let rows = press
                    .iter()
                    .map(|path| {
                        bench::batch::measure_batch(
                            &loaded,
                            &config_name(path),
                            press_from_file(path)?.as_ref(),
                            n,
                            batch,
                            decode_tokens,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                print!("{}", bench::batch::batch_table(&rows));
                return Ok(());
            }
            if let Some(n_tokens) = generate {
                let loaded = model.load()?;
                let rows = press
                    .iter()
                    .map(|path| {
                        bench::generation::measure_generation(
                            &loaded,
                            &config_name(path),
                            press_from_file(path)?.as_ref(),
                            n_tokens,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                print!("{}", bench::generation::generation_table(&rows));
                return Ok(());
            }
            if append_cost {
                let rows = context
                    .iter()
                    .map(|&n| bench::append::append_cost(n, 20_000))
                    .collect::<Result<Vec<_>>>()?;
                print!("{}", bench::append::append_table(&rows));
                return Ok(());
            }
            let loaded = model.load()?;
            eprintln!("matrix products: {}", kvpress::core::cpu::blas_backend());
            if !press.is_empty() {
                return bench_presses(
                    &loaded,
                    &press,
                    &context,
                    decode_tokens,
                    repeats,
                    json.as_deref(),
                );
            }
            let mut rows = Vec::new();
            for &n in &context {
                let row = bench::measure(&loaded, n, decode_tokens, repeats)?;
                eprintln!(
                    "{n} tokens: prefill {:.2} s, decode {:.1} ms/token",
                    row.prefill_seconds, row.decode_ms_per_token
                );
                rows.push(row);
            }
            print!("{}", bench::markdown_table(&rows));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            }
        }
    }
    Ok(())
}

fn bench_presses(
    loaded: &LoadedModel,
    paths: &[PathBuf],
    context: &[usize],
    decode_tokens: usize,
    repeats: usize,
    json: Option<&std::path::Path>,
) -> Result<()> {
    let mut rows = Vec::new();
    for path in paths {
        let press = press_from_file(path)?;
        let name = config_name(path);
        for &n in context {
            let row = bench::press::measure_press(
                loaded,
                &name,
                press.as_ref(),
                n,
                decode_tokens,
                repeats,
            )?;
            eprintln!(
                "{name} at {n} tokens: compression {:.3} s = {:.1}% of prefill",
                row.compression_seconds, row.overhead_percent
            );
            rows.push(row);
        }
    }
    print!("{}", bench::press::press_table(&rows));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

/// A press config's name: its file name without the extension.
fn config_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load_press(path: Option<&std::path::Path>) -> Result<Box<dyn Press>> {
    match path {
        Some(path) => Ok(press_from_file(path)?),
        None => Ok(Box::new(NoPress::default())),
    }
}

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
    let output = models::generate(
        &loaded.model,
        &mut cache,
        &ids,
        loaded.tokenizer.eos_ids(),
        &config,
        hook.as_mut()
            .map(|h| h as &mut dyn kvpress::core::AttentionHook),
        &mut models::print_tokens(&loaded.tokenizer, std::io::stdout()),
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
