//! `kvpress trace`: writes what the model computes on a prompt file, in the reference fixtures'
//! field names, optionally with what presses kept.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kvpress::core::press::press_from_file;
use kvpress::hooks::trace;
use kvpress::hooks::{check_press, FrontEnd};

use super::{config_name, read_text};
use crate::cli::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt file: {"context": ..., "question": ...}.
    #[arg(long)]
    prompt: PathBuf,
    /// Output JSON file (not the --prompt or a --press file).
    #[arg(long)]
    out: PathBuf,
    /// Also compress the context with this press config (.json or .toml) and record what it
    /// kept, under `presses.<file name>`; repeat for several presses.
    #[arg(long)]
    press: Vec<PathBuf>,
}

/// Traces the prompt (and each press), writes the JSON to `--out` and reports the answers.
pub fn run(args: Args) -> Result<()> {
    let Args {
        model,
        prompt,
        out,
        press,
    } = args;
    let inputs: Vec<(&'static str, &std::path::Path)> =
        std::iter::once(("--prompt", prompt.as_path()))
            .chain(press.iter().map(|p| ("--press", p.as_path())))
            .collect();
    crate::paths::check_output(&out, &inputs)?;
    let text = read_text(&prompt)?;
    let prompt_file: trace::PromptFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"context\", \"question\"}}",
            prompt.display()
        )
    })?;
    let presses = press
        .iter()
        .map(|path| {
            let name = config_name(path);
            let press = press_from_file(path)?;
            check_press(FrontEnd::Trace, press.as_ref())?;
            Ok((name, press))
        })
        .collect::<Result<Vec<_>>>()?;
    let result = trace::trace(&model.load()?, &prompt_file, &presses)?;
    for (name, press_trace) in &result.presses {
        eprintln!("{name}: answer {:?}", press_trace.answer_text);
    }
    std::fs::write(&out, serde_json::to_string(&result)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("answer: {:?}", result.full.answer_text);
    Ok(())
}
