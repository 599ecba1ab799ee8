//! Files the commands read and write: a missing or unreadable input names its path; an output
//! is checked before any work (its folder exists, it is not a folder) and is never one of the
//! command's inputs (the model, a press, the context, the prompt, the eval config).

use crate::files::{ctx, knorm, prompt, text};
use crate::harness::{fails, succeeds, Case, File};

fn folder(name: &str) -> (String, File) {
    (name.to_string(), File::Folder)
}

fn model_copy() -> (String, File) {
    ("model.gguf".to_string(), File::ModelCopy)
}

/// The model copy is still the model after the case (a command refused to write over it).
fn model_intact(dir: &std::path::Path, _: &str) -> Result<(), String> {
    let copy = std::fs::read(dir.join("model.gguf")).map_err(|e| e.to_string())?;
    let model = std::fs::read(kvpress::default_model::path()).map_err(|e| e.to_string())?;
    match copy == model {
        true => Ok(()),
        false => Err("the model file was overwritten".to_string()),
    }
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        // Inputs that are missing, or folders.
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "q"], &["cannot read {dir}/ctx.txt", "No such file"]),
        fails(&["run", "--context", "{dir}/folder", "--question", "q"], &["cannot read {dir}/folder"]).files([folder("folder")]),
        fails(&["fidelity", "--text", "{dir}/none.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/none.txt"]).files([knorm()]),
        fails(&["inspect", "--context", "{dir}/none.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/none.txt"]).files([knorm()]),
        fails(&["compress", "--context", "{dir}/none.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp"], &["cannot read {dir}/none.txt"]).files([knorm()]),
        fails(&["trace", "--prompt", "{dir}/none.json", "--out", "{dir}/t.json"], &["{dir}/none.json"]),
        fails(&["trace", "--prompt", "{dir}/bad.json", "--out", "{dir}/t.json"], &["{dir}/bad.json", "expected {\"context\", \"question\"}"]).files([text("bad.json", "{\"text\": \"no context\"}")]),
        fails(&["eval", "--config", "{dir}/none.toml"], &["{dir}/none.toml"]),
        fails(&["eval", "--config", "{dir}/folder"], &["{dir}/folder"]).files([folder("folder")]),
        fails(&["generate", "--prompt", "hi", "--model", "{dir}/none.gguf"], &["{dir}/none.gguf"]),
        fails(&["run", "--load", "{dir}/none.kvp", "--question", "q"], &["{dir}/none.kvp"]),
        fails(&["run", "--load", "{dir}/folder", "--question", "q"], &["{dir}/folder"]).files([folder("folder")]),
        fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}"], &["{dir}", "is a folder"]).files([ctx()]),
        // Outputs are checked before any work.
        fails(&["bench", "--json", "{dir}/missing/rows.json"], &["--json {dir}/missing/rows.json", "the folder {dir}/missing does not exist"]),
        fails(&["bench", "--json", "{dir}/folder"], &["is a folder"]).files([folder("folder")]),
        fails(&["bench", "--append-cost", "--context", "64", "--json", "{dir}/missing/rows.json"], &["does not exist"]),
        fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/missing/c.kvp"], &["the folder {dir}/missing does not exist"]).files([ctx(), knorm()]),
        fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/folder"], &["is a folder"]).files([ctx(), knorm(), folder("folder")]),
        fails(&["trace", "--prompt", "{dir}/prompt.json", "--out", "{dir}/missing/t.json"], &["does not exist"]).files([prompt()]),
        fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/ctx.txt"], &["--out {dir}/ctx.txt: is a file, not a folder"]).files([ctx(), knorm()]),
        fails(&["inspect", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}"], &["{dir}/kept.svg", "is a folder"]).files([ctx(), knorm(), folder("kept.svg")]),
        fails(&["eval", "--config", "{dir}/eval.toml", "--out", "{dir}/eval.toml"], &["--out {dir}/eval.toml: is a file, not a folder"]).files([text("eval.toml", "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n")]),
        // An output that is an input is refused, whatever the spelling, and the input kept.
        fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/ctx.txt"], &["--out {dir}/ctx.txt is the same file as --context"]).files([ctx(), knorm()]),
        fails(&["compress", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/./knorm.toml"], &["is the same file as --press"]).files([ctx(), knorm()]),
        fails(&["compress", "--model", "{dir}/model.gguf", "--context", "{dir}/ctx.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/model.gguf"], &["is the same file as --model"]).files([ctx(), knorm(), model_copy()]).check(model_intact),
        fails(&["trace", "--prompt", "{dir}/prompt.json", "--out", "{dir}/prompt.json"], &["is the same file as --prompt"]).files([prompt()]),
        fails(&["trace", "--prompt", "{dir}/prompt.json", "--press", "{dir}/knorm.toml", "--out", "{dir}/knorm.toml"], &["is the same file as --press"]).files([prompt(), knorm()]),
        fails(&["trace", "--model", "{dir}/model.gguf", "--prompt", "{dir}/prompt.json", "--out", "{dir}/model.gguf"], &["is the same file as --model"]).files([prompt(), model_copy()]).check(model_intact),
        fails(&["bench", "--context", "64", "--press", "{dir}/knorm.toml", "--json", "{dir}/knorm.toml"], &["--json {dir}/knorm.toml is the same file as --press"]).files([knorm()]),
        fails(&["bench", "--model", "{dir}/model.gguf", "--context", "64", "--json", "{dir}/model.gguf"], &["is the same file as --model"]).files([model_copy()]).check(model_intact),
        fails(&["bench", "--context", "64", "--json", "{dir}/default.gguf"], &["--json {dir}/default.gguf is the same file as --model"]).files([("default.gguf".to_string(), File::LinkToModel)]),
        fails(&["inspect", "--context", "{dir}/pictures/kept.svg", "--press", "{dir}/knorm.toml", "--out", "{dir}/pictures"], &["is the same file as --context"]).files([text("pictures/kept.svg", "The launch code is 2718."), knorm()]),
        fails(&["eval", "--config", "{dir}/out/table.md", "--out", "{dir}/out"], &["is the same file as --config"]).files([text("out/table.md", "tasks = [\"niah_single\"]\ncontext_lengths = [256]\nsamples = 1\ncompression_ratios = [0.5]\npresses = []\n")]),
        // Writing works where it may, atomically: no temporary file is left beside the output.
        succeeds(&["bench", "--append-cost", "--context", "64", "--json", "{dir}/rows.json"], &["| 64 |"]).check(only_outputs),
        succeeds(&["trace", "--prompt", "{dir}/prompt.json", "--out", "{dir}/t.json"], &["answer:"]).files([prompt()]).check(only_outputs),
    ]
}

/// No temporary file (`.NAME.tmp-*`) is left in the case's folder.
fn only_outputs(dir: &std::path::Path, _: &str) -> Result<(), String> {
    let stray: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    match stray.is_empty() {
        true => Ok(()),
        false => Err(format!("temporary files left: {stray:?}")),
    }
}
