//! Texts and prompts: empty or blank contexts, questions and prompts, text that is not UTF-8,
//! prompt files that are not `{"context", "question"}`; each command refuses them naming what is
//! wrong.

use crate::files::{ctx, knorm, text};
use crate::harness::{fails, Case, File};

fn bytes(name: &str, content: &[u8]) -> (String, File) {
    (name.to_string(), File::Bytes(content.to_vec()))
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // An empty or blank context, through every command that compresses one.
    for (name, content) in [("empty.txt", ""), ("blank.txt", "  \n\t\n  ")] {
        let path = format!("{{dir}}/{name}");
        let compressing: [Vec<&str>; 3] = [
            vec!["compress", "--context", &path, "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp"],
            vec!["inspect", "--context", &path, "--press", "{dir}/knorm.toml", "--out", "{dir}/pictures"],
            vec!["run", "--context", &path, "--question", "What is it?", "--press", "{dir}/knorm.toml"],
        ];
        for args in compressing {
            cases.push(fails(&args, &["the context is empty"]).files([text(name, content), knorm()]));
        }
        cases.push(fails(&["fidelity", "--text", &path, "--press", "{dir}/knorm.toml"], &["it needs more than --continuation (128)"]).files([text(name, content), knorm()]));
    }
    let not_utf8 = b"The code is \xff\xfe 7.";
    cases.extend([
        fails(&["run", "--context", "{dir}/bin.txt", "--question", "q"], &["cannot read {dir}/bin.txt", "valid UTF-8"]).files([bytes("bin.txt", not_utf8)]),
        fails(&["compress", "--context", "{dir}/bin.txt", "--press", "{dir}/knorm.toml", "--out", "{dir}/c.kvp"], &["cannot read {dir}/bin.txt", "valid UTF-8"]).files([bytes("bin.txt", not_utf8), knorm()]),
        fails(&["fidelity", "--text", "{dir}/bin.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/bin.txt", "valid UTF-8"]).files([bytes("bin.txt", not_utf8), knorm()]),
        fails(&["inspect", "--context", "{dir}/bin.txt", "--press", "{dir}/knorm.toml"], &["cannot read {dir}/bin.txt", "valid UTF-8"]).files([bytes("bin.txt", not_utf8), knorm()]),
        fails(&["trace", "--prompt", "{dir}/bin.json", "--out", "{dir}/t.json"], &["cannot read {dir}/bin.json", "valid UTF-8"]).files([bytes("bin.json", b"{\"context\": \"\xff\", \"question\": \"q\"}")]),
        // Questions.
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", ""], &["a question is empty"]).files([ctx()]),
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "   "], &["a question is empty"]).files([ctx()]),
        fails(&["run", "--context", "{dir}/ctx.txt", "--question", "What?", "--question", ""], &["a question is empty"]).files([ctx()]),
        fails(&["run", "--context", "{dir}/ctx.txt"], &["required arguments were not provided", "--question"]).files([ctx()]),
        fails(&["run", "--question", "q"], &["required arguments were not provided", "--context"]),
        fails(&["run", "--load", "{dir}/c.kvp", "--context", "{dir}/ctx.txt", "--question", "q"], &["'--load <LOAD>' cannot be used with '--context"]).files([ctx()]),
        fails(&["run", "--load", "{dir}/c.kvp", "--press", "{dir}/knorm.toml", "--question", "q"], &["'--load <LOAD>' cannot be used with '--press"]).files([knorm()]),
        fails(&["compress", "--context", "{dir}/ctx.txt", "--out", "{dir}/c.kvp"], &["required arguments were not provided", "--press"]).files([ctx()]),
        // Prompts of generate.
        fails(&["generate", "--prompt", ""], &["--prompt is empty"]),
        fails(&["generate", "--prompt", "  \n "], &["--prompt is empty"]),
        fails(&["generate", "--raw", "--prompt", " "], &["--prompt is empty"]),
        // Prompt files of trace.
        fails(&["trace", "--prompt", "{dir}/p.json", "--out", "{dir}/t.json"], &["the context is empty"]).files([text("p.json", "{\"context\": \"\", \"question\": \"q\"}")]),
        fails(&["trace", "--prompt", "{dir}/p.json", "--out", "{dir}/t.json"], &["{dir}/p.json: expected {\"context\", \"question\"}", "expected a string"]).files([text("p.json", "[1]")]),
        fails(&["trace", "--prompt", "{dir}/p.json", "--out", "{dir}/t.json"], &["expected {\"context\", \"question\"}", "missing field `question`"]).files([text("p.json", "{\"context\": \"c\"}")]),
        fails(&["trace", "--prompt", "{dir}/p.json", "--out", "{dir}/t.json"], &["expected {\"context\", \"question\"}"]).files([text("p.json", "{\"context\": 7, \"question\": \"q\"}")]),
        fails(&["trace", "--prompt", "{dir}/p.json", "--out", "{dir}/t.json"], &["expected {\"context\", \"question\"}"]).files([text("p.json", "")]),
    ]);
    cases
}
