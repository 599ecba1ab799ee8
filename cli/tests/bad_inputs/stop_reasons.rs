//! Answers say why they stopped when the model did not end them (the token budget, the model's
//! position limit), and prompts that leave too little room are warned about or refused.

use crate::files::{ctx, knorm, text};
use crate::harness::{fails, succeeds, Case, File};

fn short_model() -> (String, File) {
    ("short.gguf".to_string(), File::ModelWithPositions(64))
}

fn filler() -> (String, File) {
    (
        "filler.txt".to_string(),
        File::Repeat("The grass is green. The sky is blue. ".to_string(), 2),
    )
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let rerotated = "press = \"key_rerotation\"\n[inner]\npress = \"knorm\"\ncompression_ratio = 0.5\n";
    vec![
        succeeds(&["generate", "--prompt", "Count to fifty.", "--max-new-tokens", "2"], &["answer stopped: the --max-new-tokens limit (2) was reached after 2 tokens"]),
        succeeds(&["generate", "--prompt", "Count from 1 to 100, separated by commas.", "--max-new-tokens", "300", "--model", "{dir}/short.gguf"], &["warning: the prompt (", "of the model's 64 positions", "answer stopped: the model's position limit (64) was reached after"]).files([short_model()]),
        succeeds(&["run", "--context", "{dir}/filler.txt", "--question", "Repeat the text, ten times.", "--max-new-tokens", "300", "--model", "{dir}/short.gguf"], &["warning: the context (", "leaves room for", "answer stopped: the model's position limit (64) was reached after"]).files([filler(), short_model()]),
        succeeds(&["run", "--context", "{dir}/ctx.txt", "--question", "What is the code?", "--max-new-tokens", "1", "--compare", "--press", "{dir}/knorm.toml"], &["answer (full cache) stopped: the --max-new-tokens limit (1)", "answer (knorm) stopped"]).files([ctx(), knorm()]),
        succeeds(&["run", "--context", "{dir}/ctx.txt", "--question", "Count to ten.", "--question", "Count to five.", "--max-new-tokens", "2"], &["answer 1 stopped: the --max-new-tokens limit (2)", "answer 2 stopped"]).files([ctx()]),
        fails(&["run", "--context", "{dir}/long.txt", "--question", "q", "--model", "{dir}/short.gguf"], &["more than the model's 64"]).files([("long.txt".to_string(), File::Repeat("The grass is green. ".to_string(), 40)), short_model()]),
        fails(&["generate", "--raw", "--prompt", &"The grass is green. ".repeat(13), "--model", "{dir}/short.gguf"], &["the prompt (", "more than the model's 64"]).files([short_model()]),
        fails(&["compress", "--context", "{dir}/long.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp", "--model", "{dir}/short.gguf"], &["exceed the model's maximum of 64 positions"]).files([("long.txt".to_string(), File::Repeat("The grass is green. ".to_string(), 40)), knorm(), short_model()]),
        // Re-rotated keys: questions start after the compressed context, so a question that
        // fits after it is answered, and room is counted from there.
        succeeds(&["run", "--context", "{dir}/filler.txt", "--question", "What is green?", "--max-new-tokens", "4", "--model", "{dir}/short.gguf", "--press", "{dir}/rerotated.toml"], &["A: "]).files([filler(), short_model(), text("rerotated.toml", rerotated)]),
    ]
}
