//! `kvpress run`: compresses a context once with a press (or loads one `kvpress compress`
//! saved), then answers each question from the compressed cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kvpress::core::NoPress;
use kvpress::hooks::{check_press, FrontEnd};
use kvpress::hooks::{context_file, run};
use kvpress::models::LoadedModel;

use super::{config_name, load_press, note_debug_build, read_text};
use crate::answers;
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file holding the context.
    #[arg(long, required_unless_present = "load", conflicts_with = "load")]
    context: Option<PathBuf>,
    /// A compressed context saved by `kvpress compress` (instead of --context and --press); its
    /// cache is converted to --kv-dtype (default the model's dtype) when stored in another.
    #[arg(long, conflicts_with_all = ["press", "compare"])]
    load: Option<PathBuf>,
    /// A question about the context; repeat to ask several.
    #[arg(long, required = true)]
    question: Vec<String>,
    /// Press config (.json or .toml) [default: no compression].
    #[arg(long)]
    press: Option<PathBuf>,
    /// Maximum number of generated tokens per answer (at least 1).
    #[arg(long, default_value_t = 64, value_parser = crate::values::at_least::<1>)]
    max_new_tokens: usize,
    /// Also answer from the full cache and print both answers side by side.
    #[arg(long)]
    compare: bool,
}

/// Answers the questions from the `--load`ed context, or from `--context` compressed with
/// `--press`.
pub fn run(args: Args) -> Result<()> {
    note_debug_build();
    let loaded = args.model.load()?;
    if let Some(path) = &args.load {
        return answer_from_file(&loaded, path, &args.question, args.max_new_tokens);
    }
    let context = args
        .context
        .as_deref()
        .context("--context or --load is required")?;
    answer_from_context(&loaded, context, &args)
}

/// Answers from a context file saved by `kvpress compress`.
fn answer_from_file(
    loaded: &LoadedModel,
    path: &Path,
    questions: &[String],
    max_new_tokens: usize,
) -> Result<()> {
    let (mut session, header) = context_file::load(path, loaded)?;
    let cache_dtype = loaded.model.kv_storage();
    if header.kv_dtype.name() != cache_dtype.name() {
        eprintln!(
            "note: {} stores its KV cache as {}; converted to {} (--kv-dtype, default the \
             model's dtype); pass --kv-dtype {} to keep the file's dtype",
            path.display(),
            header.kv_dtype,
            cache_dtype.name(),
            header.kv_dtype
        );
    }
    // The context's cache as loaded (answering grows the buffers, which rewinding keeps).
    let kv_bytes = session.cache().bytes_reserved();
    let options = answers::AnswerOptions {
        max_new_tokens,
        warn: true,
    };
    let answers = answers::answer_all(loaded, &mut session, questions, options)?;
    let decodes = kvpress::core::press::press_from_value(header.press.clone())?
        .describe()
        .compresses_while_decoding;
    for answer in &answers {
        println!("Q: {}\nA: {}", answer.question, answer.text.trim());
        if decodes {
            println!("   {}", run::decode_time_note(answer));
        }
    }
    answers::report_stops(loaded, &answers, max_new_tokens, None);
    println!(
        "loaded {}: {} context tokens compressed by {} | KV cache {}, {} bytes",
        path.display(),
        header.context_ids.len(),
        header.press,
        cache_dtype.name(),
        kv_bytes
    );
    Ok(())
}

/// Compresses the text of `context` with `--press` and answers from it (and, with
/// `--compare`, from the full cache too).
fn answer_from_context(loaded: &LoadedModel, context: &Path, args: &Args) -> Result<()> {
    let press_name = args
        .press
        .as_deref()
        .map_or_else(|| "no_press".to_string(), config_name);
    let press = load_press(args.press.as_deref())?;
    check_press(FrontEnd::Run, press.as_ref())?;
    let text = read_text(context)?;
    let (question, max_new_tokens) = (&args.question, args.max_new_tokens);
    let options = answers::AnswerOptions {
        max_new_tokens,
        warn: true,
    };
    let output = answers::run_context(loaded, &text, question, press.as_ref(), options)?;
    if args.compare {
        let options = answers::AnswerOptions {
            warn: false,
            ..options
        };
        let full = answers::run_context(loaded, &text, question, &NoPress::default(), options)?;
        run::print_comparison(&full, &output, &press_name, std::io::stdout())?;
        let report = |out: &run::RunOutput, label| {
            answers::report_stops(loaded, &out.answers, max_new_tokens, Some(label))
        };
        report(&full, "full cache");
        report(&output, &press_name);
    } else {
        run::print(&output, std::io::stdout())?;
        answers::report_stops(loaded, &output.answers, max_new_tokens, None);
    }
    Ok(())
}
