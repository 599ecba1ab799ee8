//! `kvpress trace`: writes what the model computes on a prompt file, in the reference fixtures'
//! field names, optionally with what presses kept.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
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
    let model_path = model.path();
    let inputs: Vec<crate::output::Input<'_>> = [
        ("--prompt", prompt.as_path()),
        ("--model", model_path.as_path()),
    ]
    .into_iter()
    .chain(press.iter().map(|p| ("--press", p.as_path())))
    .collect();
    crate::output::check_output_file("--out", &out, &inputs)?;
    let text = read_text(&prompt)?;
    let prompt_file: trace::PromptFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"context\", \"question\"}}",
            prompt.display()
        )
    })?;
    let mut names: Vec<(String, &std::path::Path)> = Vec::new();
    for path in &press {
        let name = config_name(path);
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            bail!(
                "--press {} and --press {} are both recorded as `presses.{name}` (a trace names \
                 each press after its file name): give the files different names",
                first.display(),
                path.display()
            );
        }
        names.push((name, path));
    }
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
    crate::output::write_file(&out, serde_json::to_string(&result)?)?;
    eprintln!("answer: {:?}", result.full.answer_text);
    Ok(())
}
